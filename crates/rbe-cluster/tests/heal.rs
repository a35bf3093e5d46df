//! Membership after a partition heals, deterministically: three foca
//! instances with the driver's identity, codec and LAN settings, over a
//! virtual network and clock (latency jitter from a seeded RNG), doing what
//! the driver does around foca: load reports, announces to the seeds while
//! alone, and (unless the test asks for bare foca) the additions of
//! `rbe_cluster::heal`. One seed gives one trace, so a failure names the
//! seed that shows it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, OwnedNotification, State, Timer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rbe_cluster::codec::MemberCodec;
use rbe_cluster::driver::{ANNOUNCE_INTERVAL, HEAL_INTERVAL};
use rbe_cluster::heal::{announce_targets, clear_suspicions, SuspectWatch};
use rbe_cluster::report::{encode_report, ReportHandler};
use rbe_cluster::{Member, NodeName};

type Gossip = Foca<Member, MemberCodec, StdRng, ReportHandler>;

enum Ev {
    Deliver { to: usize, data: Vec<u8> },
    Timer { host: usize, timer: Timer<Member> },
    Seeds { host: usize },
    Watch { host: usize },
    Report { host: usize },
}

struct Host {
    foca: Gossip,
    /// The driver's additions (`rbe_cluster::heal`), or bare foca.
    watch: Option<SuspectWatch>,
    connected: bool,
    seq: u64,
}

struct Net {
    now: Duration,
    heap: BinaryHeap<Reverse<(Duration, u64)>>,
    events: std::collections::HashMap<u64, Ev>,
    next: u64,
    hosts: Vec<Host>,
    addrs: Vec<SocketAddr>,
    cuts: HashSet<(usize, usize)>,
    rng: StdRng,
    /// The share of datagrams held up for 0.1–1.5 s (a loaded host).
    slow: f64,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1 + i as u8], 7946))
}

impl Net {
    fn new(seed: u64, additions: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        // What the frontend gets by default: `expected_size` 8.
        let config = foca::Config::new_lan(NonZeroU32::new(8).expect("8"));
        let mut hosts = Vec::new();
        let mut addrs = Vec::new();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let me = Member {
                node: NodeName::new(name).expect("node"),
                generation: 1,
                gossip_addr: addr(i),
                peer_addr: addr(i),
            };
            addrs.push(me.gossip_addr);
            let (handler, _) = ReportHandler::queued(me.node.clone());
            hosts.push(Host {
                foca: Foca::with_custom_broadcast(
                    me.clone(),
                    config.clone(),
                    StdRng::seed_from_u64(rng.random()),
                    MemberCodec::for_node(me.node.clone()),
                    handler,
                ),
                seq: 0,
                connected: false,
                watch: additions.then(|| SuspectWatch::new(config.suspect_to_down_after)),
            });
        }
        let mut net = Net {
            now: Duration::ZERO,
            heap: BinaryHeap::new(),
            events: Default::default(),
            next: 0,
            hosts,
            addrs,
            cuts: HashSet::new(),
            rng,
            slow: 0.0,
        };
        for host in 0..3 {
            let first = Duration::from_millis(net.rng.random_range(0..100));
            net.at(first, Ev::Seeds { host });
            net.at(first, Ev::Watch { host });
            net.at(first, Ev::Report { host });
        }
        net
    }

    fn at(&mut self, d: Duration, ev: Ev) {
        let id = self.next;
        self.next += 1;
        self.events.insert(id, ev);
        self.heap.push(Reverse((self.now + d, id)));
    }

    fn block(&mut self, x: usize, y: usize) {
        self.cuts.insert((x, y));
        self.cuts.insert((y, x));
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(Reverse((when, id))) = self.heap.peek().copied() {
            if when > end {
                break;
            }
            self.heap.pop();
            self.now = when;
            if let Some(ev) = self.events.remove(&id) {
                self.handle(ev);
            }
        }
        self.now = end;
    }

    fn handle(&mut self, ev: Ev) {
        let mut rt = AccumulatingRuntime::new();
        let host = match ev {
            Ev::Deliver { to, data } => {
                let _ = self.hosts[to].foca.handle_data(&data, &mut rt);
                to
            }
            Ev::Timer { host, timer } => {
                let _ = self.hosts[host].foca.handle_timer(timer, &mut rt);
                host
            }
            // The driver's seed round: while alone, announce to the others.
            Ev::Seeds { host } => {
                if self.hosts[host].foca.num_members() == 0 {
                    for other in (0..3).filter(|o| *o != host) {
                        let _ = self.hosts[host]
                            .foca
                            .announce(Member::seed(self.addrs[other]), &mut rt);
                    }
                }
                self.at(ANNOUNCE_INTERVAL, Ev::Seeds { host });
                host
            }
            // The driver's load report, every 500 ms.
            Ev::Report { host } => {
                let h = &mut self.hosts[host];
                h.seq += 1;
                let me = h.foca.identity().clone();
                let r = rbe_proto::cluster::LoadReport {
                    node: me.node.to_string(),
                    generation: me.generation,
                    seq: h.seq,
                    ..Default::default()
                };
                if let Ok(data) = encode_report(&r) {
                    let _ = h.foca.add_broadcast(&data);
                    let _ = h.foca.broadcast(&mut rt);
                }
                self.at(Duration::from_millis(500), Ev::Report { host });
                host
            }
            Ev::Watch { host } => {
                let now = self.now;
                let h = &mut self.hosts[host];
                if let Some(w) = &mut h.watch {
                    let due = w.check(h.foca.iter_membership_state(), now);
                    if !due.is_empty() {
                        let _ = h.foca.apply_many(due.into_iter(), true, &mut rt);
                    }
                    if !h.connected {
                        for a in announce_targets(h.foca.iter_membership_state()) {
                            let _ = h.foca.announce(Member::seed(a), &mut rt);
                        }
                    }
                }
                self.at(HEAL_INTERVAL, Ev::Watch { host });
                host
            }
        };
        self.flush(host, rt);
    }

    fn flush(&mut self, host: usize, mut rt: AccumulatingRuntime<Member>) {
        let mut rejoined = false;
        while let Some(n) = rt.to_notify() {
            let h = &mut self.hosts[host];
            match n {
                OwnedNotification::Active => h.connected = true,
                OwnedNotification::Idle | OwnedNotification::Defunct => h.connected = false,
                OwnedNotification::Rejoin(_) => {
                    h.connected = false;
                    rejoined = h.watch.is_some();
                }
                _ => {}
            }
        }
        if rejoined {
            let h = &mut self.hosts[host];
            let clear = clear_suspicions(h.foca.iter_membership_state());
            let _ = h.foca.apply_many(clear.into_iter(), false, &mut rt);
        }
        while let Some((to, data)) = rt.to_send() {
            let Some(dst) = self.addrs.iter().position(|a| *a == to.gossip_addr) else {
                continue;
            };
            if self.cuts.contains(&(host, dst)) {
                continue;
            }
            let mut latency = Duration::from_micros(self.rng.random_range(200..3000));
            if self.slow > 0.0 && self.rng.random::<f64>() < self.slow {
                latency += Duration::from_millis(self.rng.random_range(100..1500));
            }
            self.at(
                latency,
                Ev::Deliver {
                    to: dst,
                    data: data.to_vec(),
                },
            );
        }
        while let Some((after, timer)) = rt.to_schedule() {
            self.at(after, Ev::Timer { host, timer });
        }
    }

    /// How `host` sees `node`, if it lists it.
    fn sees(&self, host: usize, node: &str) -> Option<(u64, State)> {
        self.hosts[host]
            .foca
            .iter_membership_state()
            .find(|m| m.id().node.as_str() == node)
            .map(|m| (m.id().generation, m.state()))
    }

    /// Every host sees every other's current identity alive.
    fn whole(&self) -> Result<(), String> {
        for (i, h) in self.hosts.iter().enumerate() {
            for (_, other) in self.hosts.iter().enumerate().filter(|(j, _)| *j != i) {
                let want = other.foca.identity();
                let seen = self.sees(i, want.node.as_str());
                if seen != Some((want.generation, State::Alive)) {
                    return Err(format!(
                        "{} sees {} as {seen:?}; it is generation {}",
                        h.foca.identity().node,
                        want.node,
                        want.generation
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `partition_heals` of the booted lab: a cut from b for a while (c
/// relays), then from c too until each side holds the other down, then
/// healed. Returns how long after the heal the cluster was whole, or the
/// complaint still standing `limit` after it.
fn partition_heals(
    seed: u64,
    additions: bool,
    slow: f64,
    limit: Duration,
) -> Result<Duration, String> {
    let mut net = Net::new(seed, additions);
    net.slow = slow;
    net.run_for(Duration::from_secs(10));
    net.whole().map_err(|e| format!("not formed: {e}"))?;
    net.block(0, 1);
    net.run_for(Duration::from_secs(6));
    net.block(0, 2);
    // As the booted test does: wait until each side sees the other not up
    // (suspect will do), then a while longer, from nothing to beyond
    // foca's LAN timeout for 8 hosts (4 s).
    let mut waited = Duration::ZERO;
    while [(0, "b"), (0, "c"), (1, "a"), (2, "a")]
        .iter()
        .any(|(h, node)| net.sees(*h, node).is_some_and(|(_, s)| s == State::Alive))
    {
        net.run_for(Duration::from_millis(100));
        waited += Duration::from_millis(100);
        if waited > Duration::from_secs(30) {
            return Err("the two sides never lost each other".into());
        }
    }
    net.run_for(Duration::from_millis(seed * 7919 % 12_000));
    net.cuts.clear();
    let step = Duration::from_millis(100);
    let mut after = Duration::ZERO;
    loop {
        net.run_for(step);
        after += step;
        let w = net.whole();
        match w {
            Ok(()) => return Ok(after),
            Err(e) if after >= limit => return Err(e),
            Err(_) => {}
        }
    }
}

/// The bug, on foca alone: some heals leave a member suspect for good
/// (the prober rejoined and foca dropped its timer; the suspect never heard
/// of the suspicion). If a foca upgrade ends this, the additions in
/// `rbe_cluster::heal` may be reconsidered.
#[test]
fn on_bare_foca_some_heals_leave_a_member_suspect_for_good() {
    let stuck: Vec<(u64, String)> = (0..100)
        .filter_map(|seed| {
            partition_heals(seed, false, 0.0, Duration::from_secs(300))
                .err()
                .map(|e| (seed, e))
        })
        .collect();
    assert!(
        stuck.iter().any(|(_, e)| e.contains("Suspect")),
        "{stuck:?}"
    );
}

/// With the driver's additions every heal, on a quick network or one
/// holding up a datagram in twenty for up to 1.5 s, is whole within
/// seconds (virtual time).
#[test]
fn after_a_heal_the_cluster_is_whole_within_seconds() {
    for slow in [0.0, 0.05] {
        let mut worst = Duration::ZERO;
        for seed in 0..100 {
            match partition_heals(seed, true, slow, Duration::from_secs(10)) {
                Ok(t) => worst = worst.max(t),
                Err(e) => panic!("seed {seed}, slow {slow}: still {e} 10 s after the heal"),
            }
        }
        eprintln!(
            "slow {slow}: whole at most {} ms after the heal",
            worst.as_millis()
        );
    }
}
