//! The work directory's life: one directory per action, removed when the
//! action is done; what cannot be removed, and what an earlier run left,
//! waits in `.quarantine` for a background cleaner. Nothing an action left
//! can stop the worker or its next start (see `rbe_exec::remove`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rbe_exec::remove::{Disposal, Quarantine, RemoveLimits, QUARANTINE};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A removal that takes longer is logged (what it removed, how long).
const SLOW: Duration = Duration::from_secs(1);

/// How often the cleaner retries what it could not remove.
const RETRY: Duration = Duration::from_secs(600);

/// The work directory and its quarantine.
pub struct WorkDir {
    path: PathBuf,
    quarantine: Quarantine,
    /// Trees in the quarantine at the last count (for STATUS=).
    quarantined: AtomicUsize,
    wake: Notify,
    /// Set on shutdown: a long removal stops between two entries.
    stop: Arc<AtomicBool>,
}

impl WorkDir {
    /// Creates the work directory (mode 0711: casd, another user under
    /// systemd, must pass through it to build inputs, nobody may list it,
    /// and sandboxes hide it entirely), and moves whatever an earlier run
    /// left there into the quarantine: one rename each, so a tree of any
    /// size or shape cannot delay or break the start.
    pub fn prepare(path: &Path) -> anyhow::Result<WorkDir> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("chmod {}", path.display()))?;
        let quarantine =
            Quarantine::open(path).with_context(|| format!("opening {}", path.display()))?;
        let w = WorkDir {
            path: path.to_path_buf(),
            quarantine,
            quarantined: AtomicUsize::new(0),
            wake: Notify::new(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let entries = match std::fs::read_dir(path) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot list the work directory to clear it");
                return Ok(w);
            }
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == QUARANTINE {
                continue;
            }
            match w.quarantine.quarantine(&name) {
                Ok(to) => tracing::info!(
                    path = %e.path().display(),
                    quarantined_as = %w.quarantine.path().join(&to).display(),
                    "moved what an earlier run left to the quarantine; it is removed in the background"
                ),
                Err(err) => tracing::error!(
                    path = %e.path().display(),
                    error = %err,
                    "cannot move what an earlier run left out of the work directory; leaving it"
                ),
            }
        }
        w.recount();
        Ok(w)
    }

    /// Where action directories go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Trees waiting in the quarantine.
    pub fn quarantined(&self) -> usize {
        self.quarantined.load(Ordering::Relaxed)
    }

    fn limits(&self) -> RemoveLimits {
        RemoveLimits {
            stop: Some(Arc::clone(&self.stop)),
            ..RemoveLimits::default()
        }
    }

    fn recount(&self) {
        if let Ok(n) = self.quarantine.entries() {
            self.quarantined.store(n.len(), Ordering::Relaxed);
        }
    }

    /// Removes an action's directory (blocking: call it off the runtime).
    /// Never fails: what cannot be removed is quarantined and reported.
    pub fn dispose(&self, action_id: &str) {
        let started = std::time::Instant::now();
        match self.quarantine.dispose(action_id, &self.limits()) {
            Disposal::Removed(r) if started.elapsed() > SLOW => tracing::info!(
                action_dir = action_id,
                entries = r.entries,
                max_depth = r.max_depth,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "slow removal of an action directory"
            ),
            Disposal::Removed(r) => tracing::debug!(
                action_dir = action_id,
                entries = r.entries,
                max_depth = r.max_depth,
                "action directory removed"
            ),
            Disposal::Quarantined { error, name } => {
                tracing::warn!(
                    action_dir = action_id,
                    quarantined_as = %self.quarantine.path().join(&name).display(),
                    error = %error,
                    "could not remove an action directory; moved it to the quarantine"
                );
                self.quarantined.fetch_add(1, Ordering::Relaxed);
                self.wake.notify_one();
            }
            Disposal::Stuck { error, rename } => tracing::error!(
                action_dir = %self.path.join(action_id).display(),
                error = %error,
                rename_error = %rename,
                "could not remove an action directory nor move it to the quarantine; the next start moves it"
            ),
        }
    }

    /// Empties the quarantine now, after each new arrival, and every
    /// [`RETRY`] while something stays; stops with `shutdown`.
    pub async fn clean_in_background(self: Arc<Self>, shutdown: CancellationToken) {
        {
            let stop = Arc::clone(&self.stop);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                stop.store(true, Ordering::Relaxed);
            });
        }
        loop {
            if self.quarantined() > 0 {
                let w = Arc::clone(&self);
                let limits = RemoveLimits {
                    // Nothing waits on the cleaner: only stopping ends it.
                    max_steps: u64::MAX,
                    ..self.limits()
                };
                let r = tokio::task::spawn_blocking(move || {
                    let r = w.quarantine.clean(&limits);
                    w.recount();
                    r
                })
                .await;
                match r {
                    Ok((removed, left)) => {
                        if removed > 0 {
                            tracing::info!(removed, "removed trees from the quarantine");
                        }
                        for (name, error) in left {
                            if !shutdown.is_cancelled() {
                                tracing::warn!(
                                    path = %self.quarantine.path().join(&name).display(),
                                    error = %error,
                                    retry_secs = RETRY.as_secs(),
                                    "cannot remove a quarantined tree yet"
                                );
                            }
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "the quarantine cleaner failed"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}
