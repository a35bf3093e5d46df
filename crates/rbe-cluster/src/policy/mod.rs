//! The offload policy: which queued action a busy host pushes to which
//! peer, and which offers a host accepts. Pure code: time comes in as a
//! `now` from an [`rbe_sched::Clock`], randomness as an `rng`, so the
//! frontend and the simulator (`rbe-cluster-sim`) run the same decisions.
//!
//! The origin side ([`OffloadPolicy::pick`]), for the head of its queue:
//! 1. only while its own pressure (queued ÷ slots, in rounds of waiting)
//!    is at least `threshold`;
//! 2. among peers with a fresh report, accepting, of the same protocol,
//!    with a pool whose platform satisfies the action (the rule of
//!    [`rbe_sched::Platform::satisfies`]), fewer than
//!    `max_offers_per_peer` offers pending, and not backing off after
//!    BUSY rejects ([`PeerTable::rejected_busy`], [`Backoff`]),
//! 3. sample `choices` at random and score each by the rounds the action
//!    would wait there, counting the offers this host sent that its report
//!    cannot show yet (optimistic accounting: without it every origin sends
//!    its whole surplus to the same apparently idle peer);
//! 4. offer to the best only if that improves on waiting here by at least
//!    `hysteresis` rounds, and if the peer would admit it by the figures
//!    known (it would start within `accept_max_rounds`): an offer a peer
//!    is sure to reject only costs a round trip.
//!
//! The executor side ([`OffloadPolicy::admit`]) accepts only what it can
//! start within `accept_max_rounds`, so an origin's optimism costs at most
//! a rejected offer, never an overloaded host.
//!
//! To change how peers are scored, change [`rounds_before_start`] (both
//! sides use it).

mod peers;
#[cfg(test)]
mod tests;

pub use peers::{Backoff, Peer, PeerPool, PeerTable, ReportUse};

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use rbe_proto::cluster::{LoadReport, Pool, Property, RejectReason};
use rbe_sched::{Platform, PoolLoad};

use crate::identity::NodeName;

/// The cluster protocol major this build speaks.
pub const PROTO: u32 = 1;

/// How many peers a decision samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choices {
    /// Best of this many, drawn at random (1 = random placement).
    Sample(usize),
    /// The least loaded candidate (herds on stale reports; for comparison).
    All,
}

/// Tunables of offload, on both sides.
#[derive(Clone, Debug)]
pub struct OffloadConfig {
    /// Offload only while local pressure (queued ÷ slots) is at least this.
    pub threshold: f64,
    /// An offer must shorten the action's wait by at least this many rounds.
    pub hysteresis: f64,
    /// Peers sampled per decision.
    pub choices: Choices,
    /// Count offers a peer's report cannot show yet (switchable only to
    /// measure what it prevents).
    pub optimistic: bool,
    /// At most this many offers pending per peer.
    pub max_offers_per_peer: u32,
    /// A peer whose newest report is older than this is no candidate.
    pub report_max_age: Duration,
    /// Executor side: accept an offer only if it would start within this
    /// many rounds.
    pub accept_max_rounds: f64,
    /// Executor side: offers accepted per origin per second, sustained.
    pub admit_per_origin_per_sec: f64,
    /// Executor side: and in a burst.
    pub admit_per_origin_burst: f64,
    /// Origin side: how long a peer gets no offer after BUSY rejects.
    pub busy_backoff: Backoff,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig {
            threshold: 1.0,
            hysteresis: 0.5,
            choices: Choices::Sample(2),
            optimistic: true,
            // The simulator's sweep (BENCHMARKS.md): with half a round,
            // one-slot hosts can hold nothing queued and idle for a report
            // round trip after each action; a full round hides it.
            accept_max_rounds: 1.0,
            max_offers_per_peer: 8,
            report_max_age: Duration::from_secs(2),
            admit_per_origin_per_sec: 200.0,
            admit_per_origin_burst: 64.0,
            // A report round (500 ms) shows a freed slot and ends the
            // wait sooner; the cap bounds how long a peer that only
            // rejected is left out when its reports cannot show room.
            busy_backoff: Backoff {
                base: Duration::from_millis(250),
                max: Duration::from_secs(8),
            },
        }
    }
}

/// Why an action stays here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeepReason {
    /// Local pressure is under the threshold.
    BelowThreshold,
    /// No peer has a fresh report, accepts offers and speaks our protocol.
    NoFreshCandidate,
    /// Fresh peers exist, but none has a pool that can run the action.
    NoPlatformMatch,
    /// Every matching peer has `max_offers_per_peer` offers pending, or
    /// is backing off after BUSY rejects.
    PeerCap,
    /// No sampled peer would start it sooner by `hysteresis` rounds.
    NoImprovement,
    /// Every sampled peer would, by its report and our pending offers,
    /// reject it as busy (it could not start within `accept_max_rounds`):
    /// offering anyway only buys a reject.
    PeersFull,
}

/// The origin's decision for one action.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Offer it to `to`; if `to` rejects, `fallback` (the other sampled
    /// peer, when it too improves on here) may be tried once.
    Offer {
        /// The chosen peer.
        to: NodeName,
        /// The runner-up.
        fallback: Option<NodeName>,
        /// Rounds the action would wait at `to`, by its report and our
        /// pending offers.
        rounds: f64,
        /// Age of the report the choice used.
        report_age: Duration,
    },
    /// Keep it in the local queue.
    Keep(KeepReason),
}

/// Rounds an action would wait for a slot in a pool with these figures:
/// the work ahead of it beyond the slots, over the slots. An idle pool
/// scores 0; a pool of `s` busy slots and `q` queued scores `(q+1)/s`.
pub fn rounds_before_start(slots: u32, running: u32, queued: u32, ahead: u32) -> f64 {
    if slots == 0 {
        return f64::INFINITY;
    }
    let work = u64::from(running) + u64::from(queued) + u64::from(ahead) + 1;
    work.saturating_sub(u64::from(slots)) as f64 / f64::from(slots)
}

/// Local pressure for an action needing `need`: queued ÷ slots of the
/// least loaded local pool that can run it (infinite when none can).
pub fn local_pressure(pools: &[PoolLoad], need: &Platform) -> f64 {
    pools
        .iter()
        .filter(|p| p.slots > 0 && p.platform.satisfies(need))
        .map(|p| f64::from(p.queued) / f64::from(p.slots))
        .fold(f64::INFINITY, f64::min)
}

/// An offer as the executor sees it.
#[derive(Clone, Copy, Debug)]
pub struct OfferInfo<'a> {
    /// The origin.
    pub origin: &'a NodeName,
    /// The action's platform.
    pub platform: &'a Platform,
    /// Hops taken so far.
    pub hop: u32,
    /// The origin's protocol major.
    pub proto: u32,
}

/// This host as an executor: what it can take now.
#[derive(Clone, Copy, Debug)]
pub struct HostLoad<'a> {
    /// False while starting or draining.
    pub accepting: bool,
    /// Its pools.
    pub pools: &'a [PoolLoad],
    /// Offers accepted but not submitted yet (inputs still arriving).
    pub incoming: u32,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Duration,
}

/// The offload policy of one host: decisions as origin, admission as
/// executor.
#[derive(Clone, Debug)]
pub struct OffloadPolicy {
    cfg: OffloadConfig,
    buckets: HashMap<NodeName, Bucket>,
}

struct Scored<'a> {
    node: &'a NodeName,
    rounds: f64,
    /// Ties on `rounds` go to the pool with more room.
    fill: f64,
    age: Duration,
}

impl OffloadPolicy {
    /// A policy with these tunables.
    pub fn new(cfg: OffloadConfig) -> Self {
        OffloadPolicy {
            cfg,
            buckets: HashMap::new(),
        }
    }

    /// Its tunables.
    pub fn config(&self) -> &OffloadConfig {
        &self.cfg
    }

    /// Where the head of the local queue for platform `need` should run.
    /// `local` is the local pressure ([`local_pressure`]). The caller
    /// passes only actions it may offload (its own, not hosted for another
    /// host), and on `Offer` records it with [`PeerTable::offer_sent`].
    pub fn pick<G: Rng + ?Sized>(
        &self,
        now: Duration,
        rng: &mut G,
        peers: &PeerTable,
        local: f64,
        need: &Platform,
    ) -> Decision {
        if local < self.cfg.threshold {
            return Decision::Keep(KeepReason::BelowThreshold);
        }
        let mut fresh = false;
        let mut matching = false;
        let mut cands: Vec<Scored<'_>> = Vec::new();
        for (node, p) in peers.iter() {
            let age = p.age(now);
            if age > self.cfg.report_max_age || !p.accepting || p.proto != PROTO {
                continue;
            }
            fresh = true;
            let pending = if self.cfg.optimistic { p.pending() } else { 0 };
            let best = p
                .pools
                .iter()
                .filter(|pool| pool.platform.satisfies(need))
                .map(|pool| {
                    let ahead = pool.incoming.saturating_add(pending);
                    let rounds = rounds_before_start(pool.slots, pool.running, pool.queued, ahead);
                    let fill = f64::from(pool.running + pool.queued + ahead + 1)
                        / f64::from(pool.slots.max(1));
                    (rounds, fill)
                })
                .min_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            let Some((rounds, fill)) = best else {
                continue;
            };
            matching = true;
            if p.pending() >= self.cfg.max_offers_per_peer || p.backing_off(now) {
                continue;
            }
            cands.push(Scored {
                node,
                rounds,
                fill,
                age,
            });
        }
        if cands.is_empty() {
            return Decision::Keep(match (fresh, matching) {
                (false, _) => KeepReason::NoFreshCandidate,
                (true, false) => KeepReason::NoPlatformMatch,
                (true, true) => KeepReason::PeerCap,
            });
        }
        let mut sample: Vec<Scored<'_>> = match self.cfg.choices {
            Choices::Sample(d) if d < cands.len() => {
                let picked = rand::seq::index::sample(rng, cands.len(), d.max(1)).into_vec();
                let mut keep: Vec<Option<Scored<'_>>> = cands.into_iter().map(Some).collect();
                picked.into_iter().filter_map(|i| keep[i].take()).collect()
            }
            _ => {
                // Every candidate: shuffle first so ties go at random.
                use rand::seq::SliceRandom;
                cands.shuffle(rng);
                cands
            }
        };
        // Stable sort: equal scores keep their random order.
        sample.sort_by(|a, b| {
            (a.rounds, a.fill)
                .partial_cmp(&(b.rounds, b.fill))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let limit = local - self.cfg.hysteresis;
        if sample.first().is_some_and(|s| s.rounds > limit) {
            return Decision::Keep(KeepReason::NoImprovement);
        }
        let limit = limit.min(self.cfg.accept_max_rounds);
        let mut good = sample.into_iter().filter(|s| s.rounds <= limit);
        let Some(best) = good.next() else {
            return Decision::Keep(KeepReason::PeersFull);
        };
        Decision::Offer {
            to: best.node.clone(),
            fallback: good.next().map(|s| s.node.clone()),
            rounds: best.rounds,
            report_age: best.age,
        }
    }

    /// Whether this host takes an offer, as executor. A rejection's reason
    /// goes back to the origin with this host's load.
    pub fn admit(
        &mut self,
        now: Duration,
        host: &HostLoad<'_>,
        offer: &OfferInfo<'_>,
    ) -> Result<(), RejectReason> {
        if !host.accepting {
            return Err(RejectReason::Draining);
        }
        if offer.proto != PROTO {
            return Err(RejectReason::Version);
        }
        if offer.hop != 0 {
            return Err(RejectReason::Hop);
        }
        let mut matching = host
            .pools
            .iter()
            .filter(|p| p.platform.satisfies(offer.platform))
            .peekable();
        if matching.peek().is_none() {
            return Err(RejectReason::NoPlatform);
        }
        let soon = matching.any(|p| {
            rounds_before_start(p.slots, p.running, p.queued, host.incoming)
                <= self.cfg.accept_max_rounds
        });
        if !soon {
            return Err(RejectReason::Busy);
        }
        let (rate, burst) = (
            self.cfg.admit_per_origin_per_sec,
            self.cfg.admit_per_origin_burst,
        );
        let b = self.buckets.entry(offer.origin.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.saturating_sub(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens < 1.0 {
            return Err(RejectReason::Rate);
        }
        b.tokens -= 1.0;
        Ok(())
    }

    /// Forgets the admission state of origins not heard from in `idle`.
    pub fn forget_idle_origins(&mut self, now: Duration, idle: Duration) {
        self.buckets.retain(|_, b| now.saturating_sub(b.at) < idle);
    }
}

/// This host's load report from its scheduler's pools. `incoming` (offers
/// accepted, not queued yet) is counted in every pool.
pub fn load_report(
    node: &NodeName,
    generation: u64,
    seq: u64,
    accepting: bool,
    store_id: u64,
    pools: &[PoolLoad],
    incoming: u32,
) -> LoadReport {
    let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    LoadReport {
        node: node.as_str().to_owned(),
        generation,
        seq,
        proto: PROTO,
        accepting,
        store_id,
        pools: pools
            .iter()
            .map(|p| Pool {
                platform: p
                    .platform
                    .pairs()
                    .map(|(k, v)| Property {
                        name: k.to_owned(),
                        value: v.to_owned(),
                    })
                    .collect(),
                slots: p.slots,
                running: p.running,
                queued: p.queued,
                incoming,
                oldest_queued_ms: ms(p.oldest_queued),
                mean_exec_ms: ms(p.mean_exec),
            })
            .collect(),
        peer_addr: String::new(),
    }
}
