//! What the status commands share: finding a daemon's local socket (given,
//! or from its configuration) and asking it one question over it.

use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tonic::transport::Channel;

/// Where a status command finds its daemon.
#[derive(clap::Args)]
pub struct SocketArgs {
    /// The daemon's local socket. Default: from its configuration
    /// (`listen.socket` of casd.toml; `listen.local` of frontend.toml).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Configuration directory, lowest precedence first; repeatable.
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dirs: Vec<PathBuf>,
}

/// `socket` if given, else what `from_config` reads from the configuration
/// in `config_dirs` (the default directories when none are given).
pub fn socket(
    socket: Option<PathBuf>,
    config_dirs: Vec<PathBuf>,
    from_config: impl FnOnce(&[PathBuf]) -> Result<PathBuf, rbe_config::ConfigError>,
) -> anyhow::Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s);
    }
    let dirs = if config_dirs.is_empty() {
        rbe_config::default_dirs()
    } else {
        config_dirs
    };
    from_config(&dirs).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Connects to `daemon` at `socket` and runs `call` on the channel.
pub fn ask<T, F, Fut>(socket: &Path, daemon: &str, call: F) -> anyhow::Result<T>
where
    F: FnOnce(Channel) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ch = rbe_net::unix_channel(socket).await?;
        let r = call(ch)
            .await
            .with_context(|| format!("asking {daemon} at {}", socket.display()))?;
        anyhow::Ok(r.into_inner())
    })
}
