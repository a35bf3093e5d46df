//! ActionCache: results are returned only when complete (see rbe-cas), with
//! stdout, stderr and requested output files inlined within a byte budget.

use std::sync::Arc;

use rbe_proto::reapi::{
    action_cache_server::ActionCache, ActionResult, GetActionResultRequest,
    UpdateActionResultRequest,
};
use rbe_proto::{Digest, DigestFunction};
use tonic::{Request, Response, Status};

use super::backing_metrics::add;
use super::through::Through;
use super::{blocking, cas_status, digest_status, Casd};

/// The ActionCache service.
pub struct ActionCacheService(pub Arc<Casd>);

/// Checks that every digest in a result is well formed before storing it.
pub(crate) fn validate(f: DigestFunction, ar: &ActionResult) -> Result<(), Status> {
    let check = |d: Option<&rbe_proto::reapi::Digest>, what: &str| -> Result<(), Status> {
        match d {
            Some(d) => Digest::from_reapi(f, d)
                .map(|_| ())
                .map_err(|e| Status::invalid_argument(format!("{what}: {e}"))),
            None => Ok(()),
        }
    };
    for o in &ar.output_files {
        if o.digest.is_none() {
            return Err(Status::invalid_argument(format!(
                "output file {:?} has no digest",
                o.path
            )));
        }
        check(o.digest.as_ref(), &format!("output file {:?}", o.path))?;
    }
    for o in &ar.output_directories {
        if o.tree_digest.is_none() {
            return Err(Status::invalid_argument(format!(
                "output directory {:?} has no tree digest",
                o.path
            )));
        }
        check(
            o.tree_digest.as_ref(),
            &format!("output directory {:?}", o.path),
        )?;
    }
    check(ar.stdout_digest.as_ref(), "stdout_digest")?;
    check(ar.stderr_digest.as_ref(), "stderr_digest")
}

impl ActionCacheService {
    /// Validates the instance, digest function and action digest of a request.
    fn target(
        &self,
        instance: &str,
        function: i32,
        action: Option<&rbe_proto::reapi::Digest>,
    ) -> Result<(String, DigestFunction, Digest), Status> {
        let partition = self.0.partition(instance)?;
        let f = DigestFunction::from_reapi(function).map_err(digest_status)?;
        let action = Digest::from_reapi_opt(f, action).map_err(digest_status)?;
        Ok((partition, f, action))
    }
}

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        req: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let req = req.into_inner();
        let (partition, f, action) = self.target(
            &req.instance_name,
            req.digest_function,
            req.action_digest.as_ref(),
        )?;
        // In jit mode (and before the local store was adopted) the
        // backing store's result is the answer: a local one may name blobs
        // the backing store does not hold.
        let mut result = if !self.0.local_proves() {
            None
        } else {
            serve_local(&self.0, &partition, f, action, &req).await?
        };
        if let Some(t) = &self.0.through {
            let hits = &t.metrics.hits;
            if result.is_some() {
                add(&hits.ac_hits_local, 1);
            } else {
                if fetch_through(&self.0, t, &partition, f, action).await? {
                    result = serve_local(&self.0, &partition, f, action, &req).await?;
                }
                add(
                    if result.is_some() {
                        &hits.ac_hits_backing
                    } else {
                        &hits.ac_misses
                    },
                    1,
                );
            }
        }
        match result {
            Some(ar) => Ok(Response::new(ar)),
            None => Err(Status::not_found(format!(
                "no complete action result for {action}"
            ))),
        }
    }

    async fn update_action_result(
        &self,
        req: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        update(&self.0, req.into_inner(), self).await
    }
}

/// The local result for `action` if it is complete, with what `req` asked
/// to be inlined within the budget.
async fn serve_local(
    casd: &Arc<Casd>,
    partition: &str,
    f: DigestFunction,
    action: Digest,
    req: &GetActionResultRequest,
) -> Result<Option<ActionResult>, Status> {
    let casd = Arc::clone(casd);
    let partition = partition.to_owned();
    let req = GetActionResultRequest {
        inline_stdout: req.inline_stdout,
        inline_stderr: req.inline_stderr,
        inline_output_files: req.inline_output_files.clone(),
        ..Default::default()
    };
    {
        let budget = casd.settings.load().limits.max_inline_bytes;
        blocking(move || -> Result<Option<ActionResult>, Status> {
            let Some(mut ar) = casd.ac.get(&partition, &action).map_err(cas_status)? else {
                return Ok(None);
            };
            let mut left = budget;
            let mut inline = |d: Option<&rbe_proto::reapi::Digest>| -> Option<Vec<u8>> {
                let d = Digest::from_reapi(f, d?).ok()?;
                if d.size > left {
                    return None;
                }
                let data = casd.store.read_all(d).ok()?;
                left -= d.size;
                Some(data)
            };
            if req.inline_stdout && ar.stdout_raw.is_empty() {
                if let Some(b) = inline(ar.stdout_digest.as_ref()) {
                    ar.stdout_raw = b;
                }
            }
            if req.inline_stderr && ar.stderr_raw.is_empty() {
                if let Some(b) = inline(ar.stderr_digest.as_ref()) {
                    ar.stderr_raw = b;
                }
            }
            for o in ar.output_files.iter_mut() {
                if req.inline_output_files.contains(&o.path) && o.contents.is_empty() {
                    if let Some(b) = inline(o.digest.as_ref()) {
                        o.contents = b;
                    }
                }
            }
            Ok(Some(ar))
        })
        .await?
    }
}

/// A local miss asked of the backing store: its result, if it has one,
/// is served only once everything it references is here (fetched through,
/// verified), so the completeness check holds against what is served.
/// `Ok(false)`: the backing store has no usable result (a cache miss).
async fn fetch_through(
    casd: &Arc<Casd>,
    t: &Arc<Through>,
    partition: &str,
    f: DigestFunction,
    action: Digest,
) -> Result<bool, Status> {
    let Some(ar) = t
        .get_action_result(super::through::backing_action_key(partition, action))
        .await?
    else {
        return Ok(false);
    };
    if validate(f, &ar).is_err() {
        tracing::warn!(action_digest = %action, backing = t.address(), backing_op = "get_action_result", "backing store's action result names a malformed digest; answered as a cache miss");
        return Ok(false);
    }
    // Output files, stdout, stderr and Trees first; then the files the
    // Trees list; then a confirmation. More rounds mean blobs vanish as
    // they arrive (a store too small), where a miss is the honest answer.
    for _ in 0..4 {
        let (c, r) = (Arc::clone(casd), ar.clone());
        let missing = match blocking(move || c.ac.missing_for_result(f, &r)).await? {
            Ok(m) => m,
            Err(e) => {
                tracing::info!(action_digest = %action, backing = t.address(), backing_op = "get_action_result", error = %e, "backing store's action result cannot be checked; answered as a cache miss");
                return Ok(false);
            }
        };
        if missing.is_empty() {
            let (c, p) = (Arc::clone(casd), partition.to_owned());
            blocking(move || c.ac.put(&p, &action, &ar))
                .await?
                .map_err(cas_status)?;
            return Ok(true);
        }
        if let Some((d, e)) = t
            .ensure_all_local(&casd.store, &missing)
            .await
            .into_iter()
            .next()
        {
            if e.code() == tonic::Code::NotFound {
                tracing::info!(action_digest = %action, backing = t.address(), backing_op = "get_action_result", digest = %d, "backing store's action result is incomplete; answered as a cache miss");
                return Ok(false);
            }
            return Err(e);
        }
    }
    Ok(false)
}

async fn update(
    casd: &Arc<Casd>,
    req: UpdateActionResultRequest,
    svc: &ActionCacheService,
) -> Result<Response<ActionResult>, Status> {
    let (partition, f, action) = svc.target(
        &req.instance_name,
        req.digest_function,
        req.action_digest.as_ref(),
    )?;
    let mut ar = req
        .action_result
        .ok_or_else(|| Status::invalid_argument("action_result is missing"))?;
    validate(f, &ar)?;
    // Inlined bytes are a transport convenience: they go to the CAS and
    // the stored result refers to them by digest, so it stays small and
    // nothing a client sent is lost.
    let mut blobs: Vec<(Digest, Vec<u8>)> = Vec::new();
    for (raw, digest, what) in [
        (&mut ar.stdout_raw, &mut ar.stdout_digest, "stdout_raw"),
        (&mut ar.stderr_raw, &mut ar.stderr_digest, "stderr_raw"),
    ] {
        if raw.is_empty() {
            continue;
        }
        let d = Digest::of(f, raw);
        match digest {
            Some(given) if *given != d.to_reapi() => {
                return Err(Status::invalid_argument(format!(
                    "{what} does not match its digest"
                )));
            }
            _ => *digest = Some(d.to_reapi()),
        }
        blobs.push((d, std::mem::take(raw)));
    }
    for o in ar.output_files.iter_mut() {
        if o.contents.is_empty() {
            continue;
        }
        let d = Digest::of(f, &o.contents);
        if o.digest.as_ref() != Some(&d.to_reapi()) {
            return Err(Status::invalid_argument(format!(
                "contents of output file {:?} do not match its digest",
                o.path
            )));
        }
        blobs.push((d, std::mem::take(&mut o.contents)));
    }
    if let (Some(t), false) = (&casd.through, blobs.is_empty()) {
        // Write-through: the backing store takes the inlined blobs
        // before they are stored here.
        for r in t.write_blobs(blobs.clone()).await {
            r?;
        }
    }
    if !blobs.is_empty() {
        let store = Arc::clone(&casd.store);
        let results = blocking(move || {
            let items: Vec<(Digest, &[u8])> =
                blobs.iter().map(|(d, b)| (*d, b.as_slice())).collect();
            store.put_batch(&items)
        })
        .await?;
        for r in results {
            r.map_err(cas_status)?;
        }
    }
    if let Some(t) = &casd.through {
        t.update_action_result(
            super::through::backing_action_key(&partition, action),
            ar.clone(),
        )
        .await?;
    }
    let casd = Arc::clone(casd);
    let stored = ar.clone();
    blocking(move || casd.ac.put(&partition, &action, &stored))
        .await?
        .map_err(cas_status)?;
    tracing::debug!(action_digest = %action, "action result stored");
    Ok(Response::new(ar))
}
