//! Builds casd's state and services and runs them until shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rbe_cas::ac::ActionCache;
use rbe_cas::pins::Leases;
use rbe_cas::uploads::Uploads;
use rbe_cas::{Store, StoreConfig};
use rbe_config::CasdSettings;
use rbe_proto::bytestream::byte_stream_server::ByteStreamServer;
use rbe_proto::casd::casd_server::CasdServer;
use rbe_proto::reapi::action_cache_server::ActionCacheServer;
use rbe_proto::reapi::capabilities_server::CapabilitiesServer;
use rbe_proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use tokio_util::sync::CancellationToken;

use crate::service::{ac, bytestream, cas, local, Casd};

/// gRPC message limit: a full batch plus framing.
fn message_limit(s: &CasdSettings) -> usize {
    (s.limits.max_batch_total_size_bytes as usize)
        .saturating_mul(2)
        .max(8 << 20)
}

pub async fn run(
    settings: CasdSettings,
    mut fds: Vec<(String, std::os::fd::OwnedFd)>,
    config_dirs: Vec<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let listener = rbe_net::from_activation_or_bind(
        &mut fds,
        "casd",
        rbe_net::Bind::Unix {
            path: settings.listen.socket.clone(),
            mode: settings.listen.socket_mode,
        },
    )
    .context("opening the casd socket")?;
    if !rbe_systemd::under_systemd() {
        tracing::info!("not started by systemd: bound own socket, no notify");
    }

    let st = &settings.storage;
    let store = Store::open(StoreConfig {
        root: st.path.clone(),
        max_size: st.max_size,
        high_watermark: st.high_watermark,
        low_watermark: st.low_watermark,
        verify_reads: st.verify_reads,
    })
    .with_context(|| format!("opening the store at {}", st.path.display()))?;
    let through = match settings.backing.mode {
        rbe_config::BackingMode::None => None,
        mode @ (rbe_config::BackingMode::Cache | rbe_config::BackingMode::Jit) => {
            let jit = mode == rbe_config::BackingMode::Jit;
            let b = rbe_backing::connect(&settings.backing)
                .await
                .context("setting up the backing store")?;
            tracing::info!(backing = %settings.backing.url, instance_name = %settings.backing.instance_name, jit, existence_cache_secs = if jit { 0 } else { settings.backing.existence_cache_secs }, "write-through in front of a backing store");
            Some(Arc::new(crate::service::through::Through::new(
                b,
                &settings.backing,
            )))
        }
    };
    let casd = Arc::new(Casd {
        ac: ActionCache::open(Arc::clone(&store)).context("opening the action cache")?,
        uploads: Uploads::new(Duration::from_secs(st.upload_expiry_secs), 1024),
        dirs: rbe_cas::materialize::DirCache::new(100_000),
        leases: Leases::new(Arc::clone(&store), Duration::from_secs(st.max_pin_ttl_secs)),
        store: Arc::clone(&store),
        settings: arc_swap::ArcSwap::new(Arc::clone(&settings)),
        through,
        blobs_read: Default::default(),
    });

    // Serve at once; the index fills in the background and lookups fall back
    // to the disk until it is complete.
    let shutdown = CancellationToken::new();
    // An index that cannot be built would leave eviction blind, so a failed
    // scan stops the daemon (systemd restarts it) instead of limping on.
    let load_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (loader, failed, stop) = (
            Arc::clone(&store),
            Arc::clone(&load_failed),
            shutdown.clone(),
        );
        tokio::task::spawn_blocking(move || {
            if let Err(e) = loader.load_index() {
                tracing::error!(error = %e, "CAS index scan failed; stopping");
                failed.store(true, std::sync::atomic::Ordering::Release);
                stop.cancel();
            }
        });
    }
    match &casd.through {
        Some(t) => {
            let identity = crate::service::adopt::identity(&settings.backing);
            if crate::service::adopt::recorded(store.root(), &identity) {
                t.set_adopted();
            }
            tokio::spawn(crate::service::adopt::run(
                Arc::clone(&casd),
                Arc::clone(t),
                identity,
                shutdown.clone(),
            ));
        }
        None => crate::service::adopt::forget(store.root()),
    }
    tokio::spawn(housekeeping(Arc::clone(&casd), shutdown.clone()));
    tokio::spawn(reload_on_sighup(Arc::clone(&casd), config_dirs));

    let limit = message_limit(&settings);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let router = rbe_net::tune_server(tonic::transport::Server::builder())
        .add_service(health)
        .add_service(CapabilitiesServer::new(cas::CapabilitiesService(
            Arc::clone(&casd),
        )))
        .add_service(
            ContentAddressableStorageServer::new(cas::CasService(Arc::clone(&casd)))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            ActionCacheServer::new(ac::ActionCacheService(Arc::clone(&casd)))
                .max_decoding_message_size(limit),
        )
        .add_service(
            ByteStreamServer::new(bytestream::ByteStreamService(Arc::clone(&casd)))
                .max_decoding_message_size(limit),
        )
        .add_service(
            CasdServer::new(local::LocalService(Arc::clone(&casd)))
                .max_decoding_message_size(limit),
        );

    rbe_systemd::notify_status(&status_line(&casd));
    rbe_systemd::notify_ready();
    tracing::info!(socket = %listener.local_addr_string(), store = %st.path.display(), "rbe-casd serving");
    let stop = shutdown.clone();
    tokio::spawn(async move {
        rbe_systemd::wait_for_shutdown_signal().await;
        rbe_systemd::notify_stopping();
        tracing::info!("stopping: finishing requests in flight");
        stop.cancel();
    });
    rbe_net::serve(router, listener, None, shutdown.clone().cancelled_owned())
        .await
        .context("serving")?;
    if load_failed.load(std::sync::atomic::Ordering::Acquire) {
        anyhow::bail!("the CAS index scan failed (see the log above)");
    }
    tracing::info!("rbe-casd stopped");
    Ok(())
}

/// Periodic work: STATUS= line, watchdog pings, expiring uploads and leases.
async fn housekeeping(casd: Arc<Casd>, shutdown: CancellationToken) {
    let mut last_sweep = std::time::Instant::now();
    rbe_systemd::heartbeat(shutdown.cancelled_owned(), || {
        rbe_systemd::notify_status(&status_line(&casd));
        if last_sweep.elapsed() > Duration::from_secs(30) {
            last_sweep = std::time::Instant::now();
            let uploads = casd.uploads.sweep();
            let expired = casd.leases.sweep_released();
            let leases = expired.len();
            if casd.jit() {
                // An expired lease frees its scratch as Unpin would.
                for ds in &expired {
                    casd.store.reclaim(ds);
                }
            }
            if uploads + leases > 0 {
                tracing::info!(uploads, leases, "expired abandoned uploads and leases");
            }
        }
    })
    .await;
}

/// `systemctl reload` (SIGHUP): applies capacity, watermarks, read
/// verification, upload expiry, the pin ceiling, instances, the inline
/// limit, materialize roots and the log level. Lowering the capacity evicts
/// at once.
fn reload_on_sighup(
    casd: Arc<Casd>,
    dirs: Vec<std::path::PathBuf>,
) -> impl std::future::Future<Output = ()> {
    rbe_systemd::reload_on_sighup(
        move || rbe_config::load_casd(&dirs),
        move |mut new| {
            let old = casd.settings.load_full();
            let mut r = rbe_systemd::Reloaded::new(&new.log.level);
            r.keep("listen", &old.listen, &mut new.listen)
                .keep("storage.path", &old.storage.path, &mut new.storage.path)
                .keep("backing", &old.backing, &mut new.backing)
                .keep(
                    "limits.max_batch_total_size_bytes",
                    &old.limits.max_batch_total_size_bytes,
                    &mut new.limits.max_batch_total_size_bytes,
                );
            let st = &new.storage;
            casd.uploads
                .set_expiry(Duration::from_secs(st.upload_expiry_secs));
            casd.leases
                .set_max_ttl(Duration::from_secs(st.max_pin_ttl_secs));
            let policy = rbe_cas::Policy {
                max_size: st.max_size,
                high_watermark: st.high_watermark,
                low_watermark: st.low_watermark,
                verify_reads: st.verify_reads,
            };
            tracing::info!(
                max_size = policy.max_size,
                verify_reads = policy.verify_reads,
                "new storage policy"
            );
            casd.store.set_policy(policy);
            // A smaller capacity evicts now; that removes files, so off the
            // runtime.
            let store = Arc::clone(&casd.store);
            tokio::task::spawn_blocking(move || store.maybe_evict());
            casd.settings.store(Arc::new(new));
            r
        },
    )
}

/// The STATUS= line: what `systemctl status rbe-casd` shows.
fn status_line(casd: &Casd) -> String {
    let s = casd.store.stats();
    let mut line = format!(
        "{}{} blobs, {} MiB of {} MiB, {} evicted",
        if s.loading { "loading index; " } else { "" },
        s.blobs,
        s.bytes >> 20,
        casd.store.policy().max_size >> 20,
        s.evicted
    );
    if let Some(t) = &casd.through {
        line.push_str(&format!(
            "; backing {}: {} fetched, {} errors",
            t.address(),
            t.fetches(),
            t.errors()
        ));
    }
    line
}
