//! Opens the listeners, builds the services and serves until shutdown.

use std::sync::Arc;
use std::time::Duration;

use rbe_proto::longrunning::operations_server::OperationsServer;
use rbe_proto::reapi::execution_server::ExecutionServer;
use rbe_proto::worker::worker_hub_server::WorkerHubServer;

use anyhow::Context;
use rbe_config::FrontendSettings;
use rbe_proto::bytestream::byte_stream_server::ByteStreamServer;
use rbe_proto::reapi::action_cache_server::ActionCacheServer;
use rbe_proto::reapi::capabilities_server::CapabilitiesServer;
use rbe_proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use tokio_util::sync::CancellationToken;

use crate::proxy::{bytestream::ByteStreamProxy, cas, relay::StreamLimits, Upstream};

/// Streams one client connection may have open at once. Each stream a
/// client stops reading keeps at most a few messages here until the client
/// goes away, so this bounds what one connection can hold; Bazel opens
/// another connection long before (100 streams per connection).
const MAX_STREAMS_PER_CONNECTION: u32 = 1000;

/// Loads frontend.toml and the files it names (TLS certificate and key,
/// the tokens file): one that does not load is a configuration error like
/// a bad key (`--check-config` and startup report it, exit status 78).
pub fn load_checked(
    dirs: &[std::path::PathBuf],
) -> Result<FrontendSettings, Box<dyn std::error::Error>> {
    Ok(load_all(dirs)?.settings)
}

/// Everything a (re)load yields.
struct Loaded {
    settings: FrontendSettings,
    tls: Option<rbe_net::tls::TlsConfig>,
    rules: crate::access::Rules,
}

fn load_all(dirs: &[std::path::PathBuf]) -> Result<Loaded, Box<dyn std::error::Error>> {
    let settings = rbe_config::load_frontend(dirs)?;
    let tls = match rbe_net::tls::TlsFiles::from_settings(&settings.tls) {
        Some(files) => Some(rbe_net::tls::TlsConfig::load(&files)?),
        None => None,
    };
    let rules = rules(&settings)?;
    Ok(Loaded {
        settings,
        tls,
        rules,
    })
}

/// The tokens and the policy of `[auth]`.
fn rules(settings: &FrontendSettings) -> Result<crate::access::Rules, rbe_config::ConfigError> {
    let (authenticator, policy) = settings.auth.load()?;
    Ok(crate::access::Rules {
        authenticator,
        policy,
    })
}

pub async fn run(
    settings: FrontendSettings,
    mut fds: Vec<(String, std::os::fd::OwnedFd)>,
    config_dirs: Vec<std::path::PathBuf>,
) -> anyhow::Result<()> {
    // main checked these files already; this loads them for serving.
    let tls = match rbe_net::tls::TlsFiles::from_settings(&settings.tls) {
        Some(files) => Some(Arc::new(
            rbe_net::tls::ServerTls::load(&files).context("loading the TLS files")?,
        )),
        None => None,
    };
    let rules = rules(&settings).context("loading [auth]")?;
    tracing::info!(
        tokens = rules.authenticator.token_count(),
        network_anonymous = rules.authenticator.allows_network_anonymous(),
        local_role = %settings.auth.local_role,
        authenticated_role = %settings.auth.authenticated_role,
        "authentication: callers without credentials from other hosts are {}",
        if rules.authenticator.allows_network_anonymous() { "allowed" } else { "refused" }
    );
    let access = crate::access::Access::new(rules);
    match &tls {
        Some(t) => {
            let c = t.current();
            c.log_expiry();
            tracing::info!(
                certificate = %c.files().certificate.display(),
                client_certificates = c.client_auth().as_str(),
                handshake_timeout_secs = c.files().handshake_timeout.as_secs(),
                "TLS on the public listeners{}",
                if c.client_auth() == rbe_net::tls::ClientAuth::Off { "" } else { " with client certificates (mTLS)" }
            );
        }
        None => {
            tracing::info!("TLS off: the public listeners are plaintext (see [tls] in rbe.toml(5))")
        }
    }
    let mut listeners = Vec::new();
    // The public port(s): every activated socket named "grpc" (a socket
    // unit may carry several ListenStream= lines), or the configured addresses.
    let activated =
        rbe_net::take_all_activated(&mut fds, "grpc").context("activated grpc sockets")?;
    if !activated.is_empty() {
        listeners.extend(activated);
    } else {
        for addr in &settings.listen.grpc {
            let l = rbe_net::from_activation_or_bind(
                &mut fds,
                "grpc",
                rbe_net::Bind::Tcp(addr.clone()),
            )
            .with_context(|| format!("listening on {addr}"))?;
            listeners.push(l);
        }
    }
    let local = rbe_net::from_activation_or_bind(
        &mut fds,
        "local",
        rbe_net::Bind::Unix {
            path: settings.listen.local.clone(),
            mode: 0o660,
        },
    )
    .with_context(|| format!("listening on {}", settings.listen.local.display()))?;
    // The worker hub is served on the local socket only: a worker gets
    // actions and reports results, which no network client may do.

    let max_message = settings.limits.max_message_bytes as usize;
    let limits = &settings.limits;
    let upstream = Upstream::connect(
        &settings.casd.socket,
        max_message,
        StreamLimits::new(
            limits.max_proxied_streams as usize,
            Duration::from_secs(limits.stream_idle_timeout_secs),
            quota_limits(limits),
        ),
    )
    .await
    .with_context(|| {
        format!(
            "preparing the channels to casd at {}",
            settings.casd.socket.display()
        )
    })?;

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let exec = crate::exec::Exec::new(
        upstream.clone(),
        settings.execution.clone(),
        Arc::clone(&access),
    );
    let shutdown = CancellationToken::new();
    let peers_shutdown = CancellationToken::new();
    let mut servers = tokio::task::JoinSet::new();
    let cluster = crate::cluster::start(
        &settings,
        &mut fds,
        &exec,
        &upstream,
        shutdown.clone(),
        peers_shutdown.clone(),
        &mut servers,
    )
    .await?;
    // Before the public listeners serve: every name from now on carries
    // this host as its holder.
    if let Some(c) = &cluster {
        exec.join_cluster(Arc::clone(c));
    }
    tokio::spawn(reload_on_sighup(
        Arc::clone(&exec),
        cluster.clone(),
        tls.clone(),
        Arc::clone(&access),
        settings.clone(),
        config_dirs,
    ));
    let router = rbe_net::tune_server(tonic::transport::Server::builder())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        // Every request on every listener gets its caller, or
        // UNAUTHENTICATED before any service sees it.
        .layer(crate::access::AuthLayer(Arc::clone(&access)))
        .add_service(health)
        .add_service(ExecutionServer::new(
            crate::exec::execution::ExecutionService(Arc::clone(&exec)),
        ))
        .add_service(OperationsServer::new(
            crate::exec::operations::OperationsService(Arc::clone(&exec)),
        ))
        .add_service(CapabilitiesServer::new(cas::CapabilitiesProxy(
            upstream.clone(),
        )))
        .add_service(
            ContentAddressableStorageServer::new(cas::CasProxy(upstream.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            ActionCacheServer::new(cas::AcProxy {
                upstream: upstream.clone(),
                recent: Arc::clone(exec.recent()),
            })
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
        )
        .add_service(
            ByteStreamServer::new(ByteStreamProxy(upstream.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        );

    let local_router = router
        .clone()
        .add_service(
            WorkerHubServer::new(crate::exec::hub::HubService(Arc::clone(&exec)))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(
            rbe_proto::cluster::cluster_admin_server::ClusterAdminServer::new(
                crate::cluster::admin::Admin {
                    cluster: cluster.clone(),
                    exec: Arc::clone(&exec),
                },
            ),
        );

    tracing::info!(listen = %local.local_addr_string(), "rbe-frontend listening (local)");
    servers.spawn(rbe_net::serve(
        local_router,
        local,
        None,
        shutdown.clone().cancelled_owned(),
    ));
    for l in listeners {
        tracing::info!(listen = %l.local_addr_string(), tls = tls.is_some(), "rbe-frontend listening");
        servers.spawn(rbe_net::serve(
            router.clone(),
            l,
            tls.clone(),
            shutdown.clone().cancelled_owned(),
        ));
    }
    rbe_systemd::notify_status("serving; waiting for workers");
    rbe_systemd::notify_ready();
    let stop = shutdown.clone();
    let exec_stop = Arc::clone(&exec);
    let cluster_stop = cluster.clone();
    let peers_stop = peers_shutdown.clone();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        rbe_systemd::wait_for_shutdown_signal().await;
        rbe_systemd::notify_stopping();
        let drain = Duration::from_secs(exec_stop.settings.load().drain_timeout_secs);
        tracing::info!(
            executing = exec_stop.executing(),
            drain_timeout_secs = drain.as_secs(),
            "stopping: no new work; executing actions may finish"
        );
        // No new connections; streams in flight (clients' Execute, the
        // workers' hub streams) go on.
        exec_stop.begin_drain();
        if let Some(c) = &cluster_stop {
            c.begin_drain(&exec_stop);
        }
        stop.cancel();
        let left = rbe_systemd::drain(drain, || exec_stop.executing()).await;
        if left > 0 {
            tracing::warn!(
                executing = left,
                "drain time is up; those clients get UNAVAILABLE and retry"
            );
        }
        // Only now: origins drop their leases on a host that left, so a
        // host leaving as its drain began would have the actions it runs
        // for them killed and run again elsewhere, and they pull the
        // outputs of what it finished through its peer listener.
        if let Some(c) = &cluster_stop {
            c.leave().await;
        }
        peers_stop.cancel();
        exec_stop.shutdown();
        let _ = drained_tx.send(());
    });
    let watchdog = tokio::spawn(heartbeat(
        shutdown.clone(),
        Arc::clone(&exec),
        cluster.clone(),
    ));
    // Once the drain is over, connections get a few more seconds to
    // deliver the last results, then they are closed.
    let drain = async move {
        let _ = drained_rx.await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    tokio::pin!(drain);
    loop {
        tokio::select! {
            r = servers.join_next() => match r {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    shutdown.cancel();
                    return Err(e).context("serving");
                }
                Some(Err(e)) => {
                    shutdown.cancel();
                    return Err(e).context("server task");
                }
            },
            _ = &mut drain => {
                tracing::warn!("connections still open 5 s after the drain; closing them");
                servers.abort_all();
                break;
            }
        }
    }
    watchdog.abort();
    // Results already reported to clients are written to the action cache
    // in the background; give the last ones a moment to land.
    exec.recent().drain(Duration::from_secs(5)).await;
    tracing::info!("rbe-frontend stopped");
    Ok(())
}

/// `systemctl reload` (SIGHUP): applies `[execution]` (to operations queued
/// afterwards), `[tls]` (to connections accepted afterwards) and the log
/// level; listeners, the casd socket, message limits and switching TLS on
/// or off wait for a restart. TLS files that do not load fail the reload
/// and keep the running certificate.
fn reload_on_sighup(
    exec: Arc<crate::exec::Exec>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
    tls: Option<Arc<rbe_net::tls::ServerTls>>,
    access: Arc<crate::access::Access>,
    running: FrontendSettings,
    dirs: Vec<std::path::PathBuf>,
) -> impl std::future::Future<Output = ()> {
    rbe_systemd::reload_on_sighup(
        move || load_all(&dirs),
        move |loaded: Loaded| {
            let (mut new, new_tls) = (loaded.settings, loaded.tls);
            tracing::info!(
                tokens = loaded.rules.authenticator.token_count(),
                "new tokens and permissions for requests from now on"
            );
            access.replace(loaded.rules);
            let mut r = rbe_systemd::Reloaded::new(&new.log.level);
            // The per-client bounds apply at once; the rest of [limits]
            // shaped the listeners and channels.
            exec.upstream
                .limits
                .clients
                .set_limits(quota_limits(&new.limits));
            let mut restart_only = running.limits.clone();
            restart_only.max_streams_per_client = new.limits.max_streams_per_client;
            restart_only.max_upload_bytes_per_client = new.limits.max_upload_bytes_per_client;
            let cluster_kept = running.cluster.reloadable_from(&new.cluster);
            r.keep("listen", &running.listen, &mut new.listen)
                .keep("casd", &running.casd, &mut new.casd)
                .keep("limits", &restart_only, &mut new.limits)
                .keep("cluster", &cluster_kept, &mut new.cluster);
            if let Some(c) = &cluster {
                // Old keys, report timing and [offload]; the rest of
                // [cluster] (node, listeners, seeds) waits for a restart.
                let (c, settings, offload) =
                    (Arc::clone(c), new.cluster.clone(), new.offload.clone());
                tokio::spawn(async move { c.reload(&settings, &offload).await });
            }
            match (&tls, new_tls) {
                (Some(server), Some(config)) => {
                    tracing::info!(
                        certificate = %config.files().certificate.display(),
                        client_certificates = config.client_auth().as_str(),
                        "new TLS configuration for new connections"
                    );
                    config.log_expiry();
                    server.replace(config);
                }
                (None, None) => {}
                // The listeners were made plaintext or TLS at start.
                _ => r.restart_only.push("tls"),
            }
            tracing::info!(
                max_queued = new.execution.max_queued,
                max_timeout_secs = new.execution.max_timeout_secs,
                "new execution settings"
            );
            // `running` stays what the listeners and channels were built
            // with; only `[execution]`, `[tls]` and the log level apply.
            exec.reconfigure(new.execution);
            r
        },
    )
}

/// The per-client bounds of `[limits]`.
fn quota_limits(l: &rbe_config::FrontendLimits) -> crate::quota::QuotaLimits {
    crate::quota::QuotaLimits {
        streams: l.max_streams_per_client,
        upload_bytes: l.max_upload_bytes_per_client,
    }
}

/// Watchdog pings and STATUS= from the main runtime.
async fn heartbeat(
    shutdown: CancellationToken,
    exec: Arc<crate::exec::Exec>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
) {
    rbe_systemd::heartbeat(shutdown.cancelled_owned(), || {
        exec.tick();
        let c = exec.counts();
        let (retained_ops, retained_bytes) = exec.retained();
        let cluster = cluster
            .as_ref()
            .map(|c| format!(", {}", c.status_line()))
            .unwrap_or_default();
        rbe_systemd::notify_status(&format!(
            "{} queued, {} running, {} workers, {} free slots, {} results being cached, \
             {} streams to casd, {} operations retained ({} KiB){cluster}",
            c.queued,
            c.executing,
            c.workers,
            c.free_slots,
            exec.recent().pending(),
            exec.upstream.limits.in_use(),
            retained_ops,
            retained_bytes >> 10,
        ));
    })
    .await;
}
