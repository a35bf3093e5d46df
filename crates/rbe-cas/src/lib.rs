//! rbe's content-addressable store and action cache on local disk.
//!
//! - [`store::Store`]: blobs, verified on the way in (and on the way out when
//!   configured), durable before they are indexed, LRU-bounded by size.
//! - [`index::Index`]: the compact in-memory index behind FindMissingBlobs.
//! - [`ac::ActionCache`]: action results, served only when complete; the
//!   same walk lists what a result lacks (`missing_for_result`).
//! - [`uploads::Uploads`]: resumable ByteStream writes.
//! - [`pins::Leases`]: protection from eviction for work in flight.
//! - [`materialize`]: input trees for actions, by hard links; the same
//!   loader lists what an input closure lacks (`missing_tree`).
//!
//! The crate is synchronous; callers on an async runtime run its I/O on
//! blocking threads. Nothing here knows about gRPC.
#![warn(missing_docs)]

pub mod ac;
pub mod error;
pub mod index;
pub mod materialize;
pub mod pins;
pub mod store;
pub mod uploads;

pub use error::CasError;
pub use store::{BlobReader, BlobWriter, Policy, Store, StoreConfig, StoreStats};

/// A duration as whole milliseconds, for settings kept in atomics so a
/// reload can change them.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
