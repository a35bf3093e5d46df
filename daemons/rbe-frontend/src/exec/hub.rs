//! The worker hub: rbe-workerd attaches here over the local socket.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use rbe_proto::worker::{worker_hub_server::WorkerHub, worker_message, HubMessage, WorkerMessage};
use rbe_sched::Platform;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::Exec;

/// The WorkerHub service.
pub struct HubService(pub Arc<Exec>);

#[tonic::async_trait]
impl WorkerHub for HubService {
    type AttachStream = Pin<Box<dyn Stream<Item = Result<HubMessage, Status>> + Send>>;

    async fn attach(
        &self,
        req: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut incoming = req.into_inner();
        let hello = match incoming.next().await {
            Some(Ok(WorkerMessage {
                kind: Some(worker_message::Kind::Hello(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(Status::invalid_argument("a worker must say Hello first")),
        };
        if hello.slots == 0 || hello.slots > 4096 {
            return Err(Status::invalid_argument(format!(
                "slots {} is out of range 1..=4096",
                hello.slots
            )));
        }
        let platform = Platform::from_pairs(
            hello
                .platform
                .iter()
                .map(|p| (p.name.clone(), p.value.clone())),
        );
        let exec = Arc::clone(&self.0);
        let (tx, rx) = mpsc::unbounded_channel();
        let w = {
            let mut sched = exec.sched.lock();
            let w = sched.worker_connect(hello.slots, platform.clone());
            exec.workers.lock().insert(
                w,
                super::WorkerLink {
                    tx,
                    name: hello.worker_name.clone(),
                },
            );
            w
        };
        tracing::info!(worker = w, name = %hello.worker_name, slots = hello.slots, platform = %platform, "worker attached");
        exec.dispatch();
        tokio::spawn(async move {
            while let Some(m) = incoming.next().await {
                match m {
                    Ok(WorkerMessage {
                        kind: Some(worker_message::Kind::Finished(f)),
                    }) => exec.finished(w, f),
                    Ok(_) => tracing::warn!(worker = w, "unexpected message from worker ignored"),
                    Err(e) => {
                        tracing::info!(worker = w, error = %e, "worker stream ended");
                        break;
                    }
                }
            }
            let requeued = {
                let mut sched = exec.sched.lock();
                exec.workers.lock().remove(&w);
                sched.worker_disconnect(w)
            };
            tracing::info!(worker = w, requeued = requeued.len(), "worker detached");
            for id in requeued {
                exec.set_stage(id, rbe_proto::reapi::execution_stage::Value::Queued);
            }
            exec.complete_given_up();
            exec.dispatch();
        });
        let out = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}
