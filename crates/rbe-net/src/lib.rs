//! Listening sockets and local gRPC channels for the rbe daemons.
//!
//! - [`from_activation_or_bind`] turns a socket-activated descriptor (from
//!   [`rbe_systemd::take_listen_fds`]) or, failing that, a freshly bound
//!   address into a [`Listener`]; [`udp_from_activation_or_bind`] does the
//!   same for a datagram socket (cluster gossip).
//! - [`serve`] runs a tonic router on a [`Listener`] until shutdown, over
//!   TLS when given a [`tls::ServerTls`]; handlers find the caller's
//!   [`PeerInfo`] in each request's extensions.
//! - [`unix_channel`] connects to another daemon's Unix socket.
//!
//! Both ends use the same large HTTP/2 flow-control windows
//! ([`tune_server`], [`tune_endpoint`]) so multi-megabyte ByteStream
//! transfers are not throttled by the 64 KiB HTTP/2 default.
//!
//! A connection that carries streams for many unrelated clients (the
//! frontend's proxied streams to casd) uses [`Windows::ISOLATING`] instead:
//! bytes received for a stream nobody reads count against both its stream
//! window and the connection window, so with the usual windows four stalled
//! streams would stop every other stream on the connection. There the
//! connection window is HTTP/2's largest and the stream window small, so
//! up to [`MAX_ISOLATED_STREAMS`] stalled streams cannot exhaust it.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod accept;
mod channel;
mod listener;
mod mtls;
mod peer;
mod serve;
pub mod tls;

pub use accept::{MAX_HANDSHAKES, PLAINTEXT_FIRST_BYTES_TIMEOUT};
pub use channel::{tune_endpoint, unix_channel, unix_channel_with};
pub use listener::{
    from_activation_or_bind, take_all_activated, udp_from_activation_or_bind, Bind, Listener,
};
pub use mtls::{peer_channel, PeerClientTls};
pub use peer::PeerInfo;
pub use serve::{serve, tune_server};

use std::path::PathBuf;

/// Per-stream HTTP/2 flow-control window.
pub const STREAM_WINDOW_BYTES: u32 = 4 << 20;
/// Per-connection HTTP/2 flow-control window.
pub const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// HTTP/2's largest flow-control window, 2^31 - 1 bytes.
pub const MAX_WINDOW_BYTES: u32 = (1 << 31) - 1;
/// How many streams a connection with [`Windows::ISOLATING`] can carry with
/// none of them able to hold back another: their stream windows together
/// fit in the connection window.
pub const MAX_ISOLATED_STREAMS: u32 = MAX_WINDOW_BYTES / Windows::ISOLATING.stream;

/// The HTTP/2 flow-control windows a client channel grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// Per stream.
    pub stream: u32,
    /// For the whole connection.
    pub connection: u32,
}

impl Windows {
    /// [`STREAM_WINDOW_BYTES`] and [`CONNECTION_WINDOW_BYTES`]: for a
    /// connection whose every response is read as it arrives.
    pub const DEFAULT: Windows = Windows {
        stream: STREAM_WINDOW_BYTES,
        connection: CONNECTION_WINDOW_BYTES,
    };
    /// For a connection carrying streams that may stop being read: 2 MiB
    /// per stream (still a few round trips per casd read chunk on a local
    /// socket) and the largest connection window.
    pub const ISOLATING: Windows = Windows {
        stream: 2 << 20,
        connection: MAX_WINDOW_BYTES,
    };
}

/// Errors setting up listeners and channels.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A socket-activated descriptor is not what the daemon expects.
    #[error("socket-activated fd {name:?}: {reason}")]
    Activation {
        /// The descriptor's `FileDescriptorName=`.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Binding the fallback address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address or socket path.
        addr: String,
        /// The failing system call's error.
        #[source]
        source: std::io::Error,
    },
    /// A process is already accepting connections on this Unix socket.
    #[error("{}: already in use by a running process", .path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is at the Unix socket path.
    #[error("{}: exists and is not a socket; refusing to remove it", .path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Preparing the Unix socket path (directory, stale file, mode) failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The path being worked on.
        path: PathBuf,
        /// The failing system call's error.
        #[source]
        source: std::io::Error,
    },
    /// Called outside a tokio runtime.
    #[error("rbe-net listeners must be created inside a tokio runtime")]
    NoRuntime,
}

#[cfg(test)]
mod tests;
