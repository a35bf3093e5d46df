//! `[cluster]` and `[offload]` of `frontend.toml`: membership of this host
//! in a cluster of frontends, and the policy for pushing work to peers.
//!
//! The files named here (cluster key, mTLS certificates) are only checked
//! to exist when the cluster is enabled; the daemon reads them. Every key
//! of `[cluster]` needs a restart except `old_key_files`,
//! `report_interval_ms` and `report_max_age_ms`; every key of `[offload]`
//! applies on reload ([`ClusterSettings::reloadable_from`] says which).

use crate::layer::Provenance;
use crate::size::Size;
use crate::tls::resolve;
use crate::ConfigError;
use rbe_cluster::{NodeName, NodeNameError};
use serde::{Deserialize, Serialize, Serializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The name of the credential (`LoadCredential=cluster-key:...`) that,
/// when present, is read instead of `cluster.key_file`.
pub const CLUSTER_KEY_CREDENTIAL: &str = "cluster-key";

/// `[cluster]`: whether and how this frontend joins a cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterSettings {
    /// Whether this frontend gossips and takes part in offload at all.
    pub enabled: bool,
    /// Cluster id: bound into the gossip key derivation, so hosts of
    /// another cluster with the same key still fail authentication.
    pub name: String,
    /// This host's node name: set, or (when enabled and unset) the host
    /// name up to its first dot, lowercased. Empty only when the cluster
    /// is disabled and no `node` is set. Valid as a [`NodeName`] whenever
    /// it is not empty.
    pub node: String,
    /// UDP address gossip binds when no socket named `gossip` is activated.
    pub gossip_listen: SocketAddr,
    /// TCP address of the peer gRPC service when no socket named `peer` is
    /// activated.
    pub peer_listen: SocketAddr,
    /// `host:port` peers send gossip to; unset: the listen address, or the
    /// first non-loopback IP when that is a wildcard.
    #[serde(serialize_with = "unset_as_empty")]
    pub advertise_gossip: Option<String>,
    /// `host:port` peers open the peer channel to; unset as above.
    #[serde(serialize_with = "unset_as_empty")]
    pub advertise_peer: Option<String>,
    /// Gossip addresses (`host:port`) announced to at start; while the
    /// cluster is smaller than this list, DNS names are resolved again every
    /// 30 s and the addresses announced to every 2 s.
    pub seeds: Vec<String>,
    /// Expected number of members; sizes foca's transmissions and
    /// suspicion timeout.
    pub expected_size: u32,
    /// The primary cluster key (32 random bytes, base64): used to seal and
    /// open gossip. `$CREDENTIALS_DIRECTORY/cluster-key` when that exists
    /// and the cluster is enabled, else the configured file (a relative
    /// one is a credential name).
    pub key_file: PathBuf,
    /// Older keys still accepted, never used to send (rotation).
    /// Reloadable.
    pub old_key_files: Vec<PathBuf>,
    /// PEM CA that signs every member's peer certificate.
    #[serde(serialize_with = "unset_as_empty")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate of this host, DNS SAN = `node`.
    #[serde(serialize_with = "unset_as_empty")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(serialize_with = "unset_as_empty")]
    pub tls_key: Option<PathBuf>,
    /// How often this host gossips its load report, in ms. Reloadable.
    pub report_interval_ms: u64,
    /// A peer's report older than this (ms) is not used for offload
    /// decisions. Reloadable.
    pub report_max_age_ms: u64,
}

impl ClusterSettings {
    /// `node` as a [`NodeName`]; fails only when the cluster is disabled
    /// and no node was set (the loader checked it otherwise).
    pub fn node_name(&self) -> Result<NodeName, NodeNameError> {
        NodeName::new(&self.node)
    }

    /// `self` (what is running) with the keys that apply on reload taken
    /// from `new`: compare the result with `new` to find restart-only
    /// changes.
    pub fn reloadable_from(&self, new: &ClusterSettings) -> ClusterSettings {
        ClusterSettings {
            old_key_files: new.old_key_files.clone(),
            report_interval_ms: new.report_interval_ms,
            report_max_age_ms: new.report_max_age_ms,
            ..self.clone()
        }
    }
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            enabled: false,
            name: "default".to_owned(),
            node: String::new(),
            gossip_listen: SocketAddr::from(([0, 0, 0, 0], 7946)),
            peer_listen: SocketAddr::from(([0, 0, 0, 0], 8981)),
            advertise_gossip: None,
            advertise_peer: None,
            seeds: Vec::new(),
            expected_size: 8,
            key_file: PathBuf::from("/etc/rbe/cluster.key"),
            old_key_files: Vec::new(),
            tls_ca: Some(PathBuf::from("/etc/rbe/cluster/ca.crt")),
            tls_cert: Some(PathBuf::from("/etc/rbe/cluster/host.crt")),
            tls_key: Some(PathBuf::from("/etc/rbe/cluster/host.key")),
            report_interval_ms: 500,
            report_max_age_ms: 2000,
        }
    }
}

/// What an executor does with actions it hosts for an origin that is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrphanPolicy {
    /// Finish when the result can be cached where a retry finds it (the
    /// origin's offer names this host's backing store), else cancel.
    #[default]
    Auto,
    /// Cancel after `orphan_grace_secs`.
    Cancel,
    /// Run to completion and write the action cache here.
    Finish,
}

/// `[offload]`: when this host pushes queued work to peers, and what it
/// accepts from them. Every key applies on reload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OffloadSettings {
    /// Whether this host offloads and accepts work (with `cluster.enabled`).
    pub enabled: bool,
    /// Offload while queued / slots is at least this.
    pub threshold: f64,
    /// A peer must be this many rounds (queued / slots) less loaded than
    /// this host after the move.
    pub hysteresis: f64,
    /// d in best-of-d peer choice.
    pub choices: u32,
    /// As executor: accept while (queued + incoming + 1) / slots is at
    /// most this.
    pub accept_max_rounds: f64,
    /// Offers in flight to one peer before its next report.
    pub max_offers_per_peer: u32,
    /// Heartbeats every third of this; the origin re-dispatches after this
    /// much silence, in seconds.
    pub lease_secs: u64,
    /// What an executor does with work whose origin is gone.
    pub orphan_policy: OrphanPolicy,
    /// How long an orphan waits for its origin to come back, in seconds.
    pub orphan_grace_secs: u64,
    /// Input trees larger than this stay at the origin, and offers of
    /// larger ones are refused as executor; not applied between hosts in
    /// front of one backing store, where nothing moves.
    pub max_transfer_bytes: u64,
    /// Whether `do_not_cache` actions are offloaded too.
    pub do_not_cache: bool,
}

impl Default for OffloadSettings {
    fn default() -> Self {
        OffloadSettings {
            enabled: true,
            threshold: 1.0,
            hysteresis: 0.5,
            choices: 2,
            // From the simulator (BENCHMARKS.md): 0.5 leaves a 1-slot
            // host idle for a report round trip after each action.
            accept_max_rounds: 1.0,
            max_offers_per_peer: 8,
            lease_secs: 15,
            orphan_policy: OrphanPolicy::Auto,
            orphan_grace_secs: 10,
            max_transfer_bytes: 2 << 30,
            do_not_cache: false,
        }
    }
}

fn unset_as_empty<T: Serialize, S: Serializer>(p: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => p.serialize(s),
        None => s.serialize_str(""),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterFragment {
    enabled: Option<bool>,
    name: Option<String>,
    node: Option<String>,
    gossip_listen: Option<String>,
    peer_listen: Option<String>,
    advertise_gossip: Option<String>,
    advertise_peer: Option<String>,
    seeds: Option<Vec<String>>,
    expected_size: Option<u32>,
    key_file: Option<PathBuf>,
    old_key_files: Option<Vec<PathBuf>>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    report_interval_ms: Option<u64>,
    report_max_age_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OffloadFragment {
    enabled: Option<bool>,
    threshold: Option<f64>,
    hysteresis: Option<f64>,
    choices: Option<u32>,
    accept_max_rounds: Option<f64>,
    max_offers_per_peer: Option<u32>,
    lease_secs: Option<u64>,
    orphan_policy: Option<OrphanPolicy>,
    orphan_grace_secs: Option<u64>,
    max_transfer_bytes: Option<Size>,
    do_not_cache: Option<bool>,
}

/// What [`ClusterFragment::build_with`] needs from the machine, injected
/// so tests do not depend on it.
pub(crate) struct Host<'a> {
    /// `$CREDENTIALS_DIRECTORY`.
    pub(crate) creds: Option<&'a Path>,
    /// The kernel's host name, if readable.
    pub(crate) hostname: Option<String>,
}

impl Host<'_> {
    pub(crate) fn of_this_machine(creds: Option<&Path>) -> Host<'_> {
        Host {
            creds,
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned()),
        }
    }
}

/// Longest `cluster.name`: it goes into every datagram's key derivation
/// and into log lines.
const MAX_CLUSTER_NAME: usize = 64;

impl ClusterFragment {
    pub(crate) fn build(
        f: Option<Self>,
        prov: &Provenance,
    ) -> Result<ClusterSettings, ConfigError> {
        let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Self::build_with(f, prov, &Host::of_this_machine(creds.as_deref()))
    }

    pub(crate) fn build_with(
        f: Option<Self>,
        prov: &Provenance,
        host: &Host<'_>,
    ) -> Result<ClusterSettings, ConfigError> {
        let f = f.unwrap_or_default();
        let d = ClusterSettings::default();
        let enabled = f.enabled.unwrap_or(d.enabled);
        let path = |key: &str, p: PathBuf| resolve(&p, host.creds).map_err(|r| prov.error(key, r));
        let opt_path = |key: &str, p: Option<PathBuf>, default: Option<PathBuf>| match p {
            Some(p) if p.as_os_str().is_empty() => Ok(None),
            Some(p) => path(key, p).map(Some),
            None => Ok(default),
        };
        let socket = |key: &str, v: Option<String>, default: SocketAddr| match v {
            None => Ok(default),
            Some(v) => v
                .parse::<SocketAddr>()
                .map_err(|e| prov.error(key, format!("{v:?} is not an IP:port address: {e}"))),
        };
        let advertise = |key: &str, v: Option<String>| match v {
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => check_host_port(&v)
                .map(|()| Some(v))
                .map_err(|r| prov.error(key, r)),
            None => Ok(None),
        };

        let name = f.name.unwrap_or(d.name);
        if name.is_empty()
            || name.len() > MAX_CLUSTER_NAME
            || !name.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(prov.error(
                "cluster.name",
                format!("{name:?} must be 1 to {MAX_CLUSTER_NAME} printable ASCII characters without spaces"),
            ));
        }
        let node = match f.node.filter(|n| !n.is_empty()) {
            Some(n) => NodeName::new(&n)
                .map_err(|e| prov.error("cluster.node", e.to_string()))?
                .to_string(),
            None if enabled => node_from_hostname(host.hostname.as_deref())
                .map_err(|r| prov.error("cluster.node", r))?,
            None => String::new(),
        };
        let seeds = f.seeds.unwrap_or(d.seeds);
        for s in &seeds {
            check_host_port(s).map_err(|r| prov.error("cluster.seeds", r))?;
        }
        // "" is unset: an error only when the cluster is enabled and no
        // credential stands in for it (below).
        let mut key_file = match f.key_file.unwrap_or(d.key_file) {
            p if p.as_os_str().is_empty() => p,
            p => path("cluster.key_file", p)?,
        };
        let old_key_files = f
            .old_key_files
            .unwrap_or(d.old_key_files)
            .into_iter()
            .map(|p| path("cluster.old_key_files", p))
            .collect::<Result<Vec<_>, _>>()?;
        let c = ClusterSettings {
            enabled,
            name,
            node,
            gossip_listen: socket("cluster.gossip_listen", f.gossip_listen, d.gossip_listen)?,
            peer_listen: socket("cluster.peer_listen", f.peer_listen, d.peer_listen)?,
            advertise_gossip: advertise("cluster.advertise_gossip", f.advertise_gossip)?,
            advertise_peer: advertise("cluster.advertise_peer", f.advertise_peer)?,
            seeds,
            expected_size: f.expected_size.unwrap_or(d.expected_size),
            key_file: PathBuf::new(),
            old_key_files,
            tls_ca: opt_path("cluster.tls_ca", f.tls_ca, d.tls_ca)?,
            tls_cert: opt_path("cluster.tls_cert", f.tls_cert, d.tls_cert)?,
            tls_key: opt_path("cluster.tls_key", f.tls_key, d.tls_key)?,
            report_interval_ms: f.report_interval_ms.unwrap_or(d.report_interval_ms),
            report_max_age_ms: f.report_max_age_ms.unwrap_or(d.report_max_age_ms),
        };
        if !(1..=10_000).contains(&c.expected_size) {
            return Err(prov.error(
                "cluster.expected_size",
                format!("{} is out of range (1 to 10000)", c.expected_size),
            ));
        }
        if !(50..=60_000).contains(&c.report_interval_ms) {
            return Err(prov.error(
                "cluster.report_interval_ms",
                format!("{} is out of range (50 to 60000)", c.report_interval_ms),
            ));
        }
        if c.report_max_age_ms <= c.report_interval_ms || c.report_max_age_ms > 600_000 {
            return Err(prov.error(
                "cluster.report_max_age_ms",
                format!(
                    "{} must exceed cluster.report_interval_ms ({}) and be at most 600000",
                    c.report_max_age_ms, c.report_interval_ms
                ),
            ));
        }
        if enabled {
            // The systemd credential wins: that is how the unit drop-in
            // hands the key to a sandboxed service.
            if let Some(cred) = host.creds.map(|d| d.join(CLUSTER_KEY_CREDENTIAL)) {
                if cred.is_file() {
                    key_file = cred;
                }
            }
            if key_file.as_os_str().is_empty() {
                return Err(prov.error(
                    "cluster.key_file",
                    "the cluster is enabled but no key file is set (make one with `rbectl cluster init`)",
                ));
            }
            must_exist(prov, "cluster.key_file", &key_file)?;
            for p in &c.old_key_files {
                must_exist(prov, "cluster.old_key_files", p)?;
            }
            for (key, p) in [
                ("cluster.tls_ca", &c.tls_ca),
                ("cluster.tls_cert", &c.tls_cert),
                ("cluster.tls_key", &c.tls_key),
            ] {
                let Some(p) = p else {
                    return Err(prov.error(
                        key,
                        "the cluster is enabled, and peers talk mTLS only: set the file \
                         (make them with `rbectl cluster init` and `rbectl cluster issue`)",
                    ));
                };
                must_exist(prov, key, p)?;
            }
        }
        Ok(ClusterSettings { key_file, ..c })
    }
}

impl OffloadFragment {
    pub(crate) fn build(
        f: Option<Self>,
        prov: &Provenance,
    ) -> Result<OffloadSettings, ConfigError> {
        let f = f.unwrap_or_default();
        let d = OffloadSettings::default();
        let o = OffloadSettings {
            enabled: f.enabled.unwrap_or(d.enabled),
            threshold: f.threshold.unwrap_or(d.threshold),
            hysteresis: f.hysteresis.unwrap_or(d.hysteresis),
            choices: f.choices.unwrap_or(d.choices),
            accept_max_rounds: f.accept_max_rounds.unwrap_or(d.accept_max_rounds),
            max_offers_per_peer: f.max_offers_per_peer.unwrap_or(d.max_offers_per_peer),
            lease_secs: f.lease_secs.unwrap_or(d.lease_secs),
            orphan_policy: f.orphan_policy.unwrap_or(d.orphan_policy),
            orphan_grace_secs: f.orphan_grace_secs.unwrap_or(d.orphan_grace_secs),
            max_transfer_bytes: f.max_transfer_bytes.map_or(d.max_transfer_bytes, |v| v.0),
            do_not_cache: f.do_not_cache.unwrap_or(d.do_not_cache),
        };
        for (key, v, min) in [
            ("offload.threshold", o.threshold, f64::MIN_POSITIVE),
            ("offload.hysteresis", o.hysteresis, 0.0),
            (
                "offload.accept_max_rounds",
                o.accept_max_rounds,
                f64::MIN_POSITIVE,
            ),
        ] {
            if !v.is_finite() || v < min || v > 1000.0 {
                let lower = if min > 0.0 { "above 0" } else { "0" };
                return Err(prov.error(key, format!("{v} is out of range ({lower} to 1000)")));
            }
        }
        for (key, v, max) in [
            ("offload.choices", u64::from(o.choices), 16),
            (
                "offload.max_offers_per_peer",
                u64::from(o.max_offers_per_peer),
                10_000,
            ),
        ] {
            if !(1..=max).contains(&v) {
                return Err(prov.error(key, format!("{v} is out of range (1 to {max})")));
            }
        }
        // A lease shorter than 3 s means a heartbeat every second or
        // faster, from every host, for every offloaded action.
        if !(3..=3600).contains(&o.lease_secs) {
            return Err(prov.error(
                "offload.lease_secs",
                format!("{} is out of range (3 to 3600)", o.lease_secs),
            ));
        }
        if o.orphan_grace_secs > 3600 {
            return Err(prov.error(
                "offload.orphan_grace_secs",
                format!("{} is out of range (0 to 3600)", o.orphan_grace_secs),
            ));
        }
        Ok(o)
    }
}

/// The host name up to its first dot, lowercased, as a node name.
fn node_from_hostname(hostname: Option<&str>) -> Result<String, String> {
    let Some(h) = hostname.filter(|h| !h.is_empty()) else {
        return Err("not set, and the host name cannot be read: set cluster.node".to_owned());
    };
    let short = h.split('.').next().unwrap_or(h).to_ascii_lowercase();
    NodeName::new(&short).map(|n| n.to_string()).map_err(|e| {
        format!("not set, and the host name {h:?} is no node name ({e}): set cluster.node")
    })
}

/// `host:port` with a port of 1–65535; an IPv6 host in brackets.
fn check_host_port(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{s:?} is not host:port: {why}"));
    let Some((host, port)) = s.rsplit_once(':') else {
        return bad("no port");
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return bad("the port must be 1 to 65535"),
    }
    if host.is_empty() {
        return bad("no host");
    }
    if host.contains(':') {
        let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) else {
            return bad("an IPv6 address goes in brackets");
        };
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("not an IPv6 address in the brackets");
        }
    } else if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return bad("the host is neither an address nor a DNS name");
    }
    Ok(())
}

fn must_exist(prov: &Provenance, key: &str, p: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(prov.error(key, format!("{} is not a file", p.display()))),
        Err(e) => Err(prov.error(key, format!("{}: {e}", p.display()))),
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
