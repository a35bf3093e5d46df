//! Obtaining listening sockets, from systemd or by binding.

use crate::NetError;
use rustix::net::{sockopt, AddressFamily, SocketType};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A listening socket ready for [`crate::serve`].
#[derive(Debug)]
pub enum Listener {
    /// TCP (IPv4 or IPv6).
    Tcp(tokio::net::TcpListener),
    /// Unix stream socket.
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// The address for log messages: `127.0.0.1:8980` or a socket path.
    pub fn local_addr_string(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => a.to_string(),
                Err(e) => format!("(tcp: {e})"),
            },
            Listener::Unix(l) => match l.local_addr() {
                Ok(a) => match a.as_pathname() {
                    Some(p) => p.display().to_string(),
                    None => "(unnamed unix socket)".to_owned(),
                },
                Err(e) => format!("(unix: {e})"),
            },
        }
    }
}

/// Where to listen when systemd did not pass a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    /// A `host:port` TCP address.
    Tcp(String),
    /// A Unix socket path and the permission bits for the socket file.
    Unix {
        /// Socket path; its parent directory is created if missing.
        path: PathBuf,
        /// Mode applied to the socket file, e.g. `0o660`.
        mode: u32,
    },
}

/// Takes the activated socket named `name` out of `activated`, or binds
/// `fallback` if there is none.
///
/// An activated socket must be a listening stream socket of the same family
/// as `fallback` (TCP or Unix). If several share the name, the first is
/// taken; see [`take_all_activated`] for the rest. When binding a Unix
/// socket, a leftover socket file from a dead process is replaced, but one
/// that still accepts connections is an error ([`NetError::InUse`]). Must
/// be called inside a tokio runtime.
pub fn from_activation_or_bind(
    activated: &mut Vec<(String, OwnedFd)>,
    name: &str,
    fallback: Bind,
) -> Result<Listener, NetError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(NetError::NoRuntime);
    }
    let want = match fallback {
        Bind::Tcp(_) => Family::Inet,
        Bind::Unix { .. } => Family::Unix,
    };
    if let Some(i) = activated.iter().position(|(n, _)| n == name) {
        let (_, fd) = activated.remove(i);
        return adopt(fd, name, Some(want));
    }
    match fallback {
        Bind::Tcp(addr) => bind_tcp(&addr),
        Bind::Unix { path, mode } => bind_unix(&path, mode),
    }
}

/// Takes every activated socket named `name` (e.g. one `.socket` unit
/// with several `ListenStream=` lines), whatever its family.
pub fn take_all_activated(
    activated: &mut Vec<(String, OwnedFd)>,
    name: &str,
) -> Result<Vec<Listener>, NetError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(NetError::NoRuntime);
    }
    let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(activated)
        .into_iter()
        .partition(|(n, _)| n == name);
    *activated = rest;
    mine.into_iter()
        .map(|(_, fd)| adopt(fd, name, None))
        .collect()
}

/// Takes the activated datagram socket named `name` out of `activated`
/// (cluster gossip: `FileDescriptorName=gossip` of
/// rbe-frontend-gossip.socket), or binds `fallback` if there is none.
///
/// The socket is an IPv4 or IPv6 UDP socket in non-blocking mode, ready for
/// `tokio::net::UdpSocket::from_std`; an activated socket of another kind
/// is an error naming `name`. Needs no runtime.
pub fn udp_from_activation_or_bind(
    activated: &mut Vec<(String, OwnedFd)>,
    name: &str,
    fallback: std::net::SocketAddr,
) -> Result<std::net::UdpSocket, NetError> {
    let socket = if let Some(i) = activated.iter().position(|(n, _)| n == name) {
        let (_, fd) = activated.remove(i);
        let bad = |reason: String| NetError::Activation {
            name: name.to_owned(),
            reason,
        };
        let domain = sockopt::socket_domain(&fd).map_err(|e| bad(format!("not a socket: {e}")))?;
        if domain != AddressFamily::INET && domain != AddressFamily::INET6 {
            return Err(bad(format!(
                "expected an IP socket, got address family {domain:?}"
            )));
        }
        let ty = sockopt::socket_type(&fd).map_err(|e| bad(e.to_string()))?;
        if ty != SocketType::DGRAM {
            return Err(bad("not a datagram socket (use ListenDatagram=)".to_owned()));
        }
        let s = std::net::UdpSocket::from(fd);
        s.set_nonblocking(true).map_err(|e| bad(e.to_string()))?;
        s
    } else {
        let err = |source| NetError::Bind {
            addr: fallback.to_string(),
            source,
        };
        let s = std::net::UdpSocket::bind(fallback).map_err(err)?;
        s.set_nonblocking(true).map_err(err)?;
        s
    };
    Ok(socket)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Inet,
    Unix,
}

/// Checks that `fd` is a listening stream socket (of family `want`, if
/// given) and wraps it.
fn adopt(fd: OwnedFd, name: &str, want: Option<Family>) -> Result<Listener, NetError> {
    let bad = |reason: String| NetError::Activation {
        name: name.to_owned(),
        reason,
    };
    let domain = sockopt::socket_domain(&fd).map_err(|e| bad(format!("not a socket: {e}")))?;
    let family = match domain {
        AddressFamily::INET | AddressFamily::INET6 => Family::Inet,
        AddressFamily::UNIX => Family::Unix,
        other => return Err(bad(format!("unsupported address family {other:?}"))),
    };
    if let Some(want) = want {
        if want != family {
            return Err(bad(format!("expected a {want:?} socket, got {family:?}")));
        }
    }
    let ty = sockopt::socket_type(&fd).map_err(|e| bad(e.to_string()))?;
    if ty != SocketType::STREAM {
        return Err(bad("not a stream socket (use ListenStream=)".to_owned()));
    }
    // Accept=yes units pass connected sockets, which would make accept()
    // fail forever.
    if !sockopt::socket_acceptconn(&fd).map_err(|e| bad(e.to_string()))? {
        return Err(bad("not a listening socket (use Accept=no)".to_owned()));
    }
    let wrap = |e: io::Error| bad(e.to_string());
    Ok(match family {
        Family::Inet => {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true).map_err(wrap)?;
            Listener::Tcp(tokio::net::TcpListener::from_std(l).map_err(wrap)?)
        }
        Family::Unix => {
            let l = std::os::unix::net::UnixListener::from(fd);
            l.set_nonblocking(true).map_err(wrap)?;
            Listener::Unix(tokio::net::UnixListener::from_std(l).map_err(wrap)?)
        }
    })
}

fn bind_tcp(addr: &str) -> Result<Listener, NetError> {
    let err = |source| NetError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let l = std::net::TcpListener::bind(addr).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(Listener::Tcp(
        tokio::net::TcpListener::from_std(l).map_err(err)?,
    ))
}

fn bind_unix(path: &Path, mode: u32) -> Result<Listener, NetError> {
    let io_err = |source| NetError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| NetError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    remove_stale_socket(path)?;
    let l = std::os::unix::net::UnixListener::bind(path).map_err(|source| NetError::Bind {
        addr: path.display().to_string(),
        source,
    })?;
    // Between bind and chmod the file has umask-derived permissions; with
    // the usual 022 umask that denies others write access, which connecting
    // requires, so nobody unintended can connect in that window.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err)?;
    l.set_nonblocking(true).map_err(io_err)?;
    Ok(Listener::Unix(
        tokio::net::UnixListener::from_std(l).map_err(io_err)?,
    ))
}

/// Removes a socket file left behind by a process that is gone.
fn remove_stale_socket(path: &Path) -> Result<(), NetError> {
    let io_err = |source| NetError::Io {
        path: path.to_owned(),
        source,
    };
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {}
        Ok(_) => {
            return Err(NetError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(e)),
    }
    // Probing with connect is the only reliable liveness test: a second
    // daemon instance must not steal the socket from a running one.
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(NetError::InUse {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => match fs::remove_file(path) {
            Ok(()) => {
                tracing::debug!(path = %path.display(), "removed stale socket");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod udp_tests {
    use super::*;

    fn loopback() -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn activated_datagram_socket_is_taken_by_name() {
        let passed = std::net::UdpSocket::bind(loopback()).unwrap();
        let addr = passed.local_addr().unwrap();
        let other = std::net::UdpSocket::bind(loopback()).unwrap();
        let mut fds = vec![
            ("peer".to_owned(), OwnedFd::from(other)),
            ("gossip".to_owned(), OwnedFd::from(passed)),
        ];
        let s = udp_from_activation_or_bind(&mut fds, "gossip", loopback()).unwrap();
        assert_eq!(s.local_addr().unwrap(), addr);
        assert_eq!(fds.len(), 1, "only the named socket is taken");
        assert_eq!(fds[0].0, "peer");
        // non-blocking, as tokio needs it
        let mut buf = [0u8; 4];
        let e = s.recv_from(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn binds_without_activation_and_refuses_a_stream_socket() {
        let s = udp_from_activation_or_bind(&mut Vec::new(), "gossip", loopback()).unwrap();
        assert!(s.local_addr().unwrap().port() > 0);
        // the fallback address is in use: the error names it
        let taken = s.local_addr().unwrap();
        let e = udp_from_activation_or_bind(&mut Vec::new(), "gossip", taken).unwrap_err();
        assert!(e.to_string().contains(&taken.to_string()), "{e}");

        let tcp = std::net::TcpListener::bind(loopback()).unwrap();
        let mut fds = vec![("gossip".to_owned(), OwnedFd::from(tcp))];
        let e = udp_from_activation_or_bind(&mut fds, "gossip", loopback()).unwrap_err();
        assert!(e.to_string().contains("ListenDatagram"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let unix = std::os::unix::net::UnixDatagram::bind(dir.path().join("s")).unwrap();
        let mut fds = vec![("gossip".to_owned(), OwnedFd::from(unix))];
        let e = udp_from_activation_or_bind(&mut fds, "gossip", loopback()).unwrap_err();
        assert!(e.to_string().contains("\"gossip\""), "{e}");
    }
}
