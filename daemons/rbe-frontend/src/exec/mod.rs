//! Remote execution in the frontend: the scheduler (`rbe-sched`) behind a
//! mutex, the public Execution and Operations services, and the worker hub
//! that rbe-workerd attaches to.
//!
//! An execution (the scheduler's operation, `OpId`) is one run of an
//! action, shared by every identical request; each request holds its own
//! operation handle ([`handles`]): the name the client sees, its owner, and
//! a `watch` channel with its latest snapshot, which the Execute and
//! WaitExecution streams and WaitOperation read. Scheduler decisions are
//! carried out here: assignments are sent to workers, cancellations become
//! Cancel messages, results become ExecuteResponses for every handle and
//! (exit 0, cacheable) action-cache entries, written in the background by
//! [`results`].
//!
//! Operation names carry their instance, `{instance}/operations/{uuid}`
//! (`operations/{uuid}` for the empty instance), so a name only ever finds
//! an operation of the instance it names.

pub mod execution;
pub mod handles;
pub mod hub;
pub mod operations;
pub mod results;
pub mod retained;

#[cfg(test)]
mod owner_tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prost::Message;
use rbe_config::Execution as ExecSettings;
use rbe_proto::longrunning::{operation, Operation};
use rbe_proto::reapi::{
    self, execution_stage, ActionResult, ExecuteOperationMetadata, ExecuteResponse,
};
use rbe_proto::wkt::Any;
use rbe_proto::worker::{hub_message, Assignment, Cancel, Finished, HubMessage};
use rbe_sched::{
    ActionKey, CancelEffect, OpId, Outcome, SchedConfig, Scheduler, Stage, SystemClock, WorkerId,
};
use tokio::sync::mpsc;

use crate::proxy::Upstream;
use results::RecentResults;

/// What a client sees of an operation at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// REAPI ExecutionStage.Value.
    pub stage: i32,
    /// The final response, once done.
    pub response: Option<ExecuteResponse>,
}

/// Per-execution facts the scheduler does not keep.
pub struct OpInfo {
    /// The name of the handle that submitted it, for log lines and the
    /// worker.
    pub name: String,
    pub action_digest: reapi::Digest,
    pub digest_function: i32,
    pub instance: String,
    pub do_not_cache: bool,
    pub invocation_id: String,
    /// Who submitted it: the action-cache write of its result is theirs in
    /// the audit trail.
    pub client: rbe_auth::Identity,
    /// Its handles have been given its final response.
    pub done: bool,
}

/// A connected worker: where its messages go, and its name for log lines.
pub struct WorkerLink {
    pub tx: mpsc::UnboundedSender<HubMessage>,
    pub name: String,
}

/// The execution state shared by the services.
///
/// Lock order: `sched`, `ops`, `handles`; `workers` is taken alone or
/// last (under `sched`).
pub struct Exec {
    /// Who may see and cancel other clients' operations.
    pub access: Arc<crate::access::Access>,
    /// The scheduler keeps no results: the handles' watch channels hold them.
    pub sched: Mutex<Scheduler<Arc<Assignment>, ()>>,
    pub ops: Mutex<HashMap<OpId, OpInfo>>,
    /// Every client's operation handles, and what they keep.
    pub handles: handles::Handles,
    pub workers: Mutex<HashMap<WorkerId, WorkerLink>>,
    /// Results not yet (or only just) in the action cache.
    pub recent: Arc<RecentResults>,
    pub upstream: Upstream,
    /// Swapped whole by a reload.
    pub settings: arc_swap::ArcSwap<ExecSettings>,
    /// Set when a stop began: no new work is taken or assigned.
    draining: std::sync::atomic::AtomicBool,
}

fn sched_config(settings: &ExecSettings) -> SchedConfig {
    SchedConfig {
        max_queued: settings.max_queued as usize,
        max_queued_per_client: settings.max_queued_per_client as usize,
        retry_after: Duration::from_secs(1),
        retention: Duration::from_secs(settings.operation_retention_secs),
        max_completed: 100_000,
        unmatchable_grace: Duration::from_secs(settings.unmatchable_grace_secs),
    }
}

/// A fresh operation name for `instance`, as REAPI suggests.
pub fn new_operation_name(instance: &str) -> String {
    let id = uuid::Uuid::new_v4();
    if instance.is_empty() {
        format!("operations/{id}")
    } else {
        format!("{instance}/operations/{id}")
    }
}

/// The instance an operation name belongs to: what precedes its
/// `operations` segment (a reserved word, never part of an instance name).
pub fn instance_of_name(name: &str) -> Option<&str> {
    if name.starts_with("operations/") {
        return Some("");
    }
    name.split_once("/operations/").map(|(i, _)| i)
}

const METADATA_TYPE: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata";
const RESPONSE_TYPE: &str = "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse";

/// A `google.rpc.Status` for an ExecuteResponse.
pub fn rpc_status(code: tonic::Code, message: impl Into<String>) -> rbe_proto::rpc::Status {
    rbe_proto::rpc::Status {
        code: code as i32,
        message: message.into(),
        details: vec![],
    }
}

/// The input blobs a worker reported missing (`<hash>/<size>`), for a
/// FAILED_PRECONDITION report; entries that do not parse are logged.
fn missing_inputs(function: i32, f: &Finished) -> Vec<rbe_proto::Digest> {
    if f.code != tonic::Code::FailedPrecondition as i32 {
        return vec![];
    }
    let Ok(function) = rbe_proto::DigestFunction::from_reapi(function) else {
        return vec![];
    };
    f.missing
        .iter()
        .filter_map(|m| {
            let parsed = m.split_once('/').and_then(|(hash, size)| {
                let size = size.parse().ok()?;
                rbe_proto::Digest::parse(function, hash, size).ok()
            });
            if parsed.is_none() {
                tracing::warn!(digest = %m, "worker reported a malformed missing digest");
            }
            parsed
        })
        .collect()
}

/// An ExecuteResponse telling the client to retry.
fn unavailable(message: &str) -> ExecuteResponse {
    ExecuteResponse {
        status: Some(rpc_status(tonic::Code::Unavailable, message)),
        ..Default::default()
    }
}

/// Builds the longrunning Operation for a snapshot.
pub fn operation(
    name: &str,
    action_digest: &reapi::Digest,
    digest_function: i32,
    s: &Snapshot,
) -> Operation {
    let md = ExecuteOperationMetadata {
        stage: s.stage,
        action_digest: Some(action_digest.clone()),
        digest_function,
        ..Default::default()
    };
    Operation {
        name: name.to_string(),
        metadata: Some(Any {
            type_url: METADATA_TYPE.into(),
            value: md.encode_to_vec(),
        }),
        done: s.response.is_some(),
        result: s.response.as_ref().map(|r| {
            operation::Result::Response(Any {
                type_url: RESPONSE_TYPE.into(),
                value: r.encode_to_vec(),
            })
        }),
    }
}

impl Exec {
    /// A new execution state.
    pub fn new(
        upstream: Upstream,
        settings: ExecSettings,
        access: Arc<crate::access::Access>,
    ) -> Arc<Self> {
        Arc::new(Exec {
            access,
            sched: Mutex::new(Scheduler::new(
                sched_config(&settings),
                Arc::new(SystemClock::default()),
            )),
            ops: Mutex::new(HashMap::new()),
            handles: handles::Handles::default(),
            workers: Mutex::new(HashMap::new()),
            recent: Arc::new(RecentResults::start(upstream.clone())),
            upstream,
            settings: arc_swap::ArcSwap::from_pointee(settings),
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Applies reloaded `[execution]` settings to operations queued from
    /// now on.
    pub fn reconfigure(&self, settings: ExecSettings) {
        self.sched.lock().set_config(sched_config(&settings));
        self.settings.store(Arc::new(settings));
    }

    /// Records an action-cache hit as a completed execution with one
    /// handle, owned by `origin.owner` (so GetOperation and WaitExecution
    /// find it until it expires), and returns the handle's name.
    pub fn record_hit(
        &self,
        key: ActionKey,
        origin: handles::Origin,
        invocation_id: &str,
        response: ExecuteResponse,
    ) -> String {
        let name = new_operation_name(&key.instance);
        {
            let mut sched = self.sched.lock();
            let id = sched.record_completed(key, Arc::new(Assignment::default()));
            self.ops.lock().insert(
                id,
                OpInfo {
                    name: name.clone(),
                    action_digest: origin.action_digest.clone(),
                    digest_function: origin.digest_function,
                    instance: origin.instance.clone(),
                    do_not_cache: false,
                    invocation_id: invocation_id.to_string(),
                    client: origin.owner.clone(),
                    done: true,
                },
            );
            self.handles.open_done(name.clone(), id, origin, response);
        }
        self.enforce_retention();
        name
    }

    /// Forgets the oldest handles nobody streams while they keep more than
    /// `execution.max_retained_bytes` (they look expired from then on),
    /// and the completed executions left without a handle. Called with no
    /// lock held.
    pub fn enforce_retention(&self) {
        let max = self.settings.load().max_retained_bytes;
        let orphans = self
            .handles
            .evict_over(usize::try_from(max).unwrap_or(usize::MAX));
        if orphans.is_empty() {
            return;
        }
        self.forget(&orphans);
        tracing::debug!(
            forgotten = orphans.len(),
            max_retained_bytes = max,
            "completed operations forgotten early: retained bytes over the limit"
        );
    }

    /// Forgets executions that have no handle left, once completed (a
    /// running one has waiters, so handles).
    pub fn forget(&self, execs: &[OpId]) {
        let mut sched = self.sched.lock();
        let mut ops = self.ops.lock();
        for id in execs {
            if sched.forget(*id) {
                ops.remove(id);
            }
        }
    }

    /// Handles retained now, and the bytes they keep.
    pub fn retained(&self) -> (usize, usize) {
        self.handles.retained()
    }

    /// Whether a stop has begun (see [`Exec::begin_drain`]).
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A stop's first step: no new work. Queued operations end UNAVAILABLE
    /// at once (clients retry, on this host's next frontend or elsewhere);
    /// executing ones go on, and their workers still report.
    pub fn begin_drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
        let queued: Vec<OpId> = {
            let mut sched = self.sched.lock();
            let ids: Vec<OpId> = sched
                .ids()
                .into_iter()
                .filter(|id| sched.get(*id).is_some_and(|v| v.stage == Stage::Queued))
                .collect();
            for id in &ids {
                let _ = sched.cancel(*id);
            }
            ids
        };
        for id in queued {
            self.complete(id, unavailable("the server is stopping; retry"));
        }
    }

    /// Operations running on a worker now.
    pub fn executing(&self) -> usize {
        self.sched.lock().counts().executing
    }

    /// Sends every possible assignment to its worker.
    pub fn dispatch(&self) {
        if self.draining() {
            return;
        }
        // Assignments are sent while the scheduler is locked, so a Cancel
        // decided afterwards can never overtake its Assign on the stream.
        let mut sched = self.sched.lock();
        let assignments = sched.next_assignments();
        let mut sent_ops = Vec::with_capacity(assignments.len());
        for a in assignments {
            let mut msg = (*a.payload).clone();
            msg.id = a.op;
            let sent = self.workers.lock().get(&a.worker).is_some_and(|l| {
                l.tx.send(HubMessage {
                    kind: Some(hub_message::Kind::Assign(msg)),
                })
                .is_ok()
            });
            sent_ops.push((a, sent));
        }
        drop(sched);
        for (a, sent) in sent_ops {
            if sent {
                self.set_stage(a.op, execution_stage::Value::Executing);
                tracing::debug!(operation = %self.op_name(a.op), worker = a.worker, queued_ms = a.queued_for.as_millis() as u64, "action assigned");
            }
            // If the send failed the worker's stream is closing; its
            // disconnect re-queues the operation.
        }
    }

    fn op_name(&self, id: OpId) -> String {
        self.ops
            .lock()
            .get(&id)
            .map(|o| o.name.clone())
            .unwrap_or_default()
    }

    /// Shows `stage` to the execution's handles (back to QUEUED too, when
    /// its worker was lost), unless they are done.
    pub fn set_stage(&self, id: OpId, stage: execution_stage::Value) {
        self.handles.set_stage(id, stage);
    }

    /// Marks an execution done with `response`, for every handle still
    /// following it.
    ///
    /// The streams waiting now get the whole response; what stays for
    /// later readers is a copy without inlined payloads, counted against
    /// `execution.max_retained_bytes`.
    pub fn complete(&self, id: OpId, response: ExecuteResponse) {
        {
            let mut ops = self.ops.lock();
            let Some(o) = ops.get_mut(&id) else { return };
            if o.done {
                return;
            }
            o.done = true;
        }
        // No handle joins a completed execution, so none can miss this.
        self.handles.complete(id, &response);
        self.enforce_retention();
    }

    /// Carries out a cancellation decided by the scheduler.
    pub fn apply_cancel(&self, id: OpId, effect: CancelEffect) {
        if effect == CancelEffect::None {
            return;
        }
        if let CancelEffect::Kill(w) = effect {
            if let Some(l) = self.workers.lock().get(&w) {
                let _ = l.tx.send(HubMessage {
                    kind: Some(hub_message::Kind::Cancel(Cancel { id })),
                });
            }
        }
        tracing::info!(operation = %self.op_name(id), "operation cancelled");
        self.complete(
            id,
            ExecuteResponse {
                status: Some(rpc_status(tonic::Code::Cancelled, "operation cancelled")),
                ..Default::default()
            },
        );
    }

    /// A worker finished an assignment. Nothing here waits: the waiters are
    /// answered at once and the action-cache write is queued to
    /// [`RecentResults`], so the worker's next report is handled right away.
    pub fn finished(&self, w: WorkerId, f: Finished) {
        let id = f.id;
        let result = if f.action_result.is_empty() {
            None
        } else {
            ActionResult::decode(f.action_result.as_slice()).ok()
        };
        let cacheable = f.code == 0 && result.as_ref().is_some_and(|r| r.exit_code == 0);
        let (info, function) = {
            let mut sched = self.sched.lock();
            let key = sched.get(id).map(|v| v.key.clone());
            if !sched.complete(id, w, ()) {
                drop(sched);
                self.dispatch();
                return; // cancelled or re-queued meanwhile
            }
            let ops = self.ops.lock();
            let Some(o) = ops.get(&id) else {
                drop((ops, sched));
                self.dispatch();
                return;
            };
            // Still under the scheduler lock: an identical request sees the
            // action either in flight or among the recent results.
            if let (true, false, Some(key), Some(ar)) =
                (cacheable, o.do_not_cache, key, result.as_ref())
            {
                tracing::info!(
                    client = %o.client,
                    client_via = o.client.via().as_str(),
                    instance_name = %o.instance,
                    digest = %crate::access::digest_label(&o.action_digest),
                    operation = %o.name,
                    invocation_id = %o.invocation_id,
                    "action cache written with an executed action's result"
                );
                self.recent.put(
                    key,
                    o.name.clone(),
                    reapi::UpdateActionResultRequest {
                        instance_name: o.instance.clone(),
                        action_digest: Some(o.action_digest.clone()),
                        action_result: Some(ar.clone()),
                        results_cache_policy: None,
                        digest_function: o.digest_function,
                    },
                );
            }
            (
                (
                    o.name.clone(),
                    o.action_digest.clone(),
                    o.invocation_id.clone(),
                ),
                o.digest_function,
            )
        };
        self.dispatch();
        // An action that ran (OK) may still carry the worker's note about
        // it (OOM kill, task limit): that goes to ExecuteResponse.message.
        let ran = f.code == 0;
        let status_message = if ran {
            String::new()
        } else {
            f.message.clone()
        };
        let missing = missing_inputs(function, &f);
        let status = if missing.is_empty() {
            rpc_status(tonic::Code::from_i32(f.code), status_message)
        } else {
            // Bazel re-uploads what the violations name and retries.
            rbe_proto::status::missing_blobs_rpc("input", &missing)
        };
        let worker_name = self
            .workers
            .lock()
            .get(&w)
            .map(|l| l.name.clone())
            .unwrap_or_default();
        log_completed((w, &worker_name), &info, f.code, result.as_ref());
        let message = if ran && !f.message.is_empty() {
            f.message.clone()
        } else if f.oom_killed {
            "the action was killed: out of memory".to_string()
        } else {
            String::new()
        };
        self.complete(
            id,
            ExecuteResponse {
                result,
                cached_result: false,
                status: Some(status),
                server_logs: HashMap::new(),
                message,
            },
        );
    }

    /// Ends, with ABORTED, operations the scheduler gave up on after they
    /// lost their worker too often.
    pub fn complete_given_up(&self) {
        let given_up: Vec<(OpId, String)> = {
            let sched = self.sched.lock();
            let ops = self.ops.lock();
            ops.iter()
                .filter(|(_, o)| !o.done)
                .filter_map(|(id, _)| match sched.get(*id).and_then(|v| v.outcome) {
                    Some(Outcome::Failed(m)) => Some((*id, m.clone())),
                    _ => None,
                })
                .collect()
        };
        for (id, m) in given_up {
            self.complete(
                id,
                ExecuteResponse {
                    status: Some(rpc_status(tonic::Code::Aborted, m)),
                    ..Default::default()
                },
            );
        }
    }

    /// Shutdown: workers are let go (their streams end) and every operation
    /// not yet done ends UNAVAILABLE, so no client stream holds the drain.
    pub fn shutdown(&self) {
        self.workers.lock().clear();
        let ops: Vec<OpId> = self.ops.lock().keys().copied().collect();
        for id in ops {
            let open = self.ops.lock().get(&id).is_some_and(|o| !o.done);
            if open {
                self.complete(id, unavailable("the server is shutting down; retry"));
            }
        }
    }

    /// Periodic work: fail unrunnable actions, forget expired operations.
    pub fn tick(&self) {
        let failed = self.sched.lock().tick();
        for id in failed {
            let msg = match self.sched.lock().get(id).and_then(|v| v.outcome.cloned()) {
                Some(Outcome::Failed(m)) => m,
                _ => "no worker can run this action".into(),
            };
            self.complete(
                id,
                ExecuteResponse {
                    status: Some(rpc_status(tonic::Code::FailedPrecondition, msg)),
                    ..Default::default()
                },
            );
        }
        let live: std::collections::HashSet<OpId> = self.sched.lock().ids().into_iter().collect();
        self.ops.lock().retain(|id, _| live.contains(id));
        // Handles go with their execution.
        self.handles.retain_execs(|id| live.contains(&id));
        self.recent.expire();
    }
}

fn ms(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| d.as_millis() as u64)
}

fn between(
    a: Option<&rbe_proto::wkt::Timestamp>,
    b: Option<&rbe_proto::wkt::Timestamp>,
) -> Option<Duration> {
    let us = |t: &rbe_proto::wkt::Timestamp| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000;
    let d = us(b?) - us(a?);
    u64::try_from(d).ok().map(Duration::from_micros)
}

/// The one INFO line per executed action an operator reads; field names as
/// in rbe-workerd's "action finished" line.
fn log_completed(
    (w, worker_name): (WorkerId, &str),
    (operation, digest, invocation): &(String, reapi::Digest, String),
    code: i32,
    result: Option<&ActionResult>,
) {
    let md = result.and_then(|r| r.execution_metadata.as_ref());
    let span =
        |a: fn(&reapi::ExecutedActionMetadata) -> Option<&rbe_proto::wkt::Timestamp>,
         b: fn(&reapi::ExecutedActionMetadata) -> Option<&rbe_proto::wkt::Timestamp>| {
            md.and_then(|m| between(a(m), b(m)))
        };
    tracing::info!(
        operation = %operation,
        action_digest = %format_args!("{}/{}", digest.hash, digest.size_bytes),
        invocation_id = %invocation,
        worker = w,
        worker_name = worker_name,
        code = code,
        exit_code = result.map_or(-1, |r| r.exit_code),
        queued_ms = ms(span(|m| m.queued_timestamp.as_ref(), |m| m.worker_start_timestamp.as_ref())),
        execution_ms = ms(span(|m| m.execution_start_timestamp.as_ref(), |m| m.execution_completed_timestamp.as_ref())),
        worker_ms = ms(span(|m| m.worker_start_timestamp.as_ref(), |m| m.worker_completed_timestamp.as_ref())),
        "action completed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_carry_their_instance() {
        let n = new_operation_name("");
        assert!(n.starts_with("operations/"), "{n}");
        assert_eq!(instance_of_name(&n), Some(""));
        let n = new_operation_name("a/b");
        assert!(n.starts_with("a/b/operations/"), "{n}");
        assert_eq!(instance_of_name(&n), Some("a/b"));
        assert_eq!(instance_of_name("nonsense"), None);
    }
}
