//! Settings of `rbe-workerd`, which runs actions.

use crate::common::{check_absolute, Log, LogFragment};
use crate::layer::Provenance;
use crate::size::Size;
use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Everything `rbe-workerd` reads from `workerd.toml`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WorkerdSettings {
    /// `[frontend] socket`: the frontend's local socket.
    pub frontend_socket: PathBuf,
    /// `[casd] socket`: casd's socket.
    pub casd_socket: PathBuf,
    /// `[worker]`
    pub worker: WorkerSection,
    /// `[sandbox]`
    pub sandbox: Sandbox,
    /// `[scope]`
    pub scope: ScopeSection,
    /// `[limits]`
    pub limits: ActionLimits,
    /// `[outputs]`
    pub outputs: OutputsSection,
    /// `[log]`
    pub log: Log,
}

/// `[worker]`: slots, work directory, platform.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerSection {
    /// Name shown in logs and metadata; empty means the host name.
    pub name: String,
    /// Actions run at once; 0 means one per CPU.
    pub slots: u32,
    /// Where action directories are made; casd must be able to hard-link
    /// into it, so it must be on the store's filesystem.
    pub work_dir: PathBuf,
    /// Platform properties offered, as `name=value` strings.
    pub platform: Vec<String>,
    /// On stop, how long running actions may go on to finish and report;
    /// what still runs then is killed and queued again elsewhere.
    pub drain_timeout_secs: u64,
}

impl Default for WorkerSection {
    fn default() -> Self {
        WorkerSection {
            name: String::new(),
            slots: 0,
            work_dir: PathBuf::from("/var/lib/rbe/work"),
            platform: vec!["OSFamily=linux".to_owned()],
            drain_timeout_secs: 20,
        }
    }
}

/// `[sandbox]`: how actions are isolated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sandbox {
    /// Unprivileged uid actions run as when the worker runs as root.
    pub uid: u32,
    /// Their gid.
    pub gid: u32,
    /// Give actions the host network (default: a private network with only
    /// loopback).
    pub network: bool,
    /// stdout and stderr are each kept up to this many bytes.
    pub max_output_bytes: u64,
    /// Host paths covered by an empty read-only tmpfs inside the sandbox, in
    /// addition to the work directory. `/run` holds local sockets (the rbe
    /// daemons', D-Bus, user managers), which a read-only mount does not
    /// stop an action from connecting to.
    pub hide_paths: Vec<PathBuf>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            uid: 65534,
            gid: 65534,
            network: false,
            max_output_bytes: 64 << 20,
            hide_paths: vec![PathBuf::from("/run"), PathBuf::from("/var/lib/rbe")],
        }
    }
}

/// Whether actions run in transient systemd scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeMode {
    /// Scopes when systemd manages this host and we are root; otherwise
    /// run without, saying so once at startup.
    Auto,
    /// Scopes or nothing: actions fail when a scope cannot be made.
    Required,
    /// Never: the worker makes a cgroup per action itself where it can,
    /// and sets rlimits otherwise.
    Off,
}

/// `[scope]`: transient scopes for actions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScopeSection {
    /// auto, required or off.
    pub mode: ScopeMode,
    /// The slice scopes go in (`rbe-actions.slice` nests in `rbe.slice`).
    pub slice: String,
}

impl Default for ScopeSection {
    fn default() -> Self {
        ScopeSection {
            mode: ScopeMode::Auto,
            slice: "rbe-actions.slice".to_owned(),
        }
    }
}

/// `[limits]`: limits of each action (cgroup limits of its scope, or of
/// the cgroup workerd makes without systemd, or rlimits), and the ceilings
/// for what an action may ask for through platform properties
/// (`rbe.memory_max`, `rbe.cpu_quota`, `rbe.tasks_max`). A limit of 0 means
/// none; a ceiling of 0 means the action may not raise the limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionLimits {
    /// MemoryMax of an action, bytes.
    pub memory_max: u64,
    /// CPUQuota of an action, percent of one CPU.
    pub cpu_quota: u32,
    /// CPUWeight of an action (1-10000; 0 leaves systemd's default).
    pub cpu_weight: u64,
    /// TasksMax of an action.
    pub tasks_max: u64,
    /// IOWeight of an action (1-10000; 0 leaves systemd's default).
    pub io_weight: u64,
    /// Largest memory_max an action may ask for.
    pub max_memory: u64,
    /// Largest cpu_quota an action may ask for.
    pub max_cpu_quota: u32,
    /// Largest tasks_max an action may ask for.
    pub max_tasks: u64,
    /// `size=` of each tmpfs an action can write (`/tmp`, `/dev/shm`),
    /// bytes; never more than the action's memory_max. tmpfs pages belong
    /// to no process, so without it one action could fill the host's RAM.
    pub tmpfs_max: u64,
    /// RLIMIT_FSIZE of an action's processes, bytes (0: none).
    pub file_size_max: u64,
    /// RLIMIT_NOFILE of an action's processes (0: the worker's own).
    pub open_files_max: u64,
}

impl Default for ActionLimits {
    fn default() -> Self {
        ActionLimits {
            memory_max: 0,
            cpu_quota: 0,
            cpu_weight: 0,
            tasks_max: 4096,
            io_weight: 0,
            max_memory: 0,
            max_cpu_quota: 0,
            max_tasks: 32768,
            tmpfs_max: 1 << 30,
            file_size_max: 0,
            open_files_max: 0,
        }
    }
}

/// `[outputs]`: bounds of output collection, so an action's output tree
/// cannot make the worker's memory grow without end. Crossing one fails the
/// action with INVALID_ARGUMENT naming the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutputsSection {
    /// Directory levels below an output directory.
    pub max_depth: u64,
    /// Files, directories and symlinks in all of an action's output
    /// directories together.
    pub max_entries: u64,
    /// Bytes in any output entry's path, relative to the working directory.
    pub max_path_bytes: u64,
}

impl Default for OutputsSection {
    fn default() -> Self {
        OutputsSection {
            max_depth: 256,
            max_entries: 1_000_000,
            max_path_bytes: 4096,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputsFragment {
    max_depth: Option<u64>,
    max_entries: Option<u64>,
    max_path_bytes: Option<u64>,
}

fn build_outputs(o: OutputsFragment, prov: &Provenance) -> Result<OutputsSection, ConfigError> {
    let d = OutputsSection::default();
    let outputs = OutputsSection {
        max_depth: o.max_depth.unwrap_or(d.max_depth),
        max_entries: o.max_entries.unwrap_or(d.max_entries),
        max_path_bytes: o.max_path_bytes.unwrap_or(d.max_path_bytes),
    };
    for (key, v, min) in [
        ("outputs.max_depth", outputs.max_depth, 1),
        ("outputs.max_entries", outputs.max_entries, 1),
        ("outputs.max_path_bytes", outputs.max_path_bytes, 255),
    ] {
        if v < min {
            return Err(prov.error(key, format!("must be at least {min}")));
        }
    }
    Ok(outputs)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeFragment {
    mode: Option<ScopeMode>,
    slice: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFragment {
    memory_max: Option<Size>,
    cpu_quota: Option<u32>,
    cpu_weight: Option<u64>,
    tasks_max: Option<u64>,
    io_weight: Option<u64>,
    max_memory: Option<Size>,
    max_cpu_quota: Option<u32>,
    max_tasks: Option<u64>,
    tmpfs_max: Option<Size>,
    file_size_max: Option<Size>,
    open_files_max: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SocketFragment {
    socket: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerFragment {
    name: Option<String>,
    slots: Option<u32>,
    work_dir: Option<PathBuf>,
    platform: Option<Vec<String>>,
    drain_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxFragment {
    uid: Option<u32>,
    gid: Option<u32>,
    network: Option<bool>,
    max_output_bytes: Option<Size>,
    hide_paths: Option<Vec<PathBuf>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerdFragment {
    frontend: Option<SocketFragment>,
    casd: Option<SocketFragment>,
    worker: Option<WorkerFragment>,
    sandbox: Option<SandboxFragment>,
    scope: Option<ScopeFragment>,
    limits: Option<LimitsFragment>,
    outputs: Option<OutputsFragment>,
    log: Option<LogFragment>,
}

impl WorkerdFragment {
    /// Applies defaults and validates.
    pub(crate) fn build(self, prov: &Provenance) -> Result<WorkerdSettings, ConfigError> {
        let frontend_socket = self
            .frontend
            .and_then(|f| f.socket)
            .unwrap_or_else(|| PathBuf::from("/run/rbe/frontend.sock"));
        check_absolute(prov, "frontend.socket", &frontend_socket)?;
        let casd_socket = self
            .casd
            .and_then(|f| f.socket)
            .unwrap_or_else(|| PathBuf::from("/run/rbe/casd.sock"));
        check_absolute(prov, "casd.socket", &casd_socket)?;

        let d = WorkerSection::default();
        let w = self.worker.unwrap_or_default();
        let worker = WorkerSection {
            name: w.name.unwrap_or(d.name),
            slots: w.slots.unwrap_or(d.slots),
            work_dir: w.work_dir.unwrap_or(d.work_dir),
            platform: w.platform.unwrap_or(d.platform),
            drain_timeout_secs: w.drain_timeout_secs.unwrap_or(d.drain_timeout_secs),
        };
        crate::common::check_drain_timeout(
            prov,
            "worker.drain_timeout_secs",
            worker.drain_timeout_secs,
        )?;
        check_absolute(prov, "worker.work_dir", &worker.work_dir)?;
        if worker.slots > 4096 {
            return Err(prov.error(
                "worker.slots",
                format!("{} is more than 4096", worker.slots),
            ));
        }
        for p in &worker.platform {
            match p.split_once('=') {
                Some((k, _)) if !k.is_empty() => {}
                _ => {
                    return Err(prov.error(
                        "worker.platform",
                        format!("{p:?} is not of the form name=value"),
                    ))
                }
            }
        }

        let ds = Sandbox::default();
        let s = self.sandbox.unwrap_or_default();
        let sandbox = Sandbox {
            uid: s.uid.unwrap_or(ds.uid),
            gid: s.gid.unwrap_or(ds.gid),
            network: s.network.unwrap_or(ds.network),
            max_output_bytes: s.max_output_bytes.map_or(ds.max_output_bytes, |v| v.0),
            hide_paths: s.hide_paths.unwrap_or(ds.hide_paths),
        };
        for p in &sandbox.hide_paths {
            check_absolute(prov, "sandbox.hide_paths", p)?;
        }
        if sandbox.uid == 0 {
            return Err(prov.error("sandbox.uid", "actions must not run as root (uid 0)"));
        }
        if sandbox.gid == 0 {
            return Err(prov.error("sandbox.gid", "actions must not run in group root (gid 0)"));
        }
        if sandbox.max_output_bytes < 4096 {
            return Err(prov.error("sandbox.max_output_bytes", "must be at least 4096"));
        }
        let d = ScopeSection::default();
        let sc = self.scope.unwrap_or_default();
        let scope = ScopeSection {
            mode: sc.mode.unwrap_or(d.mode),
            slice: sc.slice.unwrap_or(d.slice),
        };
        if !scope.slice.ends_with(".slice")
            || scope.slice.len() <= ".slice".len()
            || scope.slice.contains('/')
        {
            return Err(prov.error(
                "scope.slice",
                format!(
                    "{:?} is not a slice unit name (like rbe-actions.slice)",
                    scope.slice
                ),
            ));
        }
        let limits = build_limits(self.limits.unwrap_or_default(), prov)?;
        let outputs = build_outputs(self.outputs.unwrap_or_default(), prov)?;
        let log = LogFragment::build(self.log, prov)?;
        Ok(WorkerdSettings {
            frontend_socket,
            casd_socket,
            worker,
            sandbox,
            scope,
            limits,
            outputs,
            log,
        })
    }
}

fn build_limits(l: LimitsFragment, prov: &Provenance) -> Result<ActionLimits, ConfigError> {
    let d = ActionLimits::default();
    let limits = ActionLimits {
        memory_max: l.memory_max.map_or(d.memory_max, |v| v.0),
        cpu_quota: l.cpu_quota.unwrap_or(d.cpu_quota),
        cpu_weight: l.cpu_weight.unwrap_or(d.cpu_weight),
        tasks_max: l.tasks_max.unwrap_or(d.tasks_max),
        io_weight: l.io_weight.unwrap_or(d.io_weight),
        max_memory: l.max_memory.map_or(d.max_memory, |v| v.0),
        max_cpu_quota: l.max_cpu_quota.unwrap_or(d.max_cpu_quota),
        max_tasks: l.max_tasks.unwrap_or(d.max_tasks),
        tmpfs_max: l.tmpfs_max.map_or(d.tmpfs_max, |v| v.0),
        file_size_max: l.file_size_max.map_or(d.file_size_max, |v| v.0),
        open_files_max: l.open_files_max.unwrap_or(d.open_files_max),
    };
    for (key, v) in [
        ("limits.cpu_weight", limits.cpu_weight),
        ("limits.io_weight", limits.io_weight),
    ] {
        if v > 10_000 {
            return Err(prov.error(key, format!("{v} is more than 10000")));
        }
    }
    if limits.memory_max != 0 && limits.memory_max < (1 << 20) {
        return Err(prov.error("limits.memory_max", "must be 0 (none) or at least 1MiB"));
    }
    if limits.tasks_max != 0 && limits.tasks_max < 4 {
        return Err(prov.error(
            "limits.tasks_max",
            "must be 0 (none) or at least 4 (the sandbox itself needs 3 processes)",
        ));
    }
    // No "0 means none" here: every tmpfs in the sandbox has a size.
    if limits.tmpfs_max < (1 << 20) {
        return Err(prov.error("limits.tmpfs_max", "must be at least 1MiB"));
    }
    if limits.open_files_max != 0 && limits.open_files_max < 16 {
        return Err(prov.error(
            "limits.open_files_max",
            "must be 0 (the worker's own) or at least 16",
        ));
    }
    // A ceiling of 0 holds the limit itself, so only a set ceiling can be
    // below it.
    let over = |v: u64, max: u64| max != 0 && v > max;
    if over(limits.memory_max, limits.max_memory) {
        return Err(prov.error("limits.memory_max", "is above limits.max_memory"));
    }
    if over(limits.cpu_quota.into(), limits.max_cpu_quota.into()) {
        return Err(prov.error("limits.cpu_quota", "is above limits.max_cpu_quota"));
    }
    if over(limits.tasks_max, limits.max_tasks) {
        return Err(prov.error("limits.tasks_max", "is above limits.max_tasks"));
    }
    Ok(limits)
}
