//! Code that runs between fork and exec (see the crate docs for the three
//! stages). Everything here is async-signal-safe: system calls on data the
//! [`Plan`] prepared before the fork, no allocation, no locks.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::process::{Pid, Signal, WaitOptions};
use rustix::thread::{Gid, Uid};

use crate::sys;

/// Setup steps, in order; the index is sent over the report pipe.
pub(crate) const STEPS: &[&str] = &[
    "unshare namespaces",
    "write /proc/self/setgroups",
    "write /proc/self/uid_map",
    "write /proc/self/gid_map",
    "fork",
    "make mounts private",
    "clone the action root mount",
    "make the host read-only",
    "mount tmpfs on /tmp",
    "hide a path with tmpfs",
    "create the action root mount point",
    "mount the action root",
    "make hidden paths read-only",
    "mount /proc",
    "mount tmpfs on /dev/shm",
    "set hostname",
    "bring up lo",
    "setgroups",
    "setgid",
    "setuid",
    "set no_new_privs",
    "set parent-death signal",
    "enter the working directory",
    "pipe",
    "start a new session",
    "join a new session keyring",
    "clone a host mount for /dev or /sys",
    "mount tmpfs on /dev",
    "create a mount point in /dev or /sys",
    "mount a device node",
    "mount devpts",
    "create a symlink in /dev",
    "make /dev or /sys read-only",
    "mount tmpfs on /sys",
    "mount a /sys directory",
    "install the seccomp filter",
    "set resource limits",
];

#[derive(Clone, Copy)]
#[repr(usize)]
enum Step {
    Unshare,
    Setgroups,
    UidMap,
    GidMap,
    Fork,
    MakePrivate,
    OpenTree,
    ReadOnly,
    MountTmp,
    Hide,
    MkdirRoot,
    MoveRoot,
    HideReadOnly,
    MountProc,
    DevShm,
    Hostname,
    Loopback,
    SetGroups,
    SetGid,
    SetUid,
    NoNewPrivs,
    DeathSignal,
    WorkingDir,
    Pipe,
    Setsid,
    Keyring,
    CloneHost,
    DevTmpfs,
    MountPoint,
    DevNode,
    Devpts,
    DevLink,
    DevSysReadOnly,
    SysTmpfs,
    SysDir,
    Seccomp,
    Rlimit,
}

/// `oom_score_adj` of every action process: the highest, so the kernel's
/// OOM killer takes actions before anything else on the host.
const OOM_SCORE_ADJ: &[u8] = b"1000";

/// Host device nodes bind-mounted into the action's /dev.
const DEV_NODES: [&std::ffi::CStr; 6] = [
    c"/dev/null",
    c"/dev/zero",
    c"/dev/full",
    c"/dev/random",
    c"/dev/urandom",
    c"/dev/tty",
];

/// Symlinks in the action's /dev: (target, link).
const DEV_LINKS: [(&std::ffi::CStr, &std::ffi::CStr); 5] = [
    (c"pts/ptmx", c"/dev/ptmx"),
    (c"/proc/self/fd", c"/dev/fd"),
    (c"/proc/self/fd/0", c"/dev/stdin"),
    (c"/proc/self/fd/1", c"/dev/stdout"),
    (c"/proc/self/fd/2", c"/dev/stderr"),
];

/// Record kinds on the report pipe: 3 native-endian i32s, written whole
/// (well under `PIPE_BUF`, so atomic).
pub(crate) const REPORT_SETUP_ERROR: i32 = 1;
/// Record carrying the command's raw wait status, sent by init.
pub(crate) const REPORT_EXIT_STATUS: i32 = 2;
/// Record carrying the keeper's pid, sent before it creates any namespace
/// (and, with a gate, before it waits to be let through).
pub(crate) const REPORT_KEEPER_PID: i32 = 3;
/// Record carrying the errno of a failed `execve` of the command.
pub(crate) const REPORT_EXEC_ERROR: i32 = 5;
/// Record sent by the keeper once init is reaped: every process of the
/// action is gone, but the keeper still holds the action's cgroup.
pub(crate) const REPORT_INIT_DONE: i32 = 4;
/// Size of one report record.
pub(crate) const REPORT_LEN: usize = 12;

/// Everything the stages need, built before the fork.
pub(crate) struct Plan {
    /// `Some((uid, gid))`: not root, create a user namespace mapping these.
    pub userns: Option<(u32, u32)>,
    /// `Some((uid, gid))`: root, switch to these before exec.
    pub drop_to: Option<(u32, u32)>,
    pub network: bool,
    /// Absolute action root.
    pub root: CString,
    /// Directories to create (in order) so the root has a mount point when
    /// it lies under /tmp or a hidden path.
    pub root_mkdirs: Vec<CString>,
    /// Existing directories to cover with tmpfs, outermost first.
    pub hide: Vec<CString>,
    /// Working directory relative to the root, "." for the root.
    pub working_dir: CString,
    pub uid_map: Vec<u8>,
    pub gid_map: Vec<u8>,
    /// tmpfs options of /tmp and /dev/shm (mode and `size=`).
    pub tmpfs_opts: CString,
    /// Installed right before `execve`.
    pub seccomp: &'static crate::seccomp::Filters,
    /// `setrlimit` calls for the command (see [`crate::Rlimits`]).
    pub rlimits: Vec<(rustix::process::Resource, u64)>,
    /// The command's `execve`, prepared.
    pub exec: sys::Exec,
    /// Write end of the report pipe (close-on-exec).
    pub report_fd: RawFd,
    /// Read end of the gate pipe, whose write end only the runner holds.
    /// EOF while the action runs means the runner died: the keeper then
    /// kills init, so no action outlives its worker (with or without a
    /// systemd scope to clean up after it). After init is reaped the
    /// keeper waits for EOF before it exits (so a confinement's cgroup
    /// outlives the action until the runner has read its figures).
    pub gate_fd: RawFd,
    /// Wait for one byte at the gate before creating namespaces: the
    /// runner moves the keeper into a cgroup meanwhile, so everything it
    /// forks starts there.
    pub gate_wait: bool,
}

/// Closes every descriptor but `keep` (-1 entries are ignored) without
/// allocating: sort them, close the gaps.
fn close_all_except(mut keep: [RawFd; 5]) {
    keep.sort_unstable();
    let mut next: libc::c_uint = 0;
    for fd in keep {
        let Ok(fd) = libc::c_uint::try_from(fd) else {
            continue;
        };
        if fd > next {
            sys::close_range(next, fd - 1, 0);
        }
        next = next.max(fd.saturating_add(1));
    }
    sys::close_range(next, libc::c_uint::MAX, 0);
}

fn report(fd: RawFd, kind: i32, a: i32, b: i32) {
    let mut rec = [0u8; REPORT_LEN];
    rec[0..4].copy_from_slice(&kind.to_ne_bytes());
    rec[4..8].copy_from_slice(&a.to_ne_bytes());
    rec[8..12].copy_from_slice(&b.to_ne_bytes());
    // Nothing useful can be done if the runner went away.
    let _ = rustix::io::write(borrow(fd), &rec);
}

#[allow(unsafe_code)]
fn borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only used for the report and gate pipes, which stay open in
    // every stage that uses them (closed only by exec or exit).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

impl Plan {
    /// Reports a failed step to the runner and returns the error for std,
    /// which then ends this process.
    fn fail(&self, step: Step, err: impl Into<io::Error>) -> io::Error {
        let err: io::Error = err.into();
        let errno = err.raw_os_error().unwrap_or(libc::EIO);
        report(self.report_fd, REPORT_SETUP_ERROR, step as i32, errno);
        err
    }

    fn step<T>(&self, step: Step, r: Result<T, impl Into<io::Error>>) -> io::Result<T> {
        r.map_err(|e| self.fail(step, e))
    }

    /// The `pre_exec` hook: stage 1 (keeper). Returns only in the command
    /// process, which std then execs; the other stages exit here.
    pub(crate) fn pre_exec(&self) -> io::Result<()> {
        sys::default_sigchld();
        report(
            self.report_fd,
            REPORT_KEEPER_PID,
            rustix::process::getpid().as_raw_nonzero().get(),
            0,
        );
        // Descriptors other threads of the runner had open when it forked
        // (other actions' pipes) must not be held here: while this keeper
        // waits they would delay those actions' EOFs. std's exec-error pipe
        // goes too, which tells std the spawn is done (the command stage
        // makes its own `execve` and reports a failure on the report pipe).
        close_all_except([0, 1, 2, self.report_fd, self.gate_fd]);
        if self.gate_wait {
            let mut go = [0u8; 1];
            match rustix::io::read(borrow(self.gate_fd), &mut go) {
                Ok(1) => {}
                // The runner gave up (it could not place us): run nothing.
                _ => sys::exit_now(1),
            }
        }
        let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC;
        flags |= libc::CLONE_NEWUTS;
        if !self.network {
            flags |= libc::CLONE_NEWNET;
        }
        if self.userns.is_some() {
            flags |= libc::CLONE_NEWUSER;
        }
        self.step(Step::Unshare, sys::unshare(flags))?;
        if self.userns.is_some() {
            // An unprivileged process may map only its own ids, and only
            // after giving up setgroups in the new namespace.
            self.write_file(Step::Setgroups, c"/proc/self/setgroups", b"deny")?;
            self.write_file(Step::UidMap, c"/proc/self/uid_map", &self.uid_map)?;
            self.write_file(Step::GidMap, c"/proc/self/gid_map", &self.gid_map)?;
        }
        // Init learns through this pipe whether the keeper died before init
        // armed its parent-death signal.
        let (alive_r, alive_w) = self.step(
            Step::Pipe,
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC),
        )?;
        let pid = self.step(Step::Fork, sys::fork())?;
        if pid == 0 {
            drop(alive_w);
            return self.init(alive_r);
        }
        // Keeper: hold nothing the runner waits on (stdout/stderr pipes,
        // std's exec-error pipe) except the alive, report and gate pipes.
        close_all_except([alive_w.as_raw_fd(), self.report_fd, self.gate_fd, -1, -1]);
        self.watch_runner(pid);
        let code = loop {
            match rustix::process::waitpid(Pid::from_raw(pid), WaitOptions::empty()) {
                Ok(Some((_, status))) => break status.exit_status().unwrap_or(255),
                Err(rustix::io::Errno::INTR) => continue,
                _ => break 255,
            }
        };
        report(self.report_fd, REPORT_INIT_DONE, code, 0);
        if self.gate_fd >= 0 {
            // Until the runner closes the gate (EOF) or dies.
            let mut byte = [0u8; 1];
            while let Ok(1) | Err(rustix::io::Errno::INTR) =
                rustix::io::read(borrow(self.gate_fd), &mut byte)
            {}
        }
        sys::exit_now(code)
    }

    /// Returns once init (`pid`) has exited; kills it first if the gate
    /// reports EOF, i.e. the runner died (SIGKILL, a crash). Without
    /// pidfds (Linux < 5.3) it returns at once and the caller just waits.
    fn watch_runner(&self, pid: i32) {
        if self.gate_fd < 0 {
            return;
        }
        let Some(init) = Pid::from_raw(pid) else {
            return;
        };
        let Ok(pidfd) = rustix::process::pidfd_open(init, rustix::process::PidfdFlags::empty())
        else {
            return;
        };
        let gate = borrow(self.gate_fd);
        loop {
            let mut fds = [
                PollFd::new(&pidfd, PollFlags::IN),
                PollFd::new(&gate, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return,
            }
            if !fds[0].revents().is_empty() {
                return;
            }
            if !fds[1].revents().is_empty() {
                let mut byte = [0u8; 1];
                match rustix::io::read(gate, &mut byte) {
                    Ok(1) | Err(rustix::io::Errno::INTR) => {}
                    _ => {
                        // The pid namespace dies with its init.
                        let _ = rustix::process::kill_process(init, Signal::KILL);
                        return;
                    }
                }
            }
        }
    }

    fn write_file(&self, step: Step, path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
        let fd = self.step(
            step,
            rustix::fs::open(path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty()),
        )?;
        self.step(step, rustix::io::write(&fd, data))?;
        Ok(())
    }

    /// Stage 2: pid 1 of the new pid namespace.
    fn init(&self, alive_r: OwnedFd) -> io::Result<()> {
        self.step(
            Step::DeathSignal,
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL)),
        )?;
        // If the keeper was killed before the prctl above, its end of the
        // pipe is closed already and the signal will never come.
        let mut fds = [PollFd::new(&alive_r, PollFlags::IN)];
        let zero = rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if poll(&mut fds, Some(&zero)).is_ok() && !fds[0].revents().is_empty() {
            sys::exit_now(1);
        }
        drop(alive_r);
        // A session of its own, without a controlling terminal: the
        // worker's terminal (`rbectl local` started from one) must not be
        // reachable through /dev/tty. The command inherits it.
        self.step(Step::Setsid, rustix::process::setsid())?;
        // And a fresh session keyring instead of the worker's. The seccomp
        // filter denies the action every keyring call anyway; this keeps
        // the worker's keys out of reach of whatever that might miss. Best
        // effort: a full key quota must not fail builds.
        match sys::join_new_session_keyring() {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EDQUOT | libc::ENOSYS)) => {}
            Err(e) => return Err(self.fail(Step::Keyring, e)),
        }
        self.mounts()?;
        self.step(Step::Hostname, rustix::system::sethostname(b"rbe-action"))?;
        if !self.network {
            self.step(Step::Loopback, sys::loopback_up())?;
        }
        let pid = self.step(Step::Fork, sys::fork())?;
        if pid == 0 {
            return self.command();
        }
        // Init keeps only the report pipe: holding stdout would delay EOF.
        let keep = self.report_fd as libc::c_uint;
        if keep > 0 {
            sys::close_range(0, keep - 1, 0);
        }
        sys::close_range(keep + 1, libc::c_uint::MAX, 0);
        loop {
            match rustix::process::waitpid(None, WaitOptions::empty()) {
                Ok(Some((reaped, status))) if reaped.as_raw_nonzero().get() == pid => {
                    report(self.report_fd, REPORT_EXIT_STATUS, status.as_raw(), 0);
                    // Exiting as pid 1 makes the kernel SIGKILL the rest.
                    sys::exit_now(0);
                }
                Ok(_) | Err(rustix::io::Errno::INTR) => continue,
                Err(_) => sys::exit_now(1),
            }
        }
    }

    /// The mount namespace: host read-only, root read-write, private /tmp,
    /// hidden paths, fresh /proc.
    fn mounts(&self) -> io::Result<()> {
        let none = None;
        self.step(
            Step::MakePrivate,
            sys::mount(none, c"/", none, libc::MS_REC | libc::MS_PRIVATE, none),
        )?;
        // Detached copy of the root's mount, taken before anything covers
        // its path; it keeps the host's read-write flag.
        let tree = self.step(
            Step::OpenTree,
            sys::open_tree(
                &self.root,
                libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32,
            ),
        )?;
        let ro = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID;
        // One call flips every mount below / (remounting each submount with
        // MS_REMOUNT|MS_RDONLY would need the mount list, i.e. allocation).
        self.step(
            Step::ReadOnly,
            sys::mount_setattr(None, c"/", libc::AT_RECURSIVE as u32, ro, 0),
        )?;
        self.step(
            Step::ReadOnly,
            sys::mount_setattr(
                Some(tree.as_fd()),
                c"",
                (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as u32,
                libc::MOUNT_ATTR_NOSUID,
                0,
            ),
        )?;
        let tmpfs = Some(c"tmpfs");
        let nosuid = libc::MS_NOSUID | libc::MS_NODEV;
        self.step(
            Step::MountTmp,
            sys::mount(tmpfs, c"/tmp", tmpfs, nosuid, Some(&self.tmpfs_opts)),
        )?;
        for h in &self.hide {
            self.step(
                Step::Hide,
                sys::mount(tmpfs, h, tmpfs, nosuid, Some(c"mode=0755,size=1m")),
            )?;
        }
        // 0555: the mount points live in the action's writable /tmp, but the
        // parents of its root should look read-only like the rest of the
        // host. (Init can still create below them: it has
        // CAP_DAC_OVERRIDE, as root or in its user namespace.)
        for d in &self.root_mkdirs {
            match rustix::fs::mkdir(d.as_c_str(), Mode::from_raw_mode(0o555)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(self.fail(Step::MkdirRoot, e)),
            }
        }
        self.step(Step::MoveRoot, sys::move_mount(tree.as_fd(), &self.root))?;
        for h in &self.hide {
            self.step(
                Step::HideReadOnly,
                sys::mount_setattr(None, h, 0, libc::MOUNT_ATTR_RDONLY, 0),
            )?;
        }
        let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        self.step(
            Step::MountProc,
            sys::mount(Some(c"proc"), c"/proc", Some(c"proc"), proc_flags, none),
        )?;
        self.dev_and_sys()
    }

    /// Clones the host mount at `path` (detached; `None` if the host has no
    /// such path), before /dev or /sys is covered.
    fn clone_host(&self, path: &std::ffi::CStr, recursive: bool) -> io::Result<Option<OwnedFd>> {
        let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
        if recursive {
            flags |= libc::AT_RECURSIVE as u32;
        }
        match sys::open_tree(path, flags) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(self.fail(Step::CloneHost, e)),
        }
    }

    /// A private, read-only /dev holding only [`DEV_NODES`] (bind mounts
    /// of the host's nodes: a user namespace cannot mknod), a private
    /// devpts, a sized /dev/shm and the usual symlinks; and a read-only
    /// /sys holding only the CPU topology (glibc counts CPUs there) and the
    /// cgroup tree (runtimes read their memory and CPU limits there), so
    /// no host device, block device or network interface shows.
    fn dev_and_sys(&self) -> io::Result<()> {
        let mut nodes: [Option<OwnedFd>; DEV_NODES.len()] = Default::default();
        for (slot, path) in nodes.iter_mut().zip(DEV_NODES) {
            *slot = self.clone_host(path, false)?;
        }
        let cpu = self.clone_host(c"/sys/devices/system/cpu", false)?;
        // Recursive: a cgroup v1 host has one mount per controller below.
        let cgroup = self.clone_host(c"/sys/fs/cgroup", true)?;

        let tmpfs = Some(c"tmpfs");
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        // Tiny: only mount points and symlinks live here, read-only.
        let small = Some(c"mode=0755,size=64k,nr_inodes=64");
        self.step(
            Step::DevTmpfs,
            sys::mount(tmpfs, c"/dev", tmpfs, flags, small),
        )?;
        for (fd, path) in nodes.iter().zip(DEV_NODES) {
            let Some(fd) = fd else { continue };
            let created = rustix::fs::open(
                path,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o666),
            );
            drop(self.step(Step::MountPoint, created)?);
            self.step(Step::DevNode, sys::move_mount(fd.as_fd(), path))?;
        }
        self.mkdir(c"/dev/pts", 0o755)?;
        // newinstance: the action sees only its own ptys, never the host's.
        self.step(
            Step::Devpts,
            sys::mount(
                Some(c"devpts"),
                c"/dev/pts",
                Some(c"devpts"),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                Some(c"newinstance,ptmxmode=0666,mode=0620"),
            ),
        )?;
        for (target, link) in DEV_LINKS {
            self.step(Step::DevLink, rustix::fs::symlink(target, link))?;
        }
        self.mkdir(c"/dev/shm", 0o1777)?;
        self.step(
            Step::DevShm,
            sys::mount(
                tmpfs,
                c"/dev/shm",
                tmpfs,
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(&self.tmpfs_opts),
            ),
        )?;
        // Only the tmpfs itself: the nodes, devpts and shm keep their flags.
        self.step(
            Step::DevSysReadOnly,
            sys::mount_setattr(None, c"/dev", 0, libc::MOUNT_ATTR_RDONLY, 0),
        )?;

        self.step(
            Step::SysTmpfs,
            sys::mount(tmpfs, c"/sys", tmpfs, flags, small),
        )?;
        if let Some(cpu) = cpu {
            for d in [
                c"/sys/devices",
                c"/sys/devices/system",
                c"/sys/devices/system/cpu",
            ] {
                self.mkdir(d, 0o755)?;
            }
            self.step(
                Step::SysDir,
                sys::move_mount(cpu.as_fd(), c"/sys/devices/system/cpu"),
            )?;
        }
        if let Some(cgroup) = cgroup {
            for d in [c"/sys/fs", c"/sys/fs/cgroup"] {
                self.mkdir(d, 0o755)?;
            }
            self.step(
                Step::SysDir,
                sys::move_mount(cgroup.as_fd(), c"/sys/fs/cgroup"),
            )?;
        }
        self.step(
            Step::DevSysReadOnly,
            sys::mount_setattr(None, c"/sys", 0, libc::MOUNT_ATTR_RDONLY, 0),
        )?;
        Ok(())
    }

    fn mkdir(&self, path: &std::ffi::CStr, mode: u32) -> io::Result<()> {
        self.step(
            Step::MountPoint,
            rustix::fs::mkdir(path, Mode::from_raw_mode(mode)),
        )
    }

    /// Stage 3: the command, pid 2. Execs or reports why not.
    fn command(&self) -> io::Result<()> {
        // When the host runs out of memory, the kernel must kill an action,
        // not a daemon: tmpfs and page cache belong to no process, so an
        // action without a memory limit can push the host there. Raising
        // one's own score needs no privilege, and children inherit it. Best
        // effort: a /proc that refuses it must not stop the action. Before
        // setuid, which makes /proc/self root's.
        if let Ok(fd) = rustix::fs::open(
            c"/proc/self/oom_score_adj",
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            let _ = rustix::io::write(&fd, OOM_SCORE_ADJ);
        }
        if let Some((uid, gid)) = self.drop_to {
            // Per-thread calls are right here: this process has one thread.
            self.step(Step::SetGroups, rustix::thread::set_thread_groups(&[]))?;
            let gid = Gid::from_raw(gid);
            self.step(
                Step::SetGid,
                rustix::thread::set_thread_res_gid(gid, gid, gid),
            )?;
            let uid = Uid::from_raw(uid);
            // Leaving uid 0 for a non-zero uid clears every capability.
            self.step(
                Step::SetUid,
                rustix::thread::set_thread_res_uid(uid, uid, uid),
            )?;
        }
        // After setuid: as root, RLIMIT_NPROC set before it would count the
        // sandbox uid's processes against the limit at the switch itself.
        for &(resource, v) in &self.rlimits {
            let limit = rustix::process::Rlimit {
                current: Some(v),
                maximum: Some(v),
            };
            self.step(Step::Rlimit, rustix::process::setrlimit(resource, limit))?;
        }
        // setuid binaries on the host must not give the action privileges.
        self.step(Step::NoNewPrivs, rustix::thread::set_no_new_privs(true))?;
        // Resolved again here, inside the new mounts and as the action's
        // uid, and never through a symlink out of the root.
        let root = self.step(
            Step::WorkingDir,
            rustix::fs::open(
                self.root.as_c_str(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ),
        )?;
        let wd = self.step(
            Step::WorkingDir,
            rustix::fs::openat2(
                &root,
                self.working_dir.as_c_str(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
            ),
        )?;
        self.step(Step::WorkingDir, rustix::process::fchdir(&wd))?;
        drop(wd);
        drop(root);
        // Nothing inherited past exec except stdio (the report pipe is
        // close-on-exec already).
        sys::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC);
        // Last: from here on, only what the filter allows (execve is).
        self.step(Step::Seccomp, self.seccomp.install())?;
        let err = self.exec.exec();
        report(
            self.report_fd,
            REPORT_EXEC_ERROR,
            err.raw_os_error().unwrap_or(libc::EIO),
            0,
        );
        sys::exit_now(127)
    }
}
