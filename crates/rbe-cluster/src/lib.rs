//! rbe hosts as one cluster, with no central scheduler.
//!
//! Hosts learn of each other through SWIM membership (`foca`, sans-IO: this
//! crate owns the socket, codec, clock and RNG), gossip their load
//! ([`rbe_proto::cluster::LoadReport`]) inside AEAD-sealed datagrams, and a
//! busy host pushes queued work to a less loaded peer. The pure parts
//! (identity, wire format, policy, names) take clock and randomness as
//! arguments, so the simulator runs exactly the code the frontend runs.

pub mod codec;
pub mod driver;
pub mod generation;
pub mod heal;
pub mod identity;
pub mod policy;
pub mod report;
pub mod wire;

/// Not gossip: how operation names carry the host that holds them.
pub mod names;

pub use identity::{Member, NodeName, NodeNameError};
