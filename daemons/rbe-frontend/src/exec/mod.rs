//! Remote execution in the frontend: the scheduler (`rbe-sched`) behind a
//! mutex, the public Execution and Operations services, and the worker hub
//! that rbe-workerd attaches to.
//!
//! Every operation has a `watch` channel holding its latest snapshot; the
//! Execute/WaitExecution streams and WaitOperation read from it. Scheduler
//! decisions are carried out here: assignments are sent to workers,
//! cancellations become Cancel messages, results become ExecuteResponses and
//! (exit 0, cacheable) action-cache entries.

pub mod execution;
pub mod hub;
pub mod operations;

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
use rbe_sched::{CancelEffect, OpId, Outcome, SchedConfig, Scheduler, SystemClock, WorkerId};
use tokio::sync::{mpsc, watch};

use crate::proxy::Upstream;

/// What a client sees of an operation at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// REAPI ExecutionStage.Value.
    pub stage: i32,
    /// The final response, once done.
    pub response: Option<ExecuteResponse>,
}

/// Per-operation facts the scheduler does not keep.
pub struct OpInfo {
    pub name: String,
    pub action_digest: reapi::Digest,
    pub digest_function: i32,
    pub instance: String,
    pub do_not_cache: bool,
    pub watch: watch::Sender<Snapshot>,
}

/// The execution state shared by the services.
pub struct Exec {
    pub sched: Mutex<Scheduler<Arc<Assignment>, Finished>>,
    pub ops: Mutex<HashMap<OpId, OpInfo>>,
    pub names: Mutex<HashMap<String, OpId>>,
    pub workers: Mutex<HashMap<WorkerId, mpsc::UnboundedSender<HubMessage>>>,
    pub upstream: Upstream,
    pub settings: ExecSettings,
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
    pub fn new(upstream: Upstream, settings: ExecSettings) -> Arc<Self> {
        let cfg = SchedConfig {
            max_queued: settings.max_queued as usize,
            retry_after: Duration::from_secs(1),
            retention: Duration::from_secs(settings.operation_retention_secs),
            max_completed: 100_000,
            unmatchable_grace: Duration::from_secs(settings.unmatchable_grace_secs),
        };
        Arc::new(Exec {
            sched: Mutex::new(Scheduler::new(cfg, Arc::new(SystemClock::default()))),
            ops: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            workers: Mutex::new(HashMap::new()),
            upstream,
            settings,
        })
    }

    /// Sends every possible assignment to its worker.
    pub fn dispatch(&self) {
        // Assignments are sent while the scheduler is locked, so a Cancel
        // decided afterwards can never overtake its Assign on the stream.
        let mut sched = self.sched.lock();
        let assignments = sched.next_assignments();
        let mut sent_ops = Vec::with_capacity(assignments.len());
        for a in assignments {
            let mut msg = (*a.payload).clone();
            msg.id = a.op;
            let sent = self.workers.lock().get(&a.worker).is_some_and(|tx| {
                tx.send(HubMessage {
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
                tracing::info!(operation = %self.op_name(a.op), worker = a.worker, queued_ms = a.queued_for.as_millis() as u64, "action assigned");
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

    fn set_stage(&self, id: OpId, stage: execution_stage::Value) {
        if let Some(o) = self.ops.lock().get(&id) {
            o.watch.send_modify(|s| {
                if s.response.is_none() {
                    s.stage = stage as i32;
                }
            });
        }
    }

    /// Marks an operation done with `response`.
    pub fn complete(&self, id: OpId, response: ExecuteResponse) {
        if let Some(o) = self.ops.lock().get(&id) {
            o.watch.send_modify(|s| {
                s.stage = execution_stage::Value::Completed as i32;
                s.response = Some(response);
            });
        }
    }

    /// Carries out a cancellation decided by the scheduler.
    pub fn apply_cancel(&self, id: OpId, effect: CancelEffect) {
        if effect == CancelEffect::None {
            return;
        }
        if let CancelEffect::Kill(w) = effect {
            if let Some(tx) = self.workers.lock().get(&w) {
                let _ = tx.send(HubMessage {
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

    /// A worker finished an assignment.
    pub async fn finished(&self, w: WorkerId, f: Finished) {
        let id = f.id;
        let accepted = self.sched.lock().complete(id, w, f.clone());
        self.dispatch();
        if !accepted {
            return; // cancelled or re-queued meanwhile
        }
        let result = if f.action_result.is_empty() {
            None
        } else {
            ActionResult::decode(f.action_result.as_slice()).ok()
        };
        // An action that ran (OK) may still carry the worker's note about
        // it (OOM kill, task limit): that goes to ExecuteResponse.message.
        let ran = f.code == 0;
        let status_message = if ran {
            String::new()
        } else {
            f.message.clone()
        };
        let mut status = rpc_status(tonic::Code::from_i32(f.code), status_message);
        if f.code == tonic::Code::FailedPrecondition as i32 && !f.missing.is_empty() {
            let pf = rbe_proto::rpc::PreconditionFailure {
                violations: f
                    .missing
                    .iter()
                    .map(|m| rbe_proto::rpc::precondition_failure::Violation {
                        r#type: "MISSING".into(),
                        subject: format!("blobs/{m}"),
                        description: "input not in the CAS".into(),
                    })
                    .collect(),
            };
            status.details.push(Any {
                type_url: "type.googleapis.com/google.rpc.PreconditionFailure".into(),
                value: pf.encode_to_vec(),
            });
        }
        let (instance, digest, function, do_not_cache) = match self.ops.lock().get(&id) {
            Some(o) => (
                o.instance.clone(),
                o.action_digest.clone(),
                o.digest_function,
                o.do_not_cache,
            ),
            None => return,
        };
        if let Some(ar) = result.as_ref() {
            if f.code == 0 && ar.exit_code == 0 && !do_not_cache {
                let req = reapi::UpdateActionResultRequest {
                    instance_name: instance,
                    action_digest: Some(digest),
                    action_result: Some(ar.clone()),
                    results_cache_policy: None,
                    digest_function: function,
                };
                if let Err(e) = self.upstream.ac().update_action_result(req).await {
                    tracing::warn!(operation = %self.op_name(id), error = %e, "could not store the action result");
                }
            }
        }
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
                .filter(|(_, o)| o.watch.borrow().response.is_none())
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
            let open = self
                .ops
                .lock()
                .get(&id)
                .is_some_and(|o| o.watch.borrow().response.is_none());
            if open {
                self.complete(
                    id,
                    ExecuteResponse {
                        status: Some(rpc_status(
                            tonic::Code::Unavailable,
                            "the server is shutting down; retry",
                        )),
                        ..Default::default()
                    },
                );
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
        let mut ops = self.ops.lock();
        let gone: Vec<OpId> = ops
            .keys()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        let mut names = self.names.lock();
        for id in gone {
            if let Some(o) = ops.remove(&id) {
                names.remove(&o.name);
            }
        }
    }

    /// Looks an operation up by name.
    pub fn lookup(&self, name: &str) -> Option<OpId> {
        self.names.lock().get(name).copied()
    }
}
