//! Each action's transient scope: its limits (config, narrowed or widened
//! by platform properties within the configured ceilings), its creation
//! around the sandbox's keeper, and what its cgroup says afterwards.

use prost::Message;
use rbe_config::{ActionLimits, ScopeMode, WorkerdSettings};
use rbe_exec::{Confinement, Rlimits};

use crate::cgroups::{ActionCgroup, LocalCgroups};
use rbe_proto::worker::ResourceUsage;
use rbe_systemd::cgroup::{Cgroups, Usage};
use rbe_systemd::scope::{Limits, Scopes};

/// Platform properties an action may use to ask for resources. They are
/// requests, not capabilities to match workers by.
pub const MEMORY_PROPERTY: &str = "rbe.memory_max";
/// CPU quota in percent of one CPU.
pub const CPU_PROPERTY: &str = "rbe.cpu_quota";
/// Task limit.
pub const TASKS_PROPERTY: &str = "rbe.tasks_max";

/// The limits for one action: the configured defaults, replaced by what
/// its platform properties ask for, which must stay within the ceilings.
/// A ceiling of 0 means the action may not raise the configured value
/// (only narrow it); with both 0 there is no limit, and any request only
/// narrows. Above the ceiling is an error naming the property and the key,
/// as for any other ceiling: the client asked for something this worker
/// does not give, and silently running it with less would fail later in a
/// way harder to understand.
pub fn limits_for(
    config: &ActionLimits,
    properties: &[(String, String)],
) -> Result<Limits, String> {
    let mut memory = config.memory_max;
    let mut cpu = u64::from(config.cpu_quota);
    let mut tasks = config.tasks_max;
    for (name, value) in properties {
        let (slot, default, max, key, value_key) = match name.as_str() {
            MEMORY_PROPERTY => (
                &mut memory,
                config.memory_max,
                config.max_memory,
                "limits.max_memory",
                "limits.memory_max",
            ),
            CPU_PROPERTY => (
                &mut cpu,
                u64::from(config.cpu_quota),
                u64::from(config.max_cpu_quota),
                "limits.max_cpu_quota",
                "limits.cpu_quota",
            ),
            TASKS_PROPERTY => (
                &mut tasks,
                config.tasks_max,
                config.max_tasks,
                "limits.max_tasks",
                "limits.tasks_max",
            ),
            _ => continue,
        };
        let v = if name == MEMORY_PROPERTY {
            rbe_config::parse_size(value)
                .map_err(|e| format!("platform property {name}={value:?}: {e}"))?
        } else {
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("platform property {name}={value:?} is not a whole number"))?
        };
        if v == 0 {
            return Err(format!(
                "platform property {name}=0 would lift the limit; ask for a number"
            ));
        }
        // The same floors as for the configured values: below them the
        // sandbox itself could not start, which would look like a fault
        // of this worker (INTERNAL) instead of the request's.
        let floor = match name.as_str() {
            MEMORY_PROPERTY => 1 << 20,
            TASKS_PROPERTY => 4,
            _ => 1,
        };
        if v < floor {
            return Err(format!(
                "platform property {name}={value} is below {floor}, the least the sandbox needs"
            ));
        }
        match ceiling(default, max) {
            Some(c) if v > c && max == 0 => {
                return Err(format!(
                    "platform property {name}={value} is above {value_key}={default}, which \
                     actions may not raise on this worker ({key}=0)"
                ))
            }
            Some(c) if v > c => {
                return Err(format!(
                    "platform property {name}={value} is above this worker's ceiling {key}={c}"
                ))
            }
            _ => {}
        }
        *slot = v;
    }
    let some = |v: u64| (v != 0).then_some(v);
    Ok(Limits {
        memory_max: some(memory),
        cpu_quota_percent: some(cpu).map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
        cpu_weight: some(config.cpu_weight),
        tasks_max: some(tasks),
        io_weight: some(config.io_weight),
    })
}

/// The most an action may ask for, given the configured value and its
/// ceiling (`max`); `None`: anything (no limit and no ceiling).
fn ceiling(value: u64, max: u64) -> Option<u64> {
    match (value, max) {
        (0, 0) => None,
        (v, 0) => Some(v),
        (_, m) => Some(m),
    }
}

/// The rlimits of an action: always no core dumps and the configured file
/// size and descriptor limits; processes and memory too when no cgroup
/// holds them (`cgroup_memory`, `cgroup_tasks`). Those two are weaker than
/// a cgroup: `RLIMIT_DATA` is per process, and `RLIMIT_NPROC` counts the
/// action uid's processes, which as root means every action's together
/// (in a non-root worker's user namespace, the action's alone).
pub fn rlimits_for(
    config: &ActionLimits,
    limits: &Limits,
    cgroup_memory: bool,
    cgroup_tasks: bool,
) -> Rlimits {
    let some = |v: u64| (v != 0).then_some(v);
    Rlimits {
        nproc: if cgroup_tasks { None } else { limits.tasks_max },
        data: if cgroup_memory {
            None
        } else {
            limits.memory_max
        },
        fsize: some(config.file_size_max),
        nofile: some(config.open_files_max),
        core: Some(0),
    }
}

/// Connects to systemd for scopes as `[scope] mode` says. `Ok(None)`: run
/// without scopes (logged once, with the reason).
pub async fn connect(settings: &WorkerdSettings) -> anyhow::Result<Option<Scopes>> {
    let mode = settings.scope.mode;
    if mode == ScopeMode::Off {
        tracing::info!("scope.mode = off: actions run without systemd scopes");
        return Ok(None);
    }
    let why_not = if !rbe_systemd::booted() {
        Some("systemd does not manage this host (no /run/systemd/system)")
    } else if !rustix::process::geteuid().is_root() {
        Some("the worker is not root, and only root may create scopes in the system manager")
    } else {
        None
    };
    let connected = match why_not {
        Some(why) => Err(why.to_owned()),
        None => Scopes::connect(&settings.scope.slice)
            .await
            .map_err(|e| e.to_string()),
    };
    match (connected, mode) {
        (Ok(s), _) => {
            // Actions of an earlier worker process that died without
            // stopping them (SIGKILL, a crash) are still running in their
            // scopes, which a service restart does not touch.
            match s.kill(&settings.scope.slice).await {
                Ok(()) => {
                    tracing::debug!(slice = %settings.scope.slice, "sent SIGKILL to whatever an earlier worker process left in the slice")
                }
                Err(e) => tracing::debug!(error = %e, "nothing left in the slice to kill"),
            }
            tracing::info!(slice = %settings.scope.slice, "actions run in transient scopes");
            Ok(Some(s))
        }
        (Err(why), ScopeMode::Required) => {
            anyhow::bail!("scope.mode = required, but scopes cannot be made: {why}")
        }
        (Err(why), _) => {
            tracing::warn!(reason = %why, "actions run without systemd scopes");
            Ok(None)
        }
    }
}

/// One action's confinement, driven by the sandbox runner: a systemd
/// scope, or without systemd a cgroup workerd makes (see [`crate::cgroups`]),
/// or nothing.
pub struct Scope<'a> {
    scopes: Option<&'a Scopes>,
    local: Option<&'a LocalCgroups>,
    /// `rbe-action-<id>.scope`; the cgroup's directory name is `<id>`.
    pub unit: String,
    id: String,
    description: String,
    /// What applies: without systemd only memory and tasks.
    pub limits: Limits,
    /// The cgroups the action ran in, once placed.
    pub cgroups: Option<Cgroups>,
    /// Their figures once the action ended.
    pub usage: Option<Usage>,
    action_cgroup: Option<ActionCgroup>,
}

impl Confinement for Scope<'_> {
    fn active(&self) -> bool {
        self.scopes.is_some() || self.local.is_some()
    }

    async fn place(&mut self, pid: u32) -> Result<(), String> {
        if let Some(scopes) = self.scopes {
            let cg = scopes
                .start(&self.unit, pid, &self.description, &self.limits)
                .await
                .map_err(|e| e.to_string())?;
            self.cgroups = Some(cg);
        } else if let Some(local) = self.local {
            let cg = local.confine(&self.id, &self.limits, pid)?;
            self.cgroups = Some(cg.cgroups().clone());
            self.action_cgroup = Some(cg);
        }
        Ok(())
    }

    async fn ended(&mut self) {
        self.usage = self.cgroups.as_ref().map(Cgroups::usage);
    }
}

impl<'a> Scope<'a> {
    /// The confinement of action `id`: a scope if `scopes`, else a cgroup
    /// if `local`. Dropping it removes the cgroup.
    pub fn new(
        scopes: Option<&'a Scopes>,
        local: Option<&'a LocalCgroups>,
        id: &str,
        description: String,
        mut limits: Limits,
    ) -> Scope<'a> {
        let local = if scopes.is_some() { None } else { local };
        if scopes.is_none() {
            // Only systemd applies these; the metadata must not claim them.
            limits.cpu_quota_percent = None;
            limits.cpu_weight = None;
            limits.io_weight = None;
        }
        if let Some(l) = local {
            if !l.has_memory() {
                limits.memory_max = None;
            }
            if !l.has_pids() {
                limits.tasks_max = None;
            }
        } else if scopes.is_none() {
            limits.memory_max = None;
            limits.tasks_max = None;
        }
        Scope {
            scopes,
            local,
            unit: format!("rbe-action-{id}.scope"),
            id: id.to_owned(),
            description,
            limits,
            cgroups: None,
            usage: None,
            action_cgroup: None,
        }
    }

    /// Whether the cgroup holds the memory limit, and the task limit.
    pub fn cgroup_caps(&self) -> (bool, bool) {
        match (self.scopes, self.local) {
            (Some(_), _) => (true, true),
            (None, Some(l)) => (l.has_memory(), l.has_pids()),
            (None, None) => (false, false),
        }
    }

    /// The systemd unit, if the action ran in one (for the journal's `-u`).
    pub fn systemd_unit(&self) -> &str {
        if self.scopes.is_some() && self.cgroups.is_some() {
            &self.unit
        } else {
            ""
        }
    }

    /// True when the kernel's OOM killer killed something in the scope.
    pub fn oom_killed(&self) -> bool {
        self.usage.and_then(|u| u.oom_kills).is_some_and(|n| n > 0)
    }

    /// Forks were refused at TasksMax.
    pub fn hit_tasks_max(&self) -> bool {
        self.usage
            .and_then(|u| u.tasks_limit_hits)
            .is_some_and(|n| n > 0)
    }

    /// The usage as `auxiliary_metadata` for ExecutedActionMetadata; `None`
    /// without a scope.
    pub fn metadata(&self) -> Option<rbe_proto::wkt::Any> {
        let u = self.usage?;
        let unit = match (&self.scopes, &self.cgroups) {
            (None, Some(cg)) => cg.path.clone(),
            _ => self.unit.clone(),
        };
        let msg = ResourceUsage {
            unit,
            cpu_usec: u.cpu_usec,
            user_usec: u.user_usec,
            system_usec: u.system_usec,
            memory_peak_bytes: u.memory_peak_bytes,
            oom_kills: u.oom_kills,
            tasks_limit_hits: u.tasks_limit_hits,
            throttled_periods: u.throttled_periods,
            throttled_usec: u.throttled_usec,
            memory_max: self.limits.memory_max.unwrap_or(0),
            cpu_quota_percent: self.limits.cpu_quota_percent.unwrap_or(0),
            tasks_max: self.limits.tasks_max.unwrap_or(0),
        };
        Some(rbe_proto::wkt::Any {
            type_url: "type.googleapis.com/rbe.worker.v1.ResourceUsage".to_owned(),
            value: msg.encode_to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_requests_within_ceilings() {
        let c = ActionLimits {
            memory_max: 1 << 30,
            max_memory: 4 << 30,
            max_cpu_quota: 400,
            ..ActionLimits::default()
        };
        let l = limits_for(&c, &[]).expect("defaults");
        assert_eq!(l.memory_max, Some(1 << 30));
        assert_eq!(l.cpu_quota_percent, None);
        assert_eq!(l.tasks_max, Some(4096));
        let l = limits_for(
            &c,
            &props(&[
                ("rbe.memory_max", "2GiB"),
                ("rbe.cpu_quota", "150"),
                ("OSFamily", "linux"),
            ]),
        )
        .expect("requests");
        assert_eq!(
            (l.memory_max, l.cpu_quota_percent),
            (Some(2 << 30), Some(150))
        );
        let e = limits_for(&c, &props(&[("rbe.memory_max", "8GiB")])).expect_err("too big");
        assert!(e.contains("limits.max_memory"), "{e}");
        let e = limits_for(&c, &props(&[("rbe.tasks_max", "lots")])).expect_err("nan");
        assert!(e.contains("rbe.tasks_max"), "{e}");
        let e = limits_for(&c, &props(&[("rbe.cpu_quota", "0")])).expect_err("zero");
        assert!(e.contains("lift"), "{e}");
        for (name, value) in [("rbe.tasks_max", "3"), ("rbe.memory_max", "1KiB")] {
            let e = limits_for(&c, &props(&[(name, value)])).expect_err("too small");
            assert!(e.contains("the least the sandbox needs"), "{e}");
        }
    }

    #[test]
    fn a_ceiling_of_zero_means_the_action_may_not_raise_the_limit() {
        let c = ActionLimits {
            memory_max: 1 << 30,
            tasks_max: 64,
            cpu_quota: 100,
            max_memory: 0,
            max_cpu_quota: 0,
            max_tasks: 0,
            ..ActionLimits::default()
        };
        for (name, value, key) in [
            ("rbe.memory_max", "2GiB", "limits.max_memory"),
            ("rbe.tasks_max", "65", "limits.max_tasks"),
            ("rbe.cpu_quota", "400", "limits.max_cpu_quota"),
        ] {
            let e = limits_for(&c, &props(&[(name, value)])).expect_err("above the limit");
            assert!(e.contains(key) && e.contains("may not raise"), "{e}");
        }
        // Asking for the limit itself, or less, is fine.
        let l = limits_for(
            &c,
            &props(&[
                ("rbe.memory_max", "1GiB"),
                ("rbe.tasks_max", "16"),
                ("rbe.cpu_quota", "50"),
            ]),
        )
        .expect("within");
        assert_eq!(
            (l.memory_max, l.tasks_max, l.cpu_quota_percent),
            (Some(1 << 30), Some(16), Some(50))
        );
        // No limit and no ceiling: any request only narrows.
        let open = ActionLimits {
            memory_max: 0,
            max_memory: 0,
            ..ActionLimits::default()
        };
        let l = limits_for(&open, &props(&[("rbe.memory_max", "8GiB")])).expect("narrows");
        assert_eq!(l.memory_max, Some(8 << 30));
    }
}
