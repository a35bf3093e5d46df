//! Opens the listeners, builds the services and serves until shutdown.

use std::time::Duration;

use anyhow::Context;
use rbe_config::FrontendSettings;
use rbe_proto::bytestream::byte_stream_server::ByteStreamServer;
use rbe_proto::reapi::action_cache_server::ActionCacheServer;
use rbe_proto::reapi::capabilities_server::CapabilitiesServer;
use rbe_proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use tokio_util::sync::CancellationToken;

use crate::proxy::{bytestream::ByteStreamProxy, cas, Upstream};

pub async fn run(
    settings: FrontendSettings,
    mut fds: Vec<(String, std::os::fd::OwnedFd)>,
) -> anyhow::Result<()> {
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
    listeners.push(local);

    let max_message = settings.limits.max_message_bytes as usize;
    let upstream = Upstream {
        channel: rbe_net::unix_channel(&settings.casd.socket)
            .await
            .with_context(|| {
                format!(
                    "preparing the channel to casd at {}",
                    settings.casd.socket.display()
                )
            })?,
        max_message,
    };

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let router = rbe_net::tune_server(tonic::transport::Server::builder())
        .add_service(health)
        .add_service(CapabilitiesServer::new(cas::CapabilitiesProxy(
            upstream.clone(),
        )))
        .add_service(
            ContentAddressableStorageServer::new(cas::CasProxy(upstream.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            ActionCacheServer::new(cas::AcProxy(upstream.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            ByteStreamServer::new(ByteStreamProxy(upstream.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        );

    let shutdown = CancellationToken::new();
    let mut servers = tokio::task::JoinSet::new();
    for l in listeners {
        tracing::info!(listen = %l.local_addr_string(), "rbe-frontend listening");
        servers.spawn(rbe_net::serve(
            router.clone(),
            l,
            shutdown.clone().cancelled_owned(),
        ));
    }
    rbe_systemd::notify_ready();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        rbe_systemd::wait_for_shutdown_signal().await;
        rbe_systemd::notify_stopping();
        tracing::info!("stopping: finishing requests in flight");
        stop.cancel();
    });
    let watchdog = tokio::spawn(heartbeat(shutdown.clone()));
    while let Some(r) = servers.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.cancel();
                return Err(e).context("serving");
            }
            Err(e) => {
                shutdown.cancel();
                return Err(e).context("server task");
            }
        }
    }
    watchdog.abort();
    tracing::info!("rbe-frontend stopped");
    Ok(())
}

/// Watchdog pings and STATUS= from the main runtime.
async fn heartbeat(shutdown: CancellationToken) {
    let tick = rbe_systemd::watchdog_interval()
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(5));
    rbe_systemd::notify_status("serving CAS, action cache and ByteStream");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => rbe_systemd::notify_watchdog(),
        }
    }
}
