//! Who a cluster member is: its node name, where it listens, and the
//! generation of the process (so a restarted host is a new member that wins
//! over its old self).

use std::fmt;
use std::net::SocketAddr;

/// A host's name in the cluster: 1–32 of `[a-z0-9-]`, not starting or
/// ending with `-`. It is the DNS SAN of the host's peer certificate and
/// the first part of the operation names the host gives out, so it must be
/// short and need no quoting anywhere.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

/// Why a string is not a node name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeNameError {
    #[error("a node name must not be empty")]
    Empty,
    #[error("a node name has at most 32 characters, not {0}")]
    TooLong(usize),
    #[error("a node name may hold only a-z, 0-9 and '-' (not at either end); {0:?} does not")]
    BadCharacter(String),
}

impl NodeName {
    pub fn new(s: &str) -> Result<Self, NodeNameError> {
        if s.is_empty() {
            return Err(NodeNameError::Empty);
        }
        if s.len() > 32 {
            return Err(NodeNameError::TooLong(s.len()));
        }
        let ok = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if !ok {
            return Err(NodeNameError::BadCharacter(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The stand-in name of a seed whose node name is not known yet (only
    /// its address is). `new` never yields it; the codec carries it only
    /// as the destination of an Announce, where the receiver reads it as
    /// "whoever listens here".
    pub(crate) fn seed_placeholder() -> Self {
        Self(SEED_PLACEHOLDER.to_owned())
    }

    /// Whether this is [`Member::seed`]'s stand-in name.
    pub fn is_seed_placeholder(&self) -> bool {
        self.0 == SEED_PLACEHOLDER
    }
}

/// Not a valid node name, so no real member can ever be mistaken for it.
const SEED_PLACEHOLDER: &str = "*";

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// One member as foca knows it. `generation` is chosen at process start
/// (realtime nanoseconds), so a restarted host outranks its previous
/// incarnation without any coordination.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Member {
    pub node: NodeName,
    pub generation: u64,
    /// Where its gossip datagrams go.
    pub gossip_addr: SocketAddr,
    /// Where its Peer service listens (mTLS).
    pub peer_addr: SocketAddr,
}

impl Member {
    /// A seed known only by its gossip address: what the driver announces
    /// to before it has heard the seed's real identity. foca accepts an
    /// Announce only when its destination names the receiver, so the codec
    /// rewrites this stand-in to the receiver's own name on arrival (see
    /// `codec`). It never becomes a member: the reply carries the real one.
    pub fn seed(gossip_addr: SocketAddr) -> Self {
        Self {
            node: NodeName::seed_placeholder(),
            generation: 0,
            gossip_addr,
            peer_addr: gossip_addr,
        }
    }

    /// Whether this is a [`Member::seed`] stand-in.
    pub fn is_seed(&self) -> bool {
        self.node.is_seed_placeholder()
    }
}

impl foca::Identity for Member {
    type Addr = NodeName;

    /// A member declared down while still alive (a partition) rejoins with
    /// the next generation, which wins the conflict with its old self.
    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> NodeName {
        self.node.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    #[test]
    fn node_names() {
        assert!(NodeName::new("b3").is_ok());
        assert!(NodeName::new("rack-1-host-02").is_ok());
        assert_eq!(NodeName::new(""), Err(NodeNameError::Empty));
        assert_eq!(
            NodeName::new(&"a".repeat(33)),
            Err(NodeNameError::TooLong(33))
        );
        for bad in ["A", "a.b", "-a", "a-", "a b", "a/b", "ä"] {
            assert!(NodeName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_renewed_member_wins_over_its_old_self() {
        let m = Member {
            node: NodeName::new("a").unwrap(),
            generation: 7,
            gossip_addr: "10.0.0.1:7946".parse().unwrap(),
            peer_addr: "10.0.0.1:8981".parse().unwrap(),
        };
        let r = m.renew().unwrap();
        assert_eq!(r.addr(), m.addr());
        assert!(r.win_addr_conflict(&m));
        assert!(!m.win_addr_conflict(&r));
    }
}
