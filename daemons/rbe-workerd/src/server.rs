//! The worker's life: attach to the frontend's hub, take assignments, run
//! each as its own task, report, and reattach when the stream breaks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use parking_lot::Mutex;
use rbe_config::{WorkerSection, WorkerdSettings};
use rbe_proto::worker::{
    hub_message, worker_hub_client::WorkerHubClient, worker_message, Hello, Property, WorkerMessage,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use arc_swap::ArcSwap;
use rbe_systemd::scope::Scopes;

use crate::cgroups::LocalCgroups;
use crate::workdir::WorkDir;
use crate::{action, confine};

/// What every action task needs.
pub struct Worker {
    /// The settings as last (re)loaded. Actions take a snapshot when they
    /// start, so a reload applies to the actions that start afterwards;
    /// keys only read at startup (sockets, slots, work_dir) need a restart.
    pub settings: ArcSwap<WorkerdSettings>,
    /// Transient scopes, when systemd manages the host (see [`confine`]).
    pub scopes: Option<Scopes>,
    /// Without scopes: per-action cgroups workerd makes itself, when it
    /// can (see [`crate::cgroups`]).
    pub cgroups: Option<LocalCgroups>,
    /// Slot numbers not in use (for logs: `RBE_SLOT`).
    free_slots: Mutex<Vec<u32>>,
    pub name: String,
    pub slots: u32,
    pub casd: Channel,
    /// True when running as root: actions then run as the configured
    /// unprivileged uid and inputs are hard links; otherwise actions run in
    /// a user namespace as our own uid, and inputs are copies so they cannot
    /// change the store's inodes.
    pub privileged: bool,
    /// The work directory: action directories and their removal.
    pub work: Arc<WorkDir>,
    // Operation id -> (local sequence number, cancellation).
    running: Mutex<HashMap<u64, (u64, CancellationToken)>>,
    next_seq: std::sync::atomic::AtomicU64,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "worker".into())
}

impl Worker {
    /// Takes a free slot number; `None` if the frontend sent more than we
    /// announced (it never should).
    pub fn take_slot(&self) -> Option<u32> {
        self.free_slots.lock().pop()
    }

    pub fn return_slot(&self, slot: Option<u32>) {
        if let Some(s) = slot {
            self.free_slots.lock().push(s);
        }
    }
}

pub async fn run(
    settings: WorkerdSettings,
    _fds: Vec<(String, std::os::fd::OwnedFd)>,
    config_dirs: Vec<PathBuf>,
) -> anyhow::Result<()> {
    let slots = match settings.worker.slots {
        0 => std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        n => n,
    };
    let name = if settings.worker.name.is_empty() {
        host_name()
    } else {
        settings.worker.name.clone()
    };
    let work = Arc::new(WorkDir::prepare(&settings.worker.work_dir)?);
    let privileged = rustix_is_root();
    if !privileged {
        tracing::info!("not running as root: actions run in a user namespace as this user, with inputs copied, not linked");
    }
    let casd = rbe_net::unix_channel(&settings.casd_socket)
        .await
        .context("channel to casd")?;
    let scopes = confine::connect(&settings).await?;
    let cgroups = if scopes.is_some() {
        None
    } else {
        match LocalCgroups::setup() {
            Ok(c) => {
                tracing::info!(cgroups = %c.describe(), "each action runs in a cgroup of its own, with limits.memory_max and limits.tasks_max");
                Some(c)
            }
            Err(why) => {
                tracing::warn!(reason = %why, "no per-action cgroups: processes and memory are limited per process with rlimits only");
                None
            }
        }
    };
    let worker = Arc::new(Worker {
        settings: ArcSwap::from_pointee(settings),
        scopes,
        cgroups,
        free_slots: Mutex::new((0..slots).rev().collect()),
        name,
        slots,
        casd,
        privileged,
        work: Arc::clone(&work),
        running: Mutex::new(HashMap::new()),
        next_seq: std::sync::atomic::AtomicU64::new(0),
    });

    let shutdown = CancellationToken::new();
    {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            rbe_systemd::wait_for_shutdown_signal().await;
            rbe_systemd::notify_stopping();
            stop.cancel();
        });
    }
    tokio::spawn(reload_on_sighup(Arc::clone(&worker), config_dirs));
    tokio::spawn(work.clean_in_background(shutdown.clone()));
    tokio::spawn(watchdog(Arc::clone(&worker), shutdown.clone()));
    rbe_systemd::notify_status("attaching to the frontend");
    rbe_systemd::notify_ready();
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match attach(&worker, &shutdown).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "lost the frontend; reconnecting"),
        }
        // Whatever was running cannot be reported on a new stream: the
        // frontend re-queues it, so stop it here.
        for (_, (_, t)) in worker.running.lock().drain() {
            t.cancel();
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    if let Some(c) = &worker.cgroups {
        // The actions' cgroups go as their actions end; give the last a
        // moment (a cancelled action's keeper may still be exiting).
        let _ = rbe_systemd::drain(Duration::from_secs(2), || usize::from(c.busy())).await;
        c.remove();
    }
    tracing::info!("rbe-workerd stopped");
    Ok(())
}

fn rustix_is_root() -> bool {
    rustix::process::geteuid().is_root()
}

async fn attach(worker: &Arc<Worker>, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let settings = worker.settings.load_full();
    let ch = rbe_net::unix_channel(&settings.frontend_socket).await?;
    let mut client = WorkerHubClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel::<WorkerMessage>(256);
    let platform = settings
        .worker
        .platform
        .iter()
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| Property {
            name: k.to_string(),
            value: v.to_string(),
        })
        .collect();
    tx.send(WorkerMessage {
        kind: Some(worker_message::Kind::Hello(Hello {
            worker_name: worker.name.clone(),
            slots: worker.slots,
            platform,
        })),
    })
    .await?;
    let mut incoming = client
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("attaching to the frontend")?
        .into_inner();
    tracing::info!(slots = worker.slots, name = %worker.name, "attached to the frontend");
    rbe_systemd::notify_status(&format!(
        "attached to the frontend; {}",
        status_line(worker)
    ));
    loop {
        let msg = tokio::select! {
            () = drained(worker, shutdown) => return Ok(()),
            m = incoming.next() => m,
        };
        let Some(msg) = msg else { return Ok(()) };
        match msg?.kind {
            Some(hub_message::Kind::Assign(a)) if shutdown.is_cancelled() => {
                // Stopping: no new work. The frontend ends the operation
                // UNAVAILABLE, which clients retry.
                let _ = tx
                    .send(WorkerMessage {
                        kind: Some(worker_message::Kind::Finished(action::refuse(
                            a.id,
                            &format!("worker {} is stopping", worker.name),
                        ))),
                    })
                    .await;
            }
            Some(hub_message::Kind::Assign(a)) => {
                let token = CancellationToken::new();
                let seq = worker
                    .next_seq
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                worker.running.lock().insert(a.id, (seq, token.clone()));
                let (w, tx) = (Arc::clone(worker), tx.clone());
                tokio::spawn(async move {
                    let id = a.id;
                    let finished = action::execute(&w, a, token.clone()).await;
                    // Reported before leaving `running`, so a drain that
                    // waits for `running` to empty has sent every report.
                    let _ = tx
                        .send(WorkerMessage {
                            kind: Some(worker_message::Kind::Finished(finished)),
                        })
                        .await;
                    // Ids repeat after a reconnect: remove only our own entry.
                    let mut running = w.running.lock();
                    if running.get(&id).is_some_and(|(s, _)| *s == seq) {
                        running.remove(&id);
                    }
                });
            }
            Some(hub_message::Kind::Cancel(c)) => {
                if let Some((_, t)) = worker.running.lock().get(&c.id) {
                    t.cancel();
                }
            }
            None => {}
        }
    }
}

/// Resolves once a stop was asked for and every running action has
/// finished and been reported, or `worker.drain_timeout_secs` has passed
/// (the unit's `TimeoutStopSec=30s` leaves room for the rest). What is
/// still running then is killed, and the frontend queues it again.
async fn drained(worker: &Worker, shutdown: &CancellationToken) {
    shutdown.cancelled().await;
    let drain = Duration::from_secs(worker.settings.load().worker.drain_timeout_secs);
    let running = rbe_systemd::drain(drain, || worker.running.lock().len()).await;
    if running > 0 {
        tracing::warn!(
            running,
            drain_timeout_secs = drain.as_secs(),
            "drain time is up; the frontend queues the rest again"
        );
    }
    // The last reports are in the stream's buffer; give them a moment to
    // reach the frontend before the stream is dropped.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// `systemctl reload` (SIGHUP): applies what can change live (sandbox and
/// limits, for actions that start afterwards, and the log level).
fn reload_on_sighup(
    worker: Arc<Worker>,
    dirs: Vec<PathBuf>,
) -> impl std::future::Future<Output = ()> {
    rbe_systemd::reload_on_sighup(
        move || rbe_config::load_workerd(&dirs),
        move |mut new| {
            let old = worker.settings.load_full();
            let mut r = rbe_systemd::Reloaded::new(&new.log.level);
            // Of `[worker]`, only the drain time applies live.
            let running_worker = WorkerSection {
                drain_timeout_secs: new.worker.drain_timeout_secs,
                ..old.worker.clone()
            };
            r.keep(
                "frontend.socket",
                &old.frontend_socket,
                &mut new.frontend_socket,
            )
            .keep("casd.socket", &old.casd_socket, &mut new.casd_socket)
            .keep("worker", &running_worker, &mut new.worker)
            .keep("scope", &old.scope, &mut new.scope);
            tracing::info!(
                memory_max = new.limits.memory_max,
                cpu_quota = new.limits.cpu_quota,
                tasks_max = new.limits.tasks_max,
                "new action limits"
            );
            worker.settings.store(Arc::new(new));
            r
        },
    )
}

/// Watchdog pings and the STATUS= line, from a task on the same runtime as
/// the actions.
async fn watchdog(worker: Arc<Worker>, shutdown: CancellationToken) {
    rbe_systemd::heartbeat(shutdown.cancelled_owned(), || {
        rbe_systemd::notify_status(&status_line(&worker));
    })
    .await;
}

/// The STATUS= line: what `systemctl status rbe-workerd` shows.
fn status_line(worker: &Worker) -> String {
    let quarantined = match worker.work.quarantined() {
        0 => String::new(),
        n => format!("; {n} tree(s) in the work directory's quarantine"),
    };
    format!(
        "{} of {} slots busy; {}{quarantined}",
        worker.running.lock().len(),
        worker.slots,
        if worker.scopes.is_some() {
            "actions in scopes"
        } else if worker.cgroups.is_some() {
            "actions in cgroups"
        } else {
            "no scopes or cgroups"
        }
    )
}
