//! The worker's life: attach to the frontend's hub, take assignments, run
//! each as its own task, report, and reattach when the stream breaks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use parking_lot::Mutex;
use rbe_config::WorkerdSettings;
use rbe_proto::worker::{
    hub_message, worker_hub_client::WorkerHubClient, worker_message, Hello, Property, WorkerMessage,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::action;

/// What every action task needs.
pub struct Worker {
    pub settings: WorkerdSettings,
    pub name: String,
    pub slots: u32,
    pub casd: Channel,
    /// True when running as root: actions then run as the configured
    /// unprivileged uid and inputs are hard links; otherwise actions run in
    /// a user namespace as our own uid, and inputs are copies so they cannot
    /// change the store's inodes.
    pub privileged: bool,
    pub work_dir: PathBuf,
    // Operation id -> (local sequence number, cancellation).
    running: Mutex<HashMap<u64, (u64, CancellationToken)>>,
    next_seq: std::sync::atomic::AtomicU64,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "worker".into())
}

/// Removes what an earlier run left behind; creates the work directory.
/// Mode 0711: casd (another user under systemd) must pass through it to
/// build inputs, nobody may list it, and sandboxes hide it entirely.
fn prepare_work_dir(dir: &PathBuf) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("chmod {}", dir.display()))?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let _ = std::fs::remove_dir_all(e.path());
    }
    Ok(())
}

pub async fn run(
    settings: WorkerdSettings,
    _fds: Vec<(String, std::os::fd::OwnedFd)>,
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
    let work_dir = settings.worker.work_dir.clone();
    prepare_work_dir(&work_dir)?;
    let privileged = rustix_is_root();
    if !privileged {
        tracing::info!("not running as root: actions run in a user namespace as this user, with inputs copied, not linked");
    }
    let casd = rbe_net::unix_channel(&settings.casd_socket)
        .await
        .context("channel to casd")?;
    let worker = Arc::new(Worker {
        settings,
        name,
        slots,
        casd,
        privileged,
        work_dir,
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
    tracing::info!("rbe-workerd stopped");
    Ok(())
}

fn rustix_is_root() -> bool {
    rustix::process::geteuid().is_root()
}

async fn attach(worker: &Arc<Worker>, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let ch = rbe_net::unix_channel(&worker.settings.frontend_socket).await?;
    let mut client = WorkerHubClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel::<WorkerMessage>(256);
    let platform = worker
        .settings
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
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = incoming.next() => m,
        };
        let Some(msg) = msg else { return Ok(()) };
        match msg?.kind {
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
                    // Ids repeat after a reconnect: remove only our own entry.
                    {
                        let mut running = w.running.lock();
                        if running.get(&id).is_some_and(|(s, _)| *s == seq) {
                            running.remove(&id);
                        }
                    }
                    let _ = tx
                        .send(WorkerMessage {
                            kind: Some(worker_message::Kind::Finished(finished)),
                        })
                        .await;
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
