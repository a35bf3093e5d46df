//! The casd local API (`proto/rbe/casd/v1/casd.proto`).

use std::sync::Arc;
use std::time::Duration;

use rbe_proto::casd::{
    casd_server, PinRequest, PinResponse, StatsRequest, StatsResponse, UnpinRequest, UnpinResponse,
};
use rbe_proto::{Digest, DigestFunction};
use tonic::{Request, Response, Status};

use super::{digest_status, Casd};

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
        let st = &self.0.settings.storage;
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
}
