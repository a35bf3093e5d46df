//! Running a tonic router on a [`Listener`].

use crate::{Listener, CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES};
use std::future::Future;
use std::io;
use std::time::Duration;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_stream::StreamExt;
use tonic::transport::server::Router;
use tonic::transport::Server;

/// Applies the crate's HTTP/2 window sizes and `TCP_NODELAY` to a server.
pub fn tune_server(builder: Server) -> Server {
    builder
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .tcp_nodelay(true)
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting and waits for in-flight requests to finish.
pub async fn serve(
    router: Router,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    match listener {
        Listener::Tcp(l) => {
            let incoming = TcpListenerStream::new(l).then(|r| async move {
                match r {
                    Ok(s) => {
                        // gRPC writes small frames (headers, trailers,
                        // window updates) whose delay Nagle would add
                        // straight onto every RPC's latency.
                        if let Err(e) = s.set_nodelay(true) {
                            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                        }
                        Ok(s)
                    }
                    Err(e) => Err(accept_failed(e).await),
                }
            });
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        Listener::Unix(l) => {
            let incoming = UnixListenerStream::new(l).then(|r| async move {
                match r {
                    Ok(s) => Ok(s),
                    Err(e) => Err(accept_failed(e).await),
                }
            });
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
}

/// Logs an accept error and pauses briefly.
///
/// tonic skips failed accepts and immediately tries again; when the cause
/// persists (EMFILE: out of descriptors) that would spin a core and flood
/// the log, so back off until connections have had a chance to close.
async fn accept_failed(e: io::Error) -> io::Error {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
    e
}
