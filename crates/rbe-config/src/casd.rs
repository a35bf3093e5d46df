//! Settings of `rbe-casd`, the content-addressable storage daemon.

use crate::backing::{Backing, BackingFragment};
use crate::common::{check_absolute, Log, LogFragment};
use crate::layer::Provenance;
use crate::size::{Mode, Size};
use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Everything `rbe-casd` reads from `casd.toml`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct CasdSettings {
    /// `[listen]`
    pub listen: CasdListen,
    /// `[storage]`
    pub storage: Storage,
    /// `[limits]`
    pub limits: Limits,
    /// `[instances]`
    pub instances: Instances,
    /// `[backing]`
    pub backing: Backing,
    /// `[log]`
    pub log: Log,
}

/// `[listen]`: the local gRPC socket, used when not socket-activated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CasdListen {
    /// Unix socket path.
    pub socket: PathBuf,
    /// Permission bits applied to the socket file.
    pub socket_mode: u32,
}

impl Default for CasdListen {
    fn default() -> Self {
        CasdListen {
            socket: PathBuf::from("/run/rbe/casd.sock"),
            socket_mode: 0o660,
        }
    }
}

/// `[storage]`: the on-disk blob store and its eviction policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Storage {
    /// Directory holding the store.
    pub path: PathBuf,
    /// Capacity in bytes; written as an integer or e.g. `"50GiB"`.
    pub max_size: u64,
    /// Fraction of `max_size` at which eviction starts.
    pub high_watermark: f64,
    /// Fraction of `max_size` eviction brings usage down to.
    pub low_watermark: f64,
    /// Re-hash blobs when reading them.
    pub verify_reads: bool,
    /// Seconds after which an unfinished upload is discarded.
    pub upload_expiry_secs: u64,
    /// Upper bound on how long a client may pin a blob.
    pub max_pin_ttl_secs: u64,
    /// Directories casd may materialize input trees into (by hard links,
    /// so they must be on the store's filesystem): rbe-workerd's work_dir.
    pub materialize_roots: Vec<PathBuf>,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            path: PathBuf::from("/var/lib/rbe/cas"),
            max_size: 10 * GIB,
            high_watermark: 0.95,
            low_watermark: 0.85,
            verify_reads: true,
            upload_expiry_secs: 600,
            max_pin_ttl_secs: 3600,
            materialize_roots: vec![PathBuf::from("/var/lib/rbe/work")],
        }
    }
}

/// `[limits]`: request size limits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    /// Advertised `max_batch_total_size_bytes` (64 KiB to 64 MiB).
    pub max_batch_total_size_bytes: u64,
    /// Largest blob returned inline in responses.
    pub max_inline_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_total_size_bytes: 4 * MIB,
            max_inline_bytes: MIB,
        }
    }
}

/// `[instances]`: which REAPI instance names are served.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Instances {
    /// Instance names accepted; empty means any. `""` is the default instance.
    pub allowed: Vec<String>,
    /// Instances whose action cache is kept apart from the shared one.
    pub separate_action_cache: Vec<String>,
}

/// Path segments that would make REAPI resource names ambiguous.
const RESERVED_SEGMENTS: [&str; 7] = [
    "blobs",
    "uploads",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
    "compressed-blobs",
];

/// Checks an REAPI instance name; `""` (the default instance) is valid.
pub(crate) fn check_instance_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Ok(());
    }
    for seg in name.split('/') {
        if seg.is_empty() {
            return Err(format!("instance name {name:?} has an empty path segment"));
        }
        if seg == "." || seg == ".." {
            return Err(format!("instance name {name:?} contains {seg:?}"));
        }
        if RESERVED_SEGMENTS.contains(&seg) {
            return Err(format!(
                "instance name {name:?} contains reserved segment {seg:?}"
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CasdFragment {
    listen: Option<ListenFragment>,
    storage: Option<StorageFragment>,
    limits: Option<LimitsFragment>,
    instances: Option<InstancesFragment>,
    backing: Option<BackingFragment>,
    log: Option<LogFragment>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenFragment {
    socket: Option<PathBuf>,
    socket_mode: Option<Mode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageFragment {
    path: Option<PathBuf>,
    max_size: Option<Size>,
    high_watermark: Option<f64>,
    low_watermark: Option<f64>,
    verify_reads: Option<bool>,
    upload_expiry_secs: Option<u64>,
    max_pin_ttl_secs: Option<u64>,
    materialize_roots: Option<Vec<PathBuf>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFragment {
    max_batch_total_size_bytes: Option<Size>,
    max_inline_bytes: Option<Size>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstancesFragment {
    allowed: Option<Vec<String>>,
    separate_action_cache: Option<Vec<String>>,
}

impl CasdFragment {
    /// Applies defaults and validates.
    pub(crate) fn build(self, prov: &Provenance) -> Result<CasdSettings, ConfigError> {
        let d = CasdSettings::default();

        let l = self.listen.unwrap_or_default();
        let listen = CasdListen {
            socket: l.socket.unwrap_or(d.listen.socket),
            socket_mode: l.socket_mode.map_or(d.listen.socket_mode, |m| m.0),
        };
        check_absolute(prov, "listen.socket", &listen.socket)?;

        let s = self.storage.unwrap_or_default();
        let storage = Storage {
            path: s.path.unwrap_or(d.storage.path),
            max_size: s.max_size.map_or(d.storage.max_size, |v| v.0),
            high_watermark: s.high_watermark.unwrap_or(d.storage.high_watermark),
            low_watermark: s.low_watermark.unwrap_or(d.storage.low_watermark),
            verify_reads: s.verify_reads.unwrap_or(d.storage.verify_reads),
            upload_expiry_secs: s.upload_expiry_secs.unwrap_or(d.storage.upload_expiry_secs),
            max_pin_ttl_secs: s.max_pin_ttl_secs.unwrap_or(d.storage.max_pin_ttl_secs),
            materialize_roots: s.materialize_roots.unwrap_or(d.storage.materialize_roots),
        };
        check_absolute(prov, "storage.path", &storage.path)?;
        for r in &storage.materialize_roots {
            check_absolute(prov, "storage.materialize_roots", r)?;
        }
        if storage.max_size == 0 {
            return Err(prov.error("storage.max_size", "must be greater than zero"));
        }
        let (lo, hi) = (storage.low_watermark, storage.high_watermark);
        if !(hi > 0.0 && hi <= 1.0) {
            return Err(prov.error(
                "storage.high_watermark",
                format!("{hi} is out of range (0, 1]"),
            ));
        }
        // Written so that NaN, which fails every comparison, is rejected too.
        if !(lo > 0.0 && lo < hi) {
            return Err(prov.error(
                "storage.low_watermark",
                format!(
                    "{lo} must be greater than 0 and less than storage.high_watermark = {hi} (set in {})",
                    prov.origin("storage.high_watermark")
                ),
            ));
        }
        if storage.upload_expiry_secs == 0 {
            return Err(prov.error("storage.upload_expiry_secs", "must be greater than zero"));
        }

        let li = self.limits.unwrap_or_default();
        let limits = Limits {
            max_batch_total_size_bytes: li
                .max_batch_total_size_bytes
                .map_or(d.limits.max_batch_total_size_bytes, |v| v.0),
            max_inline_bytes: li
                .max_inline_bytes
                .map_or(d.limits.max_inline_bytes, |v| v.0),
        };
        let batch = limits.max_batch_total_size_bytes;
        if !(64 * KIB..=64 * MIB).contains(&batch) {
            return Err(prov.error(
                "limits.max_batch_total_size_bytes",
                format!("{batch} is out of range (64 KiB to 64 MiB)"),
            ));
        }
        // An inline blob rides in a batch-sized response; a larger one
        // could never be delivered.
        if limits.max_inline_bytes > batch {
            return Err(prov.error(
                "limits.max_inline_bytes",
                format!(
                    "{} exceeds limits.max_batch_total_size_bytes = {batch} (set in {})",
                    limits.max_inline_bytes,
                    prov.origin("limits.max_batch_total_size_bytes")
                ),
            ));
        }

        let i = self.instances.unwrap_or_default();
        let instances = Instances {
            allowed: i.allowed.unwrap_or_default(),
            separate_action_cache: i.separate_action_cache.unwrap_or_default(),
        };
        for (key, names) in [
            ("instances.allowed", &instances.allowed),
            (
                "instances.separate_action_cache",
                &instances.separate_action_cache,
            ),
        ] {
            for n in names {
                check_instance_name(n).map_err(|r| prov.error(key, r))?;
            }
        }

        let backing = BackingFragment::build(self.backing, prov)?;

        let log = LogFragment::build(self.log, prov)?;
        Ok(CasdSettings {
            listen,
            storage,
            limits,
            instances,
            backing,
            log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names() {
        for ok in ["", "main", "team/a", "a-b_c.d"] {
            assert!(check_instance_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/a",
            "a/",
            "a//b",
            ".",
            "a/../b",
            "blobs",
            "x/uploads",
            "compressed-blobs",
        ] {
            assert!(check_instance_name(bad).is_err(), "{bad}");
        }
    }
}
