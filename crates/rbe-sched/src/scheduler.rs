//! Operations, the queue and the workers.
//!
//! Life of an operation: `submit` (or join an identical one in flight) ->
//! queued, accounted to its [`Tenant`] -> `next_assignments` gives it a slot
//! on a worker whose platform satisfies it, in the fair order of
//! [`crate::fair`] -> `complete`/`fail` -> kept for `retention`, then
//! `expire` drops it. `cancel`, or the last waiter leaving, ends it early; a
//! worker that disconnects has its operations re-queued.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::fair::{ClassId, FairQueue, Tenant};
use crate::platform::Platform;

mod remote;

pub use remote::{PoolLoad, QueuedOp};

/// How often an operation is re-queued after losing its worker.
pub const MAX_REQUEUES: u32 = 3;

/// Operation id (the frontend maps it to an operation name).
pub type OpId = u64;
/// Worker id, one per connected worker stream.
pub type WorkerId = u64;

/// What makes two Execute requests "the same action": they run once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ActionKey {
    /// Instance name.
    pub instance: String,
    /// Digest function name and action digest, e.g. `sha256:<hex>/<size>`.
    pub action: String,
}

/// Where an operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for a slot.
    Queued,
    /// Running on a worker.
    Executing,
    /// Finished (result, failure or cancellation).
    Completed,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome<R> {
    /// The worker reported a result.
    Done(R),
    /// Cancelled by a client, or every waiter left.
    Cancelled,
    /// Could not run (message says why).
    Failed(String),
    /// Answered from the action cache without running.
    Cached,
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct SchedConfig {
    /// Queued operations beyond this are refused.
    pub max_queued: usize,
    /// Queued operations of one client beyond this are refused.
    pub max_queued_per_client: usize,
    /// How long a client should wait before retrying a refused submission.
    pub retry_after: Duration,
    /// How long completed operations stay visible.
    pub retention: Duration,
    /// At most this many completed operations are kept (oldest go first).
    pub max_completed: usize,
    /// A queued operation no connected worker can run fails after this.
    pub unmatchable_grace: Duration,
}

impl Default for SchedConfig {
    fn default() -> Self {
        SchedConfig {
            max_queued: 10_000,
            max_queued_per_client: 5_000,
            retry_after: Duration::from_secs(1),
            retention: Duration::from_secs(600),
            max_completed: 100_000,
            unmatchable_grace: Duration::from_secs(30),
        }
    }
}

/// Refusals.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum SchedError {
    /// The queue is at `max_queued`.
    #[error("the queue is full ({queued} operations); retry in {retry_after:?}")]
    QueueFull {
        /// Operations queued.
        queued: usize,
        /// Suggested wait.
        retry_after: Duration,
    },
    /// The client has `max_queued_per_client` operations queued.
    #[error("client {client:?} has {queued} operations queued, its limit is {limit}; retry in {retry_after:?}")]
    ClientQueueFull {
        /// The client's name.
        client: String,
        /// Its operations queued.
        queued: usize,
        /// The limit per client.
        limit: usize,
        /// Suggested wait.
        retry_after: Duration,
    },
    /// No connected worker offers the platform the action needs.
    #[error("no connected worker can run this action: it needs {need}, and none of the {workers} connected worker(s) offers {missing}")]
    NoMatchingWorker {
        /// What the action needs.
        need: String,
        /// Connected workers.
        workers: usize,
        /// The first missing property of the closest worker.
        missing: String,
    },
    /// Unknown (or expired) operation.
    #[error("operation {0} is unknown or has expired")]
    UnknownOperation(OpId),
}

/// What a cancellation requires of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelEffect {
    /// Nothing: it had already completed.
    None,
    /// It was queued and has been removed.
    Dequeued,
    /// It is running: ask this worker to kill it.
    Kill(WorkerId),
}

/// A decision to run an operation on a worker.
#[derive(Clone, Debug)]
pub struct Assignment<P> {
    /// The operation.
    pub op: OpId,
    /// The worker.
    pub worker: WorkerId,
    /// What the worker needs to run it.
    pub payload: P,
    /// Time spent queued.
    pub queued_for: Duration,
}

struct Op<P, R> {
    key: ActionKey,
    platform: Platform,
    priority: i32,
    seq: u64,
    tenant: Tenant,
    stage: Stage,
    waiters: u32,
    worker: Option<WorkerId>,
    requeues: u32,
    payload: P,
    queued_at: Duration,
    /// When a local worker was given it (for the mean execution time).
    started_at: Option<Duration>,
    completed_at: Option<Duration>,
    outcome: Option<Outcome<R>>,
}

struct Worker {
    slots: u32,
    busy: HashSet<OpId>,
    platform: Platform,
    /// A remote lease (see `remote`): one op placed on another host.
    remote: bool,
}

/// A read-only view of an operation.
#[derive(Debug)]
pub struct OpView<'a, R> {
    /// Its action.
    pub key: &'a ActionKey,
    /// Its stage.
    pub stage: Stage,
    /// How it ended, once completed.
    pub outcome: Option<&'a Outcome<R>>,
    /// Clients waiting on it.
    pub waiters: u32,
}

/// Live figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Queued operations.
    pub queued: usize,
    /// Executing operations.
    pub executing: usize,
    /// Connected workers.
    pub workers: usize,
    /// Free slots over all workers.
    pub free_slots: usize,
    /// Of `executing`, the operations placed on another host (remote
    /// leases); `workers` and `free_slots` count local workers only.
    pub offloaded: usize,
}

/// The scheduler. `P` is what a worker is sent; `R` is what it returns.
pub struct Scheduler<P, R> {
    cfg: SchedConfig,
    clock: Arc<dyn Clock>,
    ops: HashMap<OpId, Op<P, R>>,
    in_flight: HashMap<ActionKey, OpId>,
    queue: FairQueue,
    completed: VecDeque<OpId>,
    workers: HashMap<WorkerId, Worker>,
    next_id: u64,
    /// Mean execution time per local worker platform (an EWMA).
    exec_mean: HashMap<Platform, Duration>,
}

impl<P: Clone, R> Scheduler<P, R> {
    /// Applies reloaded limits: a smaller queue refuses new work until it
    /// has room, and retention applies to completed operations from now on.
    pub fn set_config(&mut self, cfg: SchedConfig) {
        self.cfg = cfg;
    }

    /// An empty scheduler.
    pub fn new(cfg: SchedConfig, clock: Arc<dyn Clock>) -> Self {
        Scheduler {
            cfg,
            clock,
            ops: HashMap::new(),
            in_flight: HashMap::new(),
            queue: FairQueue::default(),
            completed: VecDeque::new(),
            workers: HashMap::new(),
            next_id: 1,
            exec_mean: HashMap::new(),
        }
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn unmatchable(&self, need: &Platform) -> Option<SchedError> {
        let mut local = self.workers.values().filter(|w| !w.remote).peekable();
        if local.peek().is_none() || local.any(|w| w.platform.satisfies(need)) {
            return None;
        }
        let closest = self
            .workers
            .values()
            .filter(|w| !w.remote)
            .map(|w| w.platform.missing(need))
            .min_by_key(Vec::len)
            .unwrap_or_default();
        let missing = closest
            .first()
            .map(|(k, v)| format!("{k}={v}"))
            .unwrap_or_default();
        Some(SchedError::NoMatchingWorker {
            need: need.to_string(),
            workers: self.workers.values().filter(|w| !w.remote).count(),
            missing,
        })
    }

    /// Submits an action for `tenant`, or joins the identical one already
    /// in flight (which stays accounted to whoever submitted it first).
    /// Returns the operation and whether it is new. With no worker
    /// connected at all the action waits (a worker may be restarting).
    pub fn submit(
        &mut self,
        key: ActionKey,
        platform: Platform,
        priority: i32,
        tenant: Tenant,
        payload: P,
    ) -> Result<(OpId, bool), SchedError> {
        if let Some(&id) = self.in_flight.get(&key) {
            if let Some(op) = self.ops.get_mut(&id) {
                op.waiters += 1;
                return Ok((id, false));
            }
        }
        if let Some(e) = self.unmatchable(&platform) {
            return Err(e);
        }
        if self.queue.len() >= self.cfg.max_queued {
            return Err(SchedError::QueueFull {
                queued: self.queue.len(),
                retry_after: self.cfg.retry_after,
            });
        }
        let queued = self.queue.queued_of(&tenant.client);
        if queued >= self.cfg.max_queued_per_client {
            return Err(SchedError::ClientQueueFull {
                client: tenant.client.to_string(),
                queued,
                limit: self.cfg.max_queued_per_client,
                retry_after: self.cfg.retry_after,
            });
        }
        let id = self.fresh_id();
        let seq = self.fresh_id();
        self.queue.push(id, seq, priority, &tenant, &platform);
        self.in_flight.insert(key.clone(), id);
        let now = self.clock.now();
        self.ops.insert(
            id,
            Op {
                key,
                platform,
                priority,
                seq,
                tenant,
                stage: Stage::Queued,
                waiters: 1,
                worker: None,
                requeues: 0,
                payload,
                queued_at: now,
                started_at: None,
                completed_at: None,
                outcome: None,
            },
        );
        Ok((id, true))
    }

    /// Joins the identical action in flight, if there is one: the caller
    /// becomes one more waiter and need not read or check anything.
    pub fn join(&mut self, key: &ActionKey) -> Option<OpId> {
        let id = *self.in_flight.get(key)?;
        let op = self.ops.get_mut(&id)?;
        op.waiters += 1;
        Some(id)
    }

    /// Records an operation that is complete on arrival (an action-cache
    /// hit), so that it can be looked up and expires like any other.
    pub fn record_completed(&mut self, key: ActionKey, payload: P) -> OpId {
        let id = self.fresh_id();
        let seq = self.fresh_id();
        let now = self.clock.now();
        self.ops.insert(
            id,
            Op {
                key,
                platform: Platform::default(),
                priority: 0,
                seq,
                tenant: Tenant::default(),
                stage: Stage::Completed,
                waiters: 0,
                worker: None,
                requeues: 0,
                payload,
                queued_at: now,
                started_at: None,
                completed_at: Some(now),
                outcome: Some(Outcome::Cached),
            },
        );
        self.completed.push_back(id);
        id
    }

    /// A view of an operation.
    pub fn get(&self, id: OpId) -> Option<OpView<'_, R>> {
        self.ops.get(&id).map(|o| OpView {
            key: &o.key,
            stage: o.stage,
            outcome: o.outcome.as_ref(),
            waiters: o.waiters,
        })
    }

    /// Every known operation id.
    pub fn ids(&self) -> Vec<OpId> {
        let mut v: Vec<OpId> = self.ops.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Another client waits on an operation (WaitExecution).
    pub fn add_waiter(&mut self, id: OpId) -> Result<(), SchedError> {
        let op = self
            .ops
            .get_mut(&id)
            .ok_or(SchedError::UnknownOperation(id))?;
        op.waiters += 1;
        Ok(())
    }

    /// A waiting client went away; the last one leaving cancels the
    /// operation, since nobody would read its result.
    pub fn remove_waiter(&mut self, id: OpId) -> CancelEffect {
        let Some(op) = self.ops.get_mut(&id) else {
            return CancelEffect::None;
        };
        op.waiters = op.waiters.saturating_sub(1);
        if op.waiters == 0 && op.stage != Stage::Completed {
            return self.cancel(id).unwrap_or(CancelEffect::None);
        }
        CancelEffect::None
    }

    fn finish(&mut self, id: OpId, outcome: Outcome<R>) {
        let now = self.clock.now();
        if let Some(op) = self.ops.get_mut(&id) {
            match op.stage {
                Stage::Queued => {
                    self.queue.remove(id);
                }
                Stage::Executing => self.queue.stopped(&op.tenant),
                Stage::Completed => {}
            }
            op.stage = Stage::Completed;
            op.outcome = Some(outcome);
            op.completed_at = Some(now);
            if self.in_flight.get(&op.key) == Some(&id) {
                self.in_flight.remove(&op.key);
            }
            self.completed.push_back(id);
        }
    }

    /// Cancels an operation.
    pub fn cancel(&mut self, id: OpId) -> Result<CancelEffect, SchedError> {
        let op = self.ops.get(&id).ok_or(SchedError::UnknownOperation(id))?;
        let effect = match (op.stage, op.worker) {
            (Stage::Completed, _) => return Ok(CancelEffect::None),
            (Stage::Queued, _) => CancelEffect::Dequeued,
            // The slot stays busy until the worker confirms the kill.
            (Stage::Executing, Some(w)) => CancelEffect::Kill(w),
            (Stage::Executing, None) => CancelEffect::Dequeued,
        };
        self.finish(id, Outcome::Cancelled);
        Ok(effect)
    }

    /// A worker connected with `slots` execution slots.
    pub fn worker_connect(&mut self, slots: u32, platform: Platform) -> WorkerId {
        let id = self.fresh_id();
        self.workers.insert(
            id,
            Worker {
                slots,
                busy: HashSet::new(),
                platform,
                remote: false,
            },
        );
        id
    }

    /// A worker went away: what it was running goes back to the queue, in
    /// its original place.
    pub fn worker_disconnect(&mut self, w: WorkerId) -> Vec<OpId> {
        let Some(worker) = self.workers.remove(&w) else {
            return Vec::new();
        };
        let mut requeued = Vec::new();
        let mut given_up = Vec::new();
        for id in worker.busy {
            if let Some(op) = self.ops.get_mut(&id) {
                if op.stage == Stage::Executing {
                    op.requeues += 1;
                    // An action that keeps losing its worker may be what
                    // breaks the worker: stop retrying it.
                    if op.requeues > MAX_REQUEUES {
                        given_up.push(id);
                        continue;
                    }
                    op.stage = Stage::Queued;
                    op.worker = None;
                    self.queue.stopped(&op.tenant);
                    self.queue
                        .push(id, op.seq, op.priority, &op.tenant, &op.platform);
                    requeued.push(id);
                }
            }
        }
        for id in given_up {
            self.finish(
                id,
                Outcome::Failed(format!(
                    "the action lost its worker {} times; not retried",
                    MAX_REQUEUES + 1
                )),
            );
        }
        requeued.sort_unstable();
        requeued
    }

    /// Assigns queued operations to free, matching slots, in the fair
    /// order of [`crate::fair`] (priority first). An operation no free
    /// worker can run waits without holding up the others. A worker with
    /// more free slots is preferred, which spreads load when several match.
    pub fn next_assignments(&mut self) -> Vec<Assignment<P>> {
        let mut out = Vec::new();
        let has_room = |w: &Worker| !w.remote && (w.busy.len() as u32) < w.slots;
        if !self.workers.values().any(has_room) {
            return out;
        }
        // The platforms some free slot can serve; one drops out when its
        // last matching slot is taken.
        let mut runnable: BTreeSet<ClassId> = self
            .queue
            .classes()
            .filter(|(_, p)| {
                self.workers
                    .values()
                    .any(|w| has_room(w) && w.platform.satisfies(p))
            })
            .map(|(c, _)| c)
            .collect();
        let now = self.clock.now();
        while let Some((id, class)) = self.queue.choose(&runnable) {
            let Some(need) = self.queue.platform(class) else {
                runnable.remove(&class);
                continue;
            };
            let best = self
                .workers
                .iter()
                .filter(|(_, w)| has_room(w) && w.platform.satisfies(need))
                .max_by_key(|(wid, w)| (w.slots as usize - w.busy.len(), std::cmp::Reverse(**wid)))
                .map(|(wid, _)| *wid);
            let Some(wid) = best else {
                runnable.remove(&class);
                continue;
            };
            let Some(tenant) = self.queue.remove(id) else {
                break;
            };
            let stamp = self.fresh_id();
            self.queue.started(&tenant, stamp);
            if let Some(w) = self.workers.get_mut(&wid) {
                w.busy.insert(id);
            }
            if let Some(op) = self.ops.get_mut(&id) {
                op.stage = Stage::Executing;
                op.worker = Some(wid);
                op.started_at = Some(now);
                out.push(Assignment {
                    op: id,
                    worker: wid,
                    payload: op.payload.clone(),
                    queued_for: now.saturating_sub(op.queued_at),
                });
            }
        }
        out
    }

    fn free_slot(&mut self, id: OpId, w: WorkerId) -> bool {
        let Some(worker) = self.workers.get_mut(&w) else {
            return false;
        };
        let freed = worker.busy.remove(&id);
        // A remote lease ends with its one operation.
        if worker.remote && worker.busy.is_empty() {
            self.workers.remove(&w);
        }
        freed
    }

    /// A worker reports a result. Returns false if the report is stale
    /// (the operation was cancelled, re-queued elsewhere, or is unknown);
    /// the slot is freed either way.
    pub fn complete(&mut self, id: OpId, w: WorkerId, result: R) -> bool {
        let freed = self.free_slot(id, w);
        match self.ops.get(&id) {
            Some(op) if freed && op.stage == Stage::Executing && op.worker == Some(w) => {
                self.learn_exec_time(id, w);
                self.finish(id, Outcome::Done(result));
                true
            }
            _ => false,
        }
    }

    /// A worker could not run an operation.
    pub fn fail(&mut self, id: OpId, w: WorkerId, message: String) -> bool {
        let freed = self.free_slot(id, w);
        match self.ops.get(&id) {
            Some(op) if freed && op.stage == Stage::Executing && op.worker == Some(w) => {
                self.finish(id, Outcome::Failed(message));
                true
            }
            _ => false,
        }
    }

    /// Drops a completed operation before its retention is over (its
    /// holder keeps too much already); false if it is unknown or not
    /// completed.
    pub fn forget(&mut self, id: OpId) -> bool {
        if self
            .ops
            .get(&id)
            .is_none_or(|o| o.stage != Stage::Completed)
        {
            return false;
        }
        // Its entry in `completed` goes when it reaches the front in `tick`.
        self.ops.remove(&id);
        true
    }

    /// Periodic work: fails queued operations that no connected worker can
    /// run after the grace period, and drops completed operations past
    /// retention. Returns the operations that just failed.
    pub fn tick(&mut self) -> Vec<OpId> {
        let now = self.clock.now();
        let mut failed = Vec::new();
        if self.workers.values().any(|w| !w.remote) {
            let mut stale: Vec<(OpId, SchedError)> = Vec::new();
            for (class, platform) in self.queue.classes() {
                let Some(e) = self.unmatchable(platform) else {
                    continue;
                };
                for id in self.queue.class_ops(class) {
                    let waited = self
                        .ops
                        .get(&id)
                        .map_or(Duration::ZERO, |op| now.saturating_sub(op.queued_at));
                    if waited >= self.cfg.unmatchable_grace {
                        stale.push((id, e.clone()));
                    }
                }
            }
            stale.sort_unstable_by_key(|(id, _)| *id);
            for (id, e) in stale {
                self.finish(id, Outcome::Failed(e.to_string()));
                failed.push(id);
            }
        }
        while let Some(&id) = self.completed.front() {
            let old = self
                .ops
                .get(&id)
                .and_then(|o| o.completed_at)
                .is_none_or(|t| now.saturating_sub(t) >= self.cfg.retention);
            if !(old || self.completed.len() > self.cfg.max_completed) {
                break;
            }
            self.completed.pop_front();
            self.ops.remove(&id);
        }
        failed
    }

    /// Operations `client` has queued and executing.
    pub fn client_counts(&self, client: &str) -> (usize, u32) {
        (
            self.queue.queued_of(client),
            self.queue.executing_of(client),
        )
    }

    /// Live figures.
    pub fn counts(&self) -> Counts {
        Counts {
            queued: self.queue.len(),
            executing: self
                .ops
                .values()
                .filter(|o| o.stage == Stage::Executing)
                .count(),
            workers: self.workers.values().filter(|w| !w.remote).count(),
            free_slots: self
                .workers
                .values()
                .filter(|w| !w.remote)
                .map(|w| (w.slots as usize).saturating_sub(w.busy.len()))
                .sum(),
            offloaded: self
                .workers
                .values()
                .filter(|w| w.remote)
                .map(|w| w.busy.len())
                .sum(),
        }
    }
}
