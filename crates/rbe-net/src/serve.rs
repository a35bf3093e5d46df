//! Running a tonic router on a [`Listener`].

use crate::peer::Conn;
use crate::tls::ServerTls;
use crate::{Listener, CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES};
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::UnixListenerStream;
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
///
/// On a TCP listener, `tls` makes it TLS only (see [`crate::tls`]);
/// without, it is plaintext, and a TLS client is refused with an alert.
/// Either way each connection's first bytes are awaited in a task of its
/// own, under a timeout. A Unix listener ignores `tls` and admits only
/// the peers [`peer_allowed`] lets in. Every request carries a
/// [`crate::PeerInfo`] in its extensions.
pub async fn serve<L>(
    router: Router<L>,
    listener: Listener,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    L: tower::Layer<tonic::service::Routes>,
    L::Service: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    match listener {
        Listener::Tcp(l) => {
            router
                .serve_with_incoming_shutdown(crate::accept::tcp_incoming(l, tls), shutdown)
                .await
        }
        Listener::Unix(l) => {
            if tls.is_some() {
                tracing::debug!("TLS does not apply to a Unix socket; serving it plaintext");
            }
            let incoming = UnixListenerStream::new(l)
                .then(|r| async move {
                    match r {
                        Ok(s) => Ok(s),
                        Err(e) => Err(accept_failed(e).await),
                    }
                })
                .filter_map(|r| match r {
                    Ok(s) => peer_allowed(&s).map(|uid| Ok(Conn::unix(s, uid))),
                    Err(e) => Some(Err(e)),
                });
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
}

/// Whether the process at the other end of a local socket may use it: root,
/// our own user, or a member of our group (the `rbe` group under systemd),
/// checked with `SO_PEERCRED`. The socket file's mode (0660) already says
/// the same; this holds even when the mode is loosened by hand or the
/// socket is handed on, and names who tried in the log. Returns the
/// peer's uid when it is allowed.
fn peer_allowed(s: &tokio::net::UnixStream) -> Option<u32> {
    // nix, not rustix: a peer in another pid namespace (a client reaching
    // the socket through /proc/PID/root, a container) has pid 0 here, which
    // rustix's non-zero `Pid` cannot hold.
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let cred = match getsockopt(s, PeerCredentials) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "refused a local connection: SO_PEERCRED failed");
            return None;
        }
    };
    let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
    let our_uid = rustix::process::geteuid().as_raw();
    let our_gid = rustix::process::getegid().as_raw();
    if uid == 0 || uid == our_uid || gid == our_gid || (pid > 0 && in_group(pid, our_gid)) {
        return Some(uid);
    }
    tracing::warn!(
        peer_uid = uid,
        peer_gid = gid,
        peer_pid = pid,
        "refused a local connection: the peer is not root, this daemon's user or in its group"
    );
    None
}

/// Whether process `pid` has `gid` among its supplementary groups.
fn in_group(pid: i32, gid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
        })
        .unwrap_or(false)
}

/// Logs an accept error and pauses briefly.
///
/// tonic skips failed accepts and immediately tries again; when the cause
/// persists (EMFILE: out of descriptors) that would spin a core and flood
/// the log, so back off until connections have had a chance to close.
pub(crate) async fn accept_failed(e: io::Error) -> io::Error {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
    e
}
