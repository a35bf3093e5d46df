//! The few system calls `rustix` has no safe wrapper for. Each is a small
//! function so its `unsafe` stays reviewable; all are async-signal-safe
//! (plain system calls, no allocation), because they run between fork and
//! exec.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `fork()`. Returns 0 in the child, the child's pid in the parent.
///
/// Only called in an already forked, single-threaded child (inside
/// `pre_exec`), so the new child has no other thread's locks to inherit.
#[allow(unsafe_code)]
pub(crate) fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: the caller is single-threaded (a `pre_exec` child), and both
    // sides continue with async-signal-safe code only.
    let pid = unsafe { libc::fork() };
    check(pid.into()).map(|_| pid)
}

/// `_exit(code)`: leaves without running atexit handlers or destructors,
/// which belong to the parent process we were forked from.
#[allow(unsafe_code)]
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// `unshare(flags)`.
#[allow(unsafe_code)]
pub(crate) fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: called in a single-threaded child; new namespaces affect only
    // this process and its future children.
    check(unsafe { libc::unshare(flags) }.into()).map(drop)
}

/// `mount(2)` with optional source, type and data.
#[allow(unsafe_code)]
pub(crate) fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let p = |s: Option<&CStr>| s.map_or(ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is null or a NUL-terminated string that
    // outlives the call.
    let ret = unsafe { libc::mount(p(source), target.as_ptr(), p(fstype), flags, p(data).cast()) };
    check(ret.into()).map(drop)
}

/// `mount_setattr(dirfd, path, flags, {attr_set, attr_clr})`.
#[allow(unsafe_code)]
pub(crate) fn mount_setattr(
    dirfd: Option<BorrowedFd<'_>>,
    path: &CStr,
    flags: libc::c_uint,
    attr_set: u64,
    attr_clr: u64,
) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set,
        attr_clr,
        propagation: 0,
        userns_fd: 0,
    };
    let fd = dirfd.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    // SAFETY: `path` is NUL-terminated, `attr` is a valid `mount_attr` of
    // the size passed; both outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            path.as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            size_of::<libc::mount_attr>(),
        )
    };
    check(ret).map(drop)
}

/// `open_tree(AT_FDCWD, path, flags)`: a detached copy of the mount at path.
#[allow(unsafe_code)]
pub(crate) fn open_tree(path: &CStr, flags: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated; the returned fd is new and ours.
    let fd =
        check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) })?;
    // SAFETY: `fd` is a freshly returned descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `move_mount(from, "", AT_FDCWD, to, MOVE_MOUNT_F_EMPTY_PATH)`.
#[allow(unsafe_code)]
pub(crate) fn move_mount(from: BorrowedFd<'_>, to: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(ret).map(drop)
}

/// `close_range(first, u32::MAX, flags)`.
#[allow(unsafe_code)]
pub(crate) fn close_range(first: libc::c_uint, last: libc::c_uint, flags: libc::c_uint) {
    // SAFETY: closing descriptors is memory safe; the caller never uses the
    // closed ones again (it only runs raw system calls until exec or exit).
    unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
}

/// `keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)`: a new anonymous session
/// keyring for this process and its children.
#[allow(unsafe_code)]
pub(crate) fn join_new_session_keyring() -> io::Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: a NULL name asks for an anonymous keyring; no memory is
    // passed to the kernel.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            ptr::null::<libc::c_char>(),
        )
    };
    check(ret).map(drop)
}

/// Resets `SIGCHLD` to its default: the runtime's handler, inherited over
/// fork, must not run in stages that never exec.
#[allow(unsafe_code)]
pub(crate) fn default_sigchld() {
    // SAFETY: `signal` with `SIG_DFL` is async-signal-safe.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
}

/// Brings `lo` up in the current network namespace (a new one starts down).
#[allow(unsafe_code)]
pub(crate) fn loopback_up() -> io::Result<()> {
    use rustix::net::{socket_with, AddressFamily, SocketFlags, SocketType};
    let sock = socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // SAFETY: `ifreq` is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid `ifreq` naming an interface; the ioctls
    // read and write only that struct.
    unsafe {
        check(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req).into())?;
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        check(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req).into())?;
    }
    Ok(())
}

/// A prepared `execve`: the strings and the NULL-terminated pointer arrays
/// are built before the fork, so the child only makes the system call.
pub(crate) struct Exec {
    path: std::ffi::CString,
    // The pointers point into these; they must live as long as `Exec`.
    _argv: Vec<std::ffi::CString>,
    _envp: Vec<std::ffi::CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into the CStrings owned by the same value,
// which are never mutated after construction; sharing or moving `Exec`
// between threads moves the owning Vecs whose heap buffers do not move.
#[allow(unsafe_code)]
unsafe impl Send for Exec {}
// SAFETY: as above; nothing is mutated through `&Exec`.
#[allow(unsafe_code)]
unsafe impl Sync for Exec {}

impl Exec {
    pub(crate) fn new(
        path: std::ffi::CString,
        argv: Vec<std::ffi::CString>,
        envp: Vec<std::ffi::CString>,
    ) -> Exec {
        let ptrs = |v: &[std::ffi::CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(ptr::null()))
                .collect::<Vec<_>>()
        };
        Exec {
            argv_ptrs: ptrs(&argv),
            envp_ptrs: ptrs(&envp),
            path,
            _argv: argv,
            _envp: envp,
        }
    }

    /// `execve`; returns only on failure.
    #[allow(unsafe_code)]
    pub(crate) fn exec(&self) -> io::Error {
        // SAFETY: every pointer is a NUL-terminated string owned by `self`
        // and both arrays end with NULL.
        unsafe {
            libc::execve(
                self.path.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.envp_ptrs.as_ptr(),
            )
        };
        io::Error::last_os_error()
    }
}
