//! Reading a process's cgroups on both layouts systemd uses: hybrid (v1
//! controllers plus the unified hierarchy, as on Debian 12 hosts booted
//! that way) and unified-only (v2, most production hosts).
//!
//! Paths come from `/proc/PID/cgroup` and the mount table, both as seen in
//! our own cgroup namespace, so this works the same inside a container.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where each hierarchy is mounted: v1 controllers by name, and the
/// unified (v2) hierarchy.
#[derive(Debug, Clone, Default)]
pub struct Mounts {
    v1: HashMap<String, PathBuf>,
    unified: Option<PathBuf>,
}

impl Mounts {
    /// Reads `/proc/self/mountinfo`.
    pub fn read() -> Mounts {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|s| Mounts::parse(&s))
            .unwrap_or_default()
    }

    /// Where the v1 hierarchy of `controller` (memory, cpu, cpuacct, pids,
    /// blkio) is mounted, if one is.
    pub fn v1(&self, controller: &str) -> Option<&Path> {
        self.v1.get(controller).map(PathBuf::as_path)
    }

    /// Where the unified (v2) hierarchy is mounted, if it is.
    pub fn unified(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    fn parse(mountinfo: &str) -> Mounts {
        let mut m = Mounts::default();
        for line in mountinfo.lines() {
            // "... mount_point options - fstype source super_options"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(point) = left.split(' ').nth(4) else {
                continue;
            };
            let mut r = right.split(' ');
            let (fstype, super_opts) = (r.next(), r.nth(1));
            match fstype {
                Some("cgroup2") => {
                    m.unified.get_or_insert_with(|| PathBuf::from(point));
                }
                Some("cgroup") => {
                    for opt in super_opts.unwrap_or("").split(',') {
                        if matches!(opt, "memory" | "cpu" | "cpuacct" | "pids" | "blkio") {
                            m.v1.entry(opt.to_owned())
                                .or_insert_with(|| PathBuf::from(point));
                        }
                    }
                }
                _ => {}
            }
        }
        m
    }
}

/// The directories of one process's cgroups, per controller.
#[derive(Debug, Clone, Default)]
pub struct Cgroups {
    memory: Option<PathBuf>,
    cpu: Option<PathBuf>,
    pids: Option<PathBuf>,
    unified: Option<PathBuf>,
    /// The path of the unified (or name=systemd) hierarchy, e.g.
    /// `/rbe.slice/rbe-actions.slice/rbe-action-1.scope`.
    pub path: String,
}

impl Cgroups {
    /// The cgroups of `pid` now.
    pub fn of(pid: u32, mounts: &Mounts) -> std::io::Result<Cgroups> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        Ok(Cgroups::parse(&text, mounts))
    }

    /// Cgroups at these directories: the memory and pids controllers' and
    /// the unified hierarchy's (v1 memory and pids directories, or one v2
    /// directory for all three). For cgroups made without systemd.
    pub fn at(
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        unified: Option<PathBuf>,
        path: String,
    ) -> Cgroups {
        Cgroups {
            memory,
            cpu: None,
            pids,
            unified,
            path,
        }
    }

    /// The memory controller's directory.
    pub fn memory_dir(&self) -> Option<&Path> {
        self.memory.as_deref()
    }

    /// The pids controller's directory.
    pub fn pids_dir(&self) -> Option<&Path> {
        self.pids.as_deref()
    }

    /// The directory in the unified hierarchy.
    pub fn unified_dir(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    fn parse(text: &str, mounts: &Mounts) -> Cgroups {
        let mut c = Cgroups::default();
        let join = |base: &Path, rel: &str| base.join(rel.trim_start_matches('/'));
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if ctrls.is_empty() {
                c.unified = mounts.unified.as_deref().map(|b| join(b, path));
                c.path = path.to_owned();
                continue;
            }
            if ctrls == "name=systemd" && c.path.is_empty() {
                c.path = path.to_owned();
            }
            for ctrl in ctrls.split(',') {
                let slot = match ctrl {
                    "memory" => &mut c.memory,
                    "cpu" => &mut c.cpu,
                    "pids" => &mut c.pids,
                    _ => continue,
                };
                *slot = mounts.v1.get(ctrl).map(|b| join(b, path));
            }
        }
        // Unified-only: every controller lives in the one hierarchy.
        if mounts.v1.is_empty() {
            c.memory.clone_from(&c.unified);
            c.cpu.clone_from(&c.unified);
            c.pids.clone_from(&c.unified);
        }
        c
    }

    /// The figures of these cgroups now. Files that do not exist (a
    /// controller not enabled for the unit, an older kernel) give `None`.
    pub fn usage(&self) -> Usage {
        let read = |dir: &Option<PathBuf>, file: &str| -> Option<String> {
            std::fs::read_to_string(dir.as_ref()?.join(file)).ok()
        };
        let num = |dir: &Option<PathBuf>, file: &str| -> Option<u64> {
            read(dir, file)?.trim().parse().ok()
        };
        let mut u = Usage::default();
        // CPU time: the unified hierarchy keeps cpu.stat for every cgroup,
        // also on hybrid hosts where systemd cannot account CPU (cpu and
        // cpuacct are separate v1 hierarchies and units never enter
        // cpuacct).
        if let Some(s) = read(&self.unified, "cpu.stat") {
            u.cpu_usec = keyed(&s, "usage_usec");
            u.user_usec = keyed(&s, "user_usec");
            u.system_usec = keyed(&s, "system_usec");
            u.throttled_periods = keyed(&s, "nr_throttled");
            u.throttled_usec = keyed(&s, "throttled_usec");
        }
        if u.throttled_periods.is_none() {
            if let Some(s) = read(&self.cpu, "cpu.stat") {
                u.throttled_periods = keyed(&s, "nr_throttled");
                u.throttled_usec = keyed(&s, "throttled_time").map(|ns| ns / 1000);
            }
        }
        if let Some(s) = read(&self.memory, "memory.oom_control") {
            // v1: "oom_kill N" counts kills in this cgroup.
            u.oom_kills = keyed(&s, "oom_kill");
            u.memory_peak_bytes = num(&self.memory, "memory.max_usage_in_bytes");
        } else {
            if let Some(s) = read(&self.memory, "memory.events") {
                u.oom_kills = keyed(&s, "oom_kill");
            }
            u.memory_peak_bytes = num(&self.memory, "memory.peak");
        }
        if let Some(s) = read(&self.pids, "pids.events") {
            // "max N": forks refused at pids.max.
            u.tasks_limit_hits = keyed(&s, "max");
        }
        u
    }
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// What a cgroup has used; `None` where the kernel does not tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time, user plus system, in microseconds.
    pub cpu_usec: Option<u64>,
    /// User CPU time in microseconds.
    pub user_usec: Option<u64>,
    /// System CPU time in microseconds.
    pub system_usec: Option<u64>,
    /// Periods in which the CPU quota throttled the group.
    pub throttled_periods: Option<u64>,
    /// Time spent throttled, in microseconds.
    pub throttled_usec: Option<u64>,
    /// Peak memory use in bytes.
    pub memory_peak_bytes: Option<u64>,
    /// Processes the kernel's OOM killer killed in the group.
    pub oom_kills: Option<u64>,
    /// Forks refused because the group was at its task limit.
    pub tasks_limit_hits: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
36 25 0:31 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
40 25 0:35 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
41 25 0:36 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
42 25 0:37 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
";
    const V2: &str = "35 25 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn hybrid_layout() {
        let m = Mounts::parse(HYBRID);
        assert!(m.v1.contains_key("memory"));
        let c = Cgroups::parse(
            "12:pids:/a.slice/x.scope\n6:memory:/a.slice/x.scope\n4:cpu:/a.slice/x.scope\n\
             1:name=systemd:/a.slice/x.scope\n0::/a.slice/x.scope\n",
            &m,
        );
        assert_eq!(c.path, "/a.slice/x.scope");
        assert_eq!(
            c.memory.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory/a.slice/x.scope"))
        );
        assert_eq!(
            c.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified/a.slice/x.scope"))
        );
        assert_eq!(
            c.pids.as_deref(),
            Some(Path::new("/sys/fs/cgroup/pids/a.slice/x.scope"))
        );
    }

    #[test]
    fn unified_layout() {
        let m = Mounts::parse(V2);
        assert!(m.v1.is_empty());
        let c = Cgroups::parse("0::/a.slice/x.scope\n", &m);
        let want = Some(PathBuf::from("/sys/fs/cgroup/a.slice/x.scope"));
        assert_eq!((c.memory.clone(), c.pids.clone()), (want.clone(), want));
    }

    #[test]
    fn reads_figures_from_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_throttled 3\nthrottled_usec 70\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("memory.events"),
            "low 0\nmax 4\noom 1\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(d.path().join("memory.peak"), "1048576\n").unwrap();
        std::fs::write(d.path().join("pids.events"), "max 6\n").unwrap();
        let dir = Some(d.path().to_path_buf());
        let c = Cgroups {
            memory: dir.clone(),
            cpu: dir.clone(),
            pids: dir.clone(),
            unified: dir,
            path: String::new(),
        };
        let u = c.usage();
        assert_eq!(u.cpu_usec, Some(1500));
        assert_eq!(u.throttled_periods, Some(3));
        assert_eq!(u.oom_kills, Some(1));
        assert_eq!(u.memory_peak_bytes, Some(1 << 20));
        assert_eq!(u.tasks_limit_hits, Some(6));
    }
}
