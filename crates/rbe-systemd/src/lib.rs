//! Everything that touches systemd: its environment variables and the file
//! descriptors it passes (fd 3 and up) for socket activation, `sd_notify`
//! messages and the watchdog, logging to journald, the daemon skeleton
//! ([`daemon`]), shutdown signals and the drain wait, reload on SIGHUP, and
//! per-action transient scopes over D-Bus ([`scope`]) with their cgroups
//! ([`cgroup`]).
//!
//! Daemons should call [`take_listen_fds`] first thing in `main`, before a
//! tokio runtime or any other thread exists, because it edits the process
//! environment.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod activation;
pub mod cgroup;
pub mod daemon;
mod journal;
mod logging;
mod notify;
mod reload;
pub mod scope;
mod signals;

pub use activation::{booted, take_listen_fds, under_systemd};
pub use logging::{init_logging, set_log_level};
pub use notify::{
    heartbeat, notify_ready, notify_reloading, notify_status, notify_stopping, notify_watchdog,
    watchdog_interval,
};
pub use reload::{reload_on_sighup, Reloaded};
pub use signals::{drain, wait_for_shutdown_signal};

/// Errors from socket activation and logging setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An environment variable set by the service manager is malformed.
    #[error("invalid {var}={value:?}: {reason}")]
    InvalidEnv {
        /// Variable name.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A descriptor announced in `LISTEN_FDS` is unusable.
    #[error("socket-activation fd {fd}: {source}")]
    ListenFd {
        /// The descriptor number.
        fd: i32,
        /// The failing system call's error.
        #[source]
        source: std::io::Error,
    },
    /// The log level directive or `RUST_LOG` could not be parsed.
    #[error("invalid log filter {filter:?}: {reason}")]
    LogFilter {
        /// The offending filter string.
        filter: String,
        /// Parser message.
        reason: String,
    },
    /// A global tracing subscriber was already installed.
    #[error("logging is already initialised: {0}")]
    LoggingAlreadyInitialized(String),
}

/// Serialises tests that read or write the process environment, which is
/// shared by all test threads.
#[cfg(test)]
pub(crate) static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
