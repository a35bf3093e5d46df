//! `systemctl reload` for every daemon: `ExecReload=` sends SIGHUP, the
//! daemon says `RELOADING=1`, reads its files again and applies what can
//! change live, then says `READY=1`. A broken file keeps the running
//! configuration; the journal and `STATUS=` name the file, key and reason.

use std::fmt::Display;

/// Handles SIGHUP until the process ends: each one runs `load`, and hands
/// a configuration that loaded to `apply`, which applies what it can and
/// names the keys that changed but only take effect after a restart.
/// The log level (`level` of the new configuration) is applied here.
///
/// The handler is installed when this is called, not when the future is
/// first polled: until then SIGHUP would still end the process. Call it
/// before `READY=1`.
pub fn reload_on_sighup<S, E, L, A>(load: L, mut apply: A) -> impl std::future::Future<Output = ()>
where
    E: Display,
    L: Fn() -> Result<S, E>,
    A: FnMut(S) -> Reloaded,
{
    use tokio::signal::unix::{signal, SignalKind};
    let hup = signal(SignalKind::hangup());
    async move {
        let Ok(mut hup) = hup else {
            tracing::warn!("cannot install a SIGHUP handler: reload is unavailable");
            return;
        };
        while hup.recv().await.is_some() {
            crate::notify_reloading();
            match load() {
                Ok(new) => {
                    crate::notify::set_sticky_status(None);
                    let r = apply(new);
                    if let Err(e) = crate::logging::set_log_level(&r.log_level) {
                        tracing::warn!(error = %e, "log level not changed");
                    }
                    for key in &r.restart_only {
                        tracing::warn!(key, "changed, but only applies after a restart");
                    }
                    tracing::info!(
                        restart_only = r.restart_only.len(),
                        "configuration reloaded"
                    );
                    crate::notify_status(&if r.restart_only.is_empty() {
                        "configuration reloaded".to_owned()
                    } else {
                        format!(
                            "configuration reloaded; needs a restart for {}",
                            r.restart_only.join(", ")
                        )
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "reload failed; keeping the running configuration");
                    let note = format!("reload failed: {e}");
                    crate::notify::set_sticky_status(Some(note.clone()));
                    crate::notify_status(&note);
                }
            }
            crate::notify_ready();
        }
    }
}

/// What applying a reloaded configuration did.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// The new `[log] level`.
    pub log_level: String,
    /// Keys whose new value waits for a restart.
    pub restart_only: Vec<&'static str>,
}

impl Reloaded {
    /// Starts a report for a configuration whose log level is `level`.
    pub fn new(level: &str) -> Self {
        Reloaded {
            log_level: level.to_owned(),
            restart_only: Vec::new(),
        }
    }

    /// For a key that only applies after a restart: when the reloaded
    /// value `new` differs from the `running` one, records `key` and puts
    /// the running value back, so what a daemon advertises stays what it
    /// enforces until it restarts.
    pub fn keep<T: PartialEq + Clone>(
        &mut self,
        key: &'static str,
        running: &T,
        new: &mut T,
    ) -> &mut Self {
        if running != new {
            self.restart_only.push(key);
            *new = running.clone();
        }
        self
    }
}
