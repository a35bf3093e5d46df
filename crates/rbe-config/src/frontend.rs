//! Settings of `rbe-frontend`, the public REAPI gRPC endpoint.

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
    /// `[log]`
    pub log: Log,
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

/// `[limits]`: request size limits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrontendLimits {
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: u64,
}

impl Default for FrontendLimits {
    fn default() -> Self {
        FrontendLimits {
            max_message_bytes: 8 << 20,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FrontendFragment {
    listen: Option<ListenFragment>,
    casd: Option<CasdFragment>,
    limits: Option<LimitsFragment>,
    log: Option<LogFragment>,
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
        };
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

        let log = LogFragment::build(self.log, prov)?;
        Ok(FrontendSettings {
            listen,
            casd,
            limits,
            log,
        })
    }
}
