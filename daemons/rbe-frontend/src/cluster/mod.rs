//! This host as a member of an rbe cluster (`[cluster]` in frontend.toml).
//!
//! - Membership and load reports: the gossip driver of `rbe-cluster` runs
//!   on the UDP socket (activated `gossip` or bound); [`Cluster`] publishes
//!   this host's load every report interval and keeps the peer table the
//!   offload policy reads ([`members`]).
//! - The peer listener (TCP, mutual TLS with the cluster CA, never the
//!   public port): [`PeerLayer`] names the calling host by its
//!   certificate; [`peer::PeerService`] answers Describe and carries
//!   offloaded actions; [`peer_cas`] is the read-only CAS peers pull blobs
//!   from; [`forward`] answers and asks about operations held by one host
//!   and named to another.
//! - Eligibility: a member gets offers only after a Describe round trip
//!   over mutual TLS showed that the host answering at its peer address
//!   holds a certificate for its node name and agrees on cluster and
//!   generation. Holding the gossip key alone is not enough.
//! - [`admin`]: `rbectl cluster status`, on the local socket.

pub mod admin;
pub mod forward;
mod host;
mod layer;
mod lease;
mod members;
mod offload;
mod orphan;
pub mod peer;
pub mod peer_cas;
pub mod store;
mod tree_size;

pub use layer::{PeerLayer, PeerNode};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rbe_cluster::driver::{ClusterHandle, ClusterView, DriverConfig};
use rbe_cluster::policy::{OffloadConfig, OffloadPolicy, PeerTable};
use rbe_cluster::wire::Keyring;
use rbe_cluster::{Member, NodeName};
use rbe_config::{ClusterSettings, OffloadSettings};
use tokio::sync::watch;
use tonic::transport::Channel;

/// Why the cluster could not start: a configuration error (exit 78).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.node: {0}")]
    Node(#[from] rbe_cluster::NodeNameError),
    #[error("cluster.key_file / cluster.old_key_files: {0}")]
    Key(#[from] rbe_cluster::wire::KeyError),
    #[error("{0}")]
    Tls(#[from] rbe_net::tls::TlsError),
    #[error("{key}: {value:?}: {reason}")]
    Address {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("cluster generation record {path}: {source}")]
    Generation {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gossip: {0}")]
    Driver(#[from] rbe_cluster::driver::DriverError),
}

/// Whether a member may be offered work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Eligibility {
    /// Not checked yet (or its generation changed).
    Unknown,
    /// Describe answered over mutual TLS with the right node, cluster and
    /// generation.
    Eligible,
    /// Describe failed: why, for `rbectl cluster status`.
    Refused(String),
}

/// A peer as the peer channel knows it: one channel per member
/// generation.
pub(crate) struct PeerLink {
    pub generation: u64,
    pub addr: SocketAddr,
    pub channel: Channel,
    pub eligibility: Eligibility,
}

/// Offload and peer-channel counters, for `rbectl cluster status`.
#[derive(Default)]
pub struct Counters {
    pub offers_sent: AtomicU64,
    pub offers_accepted: AtomicU64,
    pub offers_rejected: AtomicU64,
    /// Operations kept here because their input tree is over
    /// `max_transfer_bytes` (measured here, or a peer said TOO_LARGE).
    pub offers_too_large: AtomicU64,
    /// Offers refused as executor because their tree is too large.
    pub hosted_too_large: AtomicU64,
    /// BUSY rejects that started (or lengthened) a peer's backoff.
    pub peer_backoffs: AtomicU64,
    pub offers_failed: AtomicU64,
    pub offers_received: AtomicU64,
    pub offers_admitted: AtomicU64,
    pub offers_refused: AtomicU64,
    pub leases_lost: AtomicU64,
    pub stale_reports: AtomicU64,
    /// Results that arrived on the stream of a lease already lost.
    pub late_results: AtomicU64,
    pub describe_failures: AtomicU64,
    pub forwarded: AtomicU64,
    /// Hosted actions whose origin went away (stream broken or down).
    pub orphans: AtomicU64,
    /// ... whose origin came back (membership only) within the grace.
    pub orphans_adopted: AtomicU64,
    /// ... withdrawn after the grace time (`orphan_policy`).
    pub orphans_cancelled: AtomicU64,
    /// ... run to their end, the result cached here.
    pub orphans_finished: AtomicU64,
    /// Offers accepted by a peer in front of this host's backing store:
    /// no input measured, no output pulled back.
    pub shared_store_offers: AtomicU64,
    /// Offers hosted here from an origin in front of this host's backing
    /// store: no input pulled.
    pub shared_store_hosted: AtomicU64,
    /// Bytes of inputs pulled from origins' peer CAS (as executor).
    pub inputs_pulled_bytes: AtomicU64,
    /// Bytes of outputs pulled from executors' peer CAS (as origin).
    pub outputs_pulled_bytes: AtomicU64,
    /// `offers_rejected` by the peer's reason (`RejectReason` as index).
    pub rejected_by_reason: [AtomicU64; REJECT_REASONS],
    /// Nanoseconds of `OffloadPolicy::pick` in the rebalance pass, lock
    /// included.
    pub decision_ns: rbe_metrics::Histogram,
    /// Microseconds from sending an offer to its answer (accepted or
    /// rejected).
    pub offer_rtt_us: rbe_metrics::Histogram,
}

/// `RejectReason` values counted apart (0 is unspecified; unknown ones
/// count there too).
pub const REJECT_REASONS: usize = 9;

impl Counters {
    pub fn bump(a: &AtomicU64) {
        a.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a reject with the peer's `reason`.
    pub fn rejected(&self, reason: i32) {
        let i = usize::try_from(reason)
            .ok()
            .filter(|i| *i < REJECT_REASONS)
            .unwrap_or(0);
        Self::bump(&self.offers_rejected);
        Self::bump(&self.rejected_by_reason[i]);
    }

    fn list(&self) -> Vec<(String, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut v: Vec<(String, u64)> = [
            ("offers_sent", g(&self.offers_sent)),
            ("offers_accepted", g(&self.offers_accepted)),
            ("offers_rejected", g(&self.offers_rejected)),
            ("peer_backoffs", g(&self.peer_backoffs)),
            ("offers_too_large", g(&self.offers_too_large)),
            ("hosted_too_large", g(&self.hosted_too_large)),
            ("offers_failed", g(&self.offers_failed)),
            ("offers_received", g(&self.offers_received)),
            ("offers_admitted", g(&self.offers_admitted)),
            ("offers_refused", g(&self.offers_refused)),
            ("leases_lost", g(&self.leases_lost)),
            ("stale_reports_ignored", g(&self.stale_reports)),
            ("late_results_ignored", g(&self.late_results)),
            ("describe_failures", g(&self.describe_failures)),
            ("operations_forwarded", g(&self.forwarded)),
            ("orphans", g(&self.orphans)),
            ("orphans_adopted", g(&self.orphans_adopted)),
            ("orphans_cancelled", g(&self.orphans_cancelled)),
            ("orphans_finished", g(&self.orphans_finished)),
            ("shared_store_offers", g(&self.shared_store_offers)),
            ("shared_store_hosted", g(&self.shared_store_hosted)),
            ("inputs_pulled_bytes", g(&self.inputs_pulled_bytes)),
            ("outputs_pulled_bytes", g(&self.outputs_pulled_bytes)),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c))
        .collect();
        // Only the reasons seen: most hosts never see most of them.
        for (i, a) in self.rejected_by_reason.iter().enumerate() {
            let n = g(a);
            if n > 0 {
                let reason = rbe_proto::cluster::RejectReason::try_from(i as i32)
                    .ok()
                    .filter(|_| i > 0)
                    .map_or("unspecified", |r| r.as_str_name());
                v.push((
                    format!("offers_rejected_{}", reason.to_ascii_lowercase()),
                    n,
                ));
            }
        }
        self.decision_ns.named("offload_decision_ns", &mut v);
        self.offer_rtt_us.named("offer_rtt_us", &mut v);
        v
    }
}

/// The offload policy and what it knows of peers, under one lock.
pub struct Placement {
    pub policy: OffloadPolicy,
    pub peers: PeerTable,
}

/// This host in the cluster.
pub struct Cluster {
    pub name: String,
    pub node: NodeName,
    handle: ClusterHandle,
    view: watch::Receiver<ClusterView>,
    /// Every generation this process has had (foca renews it when the
    /// cluster declared us down and we came back): names given out under
    /// any of them are still ours.
    generations: Mutex<Vec<u64>>,
    peer_tls: rbe_net::PeerClientTls,
    pub(crate) peers: Mutex<HashMap<NodeName, PeerLink>>,
    pub counters: Counters,
    pub offload: arc_swap::ArcSwap<OffloadSettings>,
    pub placement: Mutex<Placement>,
    /// Where our own Peer service listens, as peers reach it.
    pub peer_addr: SocketAddr,
    /// Offers accepted whose inputs are still arriving: `incoming` in this
    /// host's report.
    pub incoming: std::sync::atomic::AtomicU32,
    /// How often this host publishes its load (reloadable).
    pub report_interval_ms: AtomicU64,
    /// Monotonic zero for the policy's `now`.
    epoch: tokio::time::Instant,
    /// Operations never offered again (their input tree is too large).
    local_only: Mutex<std::collections::HashSet<rbe_sched::OpId>>,
    /// This host's backing store id from casd ([`store`]); 0 none or
    /// not known yet.
    store_id: AtomicU64,
    /// Asks casd for it again (a reload).
    store_recheck: tokio::sync::Notify,
}

/// Operations remembered as local-only; past it the set starts afresh
/// (one more measurement each, for those still queued).
const MAX_LOCAL_ONLY: usize = 4096;

/// The offload tunables of `[offload]`.
pub fn offload_config(o: &OffloadSettings, report_max_age: Duration) -> OffloadConfig {
    OffloadConfig {
        threshold: o.threshold,
        hysteresis: o.hysteresis,
        choices: rbe_cluster::policy::Choices::Sample(o.choices.max(1) as usize),
        max_offers_per_peer: o.max_offers_per_peer,
        report_max_age,
        accept_max_rounds: o.accept_max_rounds,
        ..OffloadConfig::default()
    }
}

/// Resolves an advertised `host:port` (a name is looked up once, at
/// start).
async fn resolve(key: &'static str, value: &str) -> Result<SocketAddr, ClusterError> {
    let err = |reason: String| ClusterError::Address {
        key,
        value: value.to_owned(),
        reason,
    };
    let mut addrs = tokio::net::lookup_host(value)
        .await
        .map_err(|e| err(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| err("resolves to no address".to_owned()))
}

/// The address peers reach a listener at: the advertised one, else the
/// listener's own, else (a wildcard listener) this host's first address
/// that is not loopback.
async fn advertised(
    key: &'static str,
    advertise: Option<&str>,
    bound: SocketAddr,
) -> Result<SocketAddr, ClusterError> {
    if let Some(a) = advertise {
        return resolve(key, a).await;
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound);
    }
    let ip = first_host_ip().ok_or_else(|| ClusterError::Address {
        key,
        value: bound.to_string(),
        reason: "the listener is a wildcard and this host has no non-loopback address; set it"
            .to_owned(),
    })?;
    Ok(SocketAddr::new(ip, bound.port()))
}

/// This host's first IPv4 address that is not loopback (from the kernel's
/// interface list; `/proc/net/fib_trie` needs no extra crate features).
fn first_host_ip() -> Option<std::net::IpAddr> {
    let text = std::fs::read_to_string("/proc/net/fib_trie").ok()?;
    // "|-- 10.88.0.1" followed by "/32 host LOCAL" marks a local address.
    let lines: Vec<&str> = text.lines().collect();
    lines.windows(2).find_map(|w| {
        let ip: std::net::Ipv4Addr = w[0].trim().strip_prefix("|-- ")?.parse().ok()?;
        (w[1].contains("host LOCAL") && !ip.is_loopback()).then_some(std::net::IpAddr::V4(ip))
    })
}

impl Cluster {
    /// Joins the cluster: loads the key and the peer certificate, picks
    /// this process's generation (above any earlier one recorded in
    /// `state_dir`, so a restart always outranks its old self even after
    /// the wall clock stepped back) and starts gossip on `gossip`.
    pub async fn start(
        c: &ClusterSettings,
        offload: &OffloadSettings,
        gossip: std::net::UdpSocket,
        peer_bound: SocketAddr,
        state_dir: Option<&std::path::Path>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let node = c.node_name()?;
        let keyring = Keyring::load(&c.key_file, &c.old_key_files)?;
        let files = rbe_net::tls::TlsFiles::cluster(c).ok_or(ClusterError::Address {
            key: "cluster.tls_cert",
            value: String::new(),
            reason: "tls_ca, tls_cert and tls_key must be set".to_owned(),
        })?;
        let peer_tls = rbe_net::PeerClientTls::load(&files)?;
        let now = rbe_cluster::generation::now_ns();
        let generation = match state_dir {
            Some(d) => {
                let path = d.join("cluster-generation");
                rbe_cluster::generation::next_generation(&path, now).map_err(|source| {
                    ClusterError::Generation {
                        path: path.display().to_string(),
                        source,
                    }
                })?
            }
            None => now,
        };
        let gossip_bound = gossip.local_addr().map_err(|e| ClusterError::Address {
            key: "cluster.gossip_listen",
            value: String::new(),
            reason: e.to_string(),
        })?;
        let gossip_addr = advertised(
            "cluster.advertise_gossip",
            c.advertise_gossip.as_deref(),
            gossip_bound,
        )
        .await?;
        let peer_addr = advertised(
            "cluster.advertise_peer",
            c.advertise_peer.as_deref(),
            peer_bound,
        )
        .await?;
        let me = Member {
            node: node.clone(),
            generation,
            gossip_addr,
            peer_addr,
        };
        let mut config = DriverConfig::new(
            c.name.clone(),
            me,
            c.seeds.clone(),
            keyring,
            c.expected_size,
        );
        config.report_interval = Duration::from_millis(c.report_interval_ms);
        let handle = rbe_cluster::driver::start(config, gossip)?;
        let view = handle.view();
        tracing::info!(
            cluster = %c.name,
            node = %node,
            generation,
            gossip = %gossip_addr,
            peer = %peer_addr,
            seeds = c.seeds.len(),
            "cluster: joining"
        );
        let report_max_age = Duration::from_millis(c.report_max_age_ms);
        Ok(Arc::new(Cluster {
            name: c.name.clone(),
            node: node.clone(),
            handle,
            view,
            generations: Mutex::new(vec![generation]),
            peer_tls,
            peers: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            offload: arc_swap::ArcSwap::from_pointee(offload.clone()),
            placement: Mutex::new(Placement {
                policy: OffloadPolicy::new(offload_config(offload, report_max_age)),
                peers: PeerTable::new(node),
            }),
            peer_addr,
            incoming: std::sync::atomic::AtomicU32::new(0),
            report_interval_ms: AtomicU64::new(c.report_interval_ms),
            epoch: tokio::time::Instant::now(),
            local_only: Mutex::new(std::collections::HashSet::new()),
            store_id: AtomicU64::new(0),
            store_recheck: tokio::sync::Notify::new(),
        }))
    }

    /// `op` is never offered again.
    pub fn keep_local(&self, op: rbe_sched::OpId) {
        let mut s = self.local_only.lock();
        if s.len() >= MAX_LOCAL_ONLY {
            s.clear();
        }
        s.insert(op);
    }

    /// Whether `op` stays here.
    pub fn is_local_only(&self, op: rbe_sched::OpId) -> bool {
        self.local_only.lock().contains(&op)
    }

    /// The policy's clock: monotonic time since start.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// The membership as gossip sees it now.
    pub fn view(&self) -> ClusterView {
        self.view.borrow().clone()
    }

    /// This host's current generation.
    pub fn generation(&self) -> u64 {
        self.view.borrow().me.generation
    }

    /// Whether `generation` is one this process has had (a name holding
    /// it is ours).
    pub fn is_ours(&self, generation: u64) -> bool {
        generation == self.generation() || self.generations.lock().contains(&generation)
    }

    /// Records the generation `view` gives this host (called on every
    /// membership change, so a renewal is never missed).
    fn remember_generation(&self, view: &ClusterView) {
        let mut g = self.generations.lock();
        if !g.contains(&view.me.generation) {
            g.push(view.me.generation);
        }
    }

    /// A fresh operation name held by this host.
    pub fn operation_name(&self, instance: &str) -> String {
        rbe_cluster::names::operation_name(
            instance,
            &self.node,
            self.generation(),
            rbe_cluster::names::new_operation_id(),
        )
    }

    /// The channel to an eligible member, with the generation it was
    /// checked for.
    pub fn channel(&self, node: &NodeName) -> Option<(Channel, u64)> {
        let peers = self.peers.lock();
        let p = peers.get(node)?;
        (p.eligibility == Eligibility::Eligible).then(|| (p.channel.clone(), p.generation))
    }

    /// The channel to a member whatever its eligibility (forwarding
    /// operation requests to their holder needs only mutual TLS).
    pub fn any_channel(&self, node: &NodeName) -> Option<(Channel, u64)> {
        let peers = self.peers.lock();
        let p = peers.get(node)?;
        Some((p.channel.clone(), p.generation))
    }

    /// Applies reloaded keys and `[offload]` settings.
    pub async fn reload(&self, c: &ClusterSettings, offload: &OffloadSettings) {
        match Keyring::load(&c.key_file, &c.old_key_files) {
            Ok(k) => {
                self.handle.reload_keys(k).await;
                tracing::info!(old_keys = c.old_key_files.len(), "cluster: keys reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: keys not reloaded; keeping the running ones")
            }
        }
        self.report_interval_ms
            .store(c.report_interval_ms, Ordering::Relaxed);
        self.offload.store(Arc::new(offload.clone()));
        let cfg = offload_config(offload, Duration::from_millis(c.report_max_age_ms));
        self.placement.lock().policy = OffloadPolicy::new(cfg);
        // casd may have been restarted with another store meanwhile.
        self.recheck_store();
    }

    /// Says goodbye to the cluster (on stop).
    /// A stop's first step here: peers learn at once that this host takes
    /// no more offers (the report loop may not run again before it ends).
    pub fn begin_drain(&self, exec: &Exec) {
        self.handle.publish_report(self.own_report(exec));
    }

    pub async fn leave(&self) {
        self.handle.leave().await;
        tracing::info!("cluster: left");
    }

    /// Gossip and offload counters, named.
    pub fn counter_list(&self) -> Vec<(String, u64)> {
        let g = self.handle.counters();
        let mut v: Vec<(String, u64)> = [
            ("gossip_packets_in", g.packets_in),
            ("gossip_bytes_in", g.bytes_in),
            ("gossip_packets_out", g.packets_out),
            ("gossip_bytes_out", g.bytes_out),
            ("gossip_auth_failures", g.auth_failures),
            ("gossip_replays", g.replays),
            ("gossip_malformed", g.malformed),
            ("gossip_oversized", g.oversized),
            ("gossip_unresolved_seeds", g.unresolved_seeds),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c))
        .collect();
        v.extend(self.counters.list());
        v
    }

    /// A short summary for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let view = self.view.borrow();
        let live = view.live().count();
        let eligible = self
            .peers
            .lock()
            .values()
            .filter(|p| p.eligibility == Eligibility::Eligible)
            .count();
        format!(
            "cluster {} members up ({} eligible), offloaded {}, hosted {}",
            live + 1,
            eligible,
            self.counters.offers_accepted.load(Ordering::Relaxed),
            self.counters.offers_admitted.load(Ordering::Relaxed),
        )
    }
}

/// Starts this host's part of the cluster when `[cluster]` is on: gossip
/// on the `gossip` socket, the peer listener (mutual TLS) on `peer`, the
/// load reports and the membership follower. The reports and the follower
/// run until `shutdown`; the peer listener until `peers_shutdown`, which a
/// stopping frontend fires only after its drain: origins pull the outputs
/// of what this host finishes while draining through it.
pub async fn start(
    settings: &rbe_config::FrontendSettings,
    fds: &mut Vec<(String, std::os::fd::OwnedFd)>,
    exec: &Arc<Exec>,
    upstream: &crate::proxy::Upstream,
    shutdown: tokio_util::sync::CancellationToken,
    peers_shutdown: tokio_util::sync::CancellationToken,
    servers: &mut tokio::task::JoinSet<Result<(), tonic::transport::Error>>,
) -> anyhow::Result<Option<Arc<Cluster>>> {
    use anyhow::Context;
    let c = &settings.cluster;
    if !c.enabled {
        return Ok(None);
    }
    let gossip = rbe_net::udp_from_activation_or_bind(fds, "gossip", c.gossip_listen)
        .with_context(|| format!("gossip socket {}", c.gossip_listen))?;
    let peer = rbe_net::from_activation_or_bind(
        fds,
        "peer",
        rbe_net::Bind::Tcp(c.peer_listen.to_string()),
    )
    .with_context(|| format!("peer listener {}", c.peer_listen))?;
    let peer_bound = match &peer {
        rbe_net::Listener::Tcp(l) => l.local_addr().context("peer listener address")?,
        _ => anyhow::bail!("the peer listener must be a TCP socket"),
    };
    let files = rbe_net::tls::TlsFiles::cluster(c).context("cluster TLS files")?;
    let tls = Arc::new(rbe_net::tls::ServerTls::load(&files).context("cluster TLS files")?);
    let state_dir = std::env::var_os("STATE_DIRECTORY").map(std::path::PathBuf::from);
    let cluster = Cluster::start(
        c,
        &settings.offload,
        gossip,
        peer_bound,
        state_dir.as_deref(),
    )
    .await
    .context("joining the cluster")?;
    cluster.spawn_store_watch(upstream.unary.clone(), shutdown.clone());
    cluster.spawn(Arc::clone(exec), shutdown.clone());
    offload::spawn(Arc::clone(&cluster), Arc::clone(exec), shutdown.clone());
    let max_message = settings.limits.max_message_bytes as usize;
    let router = rbe_net::tune_server(tonic::transport::Server::builder())
        .layer(PeerLayer)
        .add_service(rbe_proto::cluster::peer_server::PeerServer::new(
            peer::PeerService {
                cluster: Arc::clone(&cluster),
                exec: Arc::clone(exec),
            },
        ))
        .add_service(
            rbe_proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer::new(
                peer_cas::PeerCas(upstream.clone()),
            )
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
        )
        .add_service(
            rbe_proto::bytestream::byte_stream_server::ByteStreamServer::new(
                peer_cas::PeerByteStream(upstream.clone()),
            )
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
        );
    tracing::info!(listen = %peer.local_addr_string(), "rbe-frontend listening (cluster peers, mutual TLS)");
    servers.spawn(rbe_net::serve(
        router,
        peer,
        Some(tls),
        peers_shutdown.cancelled_owned(),
    ));
    Ok(Some(cluster))
}

use crate::exec::Exec;

#[cfg(test)]
mod tests {
    use super::*;

    /// Bad input: a reason from the peer's message that this build does
    /// not know, or negative, counts as unspecified, never out of bounds.
    #[test]
    fn rejects_are_counted_by_reason() {
        let c = Counters::default();
        c.rejected(rbe_proto::cluster::RejectReason::Busy as i32);
        c.rejected(rbe_proto::cluster::RejectReason::Busy as i32);
        c.rejected(99);
        c.rejected(-1);
        let l = c.list();
        let get = |n: &str| l.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        assert_eq!(get("offers_rejected"), Some(4));
        assert_eq!(get("offers_rejected_busy"), Some(2));
        assert_eq!(get("offers_rejected_unspecified"), Some(2));
        assert_eq!(get("offers_rejected_draining"), None);
        assert_eq!(get("offload_decision_ns_count"), Some(0));
    }
}
