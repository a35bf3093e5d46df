//! gRPC client channels over Unix sockets.

use crate::{NetError, Windows};
use hyper_util::rt::TokioIo;
use std::path::Path;
use tonic::transport::{Channel, Endpoint, Uri};

/// Applies the crate's HTTP/2 window sizes to a client endpoint.
pub fn tune_endpoint(endpoint: Endpoint) -> Endpoint {
    tune_endpoint_with(endpoint, Windows::DEFAULT)
}

fn tune_endpoint_with(endpoint: Endpoint, w: Windows) -> Endpoint {
    endpoint
        .initial_stream_window_size(w.stream)
        .initial_connection_window_size(w.connection)
        .tcp_nodelay(true)
}

/// A channel to the gRPC server on the Unix socket at `path`.
///
/// Connecting is lazy: this succeeds even while the server is down, and
/// every (re)connection attempt opens the socket afresh, so the channel
/// recovers when the server restarts.
pub async fn unix_channel(path: &Path) -> Result<Channel, NetError> {
    unix_channel_with(path, Windows::DEFAULT).await
}

/// [`unix_channel`] with the given flow-control windows. Each channel is
/// its own HTTP/2 connection.
pub async fn unix_channel_with(path: &Path, windows: Windows) -> Result<Channel, NetError> {
    if path.as_os_str().is_empty() {
        return Err(NetError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty socket path"),
        });
    }
    let path = path.to_owned();
    // The URI only fills the :authority header; the connector ignores it.
    let endpoint = tune_endpoint_with(Endpoint::from_static("http://localhost"), windows);
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(&path).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
