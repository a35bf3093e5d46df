//! Settings of `rbe-frontend`, the public REAPI gRPC endpoint.

use crate::auth::{AuthFragment, AuthSettings};
use crate::common::{check_absolute, Log, LogFragment};
use crate::layer::Provenance;
use crate::size::Size;
use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything `rbe-frontend` reads from `frontend.toml`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct FrontendSettings {
    /// `[listen]`
    pub listen: FrontendListen,
    /// `[casd]`
    pub casd: CasdClient,
    /// `[limits]`
    pub limits: FrontendLimits,
    /// `[execution]`
    pub execution: Execution,
    /// `[tls]`
    pub tls: crate::tls::FrontendTls,
    /// `[log]`
    pub log: Log,
    /// `[auth]`
    pub auth: AuthSettings,
    /// `[cluster]`
    pub cluster: crate::cluster::ClusterSettings,
    /// `[offload]`
    pub offload: crate::cluster::OffloadSettings,
}

/// `[listen]`: where clients connect, used when not socket-activated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrontendListen {
    /// TCP addresses (`host:port`, IPv6 as `[::1]:8980`).
    pub grpc: Vec<String>,
    /// Unix socket for local clients.
    pub local: PathBuf,
}

impl Default for FrontendListen {
    fn default() -> Self {
        FrontendListen {
            grpc: vec!["127.0.0.1:8980".to_owned()],
            local: PathBuf::from("/run/rbe/frontend.sock"),
        }
    }
}

/// `[casd]`: how to reach rbe-casd.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CasdClient {
    /// rbe-casd's Unix socket.
    pub socket: PathBuf,
}

impl Default for CasdClient {
    fn default() -> Self {
        CasdClient {
            socket: PathBuf::from("/run/rbe/casd.sock"),
        }
    }
}

/// `[limits]`: request size limits, and what one client may hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrontendLimits {
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: u64,
    /// A proxied stream (ByteStream Read/Write, GetTree) or an Execute
    /// stream whose client takes or sends nothing for this many seconds is
    /// ended with DEADLINE_EXCEEDED.
    pub stream_idle_timeout_secs: u64,
    /// Most ByteStream and GetTree streams forwarded to casd at once; a
    /// stream beyond waits up to twice `stream_idle_timeout_secs` for a
    /// slot, then gets RESOURCE_EXHAUSTED.
    pub max_proxied_streams: u64,
    /// Most proxied streams one client (identity) may have open at once;
    /// beyond it RESOURCE_EXHAUSTED with RetryInfo. Reloadable.
    pub max_streams_per_client: u64,
    /// Most bytes of uploads (ByteStream Write, BatchUpdateBlobs) one
    /// client may have in flight; beyond it RESOURCE_EXHAUSTED with
    /// RetryInfo. One larger upload passes when the client has nothing
    /// else in flight. Reloadable.
    pub max_upload_bytes_per_client: u64,
}

/// Upper bound of `limits.max_proxied_streams`: that many streams' HTTP/2
/// windows (2 MiB each) fit in one connection window (2 GiB), so stalled
/// ones can never hold back the others (see `rbe_net::Windows::ISOLATING`).
pub const MAX_PROXIED_STREAMS: u64 = 1000;

impl Default for FrontendLimits {
    fn default() -> Self {
        FrontendLimits {
            max_message_bytes: 8 << 20,
            stream_idle_timeout_secs: 60,
            max_proxied_streams: 256,
            max_streams_per_client: 128,
            max_upload_bytes_per_client: 1 << 30,
        }
    }
}

/// `[execution]`: the scheduler.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Execution {
    /// Timeout for actions that set none, in seconds.
    pub default_timeout_secs: u64,
    /// Longest timeout an action may ask for, in seconds.
    pub max_timeout_secs: u64,
    /// Queued actions beyond this are refused with RESOURCE_EXHAUSTED.
    pub max_queued: u64,
    /// Queued actions of one client beyond this are refused with
    /// RESOURCE_EXHAUSTED, so that no client fills the queue alone.
    pub max_queued_per_client: u64,
    /// How long completed operations stay visible to WaitExecution and
    /// GetOperation, in seconds.
    pub operation_retention_secs: u64,
    /// A queued action that no connected worker can run fails after this
    /// many seconds.
    pub unmatchable_grace_secs: u64,
    /// On stop, how long executing actions may go on to finish and be
    /// reported; queued ones, and what still runs then, get UNAVAILABLE.
    pub drain_timeout_secs: u64,
    /// Operations kept for WaitExecution and GetOperation (completed, or
    /// followed by no stream; one per Execute) take at most this many bytes
    /// together (inlined payloads are not kept); beyond it the oldest are
    /// forgotten first.
    pub max_retained_bytes: u64,
}

impl Default for Execution {
    fn default() -> Self {
        Execution {
            default_timeout_secs: 900,
            max_timeout_secs: 3600,
            max_queued: 10_000,
            max_queued_per_client: 5_000,
            operation_retention_secs: 600,
            unmatchable_grace_secs: 30,
            drain_timeout_secs: 20,
            max_retained_bytes: 128 << 20,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecutionFragment {
    default_timeout_secs: Option<u64>,
    max_timeout_secs: Option<u64>,
    max_queued: Option<u64>,
    max_queued_per_client: Option<u64>,
    operation_retention_secs: Option<u64>,
    unmatchable_grace_secs: Option<u64>,
    drain_timeout_secs: Option<u64>,
    max_retained_bytes: Option<Size>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FrontendFragment {
    listen: Option<ListenFragment>,
    casd: Option<CasdFragment>,
    limits: Option<LimitsFragment>,
    execution: Option<ExecutionFragment>,
    tls: Option<crate::tls::TlsFragment>,
    log: Option<LogFragment>,
    auth: Option<AuthFragment>,
    cluster: Option<crate::cluster::ClusterFragment>,
    offload: Option<crate::cluster::OffloadFragment>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenFragment {
    grpc: Option<Vec<String>>,
    local: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasdFragment {
    socket: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFragment {
    max_message_bytes: Option<Size>,
    stream_idle_timeout_secs: Option<u64>,
    max_proxied_streams: Option<u64>,
    max_streams_per_client: Option<u64>,
    max_upload_bytes_per_client: Option<Size>,
}

impl FrontendFragment {
    /// Applies defaults and validates.
    pub(crate) fn build(self, prov: &Provenance) -> Result<FrontendSettings, ConfigError> {
        let d = FrontendSettings::default();

        let l = self.listen.unwrap_or_default();
        let listen = FrontendListen {
            grpc: l.grpc.unwrap_or(d.listen.grpc),
            local: l.local.unwrap_or(d.listen.local),
        };
        for a in &listen.grpc {
            a.parse::<SocketAddr>().map_err(|e| {
                prov.error(
                    "listen.grpc",
                    format!("{a:?} is not an IP:port address: {e}"),
                )
            })?;
        }
        check_absolute(prov, "listen.local", &listen.local)?;

        let c = self.casd.unwrap_or_default();
        let casd = CasdClient {
            socket: c.socket.unwrap_or(d.casd.socket),
        };
        check_absolute(prov, "casd.socket", &casd.socket)?;

        let li = self.limits.unwrap_or_default();
        let limits = FrontendLimits {
            max_message_bytes: li
                .max_message_bytes
                .map_or(d.limits.max_message_bytes, |v| v.0),
            stream_idle_timeout_secs: li
                .stream_idle_timeout_secs
                .unwrap_or(d.limits.stream_idle_timeout_secs),
            max_proxied_streams: li
                .max_proxied_streams
                .unwrap_or(d.limits.max_proxied_streams),
            max_streams_per_client: li
                .max_streams_per_client
                .unwrap_or(d.limits.max_streams_per_client),
            max_upload_bytes_per_client: li
                .max_upload_bytes_per_client
                .map_or(d.limits.max_upload_bytes_per_client, |v| v.0),
        };
        if !(1..=MAX_PROXIED_STREAMS).contains(&limits.max_streams_per_client) {
            return Err(prov.error(
                "limits.max_streams_per_client",
                format!(
                    "{} is out of range (1 to {MAX_PROXIED_STREAMS})",
                    limits.max_streams_per_client
                ),
            ));
        }
        if limits.max_upload_bytes_per_client < 1 << 20 {
            return Err(prov.error(
                "limits.max_upload_bytes_per_client",
                format!(
                    "{} is below the minimum of 1 MiB",
                    limits.max_upload_bytes_per_client
                ),
            ));
        }
        if !(1..=86_400).contains(&limits.stream_idle_timeout_secs) {
            return Err(prov.error(
                "limits.stream_idle_timeout_secs",
                format!(
                    "{} is out of range (1 to 86400)",
                    limits.stream_idle_timeout_secs
                ),
            ));
        }
        if !(1..=MAX_PROXIED_STREAMS).contains(&limits.max_proxied_streams) {
            return Err(prov.error(
                "limits.max_proxied_streams",
                format!(
                    "{} is out of range (1 to {MAX_PROXIED_STREAMS})",
                    limits.max_proxied_streams
                ),
            ));
        }
        // Below 64 KiB even a FindMissingBlobs of modest size fails; above
        // 2 GiB protobuf itself cannot encode a message.
        if !((64 << 10)..=(2u64 << 30) - 1).contains(&limits.max_message_bytes) {
            return Err(prov.error(
                "limits.max_message_bytes",
                format!(
                    "{} is out of range (64 KiB to 2 GiB - 1)",
                    limits.max_message_bytes
                ),
            ));
        }

        let e = self.execution.unwrap_or_default();
        let de = d.execution;
        let execution = Execution {
            default_timeout_secs: e.default_timeout_secs.unwrap_or(de.default_timeout_secs),
            max_timeout_secs: e.max_timeout_secs.unwrap_or(de.max_timeout_secs),
            max_queued: e.max_queued.unwrap_or(de.max_queued),
            max_queued_per_client: e.max_queued_per_client.unwrap_or(de.max_queued_per_client),
            operation_retention_secs: e
                .operation_retention_secs
                .unwrap_or(de.operation_retention_secs),
            unmatchable_grace_secs: e
                .unmatchable_grace_secs
                .unwrap_or(de.unmatchable_grace_secs),
            drain_timeout_secs: e.drain_timeout_secs.unwrap_or(de.drain_timeout_secs),
            max_retained_bytes: e.max_retained_bytes.map_or(de.max_retained_bytes, |v| v.0),
        };
        if execution.max_retained_bytes < 1 << 20 {
            return Err(prov.error(
                "execution.max_retained_bytes",
                format!(
                    "{} is below the minimum of 1 MiB",
                    execution.max_retained_bytes
                ),
            ));
        }
        crate::common::check_drain_timeout(
            prov,
            "execution.drain_timeout_secs",
            execution.drain_timeout_secs,
        )?;
        for (key, v) in [
            (
                "execution.default_timeout_secs",
                execution.default_timeout_secs,
            ),
            ("execution.max_timeout_secs", execution.max_timeout_secs),
            ("execution.max_queued", execution.max_queued),
            (
                "execution.max_queued_per_client",
                execution.max_queued_per_client,
            ),
        ] {
            if v == 0 {
                return Err(prov.error(key, "must be greater than 0"));
            }
        }
        if execution.default_timeout_secs > execution.max_timeout_secs {
            return Err(prov.error(
                "execution.default_timeout_secs",
                format!(
                    "{} exceeds execution.max_timeout_secs ({})",
                    execution.default_timeout_secs, execution.max_timeout_secs
                ),
            ));
        }

        let tls = crate::tls::TlsFragment::build(self.tls, prov)?;
        let log = LogFragment::build(self.log, prov)?;
        let auth = AuthFragment::build(self.auth, prov)?;
        let cluster = crate::cluster::ClusterFragment::build(self.cluster, prov)?;
        let offload = crate::cluster::OffloadFragment::build(self.offload, prov)?;
        Ok(FrontendSettings {
            listen,
            casd,
            limits,
            execution,
            tls,
            log,
            auth,
            cluster,
            offload,
        })
    }
}
