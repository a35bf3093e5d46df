//! This host as a member of an rbe cluster: the peer listener's services
//! and the glue between membership (`rbe-cluster`), the offload policy and
//! the operations of this frontend.

mod layer;
pub mod peer_cas;

#[allow(unused_imports)] // until the peer listener is wired
pub use layer::{PeerLayer, PeerNode};
