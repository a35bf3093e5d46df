//! casd as a write-through cache in front of a backing store
//! (`[backing] mode = "cache"`, issue 13).
//!
//! The invariant: casd indexes a blob — and so reports it present in
//! FindMissingBlobs, serves it, lets uploads of it complete at once — only
//! once the backing store holds it: an upload is sent to the store before
//! it is committed locally (a failure fails the upload with UNAVAILABLE
//! and the bytes are dropped, never indexed), and a blob fetched from the
//! store is indexed after it matched its digest. So every local hit is a
//! blob the store acknowledged, and a local miss is answered by the store.
//!
//! A local miss on read is fetched once per digest however many clients
//! ask ([`Through::ensure_local`]): the first starts a task of its own,
//! which the others wait on, and which runs to the end even if every
//! caller goes away, so a cancelled first caller cannot fail the rest.
//!
//! `mode = "jit"` is the same write-through and fetch-through with the
//! local store as scratch ([`Through::jit`]): existence is always the
//! backing store's answer (a local copy does not answer FindMissingBlobs,
//! nor complete an upload of a blob the store lacks), action results are
//! read from the backing store, and a blob whose last pin is released by
//! Unpin is removed at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rbe_backing::{Backing, BackingError, Body};
use rbe_cas::Store;
use rbe_proto::Digest;
use tokio::sync::watch;
use tonic::{Code, Status};

use super::{blocking, cas_status};

/// Blobs fetched at the same time when a request lacks several.
pub const FETCH_PARALLELISM: usize = 8;

/// How a fetch ended, shared with every caller waiting on it.
type Outcome = Option<Result<(), (Code, String)>>;

/// The backing store and the fetches in flight.
pub struct Through {
    backing: Arc<dyn Backing>,
    fetches: Mutex<HashMap<Digest, watch::Receiver<Outcome>>>,
    fetched: AtomicU64,
    errors: AtomicU64,
    jit: bool,
    /// Whether every blob in the local store is known to be in the
    /// backing store: false until [`super::adopt`] has checked a store
    /// that was filled without this backing store (or by another one).
    adopted: AtomicBool,
}

impl Through {
    /// `jit`: the local store is scratch (`mode = "jit"`), not a cache.
    pub fn new(backing: Arc<dyn Backing>, jit: bool) -> Through {
        Through {
            backing,
            fetches: Mutex::new(HashMap::new()),
            fetched: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            jit,
            adopted: AtomicBool::new(false),
        }
    }

    /// Whether a local copy proves the backing store holds a blob (and a
    /// local action result may be served without asking it): in cache
    /// mode, once the local store was adopted; never in jit mode.
    pub fn local_proves(&self) -> bool {
        !self.jit && self.adopted.load(Ordering::Acquire)
    }

    /// Whether the local store is known to hold only what the backing
    /// store holds (Stats `backing_adopted`).
    pub fn adopted(&self) -> bool {
        self.adopted.load(Ordering::Acquire)
    }

    /// Called once every local blob was found in (or sent to) the backing
    /// store.
    pub fn set_adopted(&self) {
        self.adopted.store(true, Ordering::Release);
    }

    /// True in `mode = "jit"`: a local copy proves nothing about the
    /// backing store, which may have lost the blob since.
    pub fn jit(&self) -> bool {
        self.jit
    }

    pub fn backing(&self) -> &dyn Backing {
        self.backing.as_ref()
    }

    /// Blobs fetched from the backing store since start.
    pub fn fetches(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Failed requests to the backing store since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The status a client gets for a backing failure: UNAVAILABLE naming
    /// the store, except a blob the store lacks or sent wrong (NOT_FOUND,
    /// as for a corrupt local file: the client uploads or runs again).
    pub fn status(&self, e: &BackingError) -> Status {
        if !e.is_not_found() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        match e {
            BackingError::NotFound { .. } => Status::not_found(e.to_string()),
            BackingError::DigestMismatch { digest, .. } => {
                tracing::warn!(backing = self.backing.address(), digest = %digest, error = %e, "backing store sent wrong bytes; refused");
                Status::not_found(e.to_string())
            }
            _ => {
                tracing::warn!(backing = self.backing.address(), error = %e, "backing store request failed");
                Status::unavailable(e.to_string())
            }
        }
    }

    /// Makes `d` present locally, fetching it from the backing store if it
    /// is not; one fetch per digest at a time.
    pub async fn ensure_local(
        self: &Arc<Self>,
        store: &Arc<Store>,
        d: Digest,
    ) -> Result<(), Status> {
        if store.contains(&d) {
            return Ok(());
        }
        let mut rx = {
            let mut fetches = self.fetches.lock();
            match fetches.get(&d) {
                Some(rx) => rx.clone(),
                // A fetch indexes the blob before it leaves the map, so
                // this second look, under the map's lock, cannot miss a
                // fetch that just ended: no second fetch of one blob.
                None if store.contains(&d) => return Ok(()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    fetches.insert(d, rx.clone());
                    let (this, store) = (Arc::clone(self), Arc::clone(store));
                    tokio::spawn(async move {
                        let r = this.fetch(&store, d).await;
                        if r.is_ok() {
                            this.fetched.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = tx.send(Some(r.map_err(|s| (s.code(), s.message().to_owned()))));
                        this.fetches.lock().remove(&d);
                    });
                    rx
                }
            }
        };
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Status::internal(format!("the fetch of {d} ended without an answer")))?
            .clone();
        match outcome {
            Some(Ok(())) | None => Ok(()),
            Some(Err((code, message))) => Err(Status::new(code, message)),
        }
    }

    /// Streams `d` from the backing store into the store: committed only
    /// after the backing store's bytes matched the digest (checked as they
    /// arrive, and again by the store's writer).
    async fn fetch(&self, store: &Arc<Store>, d: Digest) -> Result<(), Status> {
        let mut chunks = self.backing.read(d).await.map_err(|e| self.status(&e))?;
        let s = Arc::clone(store);
        let mut writer = blocking(move || s.begin_write(d))
            .await?
            .map_err(cas_status)?;
        loop {
            match chunks.next().await {
                Ok(Some(data)) => {
                    writer = blocking(move || writer.write(&data).map(|()| writer))
                        .await?
                        .map_err(cas_status)?;
                }
                // Verified: size and hash match.
                Ok(None) => break,
                // Dropping the writer deletes its temp file: nothing stays.
                Err(e) => return Err(self.status(&e)),
            }
        }
        blocking(move || writer.finish())
            .await?
            .map_err(cas_status)?;
        tracing::debug!(backing = self.backing.address(), digest = %d, "blob fetched from the backing store");
        Ok(())
    }

    /// Fetches those of `ds` that are not local, [`FETCH_PARALLELISM`] at
    /// a time; the first failure is returned, the rest are finished.
    pub async fn ensure_all_local(
        self: &Arc<Self>,
        store: &Arc<Store>,
        ds: &[Digest],
    ) -> Vec<(Digest, Status)> {
        use futures::StreamExt;
        futures::stream::iter(ds.iter().copied())
            .map(|d| async move { (d, self.ensure_local(store, d).await) })
            .buffer_unordered(FETCH_PARALLELISM)
            .filter_map(|(d, r)| async move { r.err().map(|e| (d, e)) })
            .collect()
            .await
    }

    /// Sends verified bytes to the backing store: `Ok` once acknowledged.
    pub async fn write_file(&self, d: Digest, path: std::path::PathBuf) -> Result<(), Status> {
        self.backing
            .write(d, Body::File(path))
            .await
            .map_err(|e| self.status(&e))
    }

    /// Sends blobs whose bytes were checked against their digests to the
    /// backing store; one result per blob, `Ok` when acknowledged.
    pub async fn write_blobs(&self, blobs: Vec<(Digest, Vec<u8>)>) -> Vec<Result<(), Status>> {
        self.backing
            .write_batch(blobs)
            .await
            .into_iter()
            .map(|r| r.map_err(|e| self.status(&e)))
            .collect()
    }
}

/// The key under which the backing store keeps the result of `action`
/// for local action cache `partition`. The store's action cache is one
/// namespace, so a separate instance's results (`[instances]
/// separate_action_cache`) are keyed there by a digest of the partition and
/// the action: every host in front of the store finds them for that
/// instance, and no other instance (nor a client of the store itself)
/// finds them under the plain action digest.
pub fn backing_action_key(partition: &str, action: Digest) -> Digest {
    if partition == rbe_cas::ac::SHARED_PARTITION {
        return action;
    }
    let key = format!("rbe action cache partition\0{partition}\0{}", action.hex());
    Digest::of(action.function, key.as_bytes())
}

/// Checks in-memory blobs against their digests (hashing off the async
/// threads) before anything is sent anywhere; one result per blob.
pub async fn check_blobs(
    blobs: Vec<(Digest, Vec<u8>)>,
) -> Result<Vec<Result<(Digest, Vec<u8>), Status>>, Status> {
    blocking(move || {
        blobs
            .into_iter()
            .map(|(d, data)| {
                let got = Digest::of(d.function, &data);
                if got == d {
                    Ok((d, data))
                } else {
                    Err(cas_status(rbe_cas::CasError::DigestMismatch {
                        expected: d,
                        actual_hash: got.hex(),
                        actual_size: data.len() as u64,
                    }))
                }
            })
            .collect()
    })
    .await
}
