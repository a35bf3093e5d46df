//! Worker links, and what the owner does when a worker attaches, reports
//! and goes away.
//!
//! A [`WorkerLink`] is how the owner reaches one of the scheduler's
//! workers. Today there is one kind, [`HubLink`]: an rbe-workerd attached
//! to the hub's stream. The cluster's remote lease (an action offloaded to
//! a peer, a one-slot pseudo-worker in `rbe-sched`) is meant to be another:
//! its `assign` offers the action to the peer, its `cancel` sends Cancel
//! on the peer stream, the peer's `Finished` arrives through
//! [`Exec::worker_finished`] under the lease's `WorkerId`, and a lost
//! lease is [`Exec::worker_detach`] (re-queued, at most 3 times). A report
//! from a lease or worker the scheduler no longer knows (an older lease,
//! a re-queued operation) is ignored: `Scheduler::complete` says it is
//! stale.

use std::sync::Arc;

use rbe_proto::reapi::{execution_stage, UpdateActionResultRequest};
use rbe_proto::worker::{hub_message, Assignment, Cancel, Finished, HubMessage};
use rbe_sched::{OpId, Platform, WorkerId};
use tokio::sync::mpsc;

use super::outcome::{self, Ran, Report};
use super::Exec;

/// How the owner reaches one worker. Both methods are called under the
/// owner's lock (so a Cancel never overtakes its Assign): they must not
/// block, await or call into [`Exec`]; pushing onto an unbounded channel
/// read by the link's own task is the intended shape.
pub trait WorkerLink: Send {
    /// Hands the worker an assignment (`a.id` is the operation). False if
    /// the link is closing: its detach will re-queue the operation.
    fn assign(&self, a: Assignment) -> bool;
    /// Asks the worker to kill an operation it runs. Its report, if one
    /// still comes, is ignored.
    fn cancel(&self, id: OpId);
    /// The worker's name, for log lines.
    fn name(&self) -> &str;
}

/// An rbe-workerd attached to the hub: messages go on its stream.
pub struct HubLink {
    /// The hub stream's outgoing half.
    pub tx: mpsc::UnboundedSender<HubMessage>,
    /// The worker's name from its Hello.
    pub name: String,
}

impl WorkerLink for HubLink {
    fn assign(&self, a: Assignment) -> bool {
        let kind = Some(hub_message::Kind::Assign(a));
        self.tx.send(HubMessage { kind }).is_ok()
    }

    fn cancel(&self, id: OpId) {
        let kind = Some(hub_message::Kind::Cancel(Cancel { id }));
        let _ = self.tx.send(HubMessage { kind });
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl Exec {
    /// A worker with `slots` slots offering `platform` attached, reached
    /// through `link`; it is given work at once. Returns its id, under
    /// which it reports.
    pub fn worker_attach(
        &self,
        link: Box<dyn WorkerLink>,
        slots: u32,
        platform: Platform,
    ) -> WorkerId {
        self.run(|st, _| {
            let w = st.sched.worker_connect(slots, platform);
            st.links.insert(w, link);
            st.dispatch();
            w
        })
    }

    /// Worker `w` finished an assignment. Nothing here waits: the waiters
    /// are answered at once and the action-cache write is queued to
    /// [`super::results::RecentResults`], so the worker's next report is
    /// handled right away. A stale report (cancelled, re-queued, an
    /// unknown worker) only frees the slot; false then.
    pub fn worker_finished(&self, w: WorkerId, f: Finished) -> bool {
        self.finished(w, Report::new(f))
    }

    /// A report of an rbe-workerd of this host: in a cluster its
    /// `ExecutedActionMetadata.worker` names this host too
    /// (`{node}/{worker}`), as an executing peer's does, so a client can
    /// tell where any action ran.
    pub fn hub_finished(&self, w: WorkerId, f: Finished) -> bool {
        let mut report = Report::new(f);
        if let Some(c) = self.cluster() {
            report.name_host(c.node.as_str());
        }
        self.finished(w, report)
    }

    fn finished(&self, w: WorkerId, report: Report) -> bool {
        let id = report.id();
        let accepted = self.run(|st, _| {
            let key = st.sched.get(id).map(|v| v.key.clone());
            let payload = st.sched.payload(id).map(Arc::clone);
            let completed = st.sched.complete(id, w, ());
            let accepted = completed.then(|| st.ops.get(&id)).flatten().map(|o| {
                // Still under the lock: an identical request sees the
                // action either in flight or among the recent results.
                let cached = match (key, report.cacheable()) {
                    // A hosted execution's origin writes the entry.
                    (Some(key), Some(ar)) if !o.do_not_cache && !o.hosted => {
                        self.recent.put(
                            key,
                            o.name.clone(),
                            UpdateActionResultRequest {
                                instance_name: o.origin.instance.clone(),
                                action_digest: Some(o.origin.action_digest.clone()),
                                action_result: Some(ar.clone()),
                                results_cache_policy: None,
                                digest_function: o.origin.digest_function,
                            },
                        );
                        true
                    }
                    _ => false,
                };
                let worker = st.links.get(&w).map(|l| l.name().to_string());
                (
                    o.name.clone(),
                    o.origin.clone(),
                    o.invocation_id.clone(),
                    worker.unwrap_or_default(),
                    cached,
                    payload,
                )
            });
            st.dispatch();
            accepted
        });
        let Some((name, origin, invocation, worker_name, cached, payload)) = accepted else {
            return false; // cancelled or re-queued meanwhile
        };
        if cached {
            tracing::info!(
                client = %origin.owner,
                client_via = origin.owner.via().as_str(),
                instance_name = %origin.instance,
                digest = %crate::access::digest_label(&origin.action_digest),
                operation = %name,
                invocation_id = %invocation,
                "action cache written with an executed action's result"
            );
        }
        let metadata = payload
            .map(|a| outcome::request_metadata(&a))
            .unwrap_or_default();
        let ran = Ran {
            worker: (w, &worker_name),
            operation: &name,
            digest: &origin.action_digest,
            invocation: &invocation,
            metadata: &metadata,
        };
        outcome::log_completed(&ran, &report);
        let response = report.response(origin.digest_function);
        self.run(|st, fx| st.complete(id, response, fx));
        self.queue_changed.notify_one();
        true
    }

    /// Worker `w` went away: what it ran goes back to the queue in its
    /// original place (its handles show QUEUED again), except operations
    /// that lost their worker too often, which end ABORTED. Returns how
    /// many were re-queued.
    pub fn worker_detach(&self, w: WorkerId) -> usize {
        self.run(|st, fx| {
            st.links.remove(&w);
            let requeued = st.sched.worker_disconnect(w);
            for id in &requeued {
                st.handles.set_stage(*id, execution_stage::Value::Queued);
            }
            st.complete_given_up(fx);
            st.dispatch();
            requeued.len()
        })
    }
}
