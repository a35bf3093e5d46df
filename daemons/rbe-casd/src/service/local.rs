//! The casd local API (`proto/rbe/casd/v1/casd.proto`).

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rbe_cas::materialize::{self, TreeError};
use rbe_proto::casd::{
    casd_server, MaterializeRequest, MaterializeResponse, MissingForResultRequest,
    MissingForResultResponse, MissingTreeRequest, MissingTreeResponse, PinRequest, PinResponse,
    StatsRequest, StatsResponse, UnpinRequest, UnpinResponse,
};
use rbe_proto::reapi::ActionResult;
use rbe_proto::{Digest, DigestFunction};
use tonic::{Request, Response, Status};

use super::lease::Held;
use super::{blocking, cas_status, digest_status, Casd};

/// Most digests one MissingTree or MissingForResult answer lists, so the
/// answer stays a few MiB; the caller fetches them and asks again.
pub const MAX_MISSING_PER_ANSWER: usize = 50_000;

/// Most entries of distinct directories one MissingTree call reads: the
/// bound Materialize applies to the expanded tree, which the distinct
/// entries never exceed, so no tree Materialize would build is refused.
pub const MAX_WALK_ENTRIES: u64 = materialize::MAX_ENTRIES;

fn tree_status(e: TreeError) -> Status {
    match e {
        TreeError::Invalid(m) => Status::invalid_argument(m),
        e @ TreeError::NoSpace(_) => Status::resource_exhausted(e.to_string()),
        TreeError::Cas(e) => cas_status(e),
    }
}

/// Caps an answer at `room` digests; true when it was cut.
fn cap(mut missing: Vec<Digest>, room: usize) -> (Vec<rbe_proto::casd::Digest>, bool) {
    let truncated = missing.len() > room;
    missing.truncate(room);
    (missing.iter().map(to_proto).collect(), truncated)
}

/// The local API service.
pub struct LocalService(pub Arc<Casd>);

fn to_proto(d: &Digest) -> rbe_proto::casd::Digest {
    rbe_proto::casd::Digest {
        hash: d.hex(),
        size_bytes: d.size as i64,
    }
}

#[tonic::async_trait]
impl casd_server::Casd for LocalService {
    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let s = self.0.store.stats();
        let st = self.0.store.policy();
        // [backing] is restart-only (a reload keeps the running one), so
        // the loaded settings are what casd runs with.
        let backing = &self.0.settings.load().backing;
        let (backing_store_id, backing_address, backing_mode) = match &self.0.through {
            Some(t) => (
                backing.store_id(),
                backing.url.clone(),
                if t.jit() { "jit" } else { "cache" },
            ),
            None => (0, String::new(), "none"),
        };
        Ok(Response::new(StatsResponse {
            blobs: s.blobs,
            bytes: s.bytes,
            high_watermark_bytes: (st.max_size as f64 * st.high_watermark) as u64,
            low_watermark_bytes: (st.max_size as f64 * st.low_watermark) as u64,
            evicted_blobs: s.evicted,
            index_loading: s.loading,
            action_results: 0,
            pinned_blobs: s.pinned,
            corrupt_blobs_removed: s.corrupt_removed,
            link_limit_copies: s.link_limit_copies,
            ac_trees_read: self.0.ac.trees_read(),
            blobs_read: self.0.blobs_read.load(std::sync::atomic::Ordering::Relaxed),
            backing_fetches: self.0.through.as_ref().map_or(0, |t| t.fetches()),
            backing_errors: self.0.through.as_ref().map_or(0, |t| t.errors()),
            backing_adopted: self.0.through.as_ref().is_some_and(|t| t.adopted()),
            backing: self.0.through.as_ref().map(|t| t.stats()),
            backing_store_id,
            backing_address,
            backing_mode: backing_mode.to_owned(),
        }))
    }

    async fn pin(&self, req: Request<PinRequest>) -> Result<Response<PinResponse>, Status> {
        let req = req.into_inner();
        self.0.partition(&req.instance_name)?;
        let f = DigestFunction::from_reapi(req.digest_function).map_err(digest_status)?;
        let ds = req
            .digests
            .iter()
            .map(|d| Digest::parse(f, &d.hash, d.size_bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(digest_status)?;
        let ttl = Duration::from_secs(u64::from(req.ttl_seconds.max(1)));
        let (lease, missing) = self.0.leases.pin(ds, ttl);
        Ok(Response::new(PinResponse {
            lease,
            missing: missing.iter().map(to_proto).collect(),
        }))
    }

    async fn unpin(&self, req: Request<UnpinRequest>) -> Result<Response<UnpinResponse>, Status> {
        let lease = req.into_inner().lease;
        if super::lease::release(&self.0, &lease).await? {
            Ok(Response::new(UnpinResponse {}))
        } else {
            Err(Status::not_found(format!(
                "lease {lease:?} is unknown or expired"
            )))
        }
    }

    async fn materialize(
        &self,
        req: Request<MaterializeRequest>,
    ) -> Result<Response<MaterializeResponse>, Status> {
        let req = req.into_inner();
        self.0.partition(&req.instance_name)?;
        let f = DigestFunction::from_reapi(req.digest_function).map_err(digest_status)?;
        let root = req
            .root
            .ok_or_else(|| Status::invalid_argument("root is missing"))?;
        let root = Digest::parse(f, &root.hash, root.size_bytes).map_err(digest_status)?;
        let started = std::time::Instant::now();
        // Taken before the first walk and dropped (released) on every way
        // out but a complete tree.
        let held = (req.pin_ttl_seconds > 0)
            .then(|| Held::open(&self.0, Duration::from_secs(u64::from(req.pin_ttl_seconds))));
        let lease = held.as_ref().map(Held::id);
        if self.0.through.is_some() || lease.is_some() {
            hydrate(&self.0, lease, f, root, true).await?;
        }
        let casd = Arc::clone(&self.0);
        let r = blocking(move || {
            let settings = casd.settings.load();
            let roots = &settings.storage.materialize_roots;
            let target = materialize::open_target(&req.target, roots)?;
            materialize::materialize(&casd.store, &casd.dirs, f, root, &target, req.copy)
        })
        .await?;
        let m = r.map_err(tree_status)?;
        tracing::debug!(digest = %root, files = m.files, directories = m.directories, missing = m.missing.len(), elapsed_us = started.elapsed().as_micros() as u64, "materialized input tree");
        let lease = match held {
            Some(h) if m.missing.is_empty() => h.keep(),
            Some(h) => {
                h.release().await?;
                String::new()
            }
            None => String::new(),
        };
        Ok(Response::new(MaterializeResponse {
            missing: m.missing.iter().map(to_proto).collect(),
            files: m.files,
            directories: m.directories,
            bytes: m.bytes,
            lease,
        }))
    }

    async fn missing_tree(
        &self,
        req: Request<MissingTreeRequest>,
    ) -> Result<Response<MissingTreeResponse>, Status> {
        let req = req.into_inner();
        self.0.partition(&req.instance_name)?;
        let f = DigestFunction::from_reapi(req.digest_function).map_err(digest_status)?;
        if req.roots.is_empty() {
            return Err(Status::invalid_argument("roots is empty"));
        }
        let roots = req
            .roots
            .iter()
            .map(|d| Digest::parse(f, &d.hash, d.size_bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("roots: {e}")))?;
        let casd = Arc::clone(&self.0);
        let closure = blocking(move || {
            materialize::missing_tree(&casd.store, &casd.dirs, f, &roots, MAX_WALK_ENTRIES)
        })
        .await?
        .map_err(tree_status)?;
        let (missing_directories, dirs_cut) =
            cap(closure.missing_directories, MAX_MISSING_PER_ANSWER);
        let room = MAX_MISSING_PER_ANSWER - missing_directories.len();
        let (missing_files, files_cut) = cap(closure.missing_files, room);
        Ok(Response::new(MissingTreeResponse {
            missing_directories,
            missing_files,
            truncated: dirs_cut || files_cut,
            directories: closure.directories,
            entries: closure.entries,
        }))
    }

    async fn missing_for_result(
        &self,
        req: Request<MissingForResultRequest>,
    ) -> Result<Response<MissingForResultResponse>, Status> {
        let req = req.into_inner();
        self.0.partition(&req.instance_name)?;
        let f = DigestFunction::from_reapi(req.digest_function).map_err(digest_status)?;
        let ar = ActionResult::decode(req.action_result.as_slice()).map_err(|e| {
            Status::invalid_argument(format!("action_result is not an ActionResult: {e}"))
        })?;
        super::ac::validate(f, &ar)?;
        let casd = Arc::clone(&self.0);
        let missing = blocking(move || casd.ac.missing_for_result(f, &ar))
            .await?
            .map_err(cas_status)?;
        let (missing, truncated) = cap(missing, MAX_MISSING_PER_ANSWER);
        Ok(Response::new(MissingForResultResponse {
            missing,
            truncated,
        }))
    }
}

/// In front of a backing store, an input tree may be there and not here
/// (uploaded through another host, or evicted here): what the local store
/// lacks of it (its directories, and with `files` its files) is fetched
/// through before it is materialized or walked, a level per round. Blobs
/// the backing store lacks too are left for the caller to report missing,
/// as without a backing store.
///
/// With `lease`, each walk pins what it finds under the lease
/// ([`materialize::pin_tree`]) and each fetched blob is pinned as its fetch
/// ends, so what this call made present stays until the lease is
/// released; a blob lost between fetch and pin (evicted, reclaimed by
/// another lease's release) is fetched again in the next round. Without a
/// backing store one walk pins what is present.
pub(super) async fn hydrate(
    casd: &Arc<Casd>,
    lease: Option<&str>,
    f: DigestFunction,
    root: Digest,
    files: bool,
) -> Result<(), Status> {
    use futures::StreamExt;
    let mut absent_everywhere: std::collections::HashSet<Digest> = Default::default();
    let mut fetched: std::collections::HashMap<Digest, u32> = Default::default();
    loop {
        let (c, id) = (Arc::clone(casd), lease.map(str::to_owned));
        let (closure, expired) = blocking(move || match id {
            Some(id) => {
                let mut expired = false;
                let pin = |ds: &[Digest]| {
                    c.leases.add(&id, ds).unwrap_or_else(|| {
                        expired = true;
                        Vec::new()
                    })
                };
                let r = materialize::pin_tree(&c.store, &c.dirs, f, root, MAX_WALK_ENTRIES, pin);
                (r, expired)
            }
            None => (
                materialize::missing_tree(&c.store, &c.dirs, f, &[root], MAX_WALK_ENTRIES),
                false,
            ),
        })
        .await?;
        let closure = closure.map_err(tree_status)?;
        if expired {
            return Err(lease_expired(root));
        }
        let Some(t) = &casd.through else {
            return Ok(());
        };
        let mut missing = closure.missing_directories;
        if files {
            missing.extend(closure.missing_files);
        }
        let wanted: Vec<Digest> = missing
            .into_iter()
            .filter(|d| !absent_everywhere.contains(d))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        // A blob wanted again and again is being evicted as it arrives: the
        // store is too small for the tree, and looping would not change
        // that. (Once more than without a lease: a blob can also be
        // reclaimed by another lease's release before this one pins it.)
        let bound = if lease.is_some() { 3 } else { 2 };
        for d in &wanted {
            let n = fetched.entry(*d).or_insert(0u32);
            if *n >= bound {
                return Err(Status::resource_exhausted(format!(
                    "blob {d} of input tree {root} was evicted {n} times while the tree was fetched from the backing store; the store is too small"
                )));
            }
            *n += 1;
        }
        let failed: Vec<(Digest, Status)> = futures::stream::iter(wanted)
            .map(|d| async move {
                let r = t.ensure_local(&casd.store, d).await;
                if let (Ok(()), Some(id)) = (&r, lease) {
                    // Pinned as soon as it is here; if it is gone already,
                    // or the lease expired, the next walk says so.
                    let _ = casd.leases.add(id, &[d]);
                }
                (d, r)
            })
            .buffer_unordered(super::through::FETCH_PARALLELISM)
            .filter_map(|(d, r)| async move { r.err().map(|e| (d, e)) })
            .collect()
            .await;
        for (d, e) in failed {
            if e.code() != tonic::Code::NotFound {
                return Err(e);
            }
            absent_everywhere.insert(d);
        }
    }
}

fn lease_expired(root: Digest) -> Status {
    Status::unavailable(format!(
        "the lease over input tree {root} expired before the tree was complete (storage.max_pin_ttl_secs)"
    ))
}
