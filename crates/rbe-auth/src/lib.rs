//! Who is calling rbe, and what they may do.
//!
//! Every request to the public endpoint runs as one [`Identity`]: a
//! bearer token's name, a verified client certificate's name, a local
//! peer's uid, or `anonymous`. What an identity may do is a set of
//! [`Permission`]s per instance name, granted through roles in
//! `frontend.toml` (see rbe.toml(5), `[auth]`).
//!
//! - [`tokens`]: the tokens file (`/etc/rbe/tokens`) and its edits, for
//!   `rbectl token`.
//! - [`Authenticator`]: credentials to an [`Identity`], or an [`AuthError`]
//!   (UNAUTHENTICATED).
//! - [`Policy`]: an identity's [`PermissionSet`] on an instance, or a
//!   [`Denied`] (PERMISSION_DENIED).
//!
//! Both the authenticator and the policy are immutable: the frontend builds
//! new ones on reload (rbe-config's `AuthSettings::load`) and swaps them in.
//! This crate knows nothing of gRPC; the frontend maps the errors.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod authn;
mod permission;
mod policy;
mod time;
pub mod tokens;

pub use authn::{AuthError, Authenticator, Clock, MAX_HEADER_BYTES};
pub use permission::{Permission, PermissionSet};
pub use policy::{
    builtin_role, check_role_name, Denied, Grant, Policy, PolicyError, PolicySpec, RoleUse,
    BUILTIN_ROLES,
};

use std::fmt;
use std::sync::Arc;

/// How a caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// A bearer token from the tokens file.
    Token,
    /// A client certificate verified against the configured CA.
    Certificate,
    /// No credentials, from this host: the local Unix socket (named
    /// `uid:<n>` by `SO_PEERCRED`) or a loopback address (named `local`).
    Local,
    /// No credentials, from another host (named `anonymous`).
    Anonymous,
}

impl Via {
    /// The word used in journal fields (`RBE_CLIENT_VIA`).
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Token => "token",
            Via::Certificate => "certificate",
            Via::Local => "local",
            Via::Anonymous => "anonymous",
        }
    }
}

/// Who is calling. Cheap to clone; compared by name and how it was proven.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    name: Arc<str>,
    via: Via,
}

impl Identity {
    /// An identity proven by `via`.
    pub fn new(name: impl Into<Arc<str>>, via: Via) -> Self {
        Identity {
            name: name.into(),
            via,
        }
    }

    /// A caller without credentials from another host.
    pub fn anonymous() -> Self {
        Identity::new("anonymous", Via::Anonymous)
    }

    /// The name grants refer to and the journal shows (`RBE_CLIENT`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How it was proven.
    pub fn via(&self) -> Via {
        self.via
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Where a connection comes from, as the listener saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerAddr {
    /// A TCP peer (plain or TLS).
    Tcp(std::net::SocketAddr),
    /// A process on the local Unix socket, with its `SO_PEERCRED` uid.
    Local {
        /// The peer's uid.
        uid: u32,
    },
}

impl PeerAddr {
    /// Whether the peer is on this host: the local socket or a loopback
    /// address (IPv4-mapped loopback included).
    pub fn is_local(&self) -> bool {
        match self {
            PeerAddr::Local { .. } => true,
            PeerAddr::Tcp(a) => match a.ip() {
                std::net::IpAddr::V4(ip) => ip.is_loopback(),
                std::net::IpAddr::V6(ip) => {
                    ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
                }
            },
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(a) => write!(f, "{a}"),
            PeerAddr::Local { uid } => write!(f, "local:uid={uid}"),
        }
    }
}

/// What a request brings to prove who it is.
#[derive(Clone, Copy, Debug)]
pub struct Credentials<'a> {
    /// Where the connection comes from.
    pub peer: PeerAddr,
    /// The name taken from the connection's verified client certificate.
    pub certificate: Option<&'a str>,
    /// The raw `authorization` metadata value, if any.
    pub authorization: Option<&'a [u8]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_local_peers_are_local() {
        for a in ["127.0.0.1:1", "[::1]:1", "[::ffff:127.0.0.2]:1"] {
            assert!(PeerAddr::Tcp(a.parse().unwrap()).is_local(), "{a}");
        }
        assert!(PeerAddr::Local { uid: 1000 }.is_local());
        for a in ["10.0.0.1:1", "[::ffff:10.0.0.1]:1", "[fe80::1]:1"] {
            assert!(!PeerAddr::Tcp(a.parse().unwrap()).is_local(), "{a}");
        }
    }
}
