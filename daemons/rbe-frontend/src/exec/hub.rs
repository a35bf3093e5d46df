//! The worker hub: rbe-workerd attaches here over the local socket. Each
//! attached worker is a [`HubLink`] to the owner; its reports and its
//! going away are handed to [`Exec`] as they come.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use rbe_proto::worker::{worker_hub_server::WorkerHub, worker_message, HubMessage, WorkerMessage};
use rbe_sched::Platform;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::{Exec, HubLink};

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
        let link = HubLink {
            tx,
            name: hello.worker_name.clone(),
        };
        let w = exec.worker_attach(Box::new(link), hello.slots, platform.clone());
        tracing::info!(worker = w, name = %hello.worker_name, slots = hello.slots, platform = %platform, "worker attached");
        tokio::spawn(async move {
            while let Some(m) = incoming.next().await {
                match m {
                    Ok(WorkerMessage {
                        kind: Some(worker_message::Kind::Finished(f)),
                    }) => {
                        exec.hub_finished(w, f);
                    }
                    Ok(_) => tracing::warn!(worker = w, "unexpected message from worker ignored"),
                    Err(e) => {
                        tracing::info!(worker = w, error = %e, "worker stream ended");
                        break;
                    }
                }
            }
            let requeued = exec.worker_detach(w);
            tracing::info!(worker = w, requeued, "worker detached");
        });
        let out = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}
