//! The owner's state and the methods the Execution and Operations services
//! call; see the module documentation of [`super`] for the one lock and
//! what may happen under it. Worker links and their reports are in
//! [`super::workers`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rbe_auth::Identity;
use rbe_proto::longrunning::Operation;
use rbe_proto::reapi::{execution_stage, ActionResult, ExecuteResponse};
use rbe_proto::worker::Assignment;
use rbe_sched::{
    ActionKey, CancelEffect, Counts, OpId, Outcome, Platform, SchedError, Scheduler, Stage, Tenant,
    WorkerId,
};
use tokio::sync::watch;

use super::handles::{Attached, Caller, HandleError, HandleId, Handles, Origin, Wake};
use super::workers::WorkerLink;
use super::{rpc_status, Exec, Snapshot};

/// Per-execution facts the scheduler does not keep.
pub(super) struct OpInfo {
    /// The name of the handle that submitted it, for log lines and the
    /// worker.
    pub(super) name: String,
    /// Who submitted what: the action-cache write of its result is the
    /// submitter's in the audit trail.
    pub(super) origin: Origin,
    pub(super) do_not_cache: bool,
    pub(super) invocation_id: String,
    /// Run here for another host of the cluster, which writes the action
    /// cache entry itself: never offloaded again, never cached here.
    pub(super) hosted: bool,
    /// Its handles have been given its final response.
    pub(super) done: bool,
}

/// Everything about operations, behind `Exec`'s one lock.
pub struct State {
    /// The scheduler keeps no results: the handles' watch channels do.
    pub(super) sched: Scheduler<Arc<Assignment>, ()>,
    pub(super) ops: HashMap<OpId, OpInfo>,
    pub(super) handles: Handles,
    /// Where each of the scheduler's workers is reached.
    pub(super) links: HashMap<WorkerId, Box<dyn WorkerLink>>,
    /// A stop began: nothing new is taken or assigned.
    pub(super) draining: bool,
}

/// What is carried out after the lock is released, in [`Effects::apply`].
#[derive(Default)]
#[must_use]
pub(super) struct Effects {
    /// Final responses for the streams of handles just made done.
    pub(super) wakes: Vec<Wake>,
    /// Handles forgotten for bytes, and the bound.
    forgotten: Option<(usize, u64)>,
}

impl Effects {
    fn apply(self) {
        for w in self.wakes {
            w.send();
        }
        if let Some((forgotten, max)) = self.forgotten {
            tracing::debug!(
                forgotten,
                max_retained_bytes = max,
                "completed operations forgotten early: retained bytes over the limit"
            );
        }
    }
}

fn status_response(code: tonic::Code, message: impl Into<String>) -> ExecuteResponse {
    ExecuteResponse {
        status: Some(rpc_status(code, message)),
        ..Default::default()
    }
}

/// The REAPI stage of an execution in flight.
fn stage_value(s: Stage) -> execution_stage::Value {
    match s {
        Stage::Queued => execution_stage::Value::Queued,
        Stage::Executing => execution_stage::Value::Executing,
        Stage::Completed => execution_stage::Value::Completed,
    }
}

impl State {
    pub(super) fn new(sched: Scheduler<Arc<Assignment>, ()>) -> State {
        State {
            sched,
            ops: HashMap::new(),
            handles: Handles::default(),
            links: HashMap::new(),
            draining: false,
        }
    }

    /// Sends every possible assignment to its worker. Sent under the lock,
    /// so a Cancel decided afterwards can never overtake its Assign.
    pub(super) fn dispatch(&mut self) {
        if self.draining {
            return;
        }
        for a in self.sched.next_assignments() {
            let mut msg = (*a.payload).clone();
            msg.id = a.op;
            // If the send fails the link is closing; its detach re-queues
            // the operation.
            if self.links.get(&a.worker).is_some_and(|l| l.assign(msg)) {
                self.handles
                    .set_stage(a.op, execution_stage::Value::Executing);
                tracing::debug!(operation = %self.op_name(a.op), worker = a.worker, queued_ms = a.queued_for.as_millis() as u64, "action assigned");
            }
        }
    }

    pub(super) fn op_name(&self, id: OpId) -> &str {
        self.ops.get(&id).map_or("", |o| o.name.as_str())
    }

    /// Marks an execution done with `response` for every handle still
    /// following it (once: later calls change nothing).
    pub(super) fn complete(&mut self, id: OpId, response: ExecuteResponse, fx: &mut Effects) {
        let Some(o) = self.ops.get_mut(&id) else {
            return;
        };
        if o.done {
            return;
        }
        o.done = true;
        // No handle joins a completed execution, so none can miss this.
        self.handles
            .complete(id, &Arc::new(response), &mut fx.wakes);
    }

    /// Carries out a cancellation decided by the scheduler.
    pub(super) fn apply_cancel(&mut self, id: OpId, effect: CancelEffect, fx: &mut Effects) {
        if effect == CancelEffect::None {
            return;
        }
        if let CancelEffect::Kill(w) = effect {
            if let Some(l) = self.links.get(&w) {
                l.cancel(id);
            }
        }
        tracing::info!(operation = %self.op_name(id), "operation cancelled");
        let cancelled = status_response(tonic::Code::Cancelled, "operation cancelled");
        self.complete(id, cancelled, fx);
    }

    /// Ends, with ABORTED, operations the scheduler gave up on after they
    /// lost their worker too often.
    pub(super) fn complete_given_up(&mut self, fx: &mut Effects) {
        let given_up: Vec<(OpId, String)> = self
            .ops
            .iter()
            .filter(|(_, o)| !o.done)
            .filter_map(
                |(id, _)| match self.sched.get(*id).and_then(|v| v.outcome) {
                    Some(Outcome::Failed(m)) => Some((*id, m.clone())),
                    _ => None,
                },
            )
            .collect();
        for (id, m) in given_up {
            self.complete(id, status_response(tonic::Code::Aborted, m), fx);
        }
    }

    /// Forgets executions that have no handle left, once completed (a
    /// running one has waiters, so handles).
    fn forget(&mut self, execs: &[OpId]) {
        for id in execs {
            if self.sched.forget(*id) {
                self.ops.remove(id);
            }
        }
    }

    /// Forgets the oldest handles nobody streams while they keep more than
    /// `max` bytes (they look expired from then on), and the completed
    /// executions left without a handle.
    fn enforce_retention(&mut self, max: u64, fx: &mut Effects) {
        let orphans = self
            .handles
            .evict_over(usize::try_from(max).unwrap_or(usize::MAX));
        if !orphans.is_empty() {
            self.forget(&orphans);
            fx.forgotten = Some((orphans.len(), max));
        }
    }

    /// Opens a handle on the execution `id`, in flight, that this request
    /// joined (it is one more waiter already).
    fn open_joined(&mut self, id: OpId, origin: Origin, name: String) -> Attached {
        let stage = self
            .sched
            .get(id)
            .map_or(execution_stage::Value::Queued, |v| stage_value(v.stage));
        self.handles.open(name, id, origin, stage, 0)
    }
}

/// An action to queue (Execute, after its Action and Command were read).
pub struct Submission {
    /// The scheduler's key: the shared key, or one unique to this request
    /// for a `do_not_cache` action (REAPI: never merged).
    pub key: ActionKey,
    /// The key recent results are kept under.
    pub shared_key: ActionKey,
    /// Answer from a recent result under `shared_key` if there is one
    /// (not for `skip_cache_lookup` or `do_not_cache`).
    pub use_recent: bool,
    /// What a worker must offer.
    pub platform: Platform,
    /// REAPI priority (lower first).
    pub priority: i32,
    /// Who it is accounted to.
    pub tenant: Tenant,
    /// What the worker is sent (its `id` is set when assigned).
    pub assignment: Arc<Assignment>,
    /// The submitting request.
    pub origin: Origin,
    /// The submitting handle's name (also in `assignment`).
    pub name: String,
    /// Not to be cached, nor merged.
    pub do_not_cache: bool,
    /// Bazel's invocation id.
    pub invocation_id: String,
    /// The Action and Command bytes, charged to the submitting handle.
    pub payload_bytes: usize,
}

/// What a [`Submission`] came to.
pub enum Submitted {
    /// A new execution, with the submitter's handle.
    New(Attached),
    /// The identical action was in flight after all.
    Joined(Attached),
    /// The action completed while this request read it, and its
    /// action-cache write has not landed yet: answer it as a hit.
    Recent(Box<ActionResult>),
}

impl Exec {
    /// Runs `f` under the one lock, then enforces the retention bound
    /// (still under it) and carries out the effects (after it).
    pub(super) fn run<R>(&self, f: impl FnOnce(&mut State, &mut Effects) -> R) -> R {
        let max = self.settings.load().max_retained_bytes;
        let mut fx = Effects::default();
        let r = {
            let mut st = self.state.lock();
            let r = f(&mut st, &mut fx);
            st.enforce_retention(max, &mut fx);
            r
        };
        fx.apply();
        r
    }

    /// Joins the identical action in flight, if any, with a new handle
    /// for `origin` (already one of the execution's waiters).
    pub fn join(&self, key: &ActionKey, origin: &Origin) -> Option<Attached> {
        self.run(|st, _| {
            let id = st.sched.join(key)?;
            Some(st.open_joined(id, origin.clone(), self.operation_name(&origin.instance)))
        })
    }

    /// Queues an action, or joins the identical one in flight, or answers
    /// from a result that just completed; all under one lock, so a
    /// concurrent identical request finds exactly one of them.
    pub fn submit(&self, s: Submission) -> Result<Submitted, SchedError> {
        self.submit_as(s, false)
    }

    /// [`Exec::submit`], for this host's own clients or (`hosted`) for
    /// another host of the cluster.
    pub(super) fn submit_as(&self, s: Submission, hosted: bool) -> Result<Submitted, SchedError> {
        let r = self.run(|st, _| {
            if s.use_recent {
                if let Some(r) = self.recent.get(&s.shared_key) {
                    return Ok(Submitted::Recent(Box::new(r)));
                }
            }
            let (id, new) =
                st.sched
                    .submit(s.key, s.platform, s.priority, s.tenant, s.assignment)?;
            if !new {
                let name = self.operation_name(&s.origin.instance);
                return Ok(Submitted::Joined(st.open_joined(id, s.origin, name)));
            }
            st.ops.insert(
                id,
                OpInfo {
                    name: s.name.clone(),
                    origin: s.origin.clone(),
                    do_not_cache: s.do_not_cache,
                    invocation_id: s.invocation_id,
                    hosted,
                    done: false,
                },
            );
            let queued = execution_stage::Value::Queued;
            let a = st
                .handles
                .open(s.name, id, s.origin, queued, s.payload_bytes);
            st.dispatch();
            Ok(Submitted::New(a))
        });
        // The cluster's rebalance looks at the queue again.
        self.queue_changed.notify_one();
        r
    }

    /// Records an action-cache hit as a completed execution with one
    /// handle, owned by `origin.owner` (so GetOperation and WaitExecution
    /// find it until it expires), and returns the handle's name.
    pub fn record_hit(
        &self,
        key: ActionKey,
        origin: Origin,
        invocation_id: &str,
        response: ExecuteResponse,
    ) -> String {
        let name = self.operation_name(&key.instance);
        self.run(|st, _| {
            let id = st
                .sched
                .record_completed(key, Arc::new(Assignment::default()));
            st.ops.insert(
                id,
                OpInfo {
                    name: name.clone(),
                    origin: origin.clone(),
                    do_not_cache: false,
                    invocation_id: invocation_id.to_string(),
                    hosted: false,
                    done: true,
                },
            );
            st.handles.open_done(name.clone(), id, origin, response);
        });
        name
    }

    /// WaitExecution: one more stream follows the handle `name`, and
    /// waits for its execution unless the handle was withdrawn.
    pub fn attach(&self, name: &str, caller: &Caller<'_>) -> Result<Attached, HandleError> {
        self.run(|st, _| {
            let a = st.handles.attach(name, caller)?;
            if a.waits {
                // A completed execution may have left the scheduler; its
                // handle answers from what it kept.
                let _ = st.sched.add_waiter(a.exec);
            }
            Ok(a)
        })
    }

    /// A stream that followed `handle` (of execution `exec`) ended: it no
    /// longer waits, and the last waiter leaving cancels the execution.
    pub fn stream_ended(&self, handle: HandleId, exec: OpId) {
        self.run(|st, fx| {
            if st.handles.detach(handle) {
                let effect = st.sched.remove_waiter(exec);
                st.apply_cancel(exec, effect, fx);
            }
        });
    }

    /// GetOperation: the handle `name`'s current Operation.
    pub fn get(&self, name: &str, caller: &Caller<'_>) -> Result<Operation, HandleError> {
        self.state.lock().handles.get(name, caller)
    }

    /// WaitOperation: a receiver of the handle `name`'s snapshots (not a
    /// waiter: it does not keep the execution alive).
    pub fn subscribe(
        &self,
        name: &str,
        caller: &Caller<'_>,
    ) -> Result<watch::Receiver<Snapshot>, HandleError> {
        self.state.lock().handles.subscribe(name, caller)
    }

    /// One ListOperations page; see [`Handles::list`].
    pub fn list(
        &self,
        instance: &str,
        owner: Option<&Identity>,
        after: Option<HandleId>,
        page: usize,
        max_bytes: usize,
    ) -> (Vec<Operation>, Option<HandleId>) {
        self.state
            .lock()
            .handles
            .list(instance, owner, after, page, max_bytes)
    }

    /// DeleteOperation: forgets the done handle `name`, and its execution
    /// once no handle is left.
    pub fn delete(&self, name: &str, caller: &Caller<'_>) -> Result<(), HandleError> {
        self.run(|st, _| {
            if let Some(exec) = st.handles.delete(name, caller)? {
                st.forget(&[exec]);
            }
            Ok(())
        })
    }

    /// CancelOperation: the handle `name` is done, CANCELLED, and its
    /// streams stop waiting; the execution runs on for other waiters.
    /// `Some(true)` when that was its last waiter (the execution was
    /// cancelled), `Some(false)` when it runs on, `None` when the handle
    /// was done already.
    pub fn cancel(&self, name: &str, caller: &Caller<'_>) -> Result<Option<bool>, HandleError> {
        self.run(|st, fx| {
            let Some(w) = st.handles.withdraw(name, caller, &mut fx.wakes)? else {
                return Ok(None);
            };
            let mut effect = CancelEffect::None;
            for _ in 0..w.waiters {
                match st.sched.remove_waiter(w.exec) {
                    CancelEffect::None => {}
                    e => effect = e,
                }
            }
            st.apply_cancel(w.exec, effect, fx);
            st.dispatch();
            Ok(Some(effect != CancelEffect::None))
        })
    }

    /// Whether a stop has begun (see [`Exec::begin_drain`]).
    pub fn draining(&self) -> bool {
        self.state.lock().draining
    }

    /// A stop's first step: no new work. Queued operations end UNAVAILABLE
    /// at once (clients retry, on this host's next frontend or elsewhere);
    /// executing ones go on, and their workers still report.
    pub fn begin_drain(&self) {
        self.run(|st, fx| {
            st.draining = true;
            let queued: Vec<OpId> = st
                .sched
                .ids()
                .into_iter()
                .filter(|id| st.sched.get(*id).is_some_and(|v| v.stage == Stage::Queued))
                .collect();
            for id in queued {
                let _ = st.sched.cancel(id);
                let retry = "the server is stopping; retry";
                st.complete(id, status_response(tonic::Code::Unavailable, retry), fx);
            }
        });
    }

    /// Shutdown: workers are let go (their streams end) and every operation
    /// not yet done ends UNAVAILABLE, so no client stream holds the drain.
    pub fn shutdown(&self) {
        self.run(|st, fx| {
            st.links.clear();
            let open: Vec<OpId> = st
                .ops
                .iter()
                .filter(|(_, o)| !o.done)
                .map(|(id, _)| *id)
                .collect();
            for id in open {
                let retry = "the server is shutting down; retry";
                st.complete(id, status_response(tonic::Code::Unavailable, retry), fx);
            }
        });
    }

    /// Periodic work: fail unrunnable actions, forget expired operations.
    pub fn tick(&self) {
        self.run(|st, fx| {
            for id in st.sched.tick() {
                let msg = match st.sched.get(id).and_then(|v| v.outcome.cloned()) {
                    Some(Outcome::Failed(m)) => m,
                    _ => "no worker can run this action".into(),
                };
                st.complete(
                    id,
                    status_response(tonic::Code::FailedPrecondition, msg),
                    fx,
                );
            }
            let live: HashSet<OpId> = st.sched.ids().into_iter().collect();
            st.ops.retain(|id, _| live.contains(id));
            // Handles go with their execution.
            st.handles.retain_execs(|id| live.contains(&id));
        });
        self.recent.expire();
    }

    /// The scheduler's live figures.
    pub fn counts(&self) -> Counts {
        self.state.lock().sched.counts()
    }

    /// The load of each local worker pool (remote leases excluded), for
    /// this host's gossiped load report.
    pub fn pool_loads(&self) -> Vec<rbe_sched::PoolLoad> {
        self.state.lock().sched.pool_loads()
    }

    /// Operations running on a worker now.
    pub fn executing(&self) -> usize {
        self.counts().executing
    }

    /// Handles retained now, and the bytes they keep.
    pub fn retained(&self) -> (usize, usize) {
        self.state.lock().handles.retained()
    }
}
