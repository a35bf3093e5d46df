//! Remote leases and the load figures a host gossips.
//!
//! An operation offloaded to another host stays this host's operation: it
//! leaves the queue into a *remote lease*, a one-slot pseudo-worker that
//! `next_assignments` never fills. So the rest of the life of an operation
//! needs nothing new:
//!
//! - the peer rejects the offer: [`Scheduler::remote_release`] puts it
//!   back in its original place, not counted as a re-queue;
//! - the peer is lost: [`Scheduler::worker_disconnect`] re-queues it in its
//!   original place, at most [`MAX_REQUEUES`](super::MAX_REQUEUES) times;
//! - the peer reports a result: [`Scheduler::complete`] (or `fail`), which
//!   returns false for a lease that was already released or lost: the
//!   lease's [`WorkerId`] is the fencing token;
//! - a client cancels: `cancel` answers `Kill(lease)`; the caller tells
//!   the peer, then drops the lease with `remote_release`.
//!
//! The figures of [`Scheduler::pool_loads`] count local workers only: what
//! this host offers its peers, not what it placed elsewhere.

use std::collections::HashSet;
use std::time::Duration;

use super::{OpId, Scheduler, Stage, Worker, WorkerId};
use crate::platform::Platform;

/// Weight of the newest sample in the mean execution time.
const EXEC_MEAN_WEIGHT: f64 = 0.2;

/// A queued operation, as the offload policy sees it.
#[derive(Debug)]
pub struct QueuedOp<'a, P> {
    /// The operation.
    pub id: OpId,
    /// What it runs.
    pub payload: &'a P,
    /// What it needs.
    pub platform: &'a Platform,
    /// Its REAPI priority (lower first).
    pub priority: i32,
    /// How often it lost its worker (or peer) already.
    pub requeues: u32,
    /// How long it has waited since it was submitted.
    pub queued_for: Duration,
}

/// The load of one local worker platform ("pool"), for a load report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolLoad {
    /// The properties its workers offer.
    pub platform: Platform,
    /// Slots of the connected workers offering exactly this platform.
    pub slots: u32,
    /// Of those, slots running something.
    pub running: u32,
    /// Queued operations this pool could run (an operation several pools
    /// could run counts in each).
    pub queued: u32,
    /// How long the oldest of those has waited.
    pub oldest_queued: Duration,
    /// Recent mean execution time on this pool (zero before the first).
    pub mean_exec: Duration,
}

impl<P: Clone, R> Scheduler<P, R> {
    /// Places a queued operation on another host: it leaves the queue and
    /// becomes `Executing` on a new one-slot pseudo-worker, returned. None
    /// if the operation is not queued.
    pub fn remote_lease(&mut self, id: OpId) -> Option<WorkerId> {
        if self.ops.get(&id)?.stage != Stage::Queued {
            return None;
        }
        let tenant = self.queue.remove(id)?;
        let stamp = self.fresh_id();
        // It counts as executing for its client, as it would locally, so
        // offloading does not let one client take more than its share.
        self.queue.started(&tenant, stamp);
        let w = self.fresh_id();
        let op = self.ops.get_mut(&id)?;
        op.stage = Stage::Executing;
        op.worker = Some(w);
        self.workers.insert(
            w,
            Worker {
                slots: 1,
                busy: HashSet::from([id]),
                platform: op.platform.clone(),
                remote: true,
            },
        );
        Some(w)
    }

    /// Ends a remote lease whose offer was rejected (or whose operation was
    /// cancelled): the operation, if still placed there, goes back to its
    /// original place in the queue, not counted as a re-queue. Returns it.
    /// A local worker or an unknown lease is left alone.
    pub fn remote_release(&mut self, w: WorkerId) -> Option<OpId> {
        if !self.workers.get(&w)?.remote {
            return None;
        }
        let worker = self.workers.remove(&w)?;
        let id = worker.busy.into_iter().next()?;
        let op = self.ops.get_mut(&id)?;
        if op.stage != Stage::Executing || op.worker != Some(w) {
            return None;
        }
        op.stage = Stage::Queued;
        op.worker = None;
        self.queue.stopped(&op.tenant);
        self.queue
            .push(id, op.seq, op.priority, &op.tenant, &op.platform);
        Some(id)
    }

    /// What an operation's worker (or peer) is sent.
    pub fn payload(&self, id: OpId) -> Option<&P> {
        self.ops.get(&id).map(|o| &o.payload)
    }

    /// Whether `w` is a remote lease.
    pub fn is_remote(&self, w: WorkerId) -> bool {
        self.workers.get(&w).is_some_and(|w| w.remote)
    }

    /// The queued operations a worker offering `pool` could run, in
    /// priority then arrival order (a re-queued operation keeps its
    /// place): the order an origin offers them in, so an offloaded
    /// operation never starts later than it would have here.
    pub fn queued_in_order(&self, pool: &Platform) -> Vec<QueuedOp<'_, P>> {
        let now = self.clock.now();
        let mut v: Vec<(i32, u64, QueuedOp<'_, P>)> = Vec::new();
        for (class, platform) in self.queue.classes() {
            if !pool.satisfies(platform) {
                continue;
            }
            for id in self.queue.class_ops(class) {
                if let Some(op) = self.ops.get(&id) {
                    v.push((
                        op.priority,
                        op.seq,
                        QueuedOp {
                            id,
                            payload: &op.payload,
                            platform: &op.platform,
                            priority: op.priority,
                            requeues: op.requeues,
                            queued_for: now.saturating_sub(op.queued_at),
                        },
                    ));
                }
            }
        }
        v.sort_unstable_by_key(|(p, s, _)| (*p, *s));
        v.into_iter().map(|(_, _, q)| q).collect()
    }

    /// The load of each local worker platform, for a load report; remote
    /// leases take no part.
    pub fn pool_loads(&self) -> Vec<PoolLoad> {
        let mut pools: Vec<PoolLoad> = Vec::new();
        for w in self.workers.values().filter(|w| !w.remote) {
            let running = u32::try_from(w.busy.len()).unwrap_or(u32::MAX);
            match pools.iter_mut().find(|p| p.platform == w.platform) {
                Some(p) => {
                    p.slots = p.slots.saturating_add(w.slots);
                    p.running = p.running.saturating_add(running);
                }
                None => pools.push(PoolLoad {
                    platform: w.platform.clone(),
                    slots: w.slots,
                    running,
                    ..PoolLoad::default()
                }),
            }
        }
        let now = self.clock.now();
        for p in &mut pools {
            for (class, platform) in self.queue.classes() {
                if !p.platform.satisfies(platform) {
                    continue;
                }
                for id in self.queue.class_ops(class) {
                    p.queued = p.queued.saturating_add(1);
                    if let Some(op) = self.ops.get(&id) {
                        p.oldest_queued = p.oldest_queued.max(now.saturating_sub(op.queued_at));
                    }
                }
            }
            p.mean_exec = self.exec_mean.get(&p.platform).copied().unwrap_or_default();
        }
        pools.sort_by_cached_key(|p| p.platform.to_string());
        pools
    }

    /// Folds the run time of an operation a local worker finished into its
    /// platform's mean.
    pub(super) fn learn_exec_time(&mut self, id: OpId, w: WorkerId) {
        let (Some(op), Some(worker)) = (self.ops.get(&id), self.workers.get(&w)) else {
            return;
        };
        let Some(started) = op.started_at else {
            return;
        };
        let took = self.clock.now().saturating_sub(started);
        let mean = self
            .exec_mean
            .entry(worker.platform.clone())
            .or_insert(took);
        *mean = mean.mul_f64(1.0 - EXEC_MEAN_WEIGHT) + took.mul_f64(EXEC_MEAN_WEIGHT);
    }
}
