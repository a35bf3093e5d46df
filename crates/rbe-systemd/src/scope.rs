//! Transient scopes over D-Bus: every action gets
//! `rbe-action-<id>.scope` in a slice, with cgroup limits, created with
//! `StartTransientUnit` and waited for like `systemd-run --scope` does.
//!
//! The scope must be created by a process inside the systemd instance that
//! manages it (PIDs are interpreted in systemd's pid namespace), so only
//! the worker daemon, running as a unit, does this.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures::StreamExt;
use zbus::zvariant::{OwnedObjectPath, Value};

use crate::cgroup::{Cgroups, Mounts};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How long a start job may take before the action is refused.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one D-Bus call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Resource limits of one scope; `None` leaves systemd's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `MemoryMax=`, bytes.
    pub memory_max: Option<u64>,
    /// `CPUQuota=`, percent of one CPU (200 = two CPUs).
    pub cpu_quota_percent: Option<u32>,
    /// `CPUWeight=` (1–10000).
    pub cpu_weight: Option<u64>,
    /// `TasksMax=`.
    pub tasks_max: Option<u64>,
    /// `IOWeight=` (1–10000; only effective on the unified hierarchy).
    pub io_weight: Option<u64>,
}

/// Why a scope could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    /// The system bus did not answer.
    #[error("cannot reach systemd over D-Bus: {0}")]
    Connect(String),
    /// A D-Bus call failed.
    #[error("D-Bus {method} failed: {reason}")]
    Call {
        /// The method called.
        method: &'static str,
        /// The error systemd or the bus gave.
        reason: String,
    },
    /// The start job ended other than `done`.
    #[error("starting {unit} ended with {result:?}")]
    Job {
        /// The unit.
        unit: String,
        /// The job result (`failed`, `canceled`, ...).
        result: String,
    },
    /// The start job did not finish in time.
    #[error("starting {0} did not finish within 30 s")]
    Timeout(String),
    /// The job finished but the process is not in the scope.
    #[error("process {pid} is in {found:?}, not in {unit}")]
    NotMoved {
        /// The process.
        pid: u32,
        /// The unit.
        unit: String,
        /// Its cgroup as read from /proc.
        found: String,
    },
}

/// A connection to systemd for creating scopes in one slice.
#[derive(Debug, Clone)]
pub struct Scopes {
    conn: zbus::Connection,
    jobs: Jobs,
    slice: String,
    mounts: Mounts,
}

impl Scopes {
    /// Connects to the system manager over the system bus and subscribes
    /// to its job signals. (systemd's private socket would skip
    /// dbus-daemon, but it sends signals from a well-known name where zbus
    /// insists on a unique one.)
    pub async fn connect(slice: &str) -> Result<Scopes, ScopeError> {
        let conn = tokio::time::timeout(CALL_TIMEOUT, zbus::Connection::system())
            .await
            .map_err(|_| ScopeError::Connect("the system bus did not answer".into()))?
            .map_err(|e| ScopeError::Connect(e.to_string()))?;
        let jobs = Jobs::listen(&conn).await?;
        let s = Scopes {
            conn,
            jobs,
            slice: slice.to_owned(),
            mounts: Mounts::read(),
        };
        s.call("Subscribe", &()).await?;
        Ok(s)
    }

    async fn call<B>(&self, method: &'static str, body: &B) -> Result<zbus::Message, ScopeError>
    where
        B: serde::ser::Serialize + zbus::zvariant::DynamicType,
    {
        let call = self
            .conn
            .call_method(Some(DEST), PATH, Some(MANAGER), method, body);
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => r.map_err(|e| ScopeError::Call {
                method,
                reason: e.to_string(),
            }),
            Err(_) => Err(ScopeError::Call {
                method,
                reason: format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
            }),
        }
    }

    /// Creates `unit` (a `.scope` name) holding `pid` with `limits`, waits
    /// for its start job, and returns its cgroups.
    pub async fn start(
        &self,
        unit: &str,
        pid: u32,
        description: &str,
        limits: &Limits,
    ) -> Result<Cgroups, ScopeError> {
        let mut props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(description)),
            ("Slice", Value::from(self.slice.as_str())),
            ("PIDs", Value::from(vec![pid])),
            ("MemoryAccounting", Value::from(true)),
            ("TasksAccounting", Value::from(true)),
            // A scope whose action was OOM-killed may end "failed" on v2;
            // it must not stay loaded.
            ("CollectMode", Value::from("inactive-or-failed")),
        ];
        if let Some(v) = limits.memory_max {
            props.push(("MemoryMax", Value::from(v)));
        }
        if let Some(p) = limits.cpu_quota_percent {
            props.push(("CPUQuotaPerSecUSec", Value::from(u64::from(p) * 10_000)));
        }
        if let Some(v) = limits.cpu_weight {
            props.push(("CPUWeight", Value::from(v)));
        }
        if let Some(v) = limits.tasks_max {
            props.push(("TasksMax", Value::from(v)));
        }
        if let Some(v) = limits.io_weight {
            props.push(("IOWeight", Value::from(v)));
        }
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();

        let t0 = std::time::Instant::now();
        let reply = self
            .call("StartTransientUnit", &(unit, "fail", props, aux))
            .await?;
        let call_us = t0.elapsed().as_micros() as u64;
        let job: OwnedObjectPath = reply.body().deserialize().map_err(|e| ScopeError::Call {
            method: "StartTransientUnit",
            reason: e.to_string(),
        })?;
        let result = match tokio::time::timeout(JOB_TIMEOUT, self.jobs.wait(job.clone())).await {
            Ok(r) => r.ok_or_else(|| ScopeError::Connect("the D-Bus connection closed".into()))?,
            Err(_) => {
                self.jobs.forget(&job);
                return Err(ScopeError::Timeout(unit.to_owned()));
            }
        };
        // Where a scope's cost goes (BENCHMARKS.md, "Scope benchmarks").
        tracing::debug!(
            unit,
            call_us,
            started_us = t0.elapsed().as_micros() as u64,
            "scope started"
        );
        if result != "done" {
            return Err(ScopeError::Job {
                unit: unit.to_owned(),
                result,
            });
        }
        let cg = Cgroups::of(pid, &self.mounts).map_err(|e| ScopeError::NotMoved {
            pid,
            unit: unit.to_owned(),
            found: e.to_string(),
        })?;
        if !cg.path.ends_with(&format!("/{unit}")) {
            return Err(ScopeError::NotMoved {
                pid,
                unit: unit.to_owned(),
                found: cg.path,
            });
        }
        Ok(cg)
    }

    /// Sends SIGKILL to every process of `unit`.
    pub async fn kill(&self, unit: &str) -> Result<(), ScopeError> {
        self.call("KillUnit", &(unit, "all", libc::SIGKILL))
            .await
            .map(drop)
    }
}

/// Ends of systemd jobs, from one `JobRemoved` subscription for the whole
/// connection (a match rule per scope would add two bus round trips to
/// every action). A job can end before its start call has returned, so
/// ends nobody waits for yet are kept, a bounded number of them.
#[derive(Debug, Clone)]
struct Jobs {
    inner: std::sync::Arc<std::sync::Mutex<JobsInner>>,
}

#[derive(Debug, Default)]
struct JobsInner {
    waiting: HashMap<OwnedObjectPath, tokio::sync::oneshot::Sender<String>>,
    ended: HashMap<OwnedObjectPath, String>,
    ended_order: VecDeque<OwnedObjectPath>,
    closed: bool,
}

/// Job ends kept for a caller that has not asked yet (other clients' jobs
/// on the system bus land here too).
const KEEP_ENDED: usize = 4096;

impl Jobs {
    async fn listen(conn: &zbus::Connection) -> Result<Jobs, ScopeError> {
        let add_match = |e: zbus::Error| ScopeError::Call {
            method: "AddMatch",
            reason: e.to_string(),
        };
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface(MANAGER)
            .and_then(|b| b.member("JobRemoved"))
            .map(|b| b.build())
            .map_err(add_match)?;
        let mut signals = zbus::MessageStream::for_match_rule(rule, conn, Some(4096))
            .await
            .map_err(add_match)?;
        let jobs = Jobs {
            inner: std::sync::Arc::default(),
        };
        let inner = std::sync::Arc::clone(&jobs.inner);
        tokio::spawn(async move {
            while let Some(m) = signals.next().await {
                let Ok(m) = m else { continue };
                let Ok((_, path, _, result)) = m
                    .body()
                    .deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    continue;
                };
                let Ok(mut j) = inner.lock() else { return };
                if let Some(tx) = j.waiting.remove(&path) {
                    let _ = tx.send(result);
                } else {
                    if j.ended_order.len() >= KEEP_ENDED {
                        if let Some(old) = j.ended_order.pop_front() {
                            j.ended.remove(&old);
                        }
                    }
                    j.ended_order.push_back(path.clone());
                    j.ended.insert(path, result);
                }
            }
            if let Ok(mut j) = inner.lock() {
                j.closed = true;
                j.waiting.clear();
            }
        });
        Ok(jobs)
    }

    /// Stops waiting for `job` (its caller gave up).
    fn forget(&self, job: &OwnedObjectPath) {
        if let Ok(mut j) = self.inner.lock() {
            j.waiting.remove(job);
        }
    }

    /// The result of `job` (`done`, `failed`, ...); `None` if the
    /// connection closed.
    async fn wait(&self, job: OwnedObjectPath) -> Option<String> {
        let rx = {
            let mut j = self.inner.lock().ok()?;
            if let Some(r) = j.ended.remove(&job) {
                j.ended_order.retain(|p| p != &job);
                return Some(r);
            }
            if j.closed {
                return None;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            j.waiting.insert(job, tx);
            rx
        };
        rx.await.ok()
    }
}
