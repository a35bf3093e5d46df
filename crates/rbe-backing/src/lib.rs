//! The authoritative store `rbe-casd` keeps a local cache in front of
//! (`[backing]` in casd.toml, issue 13).
//!
//! [`Backing`] is what casd asks of such a store: which blobs it lacks
//! (in batches), a blob's bytes (streamed, and checked against the digest
//! by [`BlobChunks`] before the last chunk is handed over), storing a
//! blob, and reading and writing action results. [`GrpcBacking`] speaks
//! REAPI (ContentAddressableStorage, ByteStream, ActionCache) to any
//! server: another rbe, BuildGrid, bazel-remote, Buildbarn.
//! [`ObjectBacking`] uses object storage (S3-compatible, WebDAV) through
//! the `object_store` crate.
//!
//! The write-through rule itself (advertise only what the store
//! acknowledged) lives in casd, which decides when to index a blob; this
//! crate only reports faithfully whether the store acknowledged it.
//!
//! To add a kind of store, implement [`Backing`]
//! in a file of its own and choose it in [`connect`] by `backing.url`'s
//! scheme.
#![warn(missing_docs)]

mod connect;
mod error;
mod grpc;
mod objstore;

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rbe_proto::reapi::ActionResult;
use rbe_proto::{Digest, DigestFunction, Hasher};

pub use error::BackingError;
pub use grpc::GrpcBacking;
pub use objstore::ObjectBacking;

/// Most digests in one FindMissingBlobs question to the store.
pub const FIND_MISSING_BATCH: usize = 4096;

/// What to upload: bytes in memory, or a verified local file (a large
/// blob is streamed from disk, never held whole).
#[derive(Debug, Clone)]
pub enum Body {
    /// The blob's bytes.
    Bytes(Vec<u8>),
    /// A file holding exactly the blob's bytes.
    File(PathBuf),
}

/// An authoritative CAS and action cache.
#[tonic::async_trait]
pub trait Backing: Send + Sync {
    /// The store's address as configured, for errors and logs.
    fn address(&self) -> &str;

    /// The blobs of `ds` (all of function `f`) the store lacks. Asked in
    /// batches of [`FIND_MISSING_BATCH`]; an answer that cannot be read is
    /// an error, never "all present".
    async fn find_missing(
        &self,
        f: DigestFunction,
        ds: &[Digest],
    ) -> Result<Vec<Digest>, BackingError>;

    /// Starts reading blob `d`. [`BackingError::NotFound`] if the store
    /// lacks it.
    async fn read(&self, d: Digest) -> Result<BlobChunks, BackingError>;

    /// Stores blob `d`; `Ok` only once the store acknowledged all of it.
    async fn write(&self, d: Digest, body: Body) -> Result<(), BackingError>;

    /// Stores many blobs (as few requests as the store's limits allow);
    /// one result per blob, in order, each `Ok` only if acknowledged.
    async fn write_batch(&self, blobs: Vec<(Digest, Vec<u8>)>) -> Vec<Result<(), BackingError>> {
        let mut out = Vec::with_capacity(blobs.len());
        for (d, data) in blobs {
            out.push(self.write(d, Body::Bytes(data)).await);
        }
        out
    }

    /// The store's result for `action`; `None` when it has none.
    async fn get_action_result(&self, action: Digest)
        -> Result<Option<ActionResult>, BackingError>;

    /// Stores `result` for `action`; `Ok` once the store acknowledged it.
    async fn update_action_result(
        &self,
        action: Digest,
        result: ActionResult,
    ) -> Result<(), BackingError>;
}

/// Connects to the store `settings` name (lazily: an unreachable store
/// shows on the first request). Errors are files that do not load.
pub async fn connect(
    settings: &rbe_config::Backing,
) -> Result<std::sync::Arc<dyn Backing>, BackingError> {
    match settings.address() {
        Some(a) if a.is_object_store() => {
            Ok(std::sync::Arc::new(ObjectBacking::connect(settings)?))
        }
        _ => Ok(std::sync::Arc::new(GrpcBacking::connect(settings).await?)),
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>, BackingError>> + Send>>;

/// A blob's bytes as the store sends them, counted and hashed: more bytes
/// than the digest's size fail at once, and the end of the stream is
/// reported (`Ok(None)`) only if size and hash match. A caller commits
/// nothing before it has seen that end.
pub struct BlobChunks {
    digest: Digest,
    address: String,
    hasher: Option<Hasher>,
    received: u64,
    idle: Duration,
    inner: ChunkStream,
}

impl BlobChunks {
    /// Wraps a stream of `digest`'s bytes from the store at `address`;
    /// a stream that sends nothing for `idle` fails as unavailable.
    pub fn new(
        digest: Digest,
        address: impl Into<String>,
        idle: Duration,
        inner: impl Stream<Item = Result<Vec<u8>, BackingError>> + Send + 'static,
    ) -> BlobChunks {
        BlobChunks {
            digest,
            address: address.into(),
            hasher: Some(digest.function.hasher()),
            received: 0,
            idle,
            inner: Box::pin(inner),
        }
    }

    /// The blob being read.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    fn mismatch(&self, reason: String) -> BackingError {
        BackingError::DigestMismatch {
            address: self.address.clone(),
            digest: self.digest,
            reason,
        }
    }

    /// The next piece, or `Ok(None)` once the whole blob arrived and matched.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, BackingError> {
        let Some(hasher) = self.hasher.as_mut() else {
            return Ok(None);
        };
        match tokio::time::timeout(self.idle, self.inner.next()).await {
            Err(_) => Err(BackingError::timeout(
                &self.address,
                &format!("reading blob {}", self.digest),
                self.idle.as_secs(),
            )),
            Ok(Some(Err(e))) => Err(e),
            Ok(Some(Ok(data))) => {
                self.received += data.len() as u64;
                if self.received > self.digest.size {
                    return Err(self.mismatch(format!(
                        "{} bytes or more for a blob of {}",
                        self.received, self.digest.size
                    )));
                }
                hasher.update(&data);
                Ok(Some(data))
            }
            Ok(None) => {
                let Some(hasher) = self.hasher.take() else {
                    return Ok(None);
                };
                if self.received != self.digest.size {
                    return Err(self.mismatch(format!(
                        "the stream ended after {} of {} bytes",
                        self.received, self.digest.size
                    )));
                }
                let hash = hasher.finish();
                if hash != self.digest.hash {
                    return Err(self.mismatch(format!(
                        "the bytes hash to {}",
                        rbe_proto::Digest {
                            function: self.digest.function,
                            hash,
                            size: self.received
                        }
                        .hex()
                    )));
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chunks(d: Digest, parts: Vec<&'static [u8]>) -> BlobChunks {
        let s = futures::stream::iter(parts.into_iter().map(|p| Ok(p.to_vec())));
        BlobChunks::new(d, "unix:/b", Duration::from_secs(5), s)
    }

    async fn drain(mut c: BlobChunks) -> Result<Vec<u8>, BackingError> {
        let mut out = Vec::new();
        while let Some(p) = c.next().await? {
            out.extend(p);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn only_the_right_bytes_reach_the_end() {
        let d = Digest::of(DigestFunction::Sha256, b"hello world");
        assert_eq!(
            drain(chunks(d, vec![b"hello ", b"world"])).await.unwrap(),
            b"hello world"
        );
        for bad in [
            vec![&b"hello worle"[..]],
            vec![&b"hello"[..]],
            vec![&b"hello world"[..], &b"!"[..]],
        ] {
            let e = drain(chunks(d, bad)).await.unwrap_err();
            assert!(matches!(e, BackingError::DigestMismatch { .. }), "{e}");
            assert!(e.to_string().contains("unix:/b"), "{e}");
        }
    }
}
