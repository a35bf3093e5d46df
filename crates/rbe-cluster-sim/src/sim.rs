//! The engine: an event heap over one virtual clock, and per host the real
//! scheduler, the real offload policy and a real foca instance with the
//! real codec and load-report broadcast.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use foca::{Foca, Notification, Runtime, Timer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rbe_cluster::codec::MemberCodec;
use rbe_cluster::policy::{
    load_report, local_pressure, Decision, HostLoad, OfferInfo, OffloadPolicy, PeerTable, PROTO,
};
use rbe_cluster::report::{encode_report, ReportHandler, ReportQueue};
use rbe_cluster::{Member, NodeName};
use rbe_proto::cluster::LoadReport;
use rbe_sched::scheduler::MAX_REQUEUES;
use rbe_sched::{
    ActionKey, Clock, FakeClock, OpId, Platform, SchedConfig, Scheduler, Tenant, WorkerId,
};

use crate::metrics::Metrics;
use crate::SimConfig;

/// How long a broken peer stream takes to notice (HTTP/2 keepalive 5 s
/// interval + 5 s timeout).
const STREAM_BREAK: Duration = Duration::from_secs(10);
/// The rebalance tick.
const TICK: Duration = Duration::from_millis(100);
/// Reports on change are at most this frequent.
const REPORT_MIN_GAP: Duration = Duration::from_millis(100);
/// Offers per rebalance pass at most.
const MAX_OFFERS_PER_PASS: usize = 256;

/// What a simulated worker is sent.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    action: u64,
    service: Duration,
    /// For a hosted action: (origin host, origin's lease, origin's op).
    hosted: Option<(usize, WorkerId, OpId)>,
}

#[derive(Debug)]
enum Msg {
    Gossip(Vec<u8>),
    Offer {
        lease: WorkerId,
        op: OpId,
        job: Job,
    },
    Accepted {
        lease: WorkerId,
        load: LoadReport,
    },
    Rejected {
        lease: WorkerId,
        load: LoadReport,
        /// BUSY (else a rate limit): the origin backs off from the peer.
        busy: bool,
    },
    /// With the executor's load after it started what was queued next,
    /// so the origin learns of a free slot without waiting for gossip.
    Finished {
        lease: WorkerId,
        op: OpId,
        load: LoadReport,
    },
}

enum Ev {
    Submit {
        host: usize,
        action: u64,
    },
    Done {
        host: usize,
        op: OpId,
        worker: WorkerId,
    },
    Deliver {
        to: usize,
        from: usize,
        msg: Msg,
    },
    Timer {
        host: usize,
        timer: Timer<Member>,
    },
    ReportTick {
        host: usize,
    },
    ReportNow {
        host: usize,
    },
    Tick {
        host: usize,
    },
    Crash {
        host: usize,
    },
    Broken {
        host: usize,
        lease: WorkerId,
    },
}

/// What foca asked for during one call.
#[derive(Default)]
struct Out {
    sends: Vec<(Member, Vec<u8>)>,
    timers: Vec<(Timer<Member>, Duration)>,
    down: Vec<NodeName>,
}

impl Runtime<Member> for Out {
    fn notify(&mut self, n: Notification<'_, Member>) {
        if let Notification::MemberDown(m) = n {
            self.down.push(m.node.clone());
        }
    }
    fn send_to(&mut self, to: Member, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }
    fn submit_after(&mut self, event: Timer<Member>, after: Duration) {
        self.timers.push((event, after));
    }
}

struct Lease {
    peer: usize,
    op: OpId,
    fallback: Option<usize>,
}

struct Host {
    name: NodeName,
    generation: u64,
    alive: bool,
    sched: Scheduler<Job, ()>,
    platform: Platform,
    foca: Foca<Member, MemberCodec, StdRng, ReportHandler>,
    reports: ReportQueue,
    peers: PeerTable,
    policy: OffloadPolicy,
    rng: StdRng,
    seq: u64,
    last_report: Duration,
    report_scheduled: bool,
    had_free: bool,
    leases: HashMap<WorkerId, Lease>,
    /// Hosted operations other origins joined: who else to tell.
    joined: HashMap<OpId, Vec<(usize, WorkerId, OpId)>>,
}

/// One simulation.
pub(crate) struct Sim {
    cfg: SimConfig,
    clock: Arc<FakeClock>,
    heap: BinaryHeap<Reverse<(Duration, u64)>>,
    events: HashMap<u64, Ev>,
    next_ev: u64,
    hosts: Vec<Host>,
    index: HashMap<NodeName, usize>,
    names: Vec<NodeName>,
    net_rng: StdRng,
    /// Run times only, so that network randomness (loss) does not change
    /// the workload between runs of one seed.
    work_rng: StdRng,
    pub(crate) m: Metrics,
    /// Per action: its run time and origin.
    actions: Vec<(Duration, usize)>,
}

fn member(i: usize, generation: u64) -> Result<Member, rbe_cluster::NodeNameError> {
    let ip = Ipv4Addr::from(0x0a00_0000u32 + i as u32 + 1);
    Ok(Member {
        node: NodeName::new(&format!("h{i}"))?,
        generation,
        gossip_addr: SocketAddr::V4(SocketAddrV4::new(ip, 7946)),
        peer_addr: SocketAddr::V4(SocketAddrV4::new(ip, 8981)),
    })
}

impl Sim {
    pub(crate) fn new(cfg: SimConfig) -> anyhow::Result<Self> {
        let clock = Arc::new(FakeClock::default());
        let mut seeder = StdRng::seed_from_u64(cfg.seed);
        let n = cfg.slots.len();
        let size = NonZeroU32::new(u32::try_from(n.max(1))?).unwrap_or(NonZeroU32::MIN);
        let mut fcfg = foca::Config::new_lan(size);
        // The wire envelope (AEAD) takes 42 bytes of the 1400.
        fcfg.max_packet_size =
            std::num::NonZeroUsize::new(1400 - 42).unwrap_or(fcfg.max_packet_size);
        let platform = Platform::from_pairs([("OSFamily", "linux")]);
        let mut hosts = Vec::with_capacity(n);
        let mut index = HashMap::new();
        for (i, &slots) in cfg.slots.iter().enumerate() {
            let generation = 1;
            let me = member(i, generation)?;
            let (handler, reports) = ReportHandler::queued(me.node.clone());
            let foca = Foca::with_custom_broadcast(
                me.clone(),
                fcfg.clone(),
                StdRng::seed_from_u64(seeder.random()),
                MemberCodec::for_node(me.node.clone()),
                handler,
            );
            let mut sched = Scheduler::new(SchedConfig::default(), clock.clone() as Arc<dyn Clock>);
            sched.worker_connect(slots, platform.clone());
            index.insert(me.node.clone(), i);
            hosts.push(Host {
                peers: PeerTable::new(me.node.clone()),
                name: me.node,
                generation,
                alive: true,
                sched,
                platform: platform.clone(),
                foca,
                reports,
                policy: OffloadPolicy::new(cfg.policy.clone()),
                rng: StdRng::seed_from_u64(seeder.random()),
                seq: 0,
                last_report: Duration::ZERO,
                report_scheduled: false,
                had_free: true,
                leases: HashMap::new(),
                joined: HashMap::new(),
            });
        }
        let names = hosts.iter().map(|h| h.name.clone()).collect();
        let net_rng = StdRng::seed_from_u64(seeder.random());
        let work_rng = StdRng::seed_from_u64(seeder.random());
        let m = Metrics::new(n, cfg.report_interval);
        Ok(Sim {
            cfg,
            clock,
            heap: BinaryHeap::new(),
            events: HashMap::new(),
            next_ev: 0,
            hosts,
            index,
            names,
            net_rng,
            work_rng,
            m,
            actions: Vec::new(),
        })
    }

    fn now(&self) -> Duration {
        self.clock.now()
    }

    fn at(&mut self, when: Duration, ev: Ev) {
        let id = self.next_ev;
        self.next_ev += 1;
        self.events.insert(id, ev);
        self.heap.push(Reverse((when, id)));
    }

    fn after(&mut self, d: Duration, ev: Ev) {
        let when = self.now() + d;
        self.at(when, ev);
    }

    /// Runs to the end; the metrics hold the results.
    pub(crate) fn run(&mut self) -> anyhow::Result<()> {
        let n = self.hosts.len();
        let warm = self.cfg.warmup;
        // Everyone joins through host 0, spread over the first 100 ms.
        for i in 0..n {
            let t = Duration::from_micros(self.net_rng.random_range(0..100_000));
            self.at(t, Ev::Tick { host: i });
            let first = Duration::from_nanos(
                self.net_rng
                    .random_range(0..self.cfg.report_interval.as_nanos().max(1) as u64),
            );
            self.at(first, Ev::ReportTick { host: i });
            if i != 0 {
                let seed = member(0, 1)?;
                let mut out = Out::default();
                let _ = self.hosts[i].foca.announce(seed, &mut out);
                self.flush(i, out);
            }
        }
        for b in self.cfg.bursts.clone() {
            for _ in 0..b.count {
                let service = b.service.sample(&mut self.work_rng);
                let action = self.actions.len() as u64;
                self.actions.push((service, b.origin));
                self.m.submitted(warm + b.at, service);
                self.at(
                    warm + b.at,
                    Ev::Submit {
                        host: b.origin,
                        action,
                    },
                );
            }
        }
        for &(host, at) in &self.cfg.crashes.clone() {
            self.at(warm + at, Ev::Crash { host });
        }
        let end = warm + self.cfg.max_time;
        while let Some(Reverse((when, id))) = self.heap.pop() {
            if when > end {
                break;
            }
            let Some(ev) = self.events.remove(&id) else {
                continue;
            };
            let now = self.now();
            if when > now {
                self.clock.advance(when - now);
            }
            self.handle(ev);
            if self.m.all_done(self.actions.len()) && self.m.crashes_settled() {
                break;
            }
        }
        self.m.end = self.now();
        Ok(())
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Submit { host, action } => self.submit(host, action),
            Ev::Done { host, op, worker } => self.done(host, op, worker),
            Ev::Deliver { to, from, msg } => self.deliver(to, from, msg),
            Ev::Timer { host, timer } => {
                if self.hosts[host].alive {
                    let mut out = Out::default();
                    let _ = self.hosts[host].foca.handle_timer(timer, &mut out);
                    self.flush(host, out);
                }
            }
            Ev::ReportTick { host } => {
                if self.hosts[host].alive {
                    self.publish(host, false);
                    let d = self.cfg.report_interval;
                    self.after(d, Ev::ReportTick { host });
                }
            }
            Ev::ReportNow { host } => {
                self.hosts[host].report_scheduled = false;
                if self.hosts[host].alive {
                    self.publish(host, true);
                }
            }
            Ev::Tick { host } => {
                if self.hosts[host].alive {
                    self.hosts[host].sched.tick();
                    self.rebalance(host);
                    self.after(TICK, Ev::Tick { host });
                }
            }
            Ev::Crash { host } => {
                self.hosts[host].alive = false;
                let now = self.now();
                let name = self.hosts[host].name.clone();
                let held = self
                    .hosts
                    .iter()
                    .filter(|h| h.alive)
                    .flat_map(|h| h.leases.values())
                    .filter(|l| l.peer == host)
                    .count();
                self.m.crashed(name, now, held);
            }
            Ev::Broken { host, lease } => self.lease_lost(host, lease),
        }
    }

    /// Sends what foca asked for, arms its timers, handles MemberDown.
    fn flush(&mut self, host: usize, out: Out) {
        let now = self.now();
        for (to, data) in out.sends {
            self.m.gossip_sent(host, data.len());
            let Some(&dst) = self.index.get(&to.node) else {
                continue;
            };
            if let Some(lat) = self.cfg.net.datagram(&mut self.net_rng, host, dst, now) {
                self.after(
                    lat,
                    Ev::Deliver {
                        to: dst,
                        from: host,
                        msg: Msg::Gossip(data),
                    },
                );
            }
        }
        for (timer, after) in out.timers {
            self.after(after, Ev::Timer { host, timer });
        }
        for node in out.down {
            self.m.member_down(&node, now);
            let Some(&peer) = self.index.get(&node) else {
                continue;
            };
            self.hosts[host].peers.remove(&node);
            let lost: Vec<WorkerId> = self.hosts[host]
                .leases
                .iter()
                .filter(|(_, l)| l.peer == peer)
                .map(|(&w, _)| w)
                .collect();
            for w in lost {
                self.lease_lost(host, w);
            }
        }
    }

    fn publish(&mut self, host: usize, on_change: bool) {
        let now = self.now();
        let h = &mut self.hosts[host];
        h.seq += 1;
        h.last_report = now;
        let r = load_report(
            &h.name,
            h.generation,
            h.seq,
            true,
            0,
            &h.sched.pool_loads(),
            0,
        );
        let Ok(bytes) = encode_report(&r) else {
            return;
        };
        let _ = h.foca.add_broadcast(&bytes);
        let mut out = Out::default();
        if on_change {
            let _ = h.foca.broadcast(&mut out);
        }
        self.flush(host, out);
    }

    /// A report now if free slots came or went, at most every 100 ms.
    fn maybe_report(&mut self, host: usize) {
        let now = self.now();
        let h = &mut self.hosts[host];
        let free = h.sched.counts().free_slots > 0;
        if free == h.had_free || h.report_scheduled {
            return;
        }
        h.had_free = free;
        h.report_scheduled = true;
        let when = (h.last_report + REPORT_MIN_GAP).max(now);
        self.at(when, Ev::ReportNow { host });
    }

    fn dispatch(&mut self, host: usize) {
        for a in self.hosts[host].sched.next_assignments() {
            self.after(
                a.payload.service,
                Ev::Done {
                    host,
                    op: a.op,
                    worker: a.worker,
                },
            );
        }
        self.maybe_report(host);
    }

    fn submit(&mut self, host: usize, action: u64) {
        if !self.hosts[host].alive {
            return;
        }
        let (service, _) = self.actions[action as usize];
        let h = &mut self.hosts[host];
        let key = ActionKey {
            instance: String::new(),
            action: format!("a{action}"),
        };
        let job = Job {
            action,
            service,
            hosted: None,
        };
        if h.sched
            .submit(key, h.platform.clone(), 0, Tenant::new("client", ""), job)
            .is_err()
        {
            self.m.refused += 1;
            return;
        }
        self.dispatch(host);
        self.rebalance(host);
    }

    fn done(&mut self, host: usize, op: OpId, worker: WorkerId) {
        if !self.hosts[host].alive {
            return;
        }
        let now = self.now();
        let hosted = self.op_job(host, op).and_then(|j| j.hosted);
        let action = self.op_job(host, op).map(|j| j.action);
        if let Some(a) = action {
            self.m.executed(a);
        }
        if self.hosts[host].sched.complete(op, worker, ()) {
            match hosted {
                None => {
                    if let Some(a) = action {
                        self.m.completed(a, now);
                    }
                }
                Some(first) => {
                    let mut to = vec![first];
                    to.extend(self.hosts[host].joined.remove(&op).unwrap_or_default());
                    // What was queued here starts first, so the load sent
                    // shows only the slots really free.
                    self.dispatch(host);
                    let load = self.own_report(host);
                    for (origin, lease, oop) in to {
                        let load = load.clone();
                        self.peer_send(
                            host,
                            origin,
                            Msg::Finished {
                                lease,
                                op: oop,
                                load,
                            },
                        );
                    }
                }
            }
        }
        self.dispatch(host);
        self.rebalance(host);
    }

    fn op_job(&self, host: usize, op: OpId) -> Option<Job> {
        self.hosts[host].sched.payload(op).cloned()
    }

    /// A message on the peer channel (TCP): no loss, but a partition
    /// breaks the stream, which the origin notices after a while.
    fn peer_send(&mut self, from: usize, to: usize, msg: Msg) {
        let now = self.now();
        if self.cfg.net.connected(from, to, now) && self.hosts[to].alive {
            let lat = self.cfg.net.latency(&mut self.net_rng);
            self.after(lat, Ev::Deliver { to, from, msg });
            return;
        }
        let (origin, lease) = match &msg {
            Msg::Offer { lease, .. } => (from, *lease),
            Msg::Accepted { lease, .. }
            | Msg::Rejected { lease, .. }
            | Msg::Finished { lease, .. } => (to, *lease),
            Msg::Gossip(_) => return,
        };
        self.after(
            STREAM_BREAK,
            Ev::Broken {
                host: origin,
                lease,
            },
        );
    }

    fn deliver(&mut self, to: usize, from: usize, msg: Msg) {
        if !self.hosts[to].alive {
            return;
        }
        let now = self.now();
        match msg {
            Msg::Gossip(data) => {
                let mut out = Out::default();
                let _ = self.hosts[to].foca.handle_data(&data, &mut out);
                self.flush(to, out);
                let mut kick = false;
                for r in self.hosts[to].reports.drain() {
                    kick |= r.pools.iter().any(|p| p.running + p.queued < p.slots);
                    self.hosts[to].peers.on_report(now, &r);
                }
                if kick {
                    self.rebalance(to);
                }
            }
            Msg::Offer { lease, op, job } => self.offer(to, from, lease, op, job),
            Msg::Accepted { lease: _, load } => {
                let peer = self.hosts[from].name.clone();
                self.hosts[to]
                    .peers
                    .offer_answered(now, &peer, true, Some(&load));
                self.rebalance(to);
            }
            Msg::Rejected { lease, load, busy } => {
                self.m.rejects += 1;
                let peer = self.hosts[from].name.clone();
                let backoff = self.hosts[to].policy.config().busy_backoff;
                let peers = &mut self.hosts[to].peers;
                peers.offer_answered(now, &peer, false, Some(&load));
                if busy {
                    peers.rejected_busy(now, &peer, backoff);
                }
                let Some(l) = self.hosts[to].leases.remove(&lease) else {
                    return;
                };
                if self.hosts[to].sched.remote_release(lease).is_some() {
                    if let Some(fb) = l.fallback {
                        self.send_offer(to, l.op, fb, None);
                    }
                }
                self.dispatch(to);
                self.rebalance(to);
            }
            Msg::Finished { lease, op, load } => {
                self.hosts[to].leases.remove(&lease);
                if self.cfg.load_on_finish {
                    self.hosts[to].peers.on_direct(now, &load);
                }
                let action = self.op_job(to, op).map(|j| j.action);
                if self.hosts[to].sched.complete(op, lease, ()) {
                    if let Some(a) = action {
                        self.m.completed(a, now);
                    }
                }
                self.rebalance(to);
            }
        }
    }

    /// The executor's side of an offer.
    fn offer(&mut self, host: usize, origin: usize, lease: WorkerId, op: OpId, job: Job) {
        let now = self.now();
        let h = &mut self.hosts[host];
        let pools = h.sched.pool_loads();
        let origin_name = self.names[origin].clone();
        let verdict = h.policy.admit(
            now,
            &HostLoad {
                accepting: true,
                pools: &pools,
                incoming: 0,
            },
            &OfferInfo {
                origin: &origin_name,
                platform: &h.platform,
                hop: 0,
                proto: PROTO,
            },
        );
        let busy = verdict == Err(rbe_proto::cluster::RejectReason::Busy);
        if verdict.is_ok() {
            let key = ActionKey {
                instance: String::new(),
                action: format!("a{}", job.action),
            };
            let hosted = Job {
                hosted: Some((origin, lease, op)),
                ..job
            };
            let tenant = Tenant::new(format!("origin-{origin}"), "");
            let submitted = h.sched.submit(key, h.platform.clone(), 0, tenant, hosted);
            if let Ok((id, new)) = submitted {
                // An identical action already running here: the origin
                // becomes one more waiter on it.
                if !new {
                    h.joined.entry(id).or_default().push((origin, lease, op));
                }
                self.dispatch(host);
                let load = self.own_report(host);
                self.peer_send(host, origin, Msg::Accepted { lease, load });
                return;
            }
        }
        let load = self.own_report(host);
        self.peer_send(host, origin, Msg::Rejected { lease, load, busy });
    }

    fn own_report(&mut self, host: usize) -> LoadReport {
        let carry = self.cfg.answers_carry_seq;
        let h = &mut self.hosts[host];
        let seq = if carry { h.seq } else { 0 };
        let pools = h.sched.pool_loads();
        load_report(&h.name, h.generation, seq, true, 0, &pools, 0)
    }

    fn send_offer(&mut self, host: usize, op: OpId, to: usize, fallback: Option<usize>) -> bool {
        let h = &mut self.hosts[host];
        let Some(job) = h.sched.payload(op).cloned() else {
            return false;
        };
        let Some(lease) = h.sched.remote_lease(op) else {
            return false;
        };
        let peer = self.hosts[to].name.clone();
        let h = &mut self.hosts[host];
        h.peers.offer_sent(&peer);
        h.leases.insert(
            lease,
            Lease {
                peer: to,
                op,
                fallback,
            },
        );
        let now = self.now();
        self.m.offered(to, now);
        self.peer_send(host, to, Msg::Offer { lease, op, job });
        true
    }

    fn lease_lost(&mut self, host: usize, lease: WorkerId) {
        let Some(l) = self.hosts[host].leases.remove(&lease) else {
            return;
        };
        let peer = self.hosts[l.peer].name.clone();
        let now = self.now();
        let h = &mut self.hosts[host];
        h.peers.offer_answered(now, &peer, false, None);
        if !h.sched.worker_disconnect(lease).is_empty() {
            self.m.redispatched(now);
        }
        self.dispatch(host);
        self.rebalance(host);
    }

    /// The origin's pass: offer the head of the queue while the policy
    /// says so.
    fn rebalance(&mut self, host: usize) {
        if !self.cfg.offload || !self.hosts[host].alive {
            return;
        }
        let now = self.now();
        let h = &mut self.hosts[host];
        let pools = h.sched.pool_loads();
        let Some(pool) = pools.first() else {
            return;
        };
        let mut queued = pool.queued;
        let slots = pool.slots;
        let cands: Vec<(OpId, Platform)> = h
            .sched
            .queued_in_order(&pool.platform)
            .into_iter()
            .filter(|q| q.payload.hosted.is_none() && q.requeues < MAX_REQUEUES)
            .take(MAX_OFFERS_PER_PASS)
            .map(|q| (q.id, q.platform.clone()))
            .collect();
        let mut by_pressure = pools.clone();
        for (op, need) in cands {
            by_pressure[0].queued = queued;
            let local = if slots == 0 {
                f64::INFINITY
            } else {
                local_pressure(&by_pressure, &need)
            };
            let h = &mut self.hosts[host];
            let d = h.policy.pick(now, &mut h.rng, &h.peers, local, &need);
            match d {
                Decision::Offer {
                    to,
                    fallback,
                    report_age,
                    ..
                } => {
                    let (Some(&t), fb) = (
                        self.index.get(&to),
                        fallback.and_then(|f| self.index.get(&f).copied()),
                    ) else {
                        break;
                    };
                    self.m.staleness(report_age);
                    if !self.send_offer(host, op, t, fb) {
                        break;
                    }
                    queued = queued.saturating_sub(1);
                }
                Decision::Keep(why) => {
                    self.m.kept(why);
                    break;
                }
            }
        }
    }

    /// Total slots, for the ideal makespan.
    pub(crate) fn total_slots(&self) -> u64 {
        self.cfg.slots.iter().map(|&s| u64::from(s)).sum()
    }

    /// Hosts simulated.
    pub(crate) fn host_count(&self) -> usize {
        self.hosts.len()
    }
}
