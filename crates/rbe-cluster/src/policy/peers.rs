//! What this host knows of its peers' load: the newest report of each,
//! when it arrived (by this host's clock), and the offers this host sent
//! it that the report cannot show yet (optimistic accounting).

use std::collections::BTreeMap;
use std::time::Duration;

use rbe_proto::cluster::{LoadReport, Pool};
use rbe_sched::Platform;

use crate::identity::NodeName;

/// One pool of a peer, its platform parsed once per report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPool {
    /// What the pool's workers offer.
    pub platform: Platform,
    /// Its slots.
    pub slots: u32,
    /// Slots running something.
    pub running: u32,
    /// Actions queued for it.
    pub queued: u32,
    /// Offers accepted but not queued yet.
    pub incoming: u32,
}

impl PeerPool {
    /// A reported pool.
    pub fn from_report(p: &Pool) -> Self {
        PeerPool {
            platform: Platform::from_pairs(
                p.platform
                    .iter()
                    .map(|kv| (kv.name.clone(), kv.value.clone())),
            ),
            slots: p.slots,
            running: p.running,
            queued: p.queued,
            incoming: p.incoming,
        }
    }
}

/// A peer as the table knows it.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its process generation.
    pub generation: u64,
    /// Sequence number of the report held.
    pub seq: u64,
    /// Its cluster protocol major.
    pub proto: u32,
    /// Whether it takes offers.
    pub accepting: bool,
    /// Its backing store's id (0 = none).
    pub store_id: u64,
    /// Its pools.
    pub pools: Vec<PeerPool>,
    /// When the report arrived here, by this host's clock.
    pub arrived: Duration,
    /// Offers sent to it and not answered yet.
    pub in_flight: u32,
    /// Offers it accepted without sending its load along; they count until
    /// its next report, which shows them.
    pub accepted_unreported: u32,
    /// BUSY rejects in a row (reset by an accept or a report with room).
    pub busy_rejects: u32,
    /// No offer goes to it before this (by this host's clock).
    pub backoff_until: Duration,
}

impl Peer {
    /// Offers of this host's the held report does not show.
    pub fn pending(&self) -> u32 {
        self.in_flight.saturating_add(self.accepted_unreported)
    }

    /// The held report's age.
    pub fn age(&self, now: Duration) -> Duration {
        now.saturating_sub(self.arrived)
    }

    /// Whether it is backing off after BUSY rejects at `now`.
    pub fn backing_off(&self, now: Duration) -> bool {
        now < self.backoff_until
    }

    fn end_backoff(&mut self) {
        self.busy_rejects = 0;
        self.backoff_until = Duration::ZERO;
    }
}

/// How long no offer goes to a peer after BUSY rejects: doubling from
/// `base` with each reject in a row, at most `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// After the first reject.
    pub base: Duration,
    /// The longest.
    pub max: Duration,
}

impl Backoff {
    /// The wait after the `n`th BUSY reject in a row (n ≥ 1).
    pub fn after(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }
}

/// A report shows room: some pool has a slot nothing is running, queued
/// or arriving for.
fn has_room(pools: &[PeerPool]) -> bool {
    pools.iter().any(|p| {
        u64::from(p.running) + u64::from(p.queued) + u64::from(p.incoming) < u64::from(p.slots)
    })
}

/// What became of a report given to [`PeerTable::on_report`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportUse {
    /// It replaced what the table held (or was the first).
    Taken,
    /// It is older than (or as old as) what the table holds.
    Old,
    /// It is this host's own, or names no valid node.
    Ignored,
}

/// Peers' load as last reported, keyed by node name (ordered, so that the
/// same inputs give the same choices).
#[derive(Clone, Debug)]
pub struct PeerTable {
    me: NodeName,
    peers: BTreeMap<NodeName, Peer>,
}

impl PeerTable {
    /// An empty table of the peers of `me`.
    pub fn new(me: NodeName) -> Self {
        PeerTable {
            me,
            peers: BTreeMap::new(),
        }
    }

    /// This host.
    pub fn me(&self) -> &NodeName {
        &self.me
    }

    /// A report from gossip: taken only if newer than the one held (a
    /// higher generation, or the same one with a higher seq).
    pub fn on_report(&mut self, now: Duration, r: &LoadReport) -> ReportUse {
        self.take(now, r, false)
    }

    fn take(&mut self, now: Duration, r: &LoadReport, reply: bool) -> ReportUse {
        let Ok(node) = NodeName::new(&r.node) else {
            return ReportUse::Ignored;
        };
        if node == self.me {
            return ReportUse::Ignored;
        }
        let pools = r.pools.iter().map(PeerPool::from_report).collect();
        match self.peers.get_mut(&node) {
            Some(p) if r.generation < p.generation => ReportUse::Old,
            // A reply to an offer carries load at least as new as the last
            // gossip, possibly with the same seq.
            Some(p)
                if r.generation == p.generation
                    && (r.seq < p.seq || (!reply && r.seq == p.seq)) =>
            {
                ReportUse::Old
            }
            Some(p) => {
                if r.generation != p.generation {
                    // A restarted peer knows nothing of our offers.
                    p.in_flight = 0;
                }
                p.generation = r.generation;
                p.seq = r.seq;
                p.proto = r.proto;
                p.accepting = r.accepting;
                p.store_id = r.store_id;
                p.pools = pools;
                p.arrived = now;
                p.accepted_unreported = 0;
                if has_room(&p.pools) {
                    p.end_backoff();
                }
                ReportUse::Taken
            }
            None => {
                self.peers.insert(
                    node,
                    Peer {
                        generation: r.generation,
                        seq: r.seq,
                        proto: r.proto,
                        accepting: r.accepting,
                        store_id: r.store_id,
                        pools,
                        arrived: now,
                        in_flight: 0,
                        accepted_unreported: 0,
                        busy_rejects: 0,
                        backoff_until: Duration::ZERO,
                    },
                );
                ReportUse::Taken
            }
        }
    }

    /// Load a peer sent on the peer stream with something else (a
    /// finished action): taken if at least as new as the report held, since
    /// it was read after that report was published.
    pub fn on_direct(&mut self, now: Duration, r: &LoadReport) -> ReportUse {
        self.take(now, r, true)
    }

    /// An offer was sent to `node`.
    pub fn offer_sent(&mut self, node: &NodeName) {
        if let Some(p) = self.peers.get_mut(node) {
            p.in_flight = p.in_flight.saturating_add(1);
        }
    }

    /// `node` answered an offer (or the offer was lost: `accepted` false,
    /// no load). The load a reply carries replaces the report held.
    pub fn offer_answered(
        &mut self,
        now: Duration,
        node: &NodeName,
        accepted: bool,
        load: Option<&LoadReport>,
    ) {
        let taken = load.is_some_and(|r| self.take(now, r, true) == ReportUse::Taken);
        if let Some(p) = self.peers.get_mut(node) {
            p.in_flight = p.in_flight.saturating_sub(1);
            if accepted && !taken {
                p.accepted_unreported = p.accepted_unreported.saturating_add(1);
            }
            if accepted {
                p.end_backoff();
            }
        }
    }

    /// `node` rejected an offer as BUSY (after [`PeerTable::offer_answered`]
    /// took the reject's load): no offer goes to it for `backoff.after(n)`,
    /// n the BUSY rejects in a row, unless it accepts one meanwhile or a
    /// newer report shows room. Returns the wait.
    pub fn rejected_busy(&mut self, now: Duration, node: &NodeName, backoff: Backoff) -> Duration {
        let Some(p) = self.peers.get_mut(node) else {
            return Duration::ZERO;
        };
        p.busy_rejects = p.busy_rejects.saturating_add(1);
        let wait = backoff.after(p.busy_rejects);
        p.backoff_until = now.saturating_add(wait);
        wait
    }

    /// `node` is gone (membership declared it down, or it left).
    pub fn remove(&mut self, node: &NodeName) -> Option<Peer> {
        self.peers.remove(node)
    }

    /// A peer's entry.
    pub fn get(&self, node: &NodeName) -> Option<&Peer> {
        self.peers.get(node)
    }

    /// Every peer, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeName, &Peer)> {
        self.peers.iter()
    }

    /// Peers known.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is known.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}
