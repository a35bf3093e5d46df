//! Each action's transient scope: its limits (config, narrowed or widened
//! by platform properties within the configured ceilings), its creation
//! around the sandbox's keeper, and what its cgroup says afterwards.

use prost::Message;
use rbe_config::{ActionLimits, ScopeMode, WorkerdSettings};
use rbe_exec::Confinement;
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

/// The scope limits for one action: the configured defaults, replaced by
/// what its platform properties ask for, which must stay within the
/// ceilings. The error names the property and the ceiling.
pub fn limits_for(
    config: &ActionLimits,
    properties: &[(String, String)],
) -> Result<Limits, String> {
    let mut memory = config.memory_max;
    let mut cpu = u64::from(config.cpu_quota);
    let mut tasks = config.tasks_max;
    for (name, value) in properties {
        let (slot, ceiling, key) = match name.as_str() {
            MEMORY_PROPERTY => (&mut memory, config.max_memory, "limits.max_memory"),
            CPU_PROPERTY => (
                &mut cpu,
                u64::from(config.max_cpu_quota),
                "limits.max_cpu_quota",
            ),
            TASKS_PROPERTY => (&mut tasks, config.max_tasks, "limits.max_tasks"),
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
        if ceiling != 0 && v > ceiling {
            return Err(format!(
                "platform property {name}={value} is above this worker's ceiling {key}={ceiling}"
            ));
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

/// Connects to systemd for scopes as `[scope] mode` says. `Ok(None)`: run
/// without scopes (logged once, with the reason).
pub async fn connect(settings: &WorkerdSettings) -> anyhow::Result<Option<Scopes>> {
    let mode = settings.scope.mode;
    if mode == ScopeMode::Off {
        tracing::info!("scope.mode = off: actions run without systemd scopes or cgroup limits");
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
            tracing::warn!(reason = %why, "actions run without systemd scopes or cgroup limits");
            Ok(None)
        }
    }
}

/// One action's scope, driven by the sandbox runner.
pub struct Scope<'a> {
    pub scopes: Option<&'a Scopes>,
    pub unit: String,
    pub description: String,
    pub limits: Limits,
    pub cgroups: Option<Cgroups>,
    pub usage: Option<Usage>,
}

impl Confinement for Scope<'_> {
    fn active(&self) -> bool {
        self.scopes.is_some()
    }

    async fn place(&mut self, pid: u32) -> Result<(), String> {
        let Some(scopes) = self.scopes else {
            return Ok(());
        };
        let cg = scopes
            .start(&self.unit, pid, &self.description, &self.limits)
            .await
            .map_err(|e| e.to_string())?;
        self.cgroups = Some(cg);
        Ok(())
    }

    async fn ended(&mut self) {
        self.usage = self.cgroups.as_ref().map(Cgroups::usage);
    }
}

impl Scope<'_> {
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
        let msg = ResourceUsage {
            unit: self.unit.clone(),
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
    }
}
