//! Socket activation: adopting the descriptors systemd passes at fd 3 and up.

use crate::Error;
use std::env;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// `SD_LISTEN_FDS_START`.
const FIRST_FD: RawFd = 3;

/// Set once the descriptors have been handed out: wrapping the same raw fd
/// in a second `OwnedFd` would lead to a double close.
static TAKEN: AtomicBool = AtomicBool::new(false);
/// Whether this process was socket-activated, for [`under_systemd`].
static ACTIVATED: AtomicBool = AtomicBool::new(false);

/// Takes the sockets systemd passed to this process, with their
/// `FileDescriptorName=`s (`"unknown"` where none was given).
///
/// Returns an empty list when the process was not socket-activated (or the
/// variables are meant for another process), and on every call after the
/// first. `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` are removed from
/// the environment in all cases so that child processes do not mistake the
/// descriptors for theirs; call this before starting any thread. The
/// returned descriptors are close-on-exec. Match sockets by name: their
/// order is not stable across unit changes.
pub fn take_listen_fds() -> Result<Vec<(String, OwnedFd)>, Error> {
    let pid = env::var("LISTEN_PID").ok();
    let count = env::var("LISTEN_FDS").ok();
    let names = env::var("LISTEN_FDNAMES").ok();
    env::remove_var("LISTEN_PID");
    env::remove_var("LISTEN_FDS");
    env::remove_var("LISTEN_FDNAMES");

    let Some(n) = fd_count(
        pid.as_deref(),
        count.as_deref(),
        rustix::process::getpid().as_raw_nonzero().get(),
    )?
    else {
        return Ok(Vec::new());
    };
    if n == 0 || TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    ACTIVATED.store(true, Ordering::SeqCst);
    adopt(FIRST_FD, n, names.as_deref())
}

/// True when running as a systemd service: `NOTIFY_SOCKET` is set or
/// socket-activation descriptors were taken.
pub fn under_systemd() -> bool {
    env::var_os("NOTIFY_SOCKET").is_some() || ACTIVATED.load(Ordering::SeqCst)
}

/// Whether systemd manages this host (`sd_booted()`): its runtime
/// directory exists only when it runs as PID 1 of this system.
pub fn booted() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

/// How many descriptors are ours, or `None` if the variables are absent or
/// addressed to another process.
fn fd_count(pid: Option<&str>, count: Option<&str>, our_pid: i32) -> Result<Option<usize>, Error> {
    let (Some(pid), Some(count)) = (pid, count) else {
        return Ok(None);
    };
    let invalid = |var, value: &str, reason: &str| Error::InvalidEnv {
        var,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let pid: i32 = pid
        .trim()
        .parse()
        .map_err(|_| invalid("LISTEN_PID", pid, "not a process id"))?;
    // Inherited from a socket-activated parent: not ours.
    if pid != our_pid {
        return Ok(None);
    }
    let n: usize = count
        .trim()
        .parse()
        .map_err(|_| invalid("LISTEN_FDS", count, "not a count"))?;
    if n > 4096 {
        return Err(invalid("LISTEN_FDS", count, "implausibly large"));
    }
    Ok(Some(n))
}

/// Wraps fds `first..first+n` and names them from `names`.
fn adopt(first: RawFd, n: usize, names: Option<&str>) -> Result<Vec<(String, OwnedFd)>, Error> {
    let mut names = names.map(|s| s.split(':')).into_iter().flatten();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let fd = first + i as RawFd;
        let owned = adopt_fd(fd).map_err(|source| Error::ListenFd { fd, source })?;
        let flags = rustix::io::fcntl_getfd(&owned).map_err(|e| Error::ListenFd {
            fd,
            source: e.into(),
        })?;
        // Without this every action a worker spawns would inherit the
        // listening sockets and keep them open after we exit.
        rustix::io::fcntl_setfd(&owned, flags | rustix::io::FdFlags::CLOEXEC).map_err(|e| {
            Error::ListenFd {
                fd,
                source: e.into(),
            }
        })?;
        let name = match names.next() {
            Some(s) if !s.is_empty() => s.to_owned(),
            _ => "unknown".to_owned(),
        };
        out.push((name, owned));
    }
    Ok(out)
}

/// Takes ownership of descriptor `fd` after checking that it is open.
#[allow(unsafe_code)]
fn adopt_fd(fd: RawFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_GETFD only reads the descriptor flags; it is sound for any
    // integer and fails with EBADF if `fd` is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked above) and was passed to this process
    // by the service manager for us to own; nothing else in the process
    // owns it, and callers guarantee (via TAKEN) that it is adopted once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::net::UnixListener;

    #[test]
    fn count_parsing() {
        assert_eq!(fd_count(None, Some("2"), 7).unwrap(), None);
        assert_eq!(fd_count(Some("7"), None, 7).unwrap(), None);
        assert_eq!(fd_count(Some("8"), Some("2"), 7).unwrap(), None);
        assert_eq!(fd_count(Some("7"), Some("2"), 7).unwrap(), Some(2));
        assert!(fd_count(Some("x"), Some("2"), 7).is_err());
        assert!(fd_count(Some("7"), Some("-1"), 7).is_err());
    }

    /// Moves `fd` to the lowest free descriptor at or above `min`, so that
    /// a test can lay out consecutive descriptors like systemd does.
    /// The copy is left without CLOEXEC, as systemd passes it.
    fn dup_at_least(fd: &OwnedFd, min: RawFd) -> RawFd {
        let dup = rustix::io::fcntl_dupfd_cloexec(fd, min).unwrap();
        rustix::io::fcntl_setfd(&dup, rustix::io::FdFlags::empty()).unwrap();
        dup.into_raw_fd()
    }

    #[test]
    fn adopts_names_and_sets_cloexec() {
        let dir = tempfile::tempdir().unwrap();
        let a = OwnedFd::from(UnixListener::bind(dir.path().join("a")).unwrap());
        let b = OwnedFd::from(UnixListener::bind(dir.path().join("b")).unwrap());
        let c = OwnedFd::from(UnixListener::bind(dir.path().join("c")).unwrap());
        let first = dup_at_least(&a, 700);
        assert_eq!(
            dup_at_least(&b, first + 1),
            first + 1,
            "need consecutive fds"
        );
        assert_eq!(
            dup_at_least(&c, first + 2),
            first + 2,
            "need consecutive fds"
        );
        let fds = adopt(first, 3, Some("grpc::")).unwrap();
        let names: Vec<_> = fds.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["grpc", "unknown", "unknown"]);
        for (_, fd) in &fds {
            let flags = rustix::io::fcntl_getfd(fd).unwrap();
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        }
        assert_eq!(fds[0].1.as_raw_fd(), first);
        let fds = adopt(first, 0, None).unwrap();
        assert!(fds.is_empty());
    }

    #[test]
    fn closed_fd_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = OwnedFd::from(UnixListener::bind(dir.path().join("a")).unwrap());
        let free = dup_at_least(&a, 800);
        drop(adopt(free, 1, None).unwrap());
        // `free` is closed now.
        assert!(matches!(adopt(free, 1, None), Err(Error::ListenFd { .. })));
    }

    #[test]
    fn env_is_unset_even_when_not_ours() {
        let _g = crate::ENV_LOCK.lock().unwrap();
        env::set_var("LISTEN_PID", "1");
        env::set_var("LISTEN_FDS", "2");
        env::set_var("LISTEN_FDNAMES", "a:b");
        assert!(take_listen_fds().unwrap().is_empty());
        for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            assert!(env::var_os(v).is_none(), "{v}");
        }
        env::set_var("LISTEN_PID", std::process::id().to_string());
        env::set_var("LISTEN_FDS", "0");
        assert!(take_listen_fds().unwrap().is_empty());
        assert!(env::var_os("LISTEN_FDS").is_none());
    }
}
