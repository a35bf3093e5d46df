//! Shutdown signals. systemd stops a service with SIGTERM; a terminal user
//! presses Ctrl-C (SIGINT). Both start the same designed drain.

/// Resolves on the first SIGTERM or SIGINT.
pub async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                _ = i.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
            }
        }
        // Without signal handlers the process would die on the signal anyway;
        // wait forever rather than stop at once.
        _ => std::future::pending::<()>().await,
    }
}

/// The wait of a drain: returns once `busy()` (work still in progress) is
/// 0, or when `limit` has passed, with what is still busy then. Polled
/// every 50 ms: a stop is rare, and the counts live behind the daemons'
/// own locks.
pub async fn drain(limit: std::time::Duration, busy: impl Fn() -> usize) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let n = busy();
        if n == 0 || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
