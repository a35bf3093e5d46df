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
}

impl Default for WorkerSection {
    fn default() -> Self {
        WorkerSection {
            name: String::new(),
            slots: 0,
            work_dir: PathBuf::from("/var/lib/rbe/work"),
            platform: vec!["OSFamily=linux".to_owned()],
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
            hide_paths: vec![PathBuf::from("/run")],
        }
    }
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
        };
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
        let log = LogFragment::build(self.log, prov)?;
        Ok(WorkerdSettings {
            frontend_socket,
            casd_socket,
            worker,
            sandbox,
            log,
        })
    }
}
