//! The casd local API (`proto/rbe/casd/v1/casd.proto`).

use std::sync::Arc;
use std::time::Duration;

use rbe_cas::materialize::{self, TreeError};
use rbe_proto::casd::{
    casd_server, MaterializeRequest, MaterializeResponse, PinRequest, PinResponse, StatsRequest,
    StatsResponse, UnpinRequest, UnpinResponse,
};
use rbe_proto::{Digest, DigestFunction};
use tonic::{Request, Response, Status};

use super::{blocking, cas_status, digest_status, Casd};

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
        if self.0.leases.unpin(&lease) {
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
        let casd = Arc::clone(&self.0);
        let started = std::time::Instant::now();
        let r = blocking(move || {
            let settings = casd.settings.load();
            let roots = &settings.storage.materialize_roots;
            let target = materialize::open_target(&req.target, roots)?;
            materialize::materialize(&casd.store, &casd.dirs, f, root, &target, req.copy)
        })
        .await?;
        let m = r.map_err(|e| match e {
            TreeError::Invalid(m) => Status::invalid_argument(m),
            e @ TreeError::NoSpace(_) => Status::resource_exhausted(e.to_string()),
            TreeError::Cas(e) => cas_status(e),
        })?;
        tracing::debug!(digest = %root, files = m.files, directories = m.directories, missing = m.missing.len(), elapsed_us = started.elapsed().as_micros() as u64, "materialized input tree");
        Ok(Response::new(MaterializeResponse {
            missing: m.missing.iter().map(to_proto).collect(),
            files: m.files,
            directories: m.directories,
            bytes: m.bytes,
        }))
    }
}
