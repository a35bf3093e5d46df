//! Accepting TCP connections for tonic.
//!
//! Each accepted connection gets its own task, which looks at the first
//! bytes and, on a TLS listener, runs the handshake, all under a timeout;
//! only finished connections reach tonic. So a client that connects and
//! sends nothing, or half a ClientHello, costs one task and one permit of
//! [`MAX_HANDSHAKES`] until the timeout, and never holds up the others.
//!
//! The first bytes also catch the two mix-ups an operator will make:
//! plaintext HTTP/2 (`grpc://`) sent to a TLS port gets an HTTP/2 GOAWAY
//! whose debug data says to use `grpcs://`, and a TLS ClientHello sent to
//! a plaintext port gets a TLS alert, so both clients fail at once with a
//! reason instead of hanging.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

use crate::peer::Conn;
use crate::tls::{certificate_name, ClientAuth, ServerTls, TlsConfig};

/// Most connections in the process between accept and a finished handshake
/// (or first bytes, on a plaintext port). A connection beyond is closed at
/// once: waiting would let a flood of silent connections fill the kernel's
/// backlog and delay every honest client just as much, and closing tells
/// the client something is wrong.
pub const MAX_HANDSHAKES: usize = 1024;

static HANDSHAKES: Semaphore = Semaphore::const_new(MAX_HANDSHAKES);

/// How long a client on a plaintext TCP port has to send its first bytes.
/// gRPC clients send the HTTP/2 preface right after connecting.
pub const PLAINTEXT_FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of a TLS handshake record (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a client that speaks plaintext HTTP/2 to a TLS port is told.
const GOAWAY_DEBUG: &[u8] =
    b"this port requires TLS: connect with grpcs:// (TLS), not grpc:// (plaintext)";

/// Connections accepted on `listener`, each one sniffed (and, with `tls`,
/// handshaken) in its own task. Accepting stops when tonic drops the
/// stream (at shutdown), which closes the listener.
pub(crate) fn tcp_incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                crate::serve::accept_failed(e).await;
                continue;
            }
        };
        // gRPC writes small frames (headers, trailers, window updates)
        // whose delay Nagle would add straight onto every RPC's latency.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let Ok(permit) = HANDSHAKES.try_acquire() else {
            tracing::warn!(
                peer = %peer,
                limit = MAX_HANDSHAKES,
                "too many connections in their handshake; connection closed"
            );
            continue;
        };
        // The configuration at accept time: a reload meanwhile applies
        // to the next connection.
        let config = tls.as_ref().map(|t| t.current());
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Some(conn) = establish(stream, peer, config).await {
                drop(permit);
                // Fails only when the server is shutting down.
                let _ = tx.send(Ok(conn)).await;
            }
        });
    }
}

/// Sniffs the first byte and hands back a connection ready for HTTP/2, or
/// `None` (logged) when the connection was refused or timed out. The
/// first bytes and the handshake share one deadline; a refusal (which
/// waits a little for the client, see [`refuse_plaintext`]) has its own
/// bound, [`REFUSAL_TIME`], so a short handshake timeout cannot cut the
/// explanation off.
async fn establish(
    mut stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<TlsConfig>>,
) -> Option<Conn> {
    let timeout = tls
        .as_ref()
        .map_or(PLAINTEXT_FIRST_BYTES_TIMEOUT, |c| c.handshake_timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = || {
        tracing::warn!(
            peer = %peer,
            timeout_secs = timeout.as_secs_f64(),
            "handshake not finished in time; connection closed"
        );
        None
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Err(_) => return timed_out(),
        Ok(Ok(0)) => {
            tracing::debug!(peer = %peer, "connection closed before sending anything");
            return None;
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "connection failed before its first bytes");
            return None;
        }
    }
    match tls {
        None if first[0] == TLS_HANDSHAKE => {
            tracing::warn!(
                peer = %peer,
                "TLS client on a plaintext port; sent a TLS alert and closed \
                 (the client should use grpc://, or the server needs [tls])"
            );
            let _ = tokio::time::timeout(REFUSAL_TIME, refuse_tls(stream)).await;
            None
        }
        None => Some(Conn::tcp(stream, peer)),
        Some(_) if first[0] != TLS_HANDSHAKE => {
            let _ = tokio::time::timeout(REFUSAL_TIME, refuse_plaintext(&mut stream, peer)).await;
            None
        }
        Some(config) => {
            match tokio::time::timeout_at(deadline, handshake(stream, peer, &config)).await {
                Ok(conn) => conn,
                Err(_) => timed_out(),
            }
        }
    }
}

/// The most a refused connection is kept to tell its client why.
const REFUSAL_TIME: Duration = Duration::from_secs(6);

async fn handshake(stream: TcpStream, peer: SocketAddr, config: &TlsConfig) -> Option<Conn> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&config.server));
    match acceptor.accept(stream).await {
        Ok(s) => {
            let name = match config.client_auth() {
                ClientAuth::Off => None,
                _ => s
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| certificate_name(c)),
            };
            tracing::debug!(peer = %peer, certificate = name.as_deref(), "TLS connection");
            Some(Conn::tls(s, peer, name))
        }
        Err(e) => {
            // rustls's reason: an expired or unknown-issuer certificate,
            // no certificate, no shared protocol version, a corrupt message.
            tracing::warn!(peer = %peer, error = %e, "TLS handshake failed; connection closed");
            None
        }
    }
}

/// A TLS port got something else: plaintext HTTP/2 is told to use TLS
/// with a GOAWAY, plaintext HTTP/1 with a 400 response; anything else is
/// just closed.
async fn refuse_plaintext(stream: &mut TcpStream, peer: SocketAddr) {
    let mut head = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while n < head.len() {
            match stream.read(&mut head[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
            if !H2_PREFACE.starts_with(&head[..n]) {
                break;
            }
        }
    })
    .await;
    let head = &head[..n];
    if H2_PREFACE.starts_with(head) {
        tracing::warn!(
            peer = %peer,
            error = "plaintext HTTP/2 on a TLS port",
            "TLS handshake failed; sent GOAWAY saying to use grpcs:// and closed"
        );
        refuse_h2(stream).await;
    } else if looks_like_http1(head) {
        tracing::warn!(
            peer = %peer,
            error = "plaintext HTTP/1 on a TLS port",
            "TLS handshake failed; sent 400 and closed"
        );
        drain_ready(stream);
        let body = "This port requires TLS (https://, grpcs://)\n";
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
    } else {
        let first = head.first().copied().unwrap_or(0);
        tracing::warn!(
            peer = %peer,
            error = format!("not a TLS ClientHello (first byte {first:#04x})"),
            "TLS handshake failed; connection closed"
        );
    }
    close_gently(stream).await;
}

/// Sends the server preface (SETTINGS), waits briefly for the client's
/// first request, then sends GOAWAY: clients show its debug data as the
/// error of a request they have sent, but fail requests still queued with
/// a bare "connection closed".
async fn refuse_h2(stream: &mut TcpStream) {
    if stream.write_all(&SETTINGS_EMPTY).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), first_headers(stream)).await;
    let _ = stream.write_all(&goaway_frame(GOAWAY_DEBUG)).await;
}

/// Reads HTTP/2 frames until a HEADERS frame (a request) begins, or 64 KiB.
async fn first_headers(stream: &mut TcpStream) -> io::Result<()> {
    let mut total = 0usize;
    let mut buf = [0u8; 1024];
    loop {
        let mut h = [0u8; 9];
        stream.read_exact(&mut h).await?;
        if h[3] == 0x1 {
            return Ok(());
        }
        let mut left = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        total += 9 + left;
        if total > 64 << 10 {
            return Ok(());
        }
        while left > 0 {
            let n = buf.len().min(left);
            let k = stream.read(&mut buf[..n]).await?;
            if k == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            left -= k;
        }
    }
}

/// A ClientHello on a plaintext port: answers with a fatal
/// `handshake_failure` alert, which every TLS client reports at once.
async fn refuse_tls(mut stream: TcpStream) {
    // Read the ClientHello record first: closing a socket with unread data
    // sends a reset, which can destroy the alert before the client reads it.
    let mut header = [0u8; 5];
    if stream.read_exact(&mut header).await.is_ok() {
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        let mut body = vec![0u8; len.min(1 << 15)];
        let _ = stream.read_exact(&mut body).await;
    }
    // Alert record, TLS 1.2 record version: level fatal (2),
    // handshake_failure (40).
    let _ = stream
        .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])
        .await;
    close_gently(&mut stream).await;
}

/// Reads whatever the client has already sent, without waiting.
fn drain_ready(stream: &TcpStream) {
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        match stream.try_read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Sends FIN and waits briefly for the client to close, reading what it
/// still sends, so the last thing we wrote is not lost to a reset.
async fn close_gently(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut total = 0usize;
        while total < 1 << 20 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(k) => total += k,
            }
        }
    })
    .await;
}

fn looks_like_http1(head: &[u8]) -> bool {
    let word = head.split(|&b| b == b' ').next().unwrap_or_default();
    head.len() > word.len() && !word.is_empty() && word.iter().all(u8::is_ascii_uppercase)
}

/// An empty SETTINGS frame: the server preface HTTP/2 clients wait for.
const SETTINGS_EMPTY: [u8; 9] = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];

/// A GOAWAY frame with error INADEQUATE_SECURITY and `debug` as debug data.
fn goaway_frame(debug: &[u8]) -> Vec<u8> {
    let len = (8 + debug.len()) as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    // Last stream id 0: no request was processed, so a client may not
    // take any as done.
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(&0xc_u32.to_be_bytes());
    f.extend_from_slice(debug);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goaway() {
        let f = goaway_frame(b"hi");
        assert_eq!(&f[..3], &[0, 0, 10]);
        assert_eq!(f[3], 7);
        assert_eq!(&f[13..17], &[0, 0, 0, 0xc]);
        assert_eq!(&f[17..], b"hi");
    }

    #[test]
    fn http1() {
        assert!(looks_like_http1(b"GET / HTTP/1.1"));
        assert!(looks_like_http1(b"POST /x"));
        assert!(!looks_like_http1(b"GET"));
        assert!(!looks_like_http1(b"\x16\x03\x01"));
        assert!(!looks_like_http1(b" x"));
    }
}
