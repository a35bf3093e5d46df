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
//!
//! Every request to the store is made here, so each is timed and counted
//! per operation, and each failure logged with the same fields
//! (`backing_metrics`). In cache mode FindMissingBlobs also consults a
//! bounded positive existence cache (`existence`) before asking.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use rbe_backing::{Backing, BackingError, Body};
use rbe_cas::Store;
use rbe_proto::reapi::ActionResult;
use rbe_proto::{Digest, DigestFunction};
use tokio::sync::watch;
use tonic::{Code, Status};

use super::backing_metrics::{add, Metrics, Op};
use super::existence::ExistenceCache;
use super::{blocking, cas_status};

/// Blobs fetched at the same time when a request lacks several.
pub const FETCH_PARALLELISM: usize = 8;

/// How a fetch ended, shared with every caller waiting on it.
type Outcome = Option<Result<(), (Code, String)>>;

/// The backing store and the fetches in flight. Every request to the
/// store goes through here, timed and counted in [`Metrics`].
pub struct Through {
    backing: Arc<dyn Backing>,
    fetches: Mutex<HashMap<Digest, watch::Receiver<Outcome>>>,
    fetched: AtomicU64,
    jit: bool,
    /// What the store's requests cost and local copies save.
    pub metrics: Metrics,
    /// `mode = "cache"` only (see `existence`).
    existence: Option<ExistenceCache>,
    /// Whether every blob in the local store is known to be in the
    /// backing store: false until [`super::adopt`] has checked a store
    /// that was filled without this backing store (or by another one).
    adopted: AtomicBool,
}

impl Through {
    /// In front of `backing`, as `settings` (`[backing]`) say: `mode =
    /// "jit"` makes the local store scratch, not a cache.
    pub fn new(backing: Arc<dyn Backing>, settings: &rbe_config::Backing) -> Through {
        Through {
            backing,
            fetches: Mutex::new(HashMap::new()),
            fetched: AtomicU64::new(0),
            jit: settings.mode == rbe_config::BackingMode::Jit,
            metrics: Metrics::default(),
            existence: ExistenceCache::from_settings(settings),
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

    /// The store's URL as configured.
    pub fn address(&self) -> &str {
        self.backing.address()
    }

    /// Blobs fetched from the backing store since start.
    pub fn fetches(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Failed requests to the backing store since start.
    pub fn errors(&self) -> u64 {
        self.metrics.errors()
    }

    /// Stats `backing`.
    pub fn stats(&self) -> rbe_proto::casd::BackingStats {
        let entries = self.existence.as_ref().map_or(0, |c| c.len() as u64);
        let mode = if self.jit { "jit" } else { "cache" };
        self.metrics.to_proto(self.address(), mode, entries)
    }

    /// The status a client gets for a backing failure of `op` ([`status`]),
    /// logged (rate-limited) unless the store simply lacks the blob.
    fn failed(&self, op: Op, digest: Option<Digest>, e: &BackingError) -> Status {
        if !e.is_not_found() {
            self.metrics.log_failure(self.address(), op, digest, e);
        }
        status(e)
    }

    /// Counts one request of `op` that began at `started`.
    fn count<T>(&self, op: Op, started: Instant, r: &Result<T, BackingError>) {
        let failed = r.as_ref().is_err_and(|e| !e.is_not_found());
        self.metrics.finished(op, started, failed);
    }

    /// Which of `ds` the store lacks, asked in batches; a failure to ask
    /// is an error, never "present".
    pub async fn find_missing(
        &self,
        f: DigestFunction,
        ds: &[Digest],
    ) -> Result<Vec<Digest>, Status> {
        if ds.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let r = self.backing.find_missing(f, ds).await;
        self.count(Op::FindMissing, started, &r);
        let digest = (ds.len() == 1).then(|| ds[0]);
        let lacking = r.map_err(|e| self.failed(Op::FindMissing, digest, &e))?;
        add(&self.metrics.hits.find_missing_asked, ds.len());
        add(&self.metrics.hits.find_missing_absent, lacking.len());
        Ok(lacking)
    }

    /// FindMissingBlobs' answer for `ds`, of which `local_missing` (in
    /// `ds`' order) are not in the local store. In cache mode local hits
    /// are blobs the store acknowledged, and so are the existence cache's;
    /// only the rest are asked. In jit mode, and before the local store was
    /// adopted, the store answers for all.
    pub async fn missing(
        &self,
        f: DigestFunction,
        ds: &[Digest],
        local_missing: Vec<Digest>,
    ) -> Result<Vec<Digest>, Status> {
        let hits = &self.metrics.hits;
        if !self.local_proves() {
            let lacking: HashSet<Digest> = self.find_missing(f, ds).await?.into_iter().collect();
            return Ok(ds.iter().filter(|d| lacking.contains(d)).copied().collect());
        }
        add(&hits.find_missing_local, ds.len() - local_missing.len());
        let now = Instant::now();
        let ask = match &self.existence {
            Some(c) => {
                let n = local_missing.len();
                let ask = c.unknown(local_missing, now);
                add(&hits.find_missing_cached, n - ask.len());
                ask
            }
            None => local_missing,
        };
        let lacking: HashSet<Digest> = self.find_missing(f, &ask).await?.into_iter().collect();
        if let Some(c) = &self.existence {
            c.insert_all(ask.iter().filter(|d| !lacking.contains(d)).copied(), now);
        }
        Ok(ask.into_iter().filter(|d| lacking.contains(d)).collect())
    }

    /// The store's result for `action`; `None` when it has none.
    pub async fn get_action_result(&self, action: Digest) -> Result<Option<ActionResult>, Status> {
        let started = Instant::now();
        let r = self.backing.get_action_result(action).await;
        self.count(Op::GetActionResult, started, &r);
        r.map_err(|e| self.failed(Op::GetActionResult, Some(action), &e))
    }

    /// Stores `result` for `action` in the store: `Ok` once acknowledged.
    pub async fn update_action_result(
        &self,
        action: Digest,
        result: ActionResult,
    ) -> Result<(), Status> {
        let started = Instant::now();
        let r = self.backing.update_action_result(action, result).await;
        self.count(Op::UpdateActionResult, started, &r);
        r.map_err(|e| self.failed(Op::UpdateActionResult, Some(action), &e))
    }

    /// Makes `d` present locally, fetching it from the backing store if it
    /// is not; one fetch per digest at a time.
    pub async fn ensure_local(
        self: &Arc<Self>,
        store: &Arc<Store>,
        d: Digest,
    ) -> Result<(), Status> {
        let hits = &self.metrics.hits;
        if store.contains(&d) {
            add(&hits.reads_local, 1);
            return Ok(());
        }
        let mut rx = {
            let mut fetches = self.fetches.lock();
            match fetches.get(&d) {
                Some(rx) => {
                    add(&hits.reads_fetched, 1);
                    rx.clone()
                }
                // A fetch indexes the blob before it leaves the map, so
                // this second look, under the map's lock, cannot miss a
                // fetch that just ended: no second fetch of one blob.
                None if store.contains(&d) => {
                    add(&hits.reads_local, 1);
                    return Ok(());
                }
                None => {
                    add(&hits.reads_fetched, 1);
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
    /// arrive, and again by the store's writer). Timed as one `read`.
    async fn fetch(&self, store: &Arc<Store>, d: Digest) -> Result<(), Status> {
        let started = Instant::now();
        let r = self.fetch_bytes(store, d).await;
        let failed = matches!(&r, Err(Fetch::Backing(e)) if !e.is_not_found());
        self.metrics.finished(Op::Read, started, failed);
        match r {
            Ok(()) => {
                tracing::debug!(backing = self.address(), digest = %d, "blob fetched from the backing store");
                Ok(())
            }
            Err(Fetch::Backing(e)) => Err(self.failed(Op::Read, Some(d), &e)),
            Err(Fetch::Local(s)) => Err(s),
        }
    }

    async fn fetch_bytes(&self, store: &Arc<Store>, d: Digest) -> Result<(), Fetch> {
        let mut chunks = self.backing.read(d).await.map_err(Fetch::Backing)?;
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
                Err(e) => return Err(Fetch::Backing(e)),
            }
        }
        blocking(move || writer.finish())
            .await?
            .map_err(cas_status)?;
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
        let started = Instant::now();
        let r = self.backing.write(d, Body::File(path)).await;
        self.count(Op::Write, started, &r);
        r.map_err(|e| self.failed(Op::Write, Some(d), &e))?;
        self.acknowledged([d], started);
        Ok(())
    }

    /// Sends blobs whose bytes were checked against their digests to the
    /// backing store; one result per blob, `Ok` when acknowledged.
    pub async fn write_blobs(&self, blobs: Vec<(Digest, Vec<u8>)>) -> Vec<Result<(), Status>> {
        if blobs.is_empty() {
            return Vec::new();
        }
        let ds: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        let started = Instant::now();
        let rs = self.backing.write_batch(blobs).await;
        // One request however many blobs: failed if any blob failed.
        let first_failure = ds
            .iter()
            .zip(&rs)
            .find_map(|(d, r)| r.as_ref().err().map(|e| (*d, e)));
        self.metrics
            .finished(Op::WriteBatch, started, first_failure.is_some());
        if let Some((d, e)) = first_failure {
            self.metrics
                .log_failure(self.address(), Op::WriteBatch, Some(d), e);
        }
        self.acknowledged(
            ds.iter()
                .zip(&rs)
                .filter(|(_, r)| r.is_ok())
                .map(|(d, _)| *d),
            started,
        );
        rs.into_iter().map(|r| r.map_err(|e| status(&e))).collect()
    }

    /// Blobs the store acknowledged as of `at` (when the upload began: the
    /// window never outlasts what the store said) are known present.
    fn acknowledged(&self, ds: impl IntoIterator<Item = Digest>, at: Instant) {
        if let Some(c) = &self.existence {
            c.insert_all(ds, at);
        }
    }
}

/// UNAVAILABLE naming the store, except a blob the store lacks or sent
/// wrong (NOT_FOUND, as for a corrupt local file: the client uploads or
/// runs again).
fn status(e: &BackingError) -> Status {
    match e {
        BackingError::NotFound { .. } | BackingError::DigestMismatch { .. } => {
            Status::not_found(e.to_string())
        }
        _ => Status::unavailable(e.to_string()),
    }
}

/// Why a fetch failed: the store (counted and logged as its failure), or
/// the local store.
enum Fetch {
    Backing(BackingError),
    Local(Status),
}

impl From<Status> for Fetch {
    fn from(s: Status) -> Fetch {
        Fetch::Local(s)
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
