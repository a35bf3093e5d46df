//! The gossip driver: one tokio task joining a UDP socket, the AEAD
//! [`Wire`], and a foca instance with our [`MemberCodec`] and
//! [`ReportHandler`].
//!
//! **Why foca.** It is SWIM with suspicion (membership and failure
//! detection are what we need from a library) and it is sans-IO: it owns no
//! socket, clock or RNG. So we seal every datagram ourselves (chitchat
//! hands its transport structured messages it cannot serialize from
//! outside), take the UDP socket from systemd, and the simulator runs the
//! same protocol code over a virtual network. Load is not a replicated
//! key-value store: a report older than a couple of seconds is worthless,
//! so "newest seq per node wins" as a custom broadcast ([`crate::report`])
//! is all the dissemination it needs. Why the envelope uses per-session
//! keys and counter nonces is in [`crate::wire`].
//!
//! The layers, bottom up: [`crate::wire`] (seal/open, replay window, keys),
//! [`crate::codec`] (foca's messages as bytes), [`crate::report`] (load
//! reports as broadcasts), this task (I/O, timers, the view).
//!
//! foca is sans-IO: it asks for datagrams to be sent and timers to be set
//! through a runtime, and is fed received bytes and due timers. This task is
//! that runtime. Every datagram passes the wire before foca sees a byte, so
//! a host without the cluster key cannot make foca learn anything: it never
//! appears in a member list. Bad input (forged, replayed, truncated,
//! oversized, undecodable) is counted in [`Counters`] and logged at most
//! once a minute per source address; none of it reaches foca's state.
//!
//! Time is tokio's monotonic clock only: report arrival stamps, foca's
//! timers and the suspect watch never read the wall clock, so a clock jump
//! changes nothing.
//!
//! Around foca the task adds what a partition needs to heal (suspicions
//! dropped on rejoin, a suspect timer on every host, announces while foca
//! is not connected): why, in [`crate::heal`].
//!
//! Seeds (`host:port`) are resolved by a side task at start and every
//! [`SEED_INTERVAL`] while this host knows fewer members than there are
//! seeds, and announced to every [`ANNOUNCE_INTERVAL`] meanwhile; each
//! address is announced to as a [`Member::seed`] stand-in, since only its
//! address is known. Resolution failures are counted and logged once per
//! round, never fatal.
//!
//! The frontend talks to the task through [`ClusterHandle`]: it publishes
//! its load ([`ClusterHandle::publish_report`]), reloads keys, leaves on
//! shutdown, and reads the membership from a `watch` channel
//! ([`ClusterView`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, OwnedNotification, State, Timer};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rbe_proto::cluster::LoadReport;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::codec::MemberCodec;
use crate::heal::SuspectWatch;
use crate::identity::{Member, NodeName};
use crate::report::{encode_report, ReportHandler, ReportQueue};
use crate::wire::{Keyring, Wire, WireError, MAX_DATAGRAM, MAX_PAYLOAD};

/// How often seeds are re-resolved and re-announced to while the cluster
/// looks smaller than the seed list.
pub const SEED_INTERVAL: Duration = Duration::from_secs(30);
/// How often the suspicions this host holds are checked against
/// [`crate::heal::SuspectWatch`], and, while foca is not connected, the
/// members it lists are announced to ([`crate::heal::announce_targets`]).
pub const HEAL_INTERVAL: Duration = Duration::from_secs(1);
/// How often the seeds' addresses are announced to while the cluster looks
/// smaller than the seed list (names are resolved every [`SEED_INTERVAL`]).
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(2);
/// How long one seed's name resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bad input from one address is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Addresses remembered for log rate limiting.
const MAX_LOG_PEERS: usize = 4096;
/// Reports kept for nodes that are not (or no longer) members.
const MAX_REPORTS: usize = 4096;

/// What the driver needs; the frontend maps `[cluster]` settings onto it.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The cluster's name: the HKDF salt, so two clusters sharing a key
    /// still cannot talk.
    pub cluster_name: String,
    /// This host. A `gossip_addr` port of 0 is replaced by the socket's, and
    /// an unspecified IP by the socket's (an error if that is unspecified
    /// too: peers need an address they can send to).
    pub identity: Member,
    /// `host:port` entries, DNS names or addresses.
    pub seeds: Vec<String>,
    pub keyring: Keyring,
    /// How often the last published report is sent again when the
    /// frontend publishes nothing new; on-change publishes are spaced at
    /// least a fifth of this apart.
    pub report_interval: Duration,
    /// foca's settings, from [`DriverConfig::new`] (`Config::new_lan` with
    /// the packet size the wire leaves). Tests shorten its timers.
    pub foca: foca::Config,
}

impl DriverConfig {
    /// foca's LAN settings for a cluster of about `expected_size` hosts
    /// (it scales retransmissions and the suspicion timeout), a report
    /// every 500 ms.
    pub fn new(
        cluster_name: impl Into<String>,
        identity: Member,
        seeds: Vec<String>,
        keyring: Keyring,
        expected_size: u32,
    ) -> Self {
        let mut foca =
            foca::Config::new_lan(NonZeroU32::new(expected_size.max(1)).unwrap_or(NonZeroU32::MIN));
        foca.max_packet_size =
            std::num::NonZeroUsize::new(MAX_PAYLOAD).unwrap_or(std::num::NonZeroUsize::MIN);
        foca.notify_down_members = true;
        Self {
            cluster_name: cluster_name.into(),
            identity,
            seeds,
            keyring,
            report_interval: Duration::from_millis(500),
            foca,
        }
    }
}

/// A member's liveness as this host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Up,
    /// Unanswered probes; still treated as up by SWIM until declared down.
    Suspect,
    Down,
}

/// One other member and its newest load report.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberView {
    pub member: Member,
    pub state: MemberState,
    /// The newest report of this member's generation and when it arrived
    /// here (this host's monotonic clock; sender clocks are never used).
    pub report: Option<(LoadReport, Instant)>,
}

/// The membership as published on the watch channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    /// This host as the cluster knows it. The generation changes if the
    /// cluster declared us down and we rejoined (foca's renew).
    pub me: Member,
    /// Every other member foca knows, down ones included, by node name.
    pub members: Vec<MemberView>,
}

impl ClusterView {
    /// Members up or suspect.
    pub fn live(&self) -> impl Iterator<Item = &MemberView> {
        self.members.iter().filter(|m| m.state != MemberState::Down)
    }

    pub fn get(&self, node: &str) -> Option<&MemberView> {
        self.members.iter().find(|m| m.member.node.as_str() == node)
    }
}

/// What happened on the socket, for metrics and `rbectl cluster status`.
#[derive(Debug, Default)]
pub struct Counters {
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Datagrams that failed to open: wrong key, wrong cluster name,
    /// unknown key id or version, forged.
    pub auth_failures: AtomicU64,
    pub replays: AtomicU64,
    /// Too short for the envelope, or authentic but not a foca message.
    pub malformed: AtomicU64,
    pub oversized: AtomicU64,
    /// Seed names that did not resolve (one per seed per round).
    pub unresolved_seeds: AtomicU64,
    pub send_errors: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub auth_failures: u64,
    pub replays: u64,
    pub malformed: u64,
    pub oversized: u64,
    pub unresolved_seeds: u64,
    pub send_errors: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            packets_in: g(&self.packets_in),
            bytes_in: g(&self.bytes_in),
            packets_out: g(&self.packets_out),
            bytes_out: g(&self.bytes_out),
            auth_failures: g(&self.auth_failures),
            replays: g(&self.replays),
            malformed: g(&self.malformed),
            oversized: g(&self.oversized),
            unresolved_seeds: g(&self.unresolved_seeds),
            send_errors: g(&self.send_errors),
        }
    }
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// Why the driver could not start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("gossip socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("the socket is bound to {0}, and the member's gossip address names no host peers can reach; set the address to advertise")]
    Unadvertisable(SocketAddr),
}

enum Command {
    Reload(Keyring, oneshot::Sender<()>),
    Leave(oneshot::Sender<()>),
}

/// The frontend's side of a running driver. Dropping every handle stops
/// the driver without a leave.
#[derive(Clone)]
pub struct ClusterHandle {
    commands: mpsc::Sender<Command>,
    reports: Arc<watch::Sender<Option<LoadReport>>>,
    view: watch::Receiver<ClusterView>,
    counters: Arc<Counters>,
    local_addr: SocketAddr,
    report_seq: Arc<AtomicU64>,
}

impl ClusterHandle {
    /// The membership, updated on every change.
    pub fn view(&self) -> watch::Receiver<ClusterView> {
        self.view.clone()
    }

    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    /// The address the gossip socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The seq of the last report the driver sent (0 before the first).
    /// A direct answer to a peer (an offer's accept or reject, a finished
    /// lease) carries it: the peer's table takes an answer with the seq it
    /// already holds, and ignores one with an older seq as stale, so an
    /// answer without it would never update the peer's view of this host.
    pub fn report_seq(&self) -> u64 {
        self.report_seq.load(Ordering::Relaxed)
    }

    /// Publishes this host's load. The driver fills in node, generation
    /// and seq; only the newest unsent report is kept.
    pub fn publish_report(&self, report: LoadReport) {
        self.reports.send_replace(Some(report));
    }

    /// Applies a new keyring (SIGHUP); returns once the driver uses it.
    pub async fn reload_keys(&self, keyring: Keyring) {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Reload(keyring, tx))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Tells the cluster this host is leaving, then stops the driver.
    /// Returns when the goodbye datagrams are sent (or the driver is gone).
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Binds `addr` and starts the driver.
pub async fn bind(config: DriverConfig, addr: SocketAddr) -> Result<ClusterHandle, DriverError> {
    let socket = std::net::UdpSocket::bind(addr)?;
    start(config, socket)
}

/// Starts the driver on a bound socket (for example the systemd-activated
/// `FileDescriptorName=gossip`). Must be called inside a tokio runtime.
pub fn start(
    mut config: DriverConfig,
    socket: std::net::UdpSocket,
) -> Result<ClusterHandle, DriverError> {
    // tokio's interval panics on zero; a tiny interval is a config error
    // the rate limit below absorbs.
    config.report_interval = config.report_interval.max(Duration::from_millis(10));
    // foca must never produce more than the envelope can carry.
    if config.foca.max_packet_size.get() > MAX_PAYLOAD {
        config.foca.max_packet_size =
            std::num::NonZeroUsize::new(MAX_PAYLOAD).unwrap_or(std::num::NonZeroUsize::MIN);
    }
    socket.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(socket)?;
    let local_addr = socket.local_addr()?;
    if config.identity.gossip_addr.port() == 0 {
        config.identity.gossip_addr.set_port(local_addr.port());
    }
    // Peers send to the address we advertise: 0.0.0.0 would make each of
    // them talk to itself.
    if config.identity.gossip_addr.ip().is_unspecified() {
        if local_addr.ip().is_unspecified() {
            return Err(DriverError::Unadvertisable(local_addr));
        }
        config.identity.gossip_addr.set_ip(local_addr.ip());
    }
    let me = config.identity.clone();
    let (handler, inbox) = ReportHandler::queued(me.node.clone());
    let foca = Foca::with_custom_broadcast(
        me.clone(),
        config.foca.clone(),
        StdRng::from_os_rng(),
        MemberCodec::for_node(me.node.clone()),
        handler,
    );
    let counters = Arc::new(Counters::default());
    let (view_tx, view_rx) = watch::channel(ClusterView {
        me: me.clone(),
        members: Vec::new(),
    });
    let (report_tx, report_rx) = watch::channel(None);
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let (seed_tx, seed_rx) = mpsc::channel(4);
    let live = Arc::new(AtomicUsize::new(0));
    let report_seq = Arc::new(AtomicU64::new(0));
    let resolver = tokio::spawn(resolve_seeds(
        config.seeds.clone(),
        live.clone(),
        counters.clone(),
        seed_tx,
    ));
    let task = Task {
        socket,
        local_addr,
        wire: Wire::new(&config.cluster_name, config.keyring.clone()),
        foca,
        rt: AccumulatingRuntime::new(),
        inbox,
        timers: BTreeMap::new(),
        timer_seq: 0,
        counters: counters.clone(),
        view: view_tx,
        reports: HashMap::new(),
        live,
        log_limit: HashMap::new(),
        report_interval: config.report_interval,
        seq: report_seq.clone(),
        last_sent: None,
        watch: SuspectWatch::new(config.foca.suspect_to_down_after),
        started: Instant::now(),
        connected: false,
    };
    tokio::spawn(async move {
        task.run(cmd_rx, report_rx, seed_rx).await;
        resolver.abort();
    });
    Ok(ClusterHandle {
        commands: cmd_tx,
        reports: Arc::new(report_tx),
        view: view_rx,
        counters,
        local_addr,
        report_seq,
    })
}

async fn resolve_seeds(
    seeds: Vec<String>,
    live: Arc<AtomicUsize>,
    counters: Arc<Counters>,
    out: mpsc::Sender<Vec<SocketAddr>>,
) {
    let mut resolved: Option<(Instant, Vec<SocketAddr>)> = None;
    loop {
        // Members other than us, plus us, against the seed entries (which
        // usually list this host too); alone, always try again.
        let others = live.load(Ordering::Relaxed);
        let smaller = others == 0 || others + 1 < seeds.len();
        let stale = resolved
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= SEED_INTERVAL);
        if stale && (smaller || resolved.is_none()) {
            let mut addrs = Vec::new();
            let mut failed = Vec::new();
            for seed in &seeds {
                match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(seed.as_str()))
                    .await
                {
                    Ok(Ok(found)) => addrs.extend(found),
                    Ok(Err(e)) => failed.push(format!("{seed}: {e}")),
                    Err(_) => failed.push(format!("{seed}: timed out")),
                }
            }
            if !failed.is_empty() {
                bump(&counters.unresolved_seeds, failed.len() as u64);
                tracing::warn!(seeds = ?failed, "cluster seeds did not resolve; retrying in 30 s");
            }
            if !addrs.is_empty() && out.send(addrs.clone()).await.is_err() {
                return;
            }
            resolved = Some((Instant::now(), addrs));
        } else if smaller {
            // The names resolve every 30 s, but the last addresses are
            // announced to every few seconds: after a partition heals,
            // this is what brings a host that lost its peers back.
            if let Some((_, addrs)) = resolved.as_ref().filter(|(_, a)| !a.is_empty()) {
                if out.send(addrs.clone()).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(ANNOUNCE_INTERVAL).await;
    }
}

type Gossip = Foca<Member, MemberCodec, StdRng, ReportHandler>;

struct Task {
    socket: UdpSocket,
    local_addr: SocketAddr,
    wire: Wire,
    foca: Gossip,
    rt: AccumulatingRuntime<Member>,
    inbox: ReportQueue,
    /// foca's timers by due time (the sequence number keeps equal instants
    /// apart and in submission order).
    timers: BTreeMap<(Instant, u64), Timer<Member>>,
    timer_seq: u64,
    counters: Arc<Counters>,
    view: watch::Sender<ClusterView>,
    /// Newest report per node with its arrival.
    reports: HashMap<NodeName, (LoadReport, Instant)>,
    live: Arc<AtomicUsize>,
    log_limit: HashMap<SocketAddr, Instant>,
    report_interval: Duration,
    /// The last seq sent, shared with the handles ([`ClusterHandle::report_seq`]).
    seq: Arc<AtomicU64>,
    last_sent: Option<Instant>,
    watch: SuspectWatch,
    /// The origin of the watch's clock.
    started: Instant,
    /// Whether foca said it is connected (`Active`) since it last said it
    /// is not (`Idle`, `Defunct`, `Rejoin`).
    connected: bool,
}

#[path = "driver_task.rs"]
mod task;
