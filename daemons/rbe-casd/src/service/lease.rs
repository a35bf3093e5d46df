//! Releasing leases, and the lease Materialize takes for its caller.
//!
//! In `[backing] mode = "jit"` a released lease's blobs that no other
//! lease holds are removed from the scratch at once (`Store::reclaim`):
//! the backing store keeps them, and an action's inputs are not needed
//! once it is over. Pins are counted per lease (`rbe_cas::pins`), so
//! actions sharing an input keep it until the last of them is done.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use super::{blocking, Casd};

/// Releases lease `id`; in jit mode reclaims what it held and no other
/// lease holds. False when the lease is unknown (released, expired).
pub async fn release(casd: &Arc<Casd>, id: &str) -> Result<bool, Status> {
    let Some(held) = casd.leases.release(id) else {
        return Ok(false);
    };
    if casd.jit() {
        let store = Arc::clone(&casd.store);
        let (blobs, bytes) = blocking(move || store.reclaim(&held)).await?;
        tracing::debug!(lease = %id, blobs, freed_bytes = bytes, "scratch reclaimed after unpin");
    }
    Ok(true)
}

/// A lease taken for one Materialize: released when dropped (an error, a
/// caller that went away, an answer with missing blobs) unless handed to
/// the caller with [`Held::keep`].
pub struct Held {
    casd: Arc<Casd>,
    id: Option<String>,
}

impl Held {
    /// An empty lease lasting `ttl` (capped by `storage.max_pin_ttl_secs`)
    /// from its last pin.
    pub fn open(casd: &Arc<Casd>, ttl: Duration) -> Held {
        Held {
            id: Some(casd.leases.open(ttl)),
            casd: Arc::clone(casd),
        }
    }

    /// The lease's id.
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    /// Hands the lease over: the caller releases it with Unpin.
    pub fn keep(mut self) -> String {
        self.id.take().unwrap_or_default()
    }

    /// Releases the lease now, reclaim included.
    pub async fn release(mut self) -> Result<(), Status> {
        if let Some(id) = self.id.take() {
            release(&self.casd, &id).await?;
        }
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        // The pins go at once; the reclaim, which unlinks files, on a
        // blocking thread nobody waits for.
        let Some(held) = self.casd.leases.release(&id) else {
            return;
        };
        if self.casd.jit() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let store = Arc::clone(&self.casd.store);
                rt.spawn_blocking(move || store.reclaim(&held));
            }
        }
    }
}
