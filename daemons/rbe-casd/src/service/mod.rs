//! casd's gRPC edge: REAPI CAS, action cache, ByteStream, Capabilities and
//! the local API. Errors from `rbe-cas` are mapped to gRPC codes here, once.

pub mod ac;
pub mod adopt;
pub mod backing_metrics;
pub mod bytestream;
pub mod cas;
pub mod existence;
pub mod lease;
pub mod local;
pub mod through;

use std::sync::Arc;

use rbe_cas::ac::{ActionCache, SHARED_PARTITION};
use rbe_cas::pins::Leases;
use rbe_cas::uploads::Uploads;
use rbe_cas::{CasError, Store};
use rbe_config::CasdSettings;
use rbe_proto::resource::ResourceError;
use rbe_proto::{DigestError, DigestFunction};
use tonic::Status;

/// Largest Directory or Tree message casd will parse; bigger ones are
/// refused instead of being loaded into memory.
pub const MAX_DIRECTORY_BYTES: u64 = 64 << 20;

/// Everything the services share.
pub struct Casd {
    pub store: Arc<Store>,
    pub ac: ActionCache,
    pub uploads: Uploads,
    pub leases: Leases,
    pub dirs: rbe_cas::materialize::DirCache,
    /// Swapped whole by a reload; a request reads one snapshot.
    pub settings: arc_swap::ArcSwap<CasdSettings>,
    /// With `[backing] mode = "cache"` or `"jit"`: the store casd writes
    /// through to.
    pub through: Option<Arc<through::Through>>,
    /// Blobs whose bytes were served (Stats `blobs_read`).
    pub blobs_read: std::sync::atomic::AtomicU64,
}

impl Casd {
    /// Checks the instance name and returns its action cache partition.
    pub fn partition(&self, instance: &str) -> Result<String, Status> {
        rbe_proto::resource::validate_instance(instance)
            .map_err(|r| Status::invalid_argument(format!("instance name {instance:?}: {r}")))?;
        let settings = self.settings.load();
        let inst = &settings.instances;
        if !inst.allowed.is_empty() && !inst.allowed.iter().any(|a| a == instance) {
            return Err(Status::invalid_argument(format!(
                "unknown instance name {instance:?}; this server serves {:?}",
                inst.allowed
            )));
        }
        if inst.separate_action_cache.iter().any(|a| a == instance) {
            let d = rbe_proto::Digest::of(DigestFunction::Sha256, instance.as_bytes());
            Ok(format!("i-{}", &d.hex()[..32]))
        } else {
            Ok(SHARED_PARTITION.to_string())
        }
    }
}

impl Casd {
    /// Whether a blob held here is also in the authoritative store: always
    /// without a backing store; see [`through::Through::local_proves`].
    pub fn local_proves(&self) -> bool {
        self.through.as_ref().is_none_or(|t| t.local_proves())
    }

    /// True in `[backing] mode = "jit"`.
    pub fn jit(&self) -> bool {
        self.through.as_ref().is_some_and(|t| t.jit())
    }

    /// Counts blobs served, for Stats.
    pub fn note_read(&self, n: u64) {
        self.blobs_read
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Maps a store error to the gRPC status a client can act on.
pub fn cas_status(e: CasError) -> Status {
    match &e {
        CasError::NotFound(_) | CasError::Corrupt(_) | CasError::BadActionResult(_) => {
            Status::not_found(e.to_string())
        }
        CasError::DigestMismatch { .. } | CasError::TooLarge { .. } | CasError::Invalid(_) => {
            Status::invalid_argument(e.to_string())
        }
        CasError::NoSpace { .. } | CasError::OverLimit(_) => {
            Status::resource_exhausted(e.to_string())
        }
        CasError::Io { .. } => {
            tracing::error!(error = %e, "storage I/O error");
            Status::internal(e.to_string())
        }
    }
}

/// Maps a digest validation error.
pub fn digest_status(e: DigestError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Maps a resource name error.
pub fn resource_status(e: ResourceError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Runs blocking store work off the async threads.
pub async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker thread failed: {e}")))
}
