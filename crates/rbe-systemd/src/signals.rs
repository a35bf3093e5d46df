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
