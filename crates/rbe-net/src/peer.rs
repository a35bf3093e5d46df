//! Who is at the other end of a connection, as every request's handler
//! sees it: tonic puts a [`PeerInfo`] into each request's extensions.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rbe_auth::PeerAddr;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tonic::transport::server::Connected;

/// Where a request's connection comes from. Read it in a handler with
/// `request.extensions().get::<rbe_net::PeerInfo>()`; every connection
/// served by [`crate::serve`] has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The TCP peer address, or the local peer's uid (`SO_PEERCRED`).
    pub addr: PeerAddr,
    /// The name from the client certificate the TLS handshake verified
    /// (subject CN, else the first DNS/e-mail/URI SAN); `None` without one.
    pub certificate: Option<Arc<str>>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl PeerInfo {
    /// What the request brings to prove who it is, with its
    /// `authorization` metadata value.
    pub fn credentials<'a>(&'a self, authorization: Option<&'a [u8]>) -> rbe_auth::Credentials<'a> {
        rbe_auth::Credentials {
            peer: self.addr,
            certificate: self.certificate.as_deref(),
            authorization,
        }
    }
}

/// An accepted connection of any kind, with its [`PeerInfo`].
pub(crate) struct Conn {
    io: Io,
    info: PeerInfo,
}

enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

impl Conn {
    pub(crate) fn tcp(s: TcpStream, addr: std::net::SocketAddr) -> Conn {
        Conn {
            io: Io::Tcp(s),
            info: PeerInfo {
                addr: PeerAddr::Tcp(addr),
                certificate: None,
                tls: false,
            },
        }
    }

    pub(crate) fn tls(
        s: tokio_rustls::server::TlsStream<TcpStream>,
        addr: std::net::SocketAddr,
        certificate: Option<Arc<str>>,
    ) -> Conn {
        Conn {
            io: Io::Tls(Box::new(s)),
            info: PeerInfo {
                addr: PeerAddr::Tcp(addr),
                certificate,
                tls: true,
            },
        }
    }

    pub(crate) fn unix(s: UnixStream, uid: u32) -> Conn {
        Conn {
            io: Io::Unix(s),
            info: PeerInfo {
                addr: PeerAddr::Local { uid },
                certificate: None,
                tls: false,
            },
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

// Every variant is Unpin, so pinning projects with Pin::new.
macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().io {
            Io::Tcp($s) => $e,
            Io::Tls($s) => $e,
            Io::Unix($s) => $e,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            Io::Unix(s) => s.is_write_vectored(),
        }
    }
}
