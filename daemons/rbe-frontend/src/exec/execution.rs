//! The Execution service: Execute and WaitExecution.
//!
//! Every request gets its own operation handle (see [`super::handles`]);
//! identical requests share the execution behind them.
//!
//! Before an action is queued: join the identical action in flight, or
//! answer from the results whose action-cache write is still landing; else
//! the action-cache lookup and the Action read run together, then the
//! Command is read (two casd round trips in sequence, at most).

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
use rbe_sched::{ActionKey, Platform, SchedError, Tenant};
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status};

use super::handles::{Attached, Origin};
use super::route::{route, Route};
use super::{operation, Exec, Snapshot, Submission, Submitted};
use crate::access;
use crate::cluster::forward;
use rbe_auth::Identity;

pub(crate) type OpStream = Pin<Box<dyn Stream<Item = Result<Operation, Status>> + Send>>;

/// The Execution service.
pub struct ExecutionService(pub Arc<Exec>);

const REQUEST_METADATA: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

/// The client's RequestMetadata header (Bazel sends one with every call);
/// empty when absent or malformed. It travels with the action (the
/// worker's assignment, a peer's offer) for the log lines of every host
/// and worker the action reaches.
fn request_metadata<T>(req: &Request<T>) -> reapi::RequestMetadata {
    req.metadata()
        .get_bin(REQUEST_METADATA)
        .and_then(|v| v.to_bytes().ok())
        .and_then(|b| reapi::RequestMetadata::decode(b.as_ref()).ok())
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
    /// A stream of snapshots of the handle `a` follows, ending after the
    /// completed one. When it ends it no longer waits (the last waiter
    /// leaving cancels the execution). With `cache_checked`, a CACHE_CHECK
    /// operation comes first: the lookup is over by then, but REAPI clients
    /// expect to see the stages in order.
    fn stream(&self, a: Attached, cache_checked: bool) -> OpStream {
        let Attached {
            id: handle,
            exec: id,
            mut rx,
            name,
            action_digest: digest,
            digest_function: function,
            waits: _,
        } = a;
        let (tx, out) = mpsc::channel(4);
        let exec = Arc::clone(&self.0);
        let idle = exec.upstream.limits.idle;
        tokio::spawn(async move {
            let checked = Snapshot {
                stage: execution_stage::Value::CacheCheck as i32,
                response: None,
            };
            let first = cache_checked.then(|| operation(&name, &digest, function, &checked));
            let mut sent = match first {
                Some(op) => deliver(&tx, idle, op).await,
                None => Sent::Yes,
            };
            while sent == Sent::Yes {
                let snap = rx.borrow_and_update().clone();
                let done = snap.response.is_some();
                sent = deliver(&tx, idle, operation(&name, &digest, function, &snap)).await;
                if sent != Sent::Yes || done {
                    break;
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { break },
                    _ = tx.closed() => sent = Sent::Gone,
                }
            }
            // Done, or the client went away or stopped taking updates: this
            // stream no longer waits (the last waiter leaving cancels the
            // execution).
            exec.stream_ended(handle, id);
            if sent == Sent::Stalled {
                tracing::info!(operation = %name, idle_secs = idle.as_secs(), "a client took no operation update; its stream was ended");
                let status = exec
                    .upstream
                    .limits
                    .idle_status("Execute", "took no update");
                // Delivered if it ever reads again; until then only this
                // status and the updates already queued are held.
                let _ = tx.send(Err(status)).await;
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
    }

    /// WaitExecution here: `who` follows the handle `name` as one of its
    /// execution's waiters, until it completes (or the stream is
    /// dropped). The holder's side of a forwarded wait too.
    pub(crate) fn wait_stream(&self, name: &str, who: &Identity) -> Result<OpStream, Status> {
        let a = super::operations::with_caller(&self.0, who, name, |c| self.0.attach(name, c))?;
        Ok(self.stream(a, false))
    }

    /// Streams a handle this request opened on a shared execution.
    fn joined(&self, a: Attached) -> OpStream {
        let d = &a.action_digest;
        tracing::debug!(operation = %a.name, action_digest = %format_args!("{}/{}", d.hash, d.size_bytes), "joined the identical action in flight");
        self.stream(a, false)
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

    /// Answers with a cache hit, recorded as a completed operation.
    fn hit(
        &self,
        key: ActionKey,
        origin: Origin,
        invocation: &str,
        result: reapi::ActionResult,
    ) -> OpStream {
        let ad = &origin.action_digest;
        tracing::debug!(action_digest = %format_args!("{}/{}", ad.hash, ad.size_bytes), invocation_id = %invocation, "action cache hit");
        let resp = ExecuteResponse {
            result: Some(result),
            cached_result: true,
            status: Some(super::rpc_status(Code::Ok, "")),
            ..Default::default()
        };
        let (digest, function) = (ad.clone(), origin.digest_function);
        let name = self.0.record_hit(key, origin, invocation, resp.clone());
        Self::done_stream(name, digest, function, resp)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sent {
    Yes,
    /// The client's stream is closed.
    Gone,
    /// The client took nothing for the idle timeout.
    Stalled,
}

/// Sends `op` to a client's stream, waiting at most `idle` for room.
async fn deliver(
    tx: &mpsc::Sender<Result<Operation, Status>>,
    idle: std::time::Duration,
    op: Operation,
) -> Sent {
    match tokio::time::timeout(idle, tx.send(Ok(op))).await {
        Ok(Ok(())) => Sent::Yes,
        Ok(Err(_)) => Sent::Gone,
        Err(_) => Sent::Stalled,
    }
}

/// The action-cache lookup: `Some` on a hit, `None` on a miss.
async fn lookup(
    exec: &Exec,
    instance: &str,
    ad: &Digest,
) -> Result<Option<reapi::ActionResult>, Status> {
    let get = reapi::GetActionResultRequest {
        instance_name: instance.to_string(),
        action_digest: Some(ad.to_reapi()),
        inline_stdout: false,
        inline_stderr: false,
        inline_output_files: vec![],
        digest_function: ad.function.to_reapi(),
    };
    match exec.upstream.ac().get_action_result(get).await {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(e) if e.code() == Code::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The effective timeout in seconds: the Action's, else the default; above
/// the maximum is refused.
fn timeout_of(action: &Action, s: &rbe_config::Execution) -> Result<u64, Status> {
    match action.timeout.as_ref() {
        None => Ok(s.default_timeout_secs),
        Some(t) if t.seconds < 0 || t.nanos < 0 => {
            Err(Status::invalid_argument("action timeout is negative"))
        }
        Some(t) if t.seconds == 0 && t.nanos == 0 => Ok(s.default_timeout_secs),
        Some(t) => {
            let secs = t.seconds as u64 + u64::from(t.nanos > 0);
            if secs > s.max_timeout_secs {
                return Err(Status::invalid_argument(format!(
                    "action timeout {secs} s exceeds this server's maximum of {} s",
                    s.max_timeout_secs
                )));
            }
            Ok(secs)
        }
    }
}

fn sched_status(e: SchedError) -> Status {
    match e {
        SchedError::QueueFull { retry_after, .. } => {
            rbe_proto::status::exhausted_retry(e.to_string(), retry_after)
        }
        SchedError::ClientQueueFull { retry_after, .. } => rbe_proto::status::exhausted_retry(
            format!("{e} (execution.max_queued_per_client)"),
            retry_after,
        ),
        SchedError::NoMatchingWorker { .. } => Status::failed_precondition(e.to_string()),
        SchedError::UnknownOperation(_) => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = OpStream;

    async fn execute(
        &self,
        req: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        if self.0.draining() {
            return Err(Status::unavailable("the server is stopping; retry"));
        }
        let digest = req
            .get_ref()
            .action_digest
            .as_ref()
            .map(access::digest_label);
        let shown = digest.as_ref().map(|d| d as &dyn std::fmt::Display);
        crate::access::check(
            &req,
            "Execute",
            &req.get_ref().instance_name,
            rbe_auth::Permission::Execute,
            shown,
        )?;
        let metadata = request_metadata(&req);
        let invocation = metadata.tool_invocation_id.clone();
        let owner = access::identity(&req);
        // Fair sharing is per identity, then per Bazel invocation.
        let tenant = Tenant::new(owner.name(), invocation.as_str());
        let req = req.into_inner();
        rbe_proto::resource::validate_instance(&req.instance_name).map_err(|r| {
            Status::invalid_argument(format!("instance name {:?}: {r}", req.instance_name))
        })?;
        let f = DigestFunction::from_reapi(req.digest_function)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ad = Digest::from_reapi_opt(f, req.action_digest.as_ref())
            .map_err(|e| Status::invalid_argument(format!("action_digest: {e}")))?;
        let exec = &self.0;
        let instance = req.instance_name.clone();
        let shared_key = super::results::action_key(&instance, &ad);
        let use_cache = !req.skip_cache_lookup;
        let origin = Origin {
            owner,
            instance: instance.clone(),
            action_digest: ad.to_reapi(),
            digest_function: f.to_reapi(),
        };

        // The identical action in flight, or just finished: nothing to read.
        // (A do_not_cache action is never found: its key is unique.)
        if let Some(j) = exec.join(&shared_key, &origin) {
            return Ok(Response::new(self.joined(j)));
        }
        if use_cache {
            if let Some(r) = exec.recent().get(&shared_key) {
                return Ok(Response::new(self.hit(shared_key, origin, &invocation, r)));
            }
        }

        let (cached, action_bytes) = tokio::join!(
            async {
                if use_cache {
                    lookup(exec, &instance, &ad).await
                } else {
                    Ok(None)
                }
            },
            fetch(exec, &instance, &ad, "action")
        );
        if let Some(r) = cached? {
            return Ok(Response::new(self.hit(shared_key, origin, &invocation, r)));
        }
        let action_bytes = action_bytes?;
        let action = Action::decode(action_bytes.as_slice())
            .map_err(|e| Status::invalid_argument(format!("action {ad} is not an Action: {e}")))?;
        let cd = Digest::from_reapi_opt(f, action.command_digest.as_ref())
            .map_err(|e| Status::invalid_argument(format!("command_digest: {e}")))?;
        Digest::from_reapi_opt(f, action.input_root_digest.as_ref())
            .map_err(|e| Status::invalid_argument(format!("input_root_digest: {e}")))?;
        let command_bytes = fetch(exec, &instance, &cd, "command").await?;
        let command = Command::decode(command_bytes.as_slice())
            .map_err(|e| Status::invalid_argument(format!("command {cd} is not a Command: {e}")))?;
        if command.arguments.is_empty() {
            return Err(Status::invalid_argument("command has no arguments"));
        }
        let timeout = timeout_of(&action, &exec.settings.load())?;
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
        let name = exec.operation_name(&instance);
        let payload_bytes = action_bytes.len() + command_bytes.len() + metadata.encoded_len();
        let assignment = Arc::new(Assignment {
            id: 0,
            operation: name.clone(),
            instance_name: instance.clone(),
            digest_function: f.to_reapi(),
            action_hash: ad.hex(),
            action_size: ad.size as i64,
            action: action_bytes,
            command: command_bytes,
            timeout_seconds: timeout as u32,
            invocation_id: invocation.clone(),
            queued_unix_micros: now_us,
            // Re-encoded: only the fields this frontend knows travel on.
            request_metadata: metadata.encode_to_vec(),
        });
        // REAPI: requests for a do_not_cache action must not be merged, so
        // such a key is unique to this request.
        let key = if action.do_not_cache {
            ActionKey {
                instance: instance.clone(),
                action: format!("{}:{ad}:{name}", f.name()),
            }
        } else {
            shared_key.clone()
        };
        // Submitting and registering in one step of the owner, so a
        // concurrent identical request finds the operation's handles. The
        // recent results are checked in it too: the action may have
        // completed while this request was reading, before its action-cache
        // write landed.
        let submitted = exec
            .submit(Submission {
                key,
                shared_key: shared_key.clone(),
                use_recent: use_cache && !action.do_not_cache,
                platform,
                priority,
                tenant,
                assignment,
                origin: origin.clone(),
                name: name.clone(),
                do_not_cache: action.do_not_cache,
                invocation_id: invocation.clone(),
                payload_bytes,
            })
            .map_err(sched_status)?;
        let stream = match submitted {
            Submitted::Recent(r) => self.hit(shared_key, origin, &invocation, *r),
            Submitted::Joined(a) => self.joined(a),
            Submitted::New(a) => {
                tracing::debug!(action_digest = %ad, operation = %name, invocation_id = %invocation, "action queued");
                self.stream(a, use_cache)
            }
        };
        Ok(Response::new(stream))
    }

    type WaitExecutionStream = OpStream;

    async fn wait_execution(
        &self,
        req: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let who = access::identity(&req);
        let name = req.into_inner().name;
        // Bazel executes again on NOT_FOUND (an unknown name, or a holder
        // that restarted or left): every such answer keeps exactly that
        // code, the holder's included.
        if let Route::Forward(r) = route(&self.0, &name)? {
            return Ok(Response::new(forward::wait(&r, &name, &who, false).await?));
        }
        Ok(Response::new(self.wait_stream(&name, &who)?))
    }
}
