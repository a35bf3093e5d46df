//! `sd_notify(3)` messages and the service watchdog.
//!
//! Every function here is a no-op outside systemd and never fails: a
//! daemon must not stop serving because its supervisor is unreachable.

use sd_notify::NotifyState;
use std::env;
use std::time::Duration;

fn send(states: &[NotifyState<'_>]) {
    if env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Tells systemd start-up is complete (`READY=1`); `Type=notify` units are
/// considered started only after this.
pub fn notify_ready() {
    send(&[NotifyState::Ready]);
}

/// A problem the admin must see until it is gone (a failed reload): the
/// heartbeat rewrites `STATUS=` every few seconds, and would otherwise hide
/// it before anyone looked.
static STICKY: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Sets (or, with `None`, clears) the note appended to every `STATUS=`.
pub fn set_sticky_status(note: Option<String>) {
    *STICKY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = note;
}

/// Sets the one-line status shown by `systemctl status`, followed by the
/// sticky note if one is set.
pub fn notify_status(status: &str) {
    let sticky = STICKY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let full = match sticky {
        Some(note) if !status.contains(&note) => format!("{status}; {note}"),
        _ => status.to_owned(),
    };
    // A newline would end the STATUS= assignment and start a new one.
    let line = full.replace(['\n', '\r'], " ");
    send(&[NotifyState::Status(&line)]);
}

/// Tells systemd a configuration reload has started. Send
/// [`notify_ready`] when it is done.
pub fn notify_reloading() {
    // systemd >= 253 ignores RELOADING=1 for Type=notify-reload units
    // unless it comes with the CLOCK_MONOTONIC timestamp of the request.
    match NotifyState::monotonic_usec_now() {
        Ok(ts) => send(&[NotifyState::Reloading, ts]),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read CLOCK_MONOTONIC");
            send(&[NotifyState::Reloading]);
        }
    }
}

/// Tells systemd the service is shutting down.
pub fn notify_stopping() {
    send(&[NotifyState::Stopping]);
}

/// Pets the watchdog (`WATCHDOG=1`).
pub fn notify_watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Runs a daemon's heartbeat until `stop` completes: every tick (the
/// watchdog interval, at most 5 s so `STATUS=` stays fresh) it pings the
/// watchdog and calls `each` (the `STATUS=` line and other periodic work).
/// Run it on the runtime that serves requests: a wedged runtime then stops
/// the pings and systemd restarts the daemon.
pub async fn heartbeat(stop: impl std::future::Future<Output = ()>, mut each: impl FnMut()) {
    let tick = watchdog_interval()
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(5));
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(tick) => {}
        }
        notify_watchdog();
        each();
    }
}

/// How often to call [`notify_watchdog`]: half of `WATCHDOG_USEC`, so one
/// late tick does not get the service killed. `None` when the watchdog is
/// off or `WATCHDOG_PID` names another process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = env::var("WATCHDOG_USEC").ok()?;
    let pid = env::var("WATCHDOG_PID").ok();
    interval_from(&usec, pid.as_deref(), std::process::id())
}

fn interval_from(usec: &str, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    let usec: u64 = usec.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn watchdog_parsing() {
        assert_eq!(
            interval_from("2000000", None, 5),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            interval_from("2000000", Some("5"), 5),
            Some(Duration::from_secs(1))
        );
        assert_eq!(interval_from("2000000", Some("6"), 5), None);
        assert_eq!(interval_from("0", None, 5), None);
        assert_eq!(interval_from("soon", None, 5), None);
    }

    #[test]
    fn messages_reach_the_socket() {
        let _g = crate::ENV_LOCK.lock().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        env::set_var("NOTIFY_SOCKET", &path);
        let recv = || {
            let mut buf = [0u8; 256];
            let n = sock.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        notify_ready();
        assert_eq!(recv(), "READY=1\n");
        notify_status("copying\nblobs");
        assert_eq!(recv(), "STATUS=copying blobs\n");
        // A failed reload stays visible through later heartbeats.
        set_sticky_status(Some("reload failed: x".into()));
        notify_status("3 blobs");
        assert_eq!(recv(), "STATUS=3 blobs; reload failed: x\n");
        set_sticky_status(None);
        notify_status("3 blobs");
        assert_eq!(recv(), "STATUS=3 blobs\n");
        notify_reloading();
        let msg = recv();
        assert!(msg.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{msg}");
        notify_stopping();
        assert_eq!(recv(), "STOPPING=1\n");
        notify_watchdog();
        assert_eq!(recv(), "WATCHDOG=1\n");
        assert!(crate::under_systemd());

        // An unreachable socket must not panic or error.
        env::set_var("NOTIFY_SOCKET", dir.path().join("gone"));
        notify_ready();
        env::remove_var("NOTIFY_SOCKET");
        notify_ready();

        env::set_var("WATCHDOG_USEC", "3000000");
        env::set_var("WATCHDOG_PID", std::process::id().to_string());
        assert_eq!(watchdog_interval(), Some(Duration::from_millis(1500)));
        env::remove_var("WATCHDOG_USEC");
        env::remove_var("WATCHDOG_PID");
        assert_eq!(watchdog_interval(), None);
    }
}
