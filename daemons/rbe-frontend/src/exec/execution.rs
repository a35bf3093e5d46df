//! The Execution service: Execute and WaitExecution.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use rbe_proto::longrunning::Operation;
use rbe_proto::reapi::{
    self, execution_server::Execution, execution_stage, Action, Command, ExecuteRequest,
    ExecuteResponse, WaitExecutionRequest,
};
use rbe_proto::worker::Assignment;
use rbe_proto::{Digest, DigestFunction};
use rbe_sched::{ActionKey, OpId, Platform, SchedError};
use tokio::sync::{mpsc, watch};
use tonic::{Code, Request, Response, Status};

use super::{operation, Exec, OpInfo, Snapshot};

type OpStream = Pin<Box<dyn Stream<Item = Result<Operation, Status>> + Send>>;

/// The Execution service.
pub struct ExecutionService(pub Arc<Exec>);

const REQUEST_METADATA: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

fn invocation_id<T>(req: &Request<T>) -> String {
    req.metadata()
        .get_bin(REQUEST_METADATA)
        .and_then(|v| v.to_bytes().ok())
        .and_then(|b| reapi::RequestMetadata::decode(b.as_ref()).ok())
        .map(|m| m.tool_invocation_id)
        .unwrap_or_default()
}

/// Reads a small blob (an Action or a Command) from casd.
async fn fetch(exec: &Exec, instance: &str, d: &Digest, what: &str) -> Result<Vec<u8>, Status> {
    if d.size > 64 << 20 {
        return Err(Status::invalid_argument(format!(
            "{what} {d} is larger than 64 MiB"
        )));
    }
    let req = reapi::BatchReadBlobsRequest {
        instance_name: instance.to_string(),
        digests: vec![d.to_reapi()],
        acceptable_compressors: vec![],
        digest_function: d.function.to_reapi(),
    };
    let resp = exec
        .upstream
        .cas()
        .batch_read_blobs(req)
        .await?
        .into_inner();
    let r = resp
        .responses
        .into_iter()
        .next()
        .ok_or_else(|| Status::internal("casd returned no response"))?;
    match r.status.as_ref().map(|s| s.code).unwrap_or(0) {
        0 => Ok(r.data),
        c if c == Code::NotFound as i32 => Err(rbe_proto::status::missing_blobs(what, &[*d])),
        c => Err(Status::new(
            Code::from_i32(c),
            r.status.map(|s| s.message).unwrap_or_default(),
        )),
    }
}

// Command.platform is deprecated in favour of Action.platform, but Bazel 4
// still sets only the Command's.
#[allow(deprecated)]
fn platform_of(action: &Action, command: &Command) -> Platform {
    let p = action.platform.as_ref().or(command.platform.as_ref());
    Platform::from_pairs(
        p.map(|p| {
            p.properties
                .iter()
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default(),
    )
}

impl ExecutionService {
    /// A stream of snapshots of `id`, ending after the completed one. When
    /// the client goes away, it stops waiting (the last waiter leaving
    /// cancels the operation).
    fn stream(
        &self,
        id: OpId,
        mut rx: watch::Receiver<Snapshot>,
        name: String,
        digest: reapi::Digest,
        function: i32,
    ) -> OpStream {
        let (tx, out) = mpsc::channel(4);
        let exec = Arc::clone(&self.0);
        tokio::spawn(async move {
            loop {
                let snap = rx.borrow_and_update().clone();
                let done = snap.response.is_some();
                if tx
                    .send(Ok(operation(&name, &digest, function, &snap)))
                    .await
                    .is_err()
                {
                    break;
                }
                if done {
                    return;
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    _ = tx.closed() => break,
                }
            }
            let effect = exec.sched.lock().remove_waiter(id);
            exec.apply_cancel(id, effect);
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
    }

    fn done_stream(
        name: String,
        digest: reapi::Digest,
        function: i32,
        response: ExecuteResponse,
    ) -> OpStream {
        let snap = Snapshot {
            stage: execution_stage::Value::Completed as i32,
            response: Some(response),
        };
        Box::pin(futures::stream::once(async move {
            Ok(operation(&name, &digest, function, &snap))
        }))
    }
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = OpStream;

    async fn execute(
        &self,
        req: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let invocation = invocation_id(&req);
        let req = req.into_inner();
        rbe_proto::resource::validate_instance(&req.instance_name).map_err(|r| {
            Status::invalid_argument(format!("instance name {:?}: {r}", req.instance_name))
        })?;
        let f = DigestFunction::from_reapi(req.digest_function)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ad = Digest::from_reapi_opt(f, req.action_digest.as_ref())
            .map_err(|e| Status::invalid_argument(format!("action_digest: {e}")))?;
        let exec = &self.0;

        if !req.skip_cache_lookup {
            let get = reapi::GetActionResultRequest {
                instance_name: req.instance_name.clone(),
                action_digest: Some(ad.to_reapi()),
                inline_stdout: false,
                inline_stderr: false,
                inline_output_files: vec![],
                digest_function: f.to_reapi(),
            };
            match exec.upstream.ac().get_action_result(get).await {
                Ok(r) => {
                    tracing::info!(action_digest = %ad, invocation_id = %invocation, "action cache hit");
                    let resp = ExecuteResponse {
                        result: Some(r.into_inner()),
                        cached_result: true,
                        status: Some(super::rpc_status(Code::Ok, "")),
                        ..Default::default()
                    };
                    let name = format!("operations/{}", uuid::Uuid::new_v4());
                    // Recorded like any operation, so GetOperation and
                    // WaitExecution find it until it expires.
                    {
                        let key = ActionKey {
                            instance: req.instance_name.clone(),
                            action: format!("{}:{ad}", f.name()),
                        };
                        let mut sched = exec.sched.lock();
                        let id = sched.record_completed(key, Arc::new(Assignment::default()));
                        let (tx, _) = watch::channel(Snapshot {
                            stage: execution_stage::Value::Completed as i32,
                            response: Some(resp.clone()),
                        });
                        exec.ops.lock().insert(
                            id,
                            OpInfo {
                                name: name.clone(),
                                action_digest: ad.to_reapi(),
                                digest_function: f.to_reapi(),
                                instance: req.instance_name.clone(),
                                do_not_cache: false,
                                watch: tx,
                            },
                        );
                        exec.names.lock().insert(name.clone(), id);
                    }
                    return Ok(Response::new(Self::done_stream(
                        name,
                        ad.to_reapi(),
                        f.to_reapi(),
                        resp,
                    )));
                }
                Err(e) if e.code() == Code::NotFound => {}
                Err(e) => return Err(e),
            }
        }

        let action_bytes = fetch(exec, &req.instance_name, &ad, "action").await?;
        let action = Action::decode(action_bytes.as_slice())
            .map_err(|e| Status::invalid_argument(format!("action {ad} is not an Action: {e}")))?;
        let cd = Digest::from_reapi_opt(f, action.command_digest.as_ref())
            .map_err(|e| Status::invalid_argument(format!("command_digest: {e}")))?;
        Digest::from_reapi_opt(f, action.input_root_digest.as_ref())
            .map_err(|e| Status::invalid_argument(format!("input_root_digest: {e}")))?;
        let command_bytes = fetch(exec, &req.instance_name, &cd, "command").await?;
        let command = Command::decode(command_bytes.as_slice())
            .map_err(|e| Status::invalid_argument(format!("command {cd} is not a Command: {e}")))?;
        if command.arguments.is_empty() {
            return Err(Status::invalid_argument("command has no arguments"));
        }
        let s = &exec.settings;
        let timeout = match action.timeout.as_ref() {
            None => s.default_timeout_secs,
            Some(t) if t.seconds < 0 || t.nanos < 0 => {
                return Err(Status::invalid_argument("action timeout is negative"))
            }
            Some(t) if t.seconds == 0 && t.nanos == 0 => s.default_timeout_secs,
            Some(t) => {
                let secs = t.seconds as u64 + u64::from(t.nanos > 0);
                if secs > s.max_timeout_secs {
                    return Err(Status::invalid_argument(format!(
                        "action timeout {secs} s exceeds this server's maximum of {} s",
                        s.max_timeout_secs
                    )));
                }
                secs
            }
        };
        let priority = req
            .execution_policy
            .as_ref()
            .map(|p| p.priority)
            .unwrap_or(0);
        let platform = platform_of(&action, &command);
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let name = format!("operations/{}", uuid::Uuid::new_v4());
        let assignment = Arc::new(Assignment {
            id: 0,
            operation: name.clone(),
            instance_name: req.instance_name.clone(),
            digest_function: f.to_reapi(),
            action_hash: ad.hex(),
            action_size: ad.size as i64,
            action: action_bytes,
            command: command_bytes,
            timeout_seconds: timeout as u32,
            invocation_id: invocation.clone(),
            queued_unix_micros: now_us,
        });
        // REAPI: requests for a do_not_cache action must not be merged, so
        // such a key is unique to this request.
        let key = ActionKey {
            instance: req.instance_name.clone(),
            action: if action.do_not_cache {
                format!("{}:{ad}:{name}", f.name())
            } else {
                format!("{}:{ad}", f.name())
            },
        };
        // Submitting and registering under one lock, so a concurrent
        // identical request finds the operation's watch.
        let (id, rx, op_name) = {
            let mut sched = exec.sched.lock();
            let (id, new) =
                sched
                    .submit(key, platform, priority, assignment)
                    .map_err(|e| match e {
                        SchedError::QueueFull { retry_after, .. } => {
                            rbe_proto::status::exhausted_retry(e.to_string(), retry_after)
                        }
                        SchedError::NoMatchingWorker { .. } => {
                            Status::failed_precondition(e.to_string())
                        }
                        SchedError::UnknownOperation(_) => Status::internal(e.to_string()),
                    })?;
            let mut ops = exec.ops.lock();
            if new {
                let (tx, _) = watch::channel(Snapshot {
                    stage: execution_stage::Value::Queued as i32,
                    response: None,
                });
                ops.insert(
                    id,
                    OpInfo {
                        name: name.clone(),
                        action_digest: ad.to_reapi(),
                        digest_function: f.to_reapi(),
                        instance: req.instance_name.clone(),
                        do_not_cache: action.do_not_cache,
                        watch: tx,
                    },
                );
                exec.names.lock().insert(name.clone(), id);
            }
            let info = ops
                .get(&id)
                .ok_or_else(|| Status::internal("operation vanished"))?;
            (id, info.watch.subscribe(), info.name.clone())
        };
        tracing::info!(action_digest = %ad, operation = %op_name, invocation_id = %invocation, "action queued");
        exec.dispatch();
        Ok(Response::new(self.stream(
            id,
            rx,
            op_name,
            ad.to_reapi(),
            f.to_reapi(),
        )))
    }

    type WaitExecutionStream = OpStream;

    async fn wait_execution(
        &self,
        req: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let name = req.into_inner().name;
        let id = self.0.lookup(&name).ok_or_else(|| {
            Status::not_found(format!("operation {name:?} is unknown or has expired"))
        })?;
        self.0
            .sched
            .lock()
            .add_waiter(id)
            .map_err(|e| Status::not_found(e.to_string()))?;
        let (rx, digest, function) = {
            let ops = self.0.ops.lock();
            let o = ops
                .get(&id)
                .ok_or_else(|| Status::not_found(format!("operation {name:?} has expired")))?;
            (
                o.watch.subscribe(),
                o.action_digest.clone(),
                o.digest_function,
            )
        };
        Ok(Response::new(self.stream(id, rx, name, digest, function)))
    }
}
