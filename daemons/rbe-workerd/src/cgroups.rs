//! Per-action cgroups without systemd. When actions run without scopes
//! (`[scope] mode = off`, no systemd, or a non-root worker), workerd makes
//! a cgroup for each action itself, with `[limits] memory_max` and
//! `tasks_max`, so a memory hog or a fork bomb stops at its own limit:
//! without it the OOM killer picks among all the host's processes (often
//! the daemons), and forks fail for everyone.
//!
//! Layout, in workerd's own cgroup of each hierarchy that holds the
//! memory or pids controller: one cgroup per action,
//! `rbe-workerd-<pid>-<action id>`, made with its limits before the
//! sandbox's keeper is moved in, removed when the action is over. The pid
//! in the name lets several workers share a cgroup, and lets a worker
//! remove at startup what a worker that was killed left (a worker killed
//! while idle leaves nothing).
//!
//! - **v1** (hybrid hosts, like Debian 12 booted with cgroup v1 controllers):
//!   `memory.limit_in_bytes` in the memory hierarchy, `pids.max` in the
//!   pids hierarchy. Needs root (the directories belong to root).
//! - **v2** (unified): `memory.max` and `pids.max`. The controllers must be
//!   enabled for our children, which the kernel allows only in a cgroup
//!   without processes of its own; so either they are enabled already (a
//!   delegated tree prepared for us), or workerd is alone in its cgroup
//!   (`Delegate=yes`, a delegated user service), moves itself into a leaf
//!   `rbe-workerd-<pid>.self` and enables them (undone at stop). A cgroup
//!   shared with other processes (a login session) is not ours to
//!   rearrange: no cgroups then.
//!
//! Anything that fails here leaves actions to the rlimits fallback (see
//! `confine::rlimits_for`), logged once at startup.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rbe_systemd::cgroup::{Cgroups, Mounts};
use rbe_systemd::scope::Limits;

const PREFIX: &str = "rbe-workerd-";

/// One hierarchy that holds our per-action cgroups.
#[derive(Debug)]
struct Hierarchy {
    /// workerd's own cgroup in it, where the actions' go.
    dir: PathBuf,
    v2: bool,
    memory: bool,
    pids: bool,
    /// v2 only: the leaf workerd moved itself into.
    moved_self: Option<PathBuf>,
}

/// The per-action cgroups of this worker.
#[derive(Debug)]
pub struct LocalCgroups {
    hierarchies: Vec<Hierarchy>,
    /// `rbe-workerd-<pid>-`: what our actions' cgroup names start with.
    prefix: String,
}

/// One action's cgroups; dropping it removes them.
#[derive(Debug)]
pub struct ActionCgroup {
    dirs: Vec<PathBuf>,
    cgroups: Cgroups,
}

impl LocalCgroups {
    /// Makes this worker's parent cgroups, after removing what dead
    /// workers left. The error says why actions will run without.
    pub fn setup() -> Result<LocalCgroups, String> {
        let mounts = Mounts::read();
        let me = std::process::id();
        let own =
            Cgroups::of(me, &mounts).map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        let v1 = |c: &str| mounts.v1(c).and_then(|_| own_dir(&own, c));
        let (mem, pids) = (v1("memory"), v1("pids"));
        if mem.is_some() || pids.is_some() {
            let both = mem.is_some() && mem == pids;
            for (dir, memory, pids) in [(mem.clone(), true, both), (pids, both, true)] {
                let Some(dir) = dir else { continue };
                if hierarchies.iter().any(|h| h.dir == dir) {
                    continue;
                }
                remove_dead(&dir);
                // Can we make cgroups here at all (root, or delegated)?
                let probe = dir.join(format!("{PREFIX}{me}-probe"));
                make_dir(&probe)?;
                let _ = std::fs::remove_dir(&probe);
                hierarchies.push(Hierarchy {
                    dir,
                    v2: false,
                    memory,
                    pids,
                    moved_self: None,
                });
            }
        } else if let (Some(_), Some(own_dir)) = (mounts.unified(), own.unified_dir()) {
            remove_dead(own_dir);
            hierarchies.push(setup_v2(own_dir, me)?);
        }
        if hierarchies.is_empty() {
            return Err("no memory or pids cgroup controller is mounted".into());
        }
        Ok(LocalCgroups {
            hierarchies,
            prefix: format!("{PREFIX}{me}-"),
        })
    }

    /// Whether actions get a memory limit from their cgroup.
    pub fn has_memory(&self) -> bool {
        self.hierarchies.iter().any(|h| h.memory)
    }

    /// Whether actions get a task limit from their cgroup.
    pub fn has_pids(&self) -> bool {
        self.hierarchies.iter().any(|h| h.pids)
    }

    /// A short description for logs and `STATUS=`.
    pub fn describe(&self) -> String {
        self.hierarchies
            .iter()
            .map(|h| format!("{} ({})", h.dir.display(), if h.v2 { "v2" } else { "v1" }))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Makes the cgroups of action `id`, with its memory and task limits,
    /// and moves `pid` (the sandbox's keeper, which has forked nothing yet)
    /// into them.
    pub fn confine(&self, id: &str, limits: &Limits, pid: u32) -> Result<ActionCgroup, String> {
        let name = format!("{}{id}", self.prefix);
        let mut cg = ActionCgroup {
            dirs: Vec::new(),
            cgroups: Cgroups::default(),
        };
        let (mut memory, mut pids, mut unified) = (None, None, None);
        for h in &self.hierarchies {
            let dir = h.dir.join(&name);
            make_dir(&dir)?;
            cg.dirs.push(dir.clone());
            if h.memory {
                if let Some(m) = limits.memory_max {
                    let file = if h.v2 {
                        "memory.max"
                    } else {
                        "memory.limit_in_bytes"
                    };
                    write(&dir, file, &m.to_string())?;
                }
                memory = Some(dir.clone());
            }
            if h.pids {
                if let Some(t) = limits.tasks_max {
                    write(&dir, "pids.max", &t.to_string())?;
                }
                pids = Some(dir.clone());
            }
            if h.v2 {
                unified = Some(dir.clone());
            }
        }
        // Only once every limit is in place: the keeper forks as soon as
        // it is let through.
        for dir in &cg.dirs {
            write(dir, "cgroup.procs", &pid.to_string())?;
        }
        cg.cgroups = Cgroups::at(memory, pids, unified, cg.dirs[0].display().to_string());
        Ok(cg)
    }

    /// Whether any action's cgroup is still there.
    pub fn busy(&self) -> bool {
        self.hierarchies.iter().any(|h| {
            std::fs::read_dir(&h.dir).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&self.prefix))
            })
        })
    }

    /// At stop (the actions' cgroups are gone by then): undoes the v2
    /// steps in reverse, so workerd's cgroup is as it was found:
    /// controllers off for children, then back out of the leaf (a cgroup
    /// with controllers on for children may hold no process).
    pub fn remove(&self) {
        for h in &self.hierarchies {
            let Some(leaf) = &h.moved_self else {
                continue;
            };
            let off: Vec<&str> = [("-memory", h.memory), ("-pids", h.pids)]
                .into_iter()
                .filter_map(|(c, on)| on.then_some(c))
                .collect();
            let undone = write(&h.dir, "cgroup.subtree_control", &off.join(" "))
                .and_then(|()| write(&h.dir, "cgroup.procs", "0"))
                .and_then(|()| std::fs::remove_dir(leaf).map_err(|e| e.to_string()));
            if let Err(e) = undone {
                tracing::warn!(path = %h.dir.display(), error = %e, "could not restore the worker's own cgroup");
            }
        }
    }
}

impl ActionCgroup {
    /// The cgroups, for reading usage and OOM kills.
    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }
}

impl Drop for ActionCgroup {
    /// Removes the directories. The keeper leaves them just before the
    /// runner returns, and the kernel may take a moment to see them
    /// empty; a cancelled action's keeper may not even be dead yet. So a
    /// busy directory is retried from a thread for a while.
    fn drop(&mut self) {
        remove_soon(std::mem::take(&mut self.dirs));
    }
}

/// Removes `dirs` now, or those still busy from a thread that retries for
/// 10 s.
fn remove_soon(dirs: Vec<PathBuf>) {
    let busy: Vec<PathBuf> = dirs.into_iter().filter(|d| !try_rmdir(d)).collect();
    if busy.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("rmdir-cgroup".into())
        .spawn(move || {
            for _ in 0..200 {
                std::thread::sleep(Duration::from_millis(50));
                if busy.iter().all(|d| try_rmdir(d)) {
                    return;
                }
            }
            for d in busy.iter().filter(|d| d.exists()) {
                tracing::warn!(path = %d.display(), "an action's cgroup is still busy after 10 s; left in place");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start a thread to remove an action's cgroup");
    }
}

/// True once `dir` is gone.
fn try_rmdir(dir: &Path) -> bool {
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

fn own_dir(own: &Cgroups, controller: &str) -> Option<PathBuf> {
    match controller {
        "memory" => own.memory_dir(),
        _ => own.pids_dir(),
    }
    .map(Path::to_path_buf)
}

fn make_dir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("creating cgroup {}: {e}", dir.display())),
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| format!("writing {value} to {}: {e}", dir.join(file).display()))
}

/// v2: the controllers must be on in `own`'s `cgroup.subtree_control`,
/// which needs `own` free of processes.
fn setup_v2(own: &Path, me: u32) -> Result<Hierarchy, String> {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let available = read(&own.join("cgroup.controllers"));
    let has = |list: &str, c: &str| list.split_whitespace().any(|x| x == c);
    let (memory, pids) = (has(&available, "memory"), has(&available, "pids"));
    if !memory && !pids {
        return Err(format!(
            "neither the memory nor the pids controller is available in {} (not delegated)",
            own.display()
        ));
    }
    let wanted: Vec<&str> = [("memory", memory), ("pids", pids)]
        .into_iter()
        .filter_map(|(c, on)| on.then_some(c))
        .collect();
    let enabled = read(&own.join("cgroup.subtree_control"));
    let mut moved_self = None;
    if !wanted.iter().all(|c| has(&enabled, c)) {
        let procs = read(&own.join("cgroup.procs"));
        let others = procs
            .split_whitespace()
            .filter(|p| p.parse::<u32>().ok() != Some(me))
            .count();
        if others > 0 {
            return Err(format!(
                "{} holds {others} other process(es), so its controllers cannot be enabled for \
                 children; give rbe-workerd a cgroup of its own (systemd: Delegate=yes)",
                own.display()
            ));
        }
        let leaf = own.join(format!("{PREFIX}{me}.self"));
        make_dir(&leaf)?;
        write(&leaf, "cgroup.procs", "0")?;
        moved_self = Some(leaf);
        let enable: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
        write(own, "cgroup.subtree_control", &enable.join(" "))?;
    }
    Ok(Hierarchy {
        dir: own.to_path_buf(),
        v2: true,
        memory,
        pids,
        moved_self,
    })
}

/// Removes the cgroups of workers that are gone: `rbe-workerd-<pid>-…` and
/// `rbe-workerd-<pid>.self` whose pid is not a running rbe-workerd. Their
/// actions died with them (each keeper kills its sandbox when its worker
/// goes); a cgroup still busy is left for the next start.
fn remove_dead(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split(['-', '.']).next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "rbe-workerd" || !e.path().is_dir() {
            continue;
        }
        let dir = e.path();
        // Its keeper may not have seen its worker go yet (or is being
        // killed right now); whatever is left of the action goes.
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        tracing::info!(path = %dir.display(), "removing a cgroup a stopped worker left");
        remove_soon(vec![dir]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The v2 steps, on plain files: a cgroup where workerd is alone gets a
    /// leaf for workerd and the controllers enabled for children.
    #[test]
    fn v2_alone_moves_itself_and_enables_controllers() {
        let d = tempfile::tempdir().expect("tempdir");
        let own = d.path();
        std::fs::write(own.join("cgroup.controllers"), "cpu memory pids\n").expect("write");
        std::fs::write(own.join("cgroup.subtree_control"), "").expect("write");
        std::fs::write(own.join("cgroup.procs"), "42\n").expect("write");
        let h = setup_v2(own, 42).expect("setup");
        assert!(h.v2 && h.memory && h.pids);
        let read = |p: PathBuf| std::fs::read_to_string(p).expect("read");
        assert_eq!(read(own.join("cgroup.subtree_control")), "+memory +pids");
        assert_eq!(read(own.join("rbe-workerd-42.self/cgroup.procs")), "0");
        assert_eq!(h.moved_self, Some(own.join("rbe-workerd-42.self")));
    }

    #[test]
    fn v2_already_enabled_is_used_as_is() {
        let d = tempfile::tempdir().expect("tempdir");
        let own = d.path();
        std::fs::write(own.join("cgroup.controllers"), "memory pids\n").expect("write");
        std::fs::write(own.join("cgroup.subtree_control"), "memory pids\n").expect("write");
        let h = setup_v2(own, 42).expect("setup");
        assert_eq!(h.moved_self, None);
        assert!(!own.join("rbe-workerd-42.self").exists());
    }

    #[test]
    fn v2_shared_cgroup_is_left_alone() {
        let d = tempfile::tempdir().expect("tempdir");
        let own = d.path();
        std::fs::write(own.join("cgroup.controllers"), "memory pids\n").expect("write");
        std::fs::write(own.join("cgroup.subtree_control"), "").expect("write");
        std::fs::write(own.join("cgroup.procs"), "42\n7\n").expect("write");
        let e = setup_v2(own, 42).expect_err("shared");
        assert!(e.contains("Delegate=yes"), "{e}");
        assert!(!own.join("rbe-workerd-42.self").exists());
    }

    #[test]
    fn v2_without_controllers_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("cgroup.controllers"), "cpu io\n").expect("write");
        let e = setup_v2(d.path(), 1).expect_err("none");
        assert!(e.contains("not delegated"), "{e}");
    }

    #[test]
    fn dead_workers_cgroups_are_removed_others_kept() {
        let d = tempfile::tempdir().expect("tempdir");
        // No process has pid 4194305 (above the kernel's largest pid_max).
        let dead = [
            d.path().join("rbe-workerd-4194305-0123abcd"),
            d.path().join("rbe-workerd-4194305.self"),
        ];
        let kept = [
            d.path().join("something-else"),
            d.path().join("rbe-workerd-nope"),
        ];
        for p in dead.iter().chain(&kept) {
            std::fs::create_dir(p).expect("mkdir");
        }
        remove_dead(d.path());
        assert!(dead.iter().all(|p| !p.exists()));
        assert!(kept.iter().all(|p| p.exists()));
    }
}
