//! The fair queue: which queued operation starts next.
//!
//! Among the operations some free worker can run, the next to start is
//! 1. of the highest priority (the lowest number, as REAPI says);
//! 2. of the client with the fewest operations executing (counted over
//!    all priorities and platforms), ties going to the client whose head
//!    has waited longest, counted from when it became the head: its
//!    arrival, or the client's previous start if that is later. So clients
//!    with equal counts take turns (with one slot, too), and a newcomer
//!    waits no longer than one turn;
//! 3. of that client's invocation with the fewest operations executing,
//!    ties going the same way;
//! 4. the oldest of that invocation (arrival order; a re-queued operation
//!    keeps its original place).
//!
//! So one client that queued 10,000 actions first gets every other slot
//! once a second client queues, not all of them until its queue is empty;
//! and a client's share is split the same way across its Bazel invocations.
//!
//! Operations are kept in *lanes*, one per (platform, priority); each lane
//! orders its clients, and each client its invocations, by (executing,
//! oldest queued). A choice looks only at the first entries of the lanes
//! some free worker can serve, so operations nobody can run now cost
//! nothing, and choosing is O(lanes · log n) rather than a scan of the
//! queue. When a client's executing count changes, its entries in the lanes
//! where it has work queued are re-keyed.
//!
//! To change the policy, change the keys (`Key`) and [`FairQueue::choose`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::platform::Platform;
use crate::scheduler::OpId;

/// Who an operation is accounted to: the client that submitted it first
/// (an identical action joined later stays theirs) and its invocation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tenant {
    /// The caller's identity name.
    pub client: Arc<str>,
    /// Bazel's invocation id from RequestMetadata; may be empty.
    pub invocation: Arc<str>,
}

impl Tenant {
    /// A tenant from a client name and an invocation id.
    pub fn new(client: impl Into<Arc<str>>, invocation: impl Into<Arc<str>>) -> Self {
        Tenant {
            client: client.into(),
            invocation: invocation.into(),
        }
    }
}

/// A platform's number in the queue, while it has operations queued.
pub(crate) type ClassId = u32;
type LaneId = (ClassId, i32);
/// (operations executing, since when its head waits as the head, in
/// sequence numbers): the smaller goes first.
type Key = (u32, u64);

/// Per client, and per (client, invocation).
#[derive(Default)]
struct Account {
    executing: u32,
    /// When it last started an operation (a sequence number).
    last_start: u64,
    queued: usize,
    /// Lanes where it has operations queued.
    lanes: BTreeSet<LaneId>,
}

struct Class {
    platform: Platform,
    queued: usize,
}

#[derive(Default)]
struct Lane {
    order: BTreeSet<(Key, Arc<str>)>,
    clients: HashMap<Arc<str>, LaneClient>,
}

#[derive(Default)]
struct LaneClient {
    key: Option<Key>,
    order: BTreeSet<(Key, Arc<str>)>,
    /// Each invocation's oldest queued operation, for the client's key.
    oldest: BTreeSet<(u64, Arc<str>)>,
    invocations: HashMap<Arc<str>, LaneInvocation>,
}

#[derive(Default)]
struct LaneInvocation {
    key: Option<Key>,
    /// Its entry in the client's `oldest`.
    oldest: Option<u64>,
    ops: BTreeSet<(u64, OpId)>,
}

/// Where a queued operation is.
pub(crate) struct Entry {
    class: ClassId,
    priority: i32,
    seq: u64,
    tenant: Tenant,
}

/// Queued operations in fair order, and executing counts per tenant.
#[derive(Default)]
pub(crate) struct FairQueue {
    class_ids: HashMap<Platform, ClassId>,
    classes: BTreeMap<ClassId, Class>,
    next_class: ClassId,
    lanes: BTreeMap<LaneId, Lane>,
    clients: HashMap<Arc<str>, Account>,
    invocations: HashMap<(Arc<str>, Arc<str>), Account>,
    entries: HashMap<OpId, Entry>,
}

fn inv_id(t: &Tenant) -> (Arc<str>, Arc<str>) {
    (t.client.clone(), t.invocation.clone())
}

fn lane_range(class: ClassId) -> std::ops::RangeInclusive<LaneId> {
    (class, i32::MIN)..=(class, i32::MAX)
}

impl FairQueue {
    /// Queued operations.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Operations `client` has queued.
    pub(crate) fn queued_of(&self, client: &str) -> usize {
        self.clients.get(client).map_or(0, |a| a.queued)
    }

    /// Operations `client` has executing.
    pub(crate) fn executing_of(&self, client: &str) -> u32 {
        self.clients.get(client).map_or(0, |a| a.executing)
    }

    /// The platforms with operations queued.
    pub(crate) fn classes(&self) -> impl Iterator<Item = (ClassId, &Platform)> {
        self.classes.iter().map(|(&id, c)| (id, &c.platform))
    }

    /// A platform by number.
    pub(crate) fn platform(&self, class: ClassId) -> Option<&Platform> {
        self.classes.get(&class).map(|c| &c.platform)
    }

    /// The operations queued for one platform, each with its sequence
    /// number.
    pub(crate) fn class_ops(&self, class: ClassId) -> Vec<OpId> {
        self.lanes
            .range(lane_range(class))
            .flat_map(|(_, lane)| lane.clients.values())
            .flat_map(|c| c.invocations.values())
            .flat_map(|i| i.ops.iter().map(|&(_, id)| id))
            .collect()
    }

    /// Queues an operation; `seq` is its place in arrival order.
    pub(crate) fn push(
        &mut self,
        id: OpId,
        seq: u64,
        priority: i32,
        tenant: &Tenant,
        platform: &Platform,
    ) {
        let class = match self.class_ids.get(platform) {
            Some(&c) => c,
            None => {
                let c = self.next_class;
                self.next_class = self.next_class.wrapping_add(1);
                self.class_ids.insert(platform.clone(), c);
                self.classes.insert(
                    c,
                    Class {
                        platform: platform.clone(),
                        queued: 0,
                    },
                );
                c
            }
        };
        if let Some(c) = self.classes.get_mut(&class) {
            c.queued += 1;
        }
        let lane_id = (class, priority);
        let lane = self.lanes.entry(lane_id).or_default();
        lane.clients
            .entry(tenant.client.clone())
            .or_default()
            .invocations
            .entry(tenant.invocation.clone())
            .or_default()
            .ops
            .insert((seq, id));
        for a in [
            self.clients.entry(tenant.client.clone()).or_default(),
            self.invocations.entry(inv_id(tenant)).or_default(),
        ] {
            a.queued += 1;
            a.lanes.insert(lane_id);
        }
        self.entries.insert(
            id,
            Entry {
                class,
                priority,
                seq,
                tenant: tenant.clone(),
            },
        );
        self.rekey(lane_id, tenant);
    }

    /// Takes an operation out of the queue; its tenant, if it was queued.
    pub(crate) fn remove(&mut self, id: OpId) -> Option<Tenant> {
        let e = self.entries.remove(&id)?;
        let lane_id = (e.class, e.priority);
        let t = &e.tenant;
        let mut lane_empty = false;
        let mut client_gone = false;
        let mut inv_gone = false;
        if let Some(lane) = self.lanes.get_mut(&lane_id) {
            if let Some(lc) = lane.clients.get_mut(&t.client) {
                if let Some(li) = lc.invocations.get_mut(&t.invocation) {
                    li.ops.remove(&(e.seq, id));
                    if li.ops.is_empty() {
                        if let Some(k) = li.key {
                            lc.order.remove(&(k, t.invocation.clone()));
                        }
                        if let Some(o) = li.oldest {
                            lc.oldest.remove(&(o, t.invocation.clone()));
                        }
                        lc.invocations.remove(&t.invocation);
                        inv_gone = true;
                    }
                }
                if lc.invocations.is_empty() {
                    if let Some(k) = lc.key {
                        lane.order.remove(&(k, t.client.clone()));
                    }
                    lane.clients.remove(&t.client);
                    client_gone = true;
                }
            }
            lane_empty = lane.clients.is_empty();
        }
        if lane_empty {
            self.lanes.remove(&lane_id);
        }
        if let Some(c) = self.classes.get_mut(&e.class) {
            c.queued = c.queued.saturating_sub(1);
            if c.queued == 0 {
                self.class_ids.remove(&c.platform);
                self.classes.remove(&e.class);
            }
        }
        for (a, gone) in [
            (self.clients.get_mut(&t.client), client_gone),
            (self.invocations.get_mut(&inv_id(t)), inv_gone),
        ] {
            if let Some(a) = a {
                a.queued = a.queued.saturating_sub(1);
                if gone {
                    a.lanes.remove(&lane_id);
                }
            }
        }
        if !client_gone {
            self.rekey(lane_id, t);
        }
        self.collect(t);
        Some(e.tenant)
    }

    /// An operation of `t` started, at `stamp` (a sequence number later
    /// than any given so far).
    pub(crate) fn started(&mut self, t: &Tenant, stamp: u64) {
        self.count_executing(t, Some(stamp));
    }

    /// An operation of `t` stopped executing.
    pub(crate) fn stopped(&mut self, t: &Tenant) {
        self.count_executing(t, None);
    }

    fn count_executing(&mut self, t: &Tenant, started: Option<u64>) {
        let mut lanes = Vec::new();
        for a in [
            self.clients.entry(t.client.clone()).or_default(),
            self.invocations.entry(inv_id(t)).or_default(),
        ] {
            match started {
                Some(stamp) => {
                    a.executing = a.executing.saturating_add(1);
                    a.last_start = a.last_start.max(stamp);
                }
                None => a.executing = a.executing.saturating_sub(1),
            }
            lanes.extend(a.lanes.iter().copied());
        }
        lanes.sort_unstable();
        lanes.dedup();
        for lane in lanes {
            self.rekey(lane, t);
        }
        self.collect(t);
    }

    /// Forgets the accounts of a tenant with nothing queued or executing.
    fn collect(&mut self, t: &Tenant) {
        let idle = |a: &Account| a.executing == 0 && a.queued == 0;
        if self.invocations.get(&inv_id(t)).is_some_and(idle) {
            self.invocations.remove(&inv_id(t));
        }
        if self.clients.get(&t.client).is_some_and(idle) {
            self.clients.remove(&t.client);
        }
    }

    /// Brings the keys of `t`'s invocation and client in one lane up to
    /// date with their executing counts and oldest queued operations.
    fn rekey(&mut self, lane_id: LaneId, t: &Tenant) {
        let load = |a: Option<&Account>| a.map_or((0, 0), |a| (a.executing, a.last_start));
        let (inv_exec, inv_last) = load(self.invocations.get(&inv_id(t)));
        let (client_exec, client_last) = load(self.clients.get(&t.client));
        let Some(lane) = self.lanes.get_mut(&lane_id) else {
            return;
        };
        let Some(lc) = lane.clients.get_mut(&t.client) else {
            return;
        };
        if let Some(li) = lc.invocations.get_mut(&t.invocation) {
            if let Some(&(oldest, _)) = li.ops.first() {
                if li.oldest != Some(oldest) {
                    if let Some(o) = li.oldest {
                        lc.oldest.remove(&(o, t.invocation.clone()));
                    }
                    lc.oldest.insert((oldest, t.invocation.clone()));
                    li.oldest = Some(oldest);
                }
                let new = (inv_exec, oldest.max(inv_last));
                if li.key != Some(new) {
                    if let Some(old) = li.key {
                        lc.order.remove(&(old, t.invocation.clone()));
                    }
                    lc.order.insert((new, t.invocation.clone()));
                    li.key = Some(new);
                }
            }
        }
        if let Some(&(oldest, _)) = lc.oldest.first() {
            let new = (client_exec, oldest.max(client_last));
            if lc.key != Some(new) {
                if let Some(old) = lc.key {
                    lane.order.remove(&(old, t.client.clone()));
                }
                lane.order.insert((new, t.client.clone()));
                lc.key = Some(new);
            }
        }
    }

    /// The operation to start next among the platforms in `runnable`, and
    /// its platform; see the module documentation for the order.
    pub(crate) fn choose(&self, runnable: &BTreeSet<ClassId>) -> Option<(OpId, ClassId)> {
        // The best client: each runnable platform's most urgent lane
        // offers its first client; the smallest (priority, key) wins.
        let mut best: Option<(i32, Key, &Arc<str>)> = None;
        for &class in runnable {
            let Some((&(_, priority), lane)) = self.lanes.range(lane_range(class)).next() else {
                continue;
            };
            let Some((key, client)) = lane.order.first() else {
                continue;
            };
            let cand = (priority, *key, client);
            if best.is_none_or(|b| cand < b) {
                best = Some(cand);
            }
        }
        let (priority, _, client) = best?;
        // Its best invocation, over the runnable platforms where it has
        // work at that priority (none has anything more urgent).
        let mut pick: Option<(Key, &Arc<str>, u64, ClassId)> = None;
        for &class in runnable {
            let Some(lc) = self
                .lanes
                .get(&(class, priority))
                .and_then(|l| l.clients.get(client))
            else {
                continue;
            };
            let Some((key, inv)) = lc.order.first() else {
                continue;
            };
            // Equal keys in two lanes: the older head goes first.
            let oldest = lc.invocations.get(inv).and_then(|i| i.oldest)?;
            if pick.is_none_or(|(k, i, o, _)| (*key, inv, oldest) < (k, i, o)) {
                pick = Some((*key, inv, oldest, class));
            }
        }
        let (_, inv, _, class) = pick?;
        let &(_, id) = self
            .lanes
            .get(&(class, priority))?
            .clients
            .get(client)?
            .invocations
            .get(inv)?
            .ops
            .first()?;
        Some((id, class))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue's choice recomputed from scratch, from the entries and
    /// the accounts alone: catches keys left stale by the incremental
    /// bookkeeping.
    fn reference(q: &FairQueue) -> Option<OpId> {
        let acct = |a: Option<&Account>| a.map_or((0, 0), |a| (a.executing, a.last_start));
        let top = |class: ClassId| {
            q.entries
                .values()
                .filter(|e| e.class == class)
                .map(|e| e.priority)
                .min()
        };
        // Every op in its class's most urgent lane, with its keys.
        type Candidate = ((i32, Key, Arc<str>), (Key, Arc<str>), u64, OpId);
        let mut best: Option<Candidate> = None;
        for (&id, e) in &q.entries {
            if top(e.class) != Some(e.priority) {
                continue;
            }
            // Oldest over the runnable lanes at this priority (those that
            // are their platform's most urgent).
            let lane = |f: &dyn Fn(&Entry) -> bool| {
                q.entries
                    .values()
                    .filter(|x| x.priority == e.priority && top(x.class) == Some(e.priority))
                    .filter(|x| f(x))
                    .map(|x| x.seq)
                    .min()
                    .unwrap_or(0)
            };
            let (ce, cl) = acct(q.clients.get(&e.tenant.client));
            let (ie, il) = acct(q.invocations.get(&inv_id(&e.tenant)));
            let c_oldest = lane(&|x| x.tenant.client == e.tenant.client);
            let i_oldest = lane(&|x| x.tenant == e.tenant);
            let client = (e.priority, (ce, c_oldest.max(cl)), e.tenant.client.clone());
            let inv = ((ie, i_oldest.max(il)), e.tenant.invocation.clone());
            let cand = (client, inv, e.seq, id);
            if best.as_ref().is_none_or(|b| cand < *b) {
                best = Some(cand);
            }
        }
        best.map(|b| b.3)
    }

    #[test]
    fn incremental_choice_matches_the_definition() {
        let mut q = FairQueue::default();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let platforms = [
            Platform::default(),
            Platform::from_pairs([("gpu", "1")]),
            Platform::from_pairs([("os", "mac")]),
        ];
        let mut running: Vec<Tenant> = Vec::new();
        let mut next = 1u64;
        // Pushes and starts balance, so the queue stays small enough for
        // the quadratic reference.
        for step in 0..4_000 {
            match rnd(10) {
                0..=3 => {
                    let t = Tenant::new(format!("c{}", rnd(4)), format!("i{}", rnd(3)));
                    let p = &platforms[rnd(3) as usize];
                    q.push(next, next, rnd(3) as i32 - 1, &t, p);
                    next += 1;
                }
                5 if !q.entries.is_empty() => {
                    // A cancellation: any queued operation.
                    let ids: Vec<OpId> = q.entries.keys().copied().collect();
                    q.remove(ids[rnd(ids.len() as u64) as usize]);
                }
                4 | 6 | 7 => {
                    let runnable: BTreeSet<ClassId> = q.classes.keys().copied().collect();
                    let chosen = q.choose(&runnable).map(|(id, _)| id);
                    assert_eq!(chosen, reference(&q), "step {step}");
                    if let Some(id) = chosen {
                        let t = q.remove(id).expect("queued");
                        q.started(&t, next);
                        next += 1;
                        running.push(t);
                    }
                }
                _ if !running.is_empty() => {
                    let t = running.swap_remove(rnd(running.len() as u64) as usize);
                    q.stopped(&t);
                }
                _ => {}
            }
        }
        // Drained, nothing is left behind.
        for t in running.drain(..) {
            q.stopped(&t);
        }
        let ids: Vec<OpId> = q.entries.keys().copied().collect();
        for id in ids {
            q.remove(id);
        }
        assert!(q.lanes.is_empty() && q.classes.is_empty() && q.class_ids.is_empty());
        assert!(q.clients.is_empty() && q.invocations.is_empty());
    }
}
