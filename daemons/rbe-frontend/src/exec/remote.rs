//! What the cluster asks of the owner: remote leases on this host's
//! queued work (the origin side of offload) and executions hosted for
//! another host (the executing side).
//!
//! A remote lease is one more [`WorkerLink`], registered under the
//! one-slot pseudo-worker `rbe-sched` makes for it; its result comes back
//! through [`Exec::worker_finished`] and its loss through
//! [`Exec::worker_detach`], so the fencing of stale reports is the
//! scheduler's. A hosted execution is an ordinary submission with two
//! differences: it is never offered on, and no action-cache entry is
//! written for it here (its origin writes one, once it holds the outputs).

use std::sync::Arc;

use rbe_proto::reapi::execution_stage;
use rbe_proto::worker::Assignment;
use rbe_sched::scheduler::MAX_REQUEUES;
use rbe_sched::{OpId, Platform, SchedError, Stage, WorkerId};

use super::workers::WorkerLink;
use super::{Exec, Submission, Submitted};

/// The head of a local queue that may be offered to a peer.
#[derive(Clone, Debug)]
pub struct Offloadable {
    pub op: OpId,
    pub platform: Platform,
    pub priority: i32,
}

/// What a lease task needs to know of the operation it placed.
#[derive(Clone, Debug)]
pub struct Leased {
    /// The pseudo-worker: the lease's fencing token.
    pub lease: WorkerId,
    /// The operation placed.
    pub op: OpId,
    pub assignment: Arc<Assignment>,
    pub platform: Platform,
    pub priority: i32,
    /// The submitting handle's name.
    pub name: String,
    pub invocation_id: String,
    /// The submitting client, for the executing host's audit lines.
    pub client: String,
}

impl Exec {
    /// The first queued operation a worker offering `pool` could run, in
    /// the scheduler's order, if it may be offered to a peer: this host's
    /// own (not hosted), not re-queued too often, and not `do_not_cache`
    /// unless `do_not_cache` allows it. Only the head is considered, so an
    /// offloaded operation never starts later than it would have here.
    pub fn offloadable_head(&self, pool: &Platform, do_not_cache: bool) -> Option<Offloadable> {
        let st = self.state.lock();
        if st.draining {
            return None;
        }
        let q = st.sched.queued_in_order(pool);
        let head = q.first()?;
        let info = st.ops.get(&head.id)?;
        let ok =
            !info.hosted && head.requeues < MAX_REQUEUES && (do_not_cache || !info.do_not_cache);
        ok.then(|| Offloadable {
            op: head.id,
            platform: head.platform.clone(),
            priority: head.priority,
        })
    }

    /// Places the queued operation `op.op` on a peer reached through `link`.
    /// None if it is no longer queued.
    pub fn lease(&self, op: &Offloadable, link: Box<dyn WorkerLink>) -> Option<Leased> {
        self.run(|st, _| {
            let info = st.ops.get(&op.op)?;
            if info.hosted || info.done {
                return None;
            }
            let assignment = Arc::clone(st.sched.payload(op.op)?);
            let (name, invocation_id, client) = (
                info.name.clone(),
                info.invocation_id.clone(),
                info.origin.owner.name().to_string(),
            );
            let lease = st.sched.remote_lease(op.op)?;
            st.links.insert(lease, link);
            Some(Leased {
                lease,
                op: op.op,
                assignment,
                platform: op.platform.clone(),
                priority: op.priority,
                name,
                invocation_id,
                client,
            })
        })
    }

    /// The peer rejected the offer of lease `w` (or the offer never got
    /// there, or its operation was cancelled): the operation, if still
    /// placed there, goes back to its place in the queue, not counted as
    /// a re-queue.
    pub fn release(&self, w: WorkerId) {
        self.run(|st, _| {
            st.links.remove(&w);
            if let Some(id) = st.sched.remote_release(w) {
                st.handles.set_stage(id, execution_stage::Value::Queued);
            }
            st.dispatch();
        });
        self.queue_changed.notify_one();
    }

    /// The executing peer of lease `w` reports `stage` (REAPI
    /// ExecutionStage value) for `op`: its handles show it, as they would
    /// for a local worker. Ignored once the lease is gone.
    pub fn set_stage(&self, w: WorkerId, op: OpId, stage: i32) {
        let stage = match execution_stage::Value::try_from(stage) {
            Ok(s @ (execution_stage::Value::Queued | execution_stage::Value::Executing)) => s,
            _ => return,
        };
        self.run(|st, _| {
            let placed = st.links.contains_key(&w)
                && st.sched.is_remote(w)
                && st
                    .sched
                    .get(op)
                    .is_some_and(|v| v.stage == Stage::Executing);
            if placed {
                st.handles.set_stage(op, stage);
            }
        });
    }

    /// Queues an action another host offloaded here: never offered on,
    /// never written to the action cache here.
    pub fn submit_hosted(&self, s: Submission) -> Result<Submitted, SchedError> {
        self.submit_as(s, true)
    }
}
