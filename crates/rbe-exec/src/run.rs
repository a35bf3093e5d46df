//! The runner: prepares a [`Plan`], spawns the sandbox, pumps stdout and
//! stderr into bounded files, and enforces timeout and cancellation.

use std::ffi::CString;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::child::{
    Plan, REPORT_EXEC_ERROR, REPORT_EXIT_STATUS, REPORT_INIT_DONE, REPORT_KEEPER_PID, REPORT_LEN,
    REPORT_SETUP_ERROR, STEPS,
};
use crate::{join_rel, validate_relative_path, ExecError};

/// How actions are isolated on this host.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Run as this uid (only when the worker is root); `None` keeps the
    /// current uid (a non-root worker gets a user namespace instead).
    pub uid: Option<u32>,
    /// Run as this gid (only when the worker is root); `None` keeps it.
    pub gid: Option<u32>,
    /// `false`: a new network namespace with only `lo`, brought up.
    pub network: bool,
    /// Directories covered by an empty read-only tmpfs inside the sandbox
    /// (the worker's work directory, the CAS); the action's own root stays
    /// visible even if it lies below one of them. Missing ones are skipped.
    pub hide_paths: Vec<PathBuf>,
    /// `size=` of each tmpfs the action can write (`/tmp`, `/dev/shm`), in
    /// bytes: tmpfs pages belong to no process, so without a size they
    /// escape every per-process limit.
    pub tmpfs_size: u64,
}

/// [`Sandbox::tmpfs_size`] unless configured: 1 GiB.
pub const DEFAULT_TMPFS_SIZE: u64 = 1 << 30;

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            uid: None,
            gid: None,
            network: false,
            hide_paths: Vec::new(),
            tmpfs_size: DEFAULT_TMPFS_SIZE,
        }
    }
}

/// One command to run.
#[derive(Debug, Clone)]
pub struct ActionSpec {
    /// The action's input root, already materialized (absolute).
    pub root: PathBuf,
    /// Working directory relative to `root` (`""` for the root).
    pub working_dir: String,
    /// The command line. `argv[0]` without `/` is looked up in the `PATH`
    /// of `env`; with a relative `/` it is relative to the working directory.
    pub argv: Vec<String>,
    /// Exactly this environment; nothing is inherited. The command sees it
    /// sorted by name (std's `Command` keeps it in a map), which is also the
    /// order REAPI requires.
    pub env: Vec<(String, String)>,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// File receiving stdout (outside the root); created or truncated.
    pub stdout: PathBuf,
    /// File receiving stderr (outside the root); created or truncated.
    pub stderr: PathBuf,
    /// stdout and stderr are each cut to this many bytes; the rest is read
    /// and discarded so the action neither blocks nor fills the disk.
    pub max_output_bytes: u64,
    /// Resource limits of the command and everything it forks.
    pub rlimits: Rlimits,
}

/// Per-process resource limits (`setrlimit`, soft and hard alike) set on
/// the command just before `execve`, after it dropped to the action's uid
/// and after its user namespace exists; everything it forks inherits them.
/// `None` keeps the worker's own limit, and a value above the worker's hard
/// limit is lowered to it (raising needs `CAP_SYS_RESOURCE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rlimits {
    /// `RLIMIT_NPROC`: processes and threads of the action's real uid. In
    /// the user namespace of a non-root worker that uid's count is the
    /// action's alone (the kernel counts per namespace); as root, every
    /// process of the sandbox uid on the host counts.
    pub nproc: Option<u64>,
    /// `RLIMIT_DATA`: private writable memory of each process, bytes.
    /// Allocations past it fail with `ENOMEM`; nothing is killed.
    pub data: Option<u64>,
    /// `RLIMIT_FSIZE`: largest file a process may write, bytes (`SIGXFSZ`
    /// past it). stdout and stderr are pipes and not affected.
    pub fsize: Option<u64>,
    /// `RLIMIT_NOFILE`: open descriptors per process.
    pub nofile: Option<u64>,
    /// `RLIMIT_CORE`: core dump size, bytes (0: none).
    pub core: Option<u64>,
}

impl Rlimits {
    /// The limits to set, lowered to the hard limits this process holds.
    fn plan(&self) -> Vec<(rustix::process::Resource, u64)> {
        use rustix::process::Resource;
        [
            (Resource::Nproc, self.nproc),
            (Resource::Data, self.data),
            (Resource::Fsize, self.fsize),
            (Resource::Nofile, self.nofile),
            (Resource::Core, self.core),
        ]
        .into_iter()
        .filter_map(|(r, v)| {
            let v = v?;
            let hard = rustix::process::getrlimit(r).maximum;
            Some((r, hard.map_or(v, |h| v.min(h))))
        })
        .collect()
    }
}

/// How the action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// Exit code; `128 + signal` when killed by a signal.
    pub exit_code: i32,
    /// The signal that killed the command, if any.
    pub signal: Option<i32>,
    /// Killed because the timeout passed.
    pub timed_out: bool,
    /// Killed because the cancel future resolved.
    pub cancelled: bool,
    /// Bytes written to the stdout file.
    pub stdout_bytes: u64,
    /// Bytes written to the stderr file.
    pub stderr_bytes: u64,
    /// stdout produced more than `max_output_bytes`.
    pub stdout_truncated: bool,
    /// stderr produced more than `max_output_bytes`.
    pub stderr_truncated: bool,
    /// When the sandbox was spawned.
    pub started: SystemTime,
    /// When the sandbox was gone.
    pub finished: SystemTime,
}

/// How long to keep reading stdout/stderr after the sandbox exited. The pid
/// namespace is empty by then, so EOF is immediate; this only bounds a bug.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Where the sandbox's processes live (a systemd scope with cgroup
/// limits), set up between spawning and running, and read once the action
/// is over. The runner drives it; [`Unconfined`] does nothing.
pub trait Confinement: Send {
    /// Whether [`Confinement::place`] does anything. If not, the sandbox
    /// starts without waiting for it.
    fn active(&self) -> bool;
    /// Moves `pid`, the keeper, into the confinement. The keeper has
    /// created no namespace and forked nothing yet, and waits until this
    /// returns. An error ends the action before it starts.
    fn place(&mut self, pid: u32) -> impl Future<Output = Result<(), String>> + Send;
    /// Every process of the action has exited; the keeper still holds the
    /// confinement (so a cgroup's counters can be read) until this returns.
    fn ended(&mut self) -> impl Future<Output = ()> + Send;
}

/// No confinement: the sandbox stays in the runner's own cgroup.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unconfined;

impl Confinement for Unconfined {
    fn active(&self) -> bool {
        false
    }
    async fn place(&mut self, _pid: u32) -> Result<(), String> {
        Ok(())
    }
    async fn ended(&mut self) {}
}

/// Runs one action in the sandbox and waits until every process of it is
/// gone. See the crate docs for the design.
pub async fn run(
    sandbox: &Sandbox,
    spec: &ActionSpec,
    cancel: impl Future<Output = ()>,
) -> Result<RunOutcome, ExecError> {
    run_confined(sandbox, spec, cancel, &mut Unconfined).await
}

/// [`run`], with the sandbox placed in `confinement` before it starts.
pub async fn run_confined(
    sandbox: &Sandbox,
    spec: &ActionSpec,
    cancel: impl Future<Output = ()>,
    confinement: &mut impl Confinement,
) -> Result<RunOutcome, ExecError> {
    let (program, plan_parts) = prepare(sandbox, spec)?;
    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| ExecError::io("creating a pipe to the sandbox", e))
    };
    let (report_r, report_w) = pipe()?;
    // Always there: besides letting a confined keeper through, the gate's
    // EOF tells the keeper that this process died (see `Plan::gate_fd`).
    let (gate_r, gate_w) = pipe()?;
    let plan = Plan {
        report_fd: report_w.as_raw_fd(),
        gate_fd: gate_r.as_raw_fd(),
        gate_wait: confinement.active(),
        ..plan_parts
    };
    let mut gate_w = Some(gate_w);
    let stdout_file = create_output(&spec.stdout).await?;
    let stderr_file = create_output(&spec.stderr).await?;

    // std forks and sets up stdio; the stages do the rest, the command
    // stage its own `execve` (see `Plan::exec`).
    let mut cmd = std::process::Command::new(&program);
    cmd.env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    set_pre_exec(&mut cmd, plan);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);

    let started = SystemTime::now();
    // `spawn` blocks until the command execs (std waits on its exec-error
    // pipe), which takes the whole sandbox setup and, with a gate, the
    // confinement: not something to do on a runtime worker thread. The
    // pipe ends the plan names must stay open until the fork.
    let spawning = tokio::task::spawn_blocking(move || {
        let r = cmd.spawn();
        drop(report_w);
        drop(gate_r);
        r
    });
    let mut report = Reports::new(report_r)?;
    let mut placed = Ok(());
    if let (true, Some(w)) = (confinement.active(), gate_w.as_ref()) {
        let keeper = if report.wait_for(REPORT_KEEPER_PID).await {
            report
                .get(REPORT_KEEPER_PID)
                .and_then(|r| u32::try_from(r.1).ok())
        } else {
            None
        };
        placed = match keeper {
            Some(pid) => confinement.place(pid).await,
            None => Err("the sandbox ended before it could be placed".into()),
        };
        if placed.is_ok() {
            if let Err(e) = rustix::io::write(w, b"g") {
                placed = Err(format!("releasing the sandbox: {e}"));
            }
        }
        if placed.is_err() {
            // The keeper sees EOF at its gate and exits without running
            // anything.
            gate_w = None;
        }
    }
    // The action is over when the keeper says init is reaped (the pid
    // namespace died with it), or when the keeper is gone. That can happen
    // before `spawn` returns (an exec that failed, a very short command),
    // and the keeper then waits at its gate while std waits for it, so the
    // gate is handled while spawning too.
    let mut spawning = std::pin::pin!(spawning);
    let mut over = false;
    let spawned = loop {
        tokio::select! {
            r = &mut spawning => break r,
            _ = report.wait_for(REPORT_INIT_DONE), if !over => {
                over = true;
                release(&mut report, &mut gate_w, confinement).await;
            }
        }
    };
    let mut child = match spawned {
        Ok(Ok(child)) => child,
        Ok(Err(source)) => {
            // std waited for the keeper, so every writer is gone: the
            // records are complete. A setup record names the step;
            // otherwise it was exec that failed.
            report.wait_for(i32::MIN).await;
            if let Some(setup) = setup_error(&report.records) {
                return Err(setup);
            }
            if let Err(why) = placed {
                return Err(ExecError::Confinement(why));
            }
            return Err(ExecError::io("forking the sandbox", source));
        }
        Err(_) => return Err(ExecError::Internal("the spawning thread panicked".into())),
    };
    if let Err(why) = placed {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(ExecError::Confinement(why));
    }
    let limit = spec.max_output_bytes;
    let out = child.stdout.take().map(|p| pump(p, stdout_file, limit));
    let err = child.stderr.take().map(|p| pump(p, stderr_file, limit));
    let out = tokio::spawn(async move { maybe_pump(out).await });
    let err = tokio::spawn(async move { maybe_pump(err).await });

    let (mut timed_out, mut cancelled) = (false, false);
    if !over {
        tokio::select! {
            _ = report.wait_for(REPORT_INIT_DONE) => {
                release(&mut report, &mut gate_w, confinement).await;
            }
            () = tokio::time::sleep(spec.timeout) => timed_out = true,
            () = cancel => cancelled = true,
        }
    }
    if timed_out || cancelled {
        tracing::debug!(timed_out, cancelled, root = %spec.root.display(), "killing the action");
        // Init dies with the keeper (parent-death signal), and the kernel
        // kills the rest of the pid namespace with it.
        let _ = child.start_kill();
    }
    drop(gate_w);
    child
        .wait()
        .await
        .map_err(|e| ExecError::io("waiting for the sandbox", e))?;
    let joined = tokio::time::timeout(DRAIN_GRACE, async {
        (out.await, err.await, report.wait_for(i32::MIN).await)
    })
    .await;
    let finished = SystemTime::now();
    let (out, err) = match joined {
        Ok((Ok(out), Ok(err), _)) => (out?, err?),
        Ok(_) => return Err(ExecError::Internal("an output reader panicked".into())),
        Err(_) => {
            return Err(ExecError::Internal(
                "stdout/stderr still open after the sandbox ended".into(),
            ))
        }
    };
    let records = &report.records;
    if let Some(setup) = setup_error(records) {
        return Err(setup);
    }
    if let Some(&(_, errno, _)) = records.iter().find(|r| r.0 == REPORT_EXEC_ERROR) {
        return Err(ExecError::Exec {
            program: program.to_string_lossy().into_owned(),
            source: io::Error::from_raw_os_error(errno),
        });
    }
    let status = records
        .iter()
        .find(|r| r.0 == REPORT_EXIT_STATUS)
        .map(|r| r.1);
    let (exit_code, signal) = match status {
        Some(raw) if libc::WIFEXITED(raw) => (libc::WEXITSTATUS(raw), None),
        Some(raw) if libc::WIFSIGNALED(raw) => {
            let sig = libc::WTERMSIG(raw);
            (128 + sig, Some(sig))
        }
        _ if timed_out || cancelled => (128 + libc::SIGKILL, Some(libc::SIGKILL)),
        _ => {
            return Err(ExecError::Internal(
                "the sandbox's init ended without reporting the command's status".into(),
            ))
        }
    };
    Ok(RunOutcome {
        exit_code,
        signal,
        timed_out,
        cancelled,
        stdout_bytes: out.0,
        stderr_bytes: err.0,
        stdout_truncated: out.1,
        stderr_truncated: err.1,
        started,
        finished,
    })
}

/// Registers the stages of [`Plan::pre_exec`] on the command.
#[allow(unsafe_code)]
fn set_pre_exec(cmd: &mut std::process::Command, plan: Plan) {
    // SAFETY: `Plan::pre_exec` makes only async-signal-safe system calls on
    // data prepared before the fork, and never allocates.
    unsafe {
        cmd.pre_exec(move || plan.pre_exec());
    }
}

/// Validates the spec, resolves the program and builds everything the
/// stages need (all allocation happens here, before the fork).
fn prepare(sandbox: &Sandbox, spec: &ActionSpec) -> Result<(PathBuf, Plan), ExecError> {
    let argv0 = spec.argv.first().ok_or(ExecError::EmptyArgv)?;
    if !spec.root.is_absolute() {
        return Err(ExecError::InvalidPath {
            path: spec.root.display().to_string(),
            reason: "the action root must be absolute",
        });
    }
    validate_relative_path(&spec.working_dir)?;
    let root_fd = rustix::fs::open(
        &spec.root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ExecError::io(format!("opening action root {}", spec.root.display()), e))?;
    open_beneath(&root_fd, &spec.working_dir, true).map_err(|source| ExecError::BadWorkingDir {
        dir: spec.working_dir.clone(),
        source,
    })?;

    let mut hidden: Vec<PathBuf> = sandbox
        .hide_paths
        .iter()
        .filter(|p| p.is_absolute() && p.is_dir())
        .cloned()
        .collect();
    hidden.sort_by_key(|p| p.components().count());
    // An inner path needs no tmpfs of its own once its ancestor (or /tmp,
    // which is always a fresh tmpfs) is covered.
    let mut outer: Vec<PathBuf> = Vec::new();
    let tmp = Path::new("/tmp");
    for h in hidden {
        if !h.starts_with(tmp) && !outer.iter().any(|o| h.starts_with(o)) {
            outer.push(h);
        }
    }
    let program = resolve_program(&root_fd, spec, argv0, &outer)?;

    // Mount points for the root below /tmp or a hidden path: every
    // directory from just below the covering mount down to the root.
    let mut covers: Vec<&Path> = vec![Path::new("/tmp")];
    covers.extend(outer.iter().map(PathBuf::as_path));
    let mut root_mkdirs = Vec::new();
    if let Some(cover) = covers
        .iter()
        .filter(|c| spec.root.starts_with(c) && spec.root != **c)
        .max_by_key(|c| c.components().count())
    {
        let mut dir = cover.to_path_buf();
        for comp in spec
            .root
            .strip_prefix(cover)
            .into_iter()
            .flat_map(Path::components)
        {
            dir.push(comp);
            root_mkdirs.push(cstring(dir.as_os_str().as_bytes())?);
        }
    }

    let euid = rustix::process::geteuid().as_raw();
    let egid = rustix::process::getegid().as_raw();
    let (userns, drop_to) = if euid == 0 {
        let ids = (sandbox.uid.unwrap_or(0), sandbox.gid.unwrap_or(0));
        (None, (ids != (0, 0)).then_some(ids))
    } else {
        (Some((euid, egid)), None)
    };
    let wd = if spec.working_dir.is_empty() {
        "."
    } else {
        spec.working_dir.as_str()
    };
    let plan = Plan {
        userns,
        drop_to,
        network: sandbox.network,
        root: cstring(spec.root.as_os_str().as_bytes())?,
        root_mkdirs,
        hide: outer
            .iter()
            .map(|p| cstring(p.as_os_str().as_bytes()))
            .collect::<Result<_, _>>()?,
        working_dir: cstring(wd.as_bytes())?,
        uid_map: format!("{euid} {euid} 1\n").into_bytes(),
        gid_map: format!("{egid} {egid} 1\n").into_bytes(),
        tmpfs_opts: cstring(format!("mode=1777,size={}", sandbox.tmpfs_size.max(4096)).as_bytes())?,
        seccomp: crate::seccomp::filters().map_err(ExecError::Internal)?,
        rlimits: spec.rlimits.plan(),
        exec: exec_args(&program, spec)?,
        report_fd: -1,
        gate_fd: -1,
        gate_wait: false,
    };
    Ok((program, plan))
}

/// The command's `execve` arguments: `argv` as given (its first element is
/// what the program sees as its name) and the environment sorted by name,
/// the last of duplicate names winning.
fn exec_args(program: &Path, spec: &ActionSpec) -> Result<crate::sys::Exec, ExecError> {
    let env: std::collections::BTreeMap<&str, &str> = spec
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut envp = Vec::with_capacity(env.len());
    for (k, v) in env {
        if k.is_empty() || k.contains('=') {
            return Err(ExecError::InvalidPath {
                path: k.to_owned(),
                reason: "not a valid environment variable name",
            });
        }
        envp.push(cstring(format!("{k}={v}").as_bytes())?);
    }
    let argv = spec
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    Ok(crate::sys::Exec::new(
        cstring(program.as_os_str().as_bytes())?,
        argv,
        envp,
    ))
}

fn cstring(b: &[u8]) -> Result<CString, ExecError> {
    CString::new(b).map_err(|_| ExecError::InvalidPath {
        path: String::from_utf8_lossy(b).into_owned(),
        reason: "contains NUL",
    })
}

/// Opens `rel` below `dir` without leaving it (symlinks staying inside are
/// fine, `..` above `dir` and absolute symlinks are not).
fn open_beneath(dir: &OwnedFd, rel: &str, directory: bool) -> io::Result<OwnedFd> {
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if directory {
        flags |= OFlags::DIRECTORY;
    }
    let rel = if rel.is_empty() { "." } else { rel };
    Ok(rustix::fs::openat2(
        dir,
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )?)
}

fn is_executable_file(fd: &OwnedFd) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
            && st.st_mode & 0o111 != 0
    })
}

/// Finds the program the way the sandbox will see it: `PATH` from the
/// action's environment, relative entries and relative programs below the
/// working directory, absolute entries on the (read-only) host except
/// /tmp and hidden paths, which are empty inside.
fn resolve_program(
    root_fd: &OwnedFd,
    spec: &ActionSpec,
    argv0: &str,
    hidden: &[PathBuf],
) -> Result<PathBuf, ExecError> {
    let inside = |rel: &str| -> bool {
        validate_relative_path_lenient(rel)
            && open_beneath(root_fd, &join_rel(&spec.working_dir, rel), false)
                .is_ok_and(|fd| is_executable_file(&fd))
    };
    let path_var = spec
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    if argv0.contains('/') {
        if argv0.starts_with('/') || inside(argv0) {
            return Ok(PathBuf::from(argv0));
        }
        return Err(ExecError::NotFound {
            program: argv0.to_owned(),
            path: format!(
                "(not searched: relative to working directory {:?})",
                spec.working_dir
            ),
        });
    }
    let Some(path_var) = path_var else {
        return Err(ExecError::NotFound {
            program: argv0.to_owned(),
            path: "(PATH not set in the action's environment)".into(),
        });
    };
    for dir in path_var.split(':') {
        if dir.starts_with('/') {
            let candidate = Path::new(dir).join(argv0);
            let in_root = candidate.starts_with(&spec.root);
            let covered =
                candidate.starts_with("/tmp") || hidden.iter().any(|h| candidate.starts_with(h));
            let ok = if in_root {
                candidate
                    .strip_prefix(&spec.root)
                    .ok()
                    .and_then(|r| r.to_str())
                    .and_then(|r| open_beneath(root_fd, r, false).ok())
                    .is_some_and(|fd| is_executable_file(&fd))
            } else {
                !covered
                    && std::fs::metadata(&candidate).is_ok_and(|m| {
                        use std::os::unix::fs::PermissionsExt;
                        m.is_file() && m.permissions().mode() & 0o111 != 0
                    })
            };
            if ok {
                return Ok(candidate);
            }
        } else {
            // An empty entry means the working directory.
            let rel = if dir.is_empty() {
                argv0.to_owned()
            } else {
                format!("{dir}/{argv0}")
            };
            if inside(&rel) {
                return Ok(PathBuf::from(format!("./{rel}")));
            }
        }
    }
    Err(ExecError::NotFound {
        program: argv0.to_owned(),
        path: path_var,
    })
}

/// Relative paths in PATH and argv may contain `.` and `..`; `openat2`
/// with `RESOLVE_BENEATH` keeps them inside, so only reject the absolute.
fn validate_relative_path_lenient(p: &str) -> bool {
    !p.starts_with('/') && !p.contains('\0')
}

async fn create_output(path: &Path) -> Result<tokio::fs::File, ExecError> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .await
        .map_err(|e| ExecError::io(format!("creating {}", path.display()), e))
}

/// Copies up to `limit` bytes from the pipe to the file and drains the
/// rest. Returns (bytes written, truncated).
async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    mut file: tokio::fs::File,
    limit: u64,
) -> Result<(u64, bool), ExecError> {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut written, mut truncated) = (0u64, false);
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ExecError::io("reading the action's output", e)),
        };
        let keep = (limit - written).min(n as u64) as usize;
        if keep < n {
            truncated = true;
        }
        if keep > 0 {
            file.write_all(&buf[..keep])
                .await
                .map_err(|e| ExecError::io("writing the action's output", e))?;
            written += keep as u64;
        }
    }
    file.flush()
        .await
        .map_err(|e| ExecError::io("writing the action's output", e))?;
    Ok((written, truncated))
}

async fn maybe_pump(
    p: Option<impl Future<Output = Result<(u64, bool), ExecError>>>,
) -> Result<(u64, bool), ExecError> {
    match p {
        Some(p) => p.await,
        None => Ok((0, false)),
    }
}

/// Once init is reaped: lets the confinement read what it needs while the
/// keeper still holds it, then lets the keeper go.
async fn release(
    report: &mut Reports,
    gate_w: &mut Option<OwnedFd>,
    confinement: &mut impl Confinement,
) {
    if gate_w.is_some() && report.get(REPORT_INIT_DONE).is_some() {
        confinement.ended().await;
    }
    *gate_w = None;
}

/// The report pipe, read record by record: (kind, a, b). Records are kept
/// here, so a read cancelled by `select!` loses none (each record is one
/// atomic 12-byte write, so a read never stops inside one).
struct Reports {
    pipe: tokio::net::unix::pipe::Receiver,
    records: Vec<(i32, i32, i32)>,
    eof: bool,
}

impl Reports {
    fn new(fd: OwnedFd) -> Result<Self, ExecError> {
        let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
            .map_err(|e| ExecError::io("reading the report pipe", e))?;
        Ok(Reports {
            pipe,
            records: Vec::new(),
            eof: false,
        })
    }

    fn get(&self, kind: i32) -> Option<(i32, i32, i32)> {
        self.records.iter().find(|r| r.0 == kind).copied()
    }

    /// Reads until a record of `kind` has arrived (true) or every writer
    /// closed the pipe (false).
    async fn wait_for(&mut self, kind: i32) -> bool {
        loop {
            if self.get(kind).is_some() {
                return true;
            }
            if self.eof {
                return false;
            }
            let mut c = [0u8; REPORT_LEN];
            if self.pipe.read_exact(&mut c).await.is_err() {
                self.eof = true;
                continue;
            }
            let word = |i: usize| i32::from_ne_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
            self.records.push((word(0), word(4), word(8)));
        }
    }
}

fn setup_error(records: &[(i32, i32, i32)]) -> Option<ExecError> {
    records
        .iter()
        .find(|r| r.0 == REPORT_SETUP_ERROR)
        .map(|&(_, step, errno)| ExecError::Setup {
            step: usize::try_from(step)
                .ok()
                .and_then(|i| STEPS.get(i))
                .copied()
                .unwrap_or("unknown step"),
            source: io::Error::from_raw_os_error(errno),
        })
}
