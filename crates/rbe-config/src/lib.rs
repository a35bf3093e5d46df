//! Layered TOML configuration for the rbe daemons.
//!
//! For a daemon `casd`, each directory of the search path (lowest precedence
//! first, see [`default_dirs`]) contributes `casd.toml` and then
//! `casd.toml.d/*.toml` in file-name order. Missing files are fine. Every
//! file is checked on its own, then all are merged key by key (later files
//! win), and the result is validated into a typed settings struct. Every
//! [`ConfigError`] names the file, the dotted key and the reason.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod auth;
mod backing;
mod casd;
pub mod cli;
mod cluster;
mod common;
mod credentials;
mod error;
mod frontend;
mod layer;
pub mod local;
mod size;
mod store_id;
mod tls;
mod workerd;

use std::path::PathBuf;

pub use auth::{AuthSettings, GrantSettings, RoleSettings};
pub use backing::{
    parse_url, read_basic_credentials, read_s3_credentials, read_token, Backing, BackingAddress,
    BackingMode, BasicCredentials, S3Credentials,
};
pub use casd::{CasdListen, CasdSettings, Instances, Limits, Storage};
pub use cluster::{ClusterSettings, OffloadSettings, OrphanPolicy, CLUSTER_KEY_CREDENTIAL};
pub use common::Log;
pub use error::{ConfigError, Origin};
pub use frontend::{
    CasdClient, Execution, FrontendLimits, FrontendListen, FrontendSettings, MAX_PROXIED_STREAMS,
};
pub use size::{parse_size, ParseSizeError};
pub use tls::{ClientCertificates, FrontendTls};
pub use workerd::{
    ActionLimits, OutputsSection, Sandbox, ScopeMode, ScopeSection, WorkerSection, WorkerdSettings,
};

/// The standard search path, lowest precedence first: vendor defaults,
/// runtime overrides, then the administrator's files.
pub fn default_dirs() -> Vec<PathBuf> {
    ["/usr/lib/rbe", "/run/rbe", "/etc/rbe"]
        .into_iter()
        .map(PathBuf::from)
        .collect()
}

/// Loads `casd.toml` and its drop-ins from `dirs`.
pub fn load_casd(dirs: &[PathBuf]) -> Result<CasdSettings, ConfigError> {
    let (fragment, prov) = layer::load::<casd::CasdFragment>("casd", dirs)?;
    fragment.build(&prov)
}

/// Loads `frontend.toml` and its drop-ins from `dirs`.
pub fn load_frontend(dirs: &[PathBuf]) -> Result<FrontendSettings, ConfigError> {
    let (fragment, prov) = layer::load::<frontend::FrontendFragment>("frontend", dirs)?;
    fragment.build(&prov)
}

/// Loads `workerd.toml` and its drop-ins from `dirs`.
pub fn load_workerd(dirs: &[PathBuf]) -> Result<WorkerdSettings, ConfigError> {
    let (fragment, prov) = layer::load::<workerd::WorkerdFragment>("workerd", dirs)?;
    fragment.build(&prov)
}

/// Every dotted key `daemon` (`"casd"`, `"frontend"` or `"workerd"`) accepts; empty for
/// an unknown daemon.
pub fn known_keys(daemon: &str) -> Vec<&'static str> {
    // Kept by hand so it can be `'static`; a test checks it against the
    // settings structs.
    match daemon {
        "casd" => vec![
            "listen.socket",
            "listen.socket_mode",
            "storage.path",
            "storage.max_size",
            "storage.high_watermark",
            "storage.low_watermark",
            "storage.verify_reads",
            "storage.upload_expiry_secs",
            "storage.max_pin_ttl_secs",
            "storage.materialize_roots",
            "limits.max_batch_total_size_bytes",
            "limits.max_inline_bytes",
            "instances.allowed",
            "instances.separate_action_cache",
            "backing.mode",
            "backing.url",
            "backing.instance_name",
            "backing.tls_ca",
            "backing.tls_cert",
            "backing.tls_key",
            "backing.token_file",
            "backing.endpoint",
            "backing.region",
            "backing.credentials_file",
            "backing.path_style",
            "backing.connect_timeout_secs",
            "backing.request_timeout_secs",
            "backing.existence_cache_secs",
            "backing.existence_cache_entries",
            "backing.store_id",
            "log.level",
        ],
        "frontend" => vec![
            "listen.grpc",
            "listen.local",
            "casd.socket",
            "limits.max_message_bytes",
            "limits.stream_idle_timeout_secs",
            "limits.max_proxied_streams",
            "limits.max_streams_per_client",
            "limits.max_upload_bytes_per_client",
            "execution.default_timeout_secs",
            "execution.max_timeout_secs",
            "execution.max_queued",
            "execution.max_queued_per_client",
            "execution.operation_retention_secs",
            "execution.unmatchable_grace_secs",
            "execution.drain_timeout_secs",
            "execution.max_retained_bytes",
            "tls.certificate",
            "tls.key",
            "tls.client_ca",
            "tls.client_certificates",
            "tls.handshake_timeout_secs",
            "log.level",
            "auth.tokens",
            "auth.authenticated_role",
            "auth.local_role",
            "auth.network_role",
            "auth.roles",
            "auth.grants",
            "cluster.enabled",
            "cluster.name",
            "cluster.node",
            "cluster.gossip_listen",
            "cluster.peer_listen",
            "cluster.advertise_gossip",
            "cluster.advertise_peer",
            "cluster.seeds",
            "cluster.expected_size",
            "cluster.key_file",
            "cluster.old_key_files",
            "cluster.tls_ca",
            "cluster.tls_cert",
            "cluster.tls_key",
            "cluster.report_interval_ms",
            "cluster.report_max_age_ms",
            "offload.enabled",
            "offload.threshold",
            "offload.hysteresis",
            "offload.choices",
            "offload.accept_max_rounds",
            "offload.max_offers_per_peer",
            "offload.lease_secs",
            "offload.orphan_policy",
            "offload.orphan_grace_secs",
            "offload.max_transfer_bytes",
            "offload.do_not_cache",
        ],
        "workerd" => vec![
            "frontend.socket",
            "casd.socket",
            "worker.name",
            "worker.slots",
            "worker.work_dir",
            "worker.platform",
            "worker.drain_timeout_secs",
            "sandbox.uid",
            "sandbox.gid",
            "sandbox.network",
            "sandbox.max_output_bytes",
            "sandbox.hide_paths",
            "scope.mode",
            "scope.slice",
            "limits.memory_max",
            "limits.cpu_quota",
            "limits.cpu_weight",
            "limits.tasks_max",
            "limits.io_weight",
            "limits.max_memory",
            "limits.max_cpu_quota",
            "limits.max_tasks",
            "limits.file_size_max",
            "limits.open_files_max",
            "limits.tmpfs_max",
            "outputs.max_depth",
            "outputs.max_entries",
            "outputs.max_path_bytes",
            "log.level",
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
