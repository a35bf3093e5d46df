//! Leases: named sets of pinned blobs with a time to live, so that an upload
//! in progress or an action's inputs are not evicted under it, and a client
//! that disappears cannot pin blobs forever.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rbe_proto::Digest;

use crate::store::Store;

/// The lease table.
pub struct Leases {
    store: Arc<Store>,
    leases: Mutex<HashMap<String, (Vec<Digest>, Instant)>>,
    // Milliseconds; a reload may change it.
    max_ttl_ms: std::sync::atomic::AtomicU64,
}

impl Leases {
    /// A table whose leases last at most `max_ttl`.
    pub fn new(store: Arc<Store>, max_ttl: Duration) -> Self {
        Leases {
            store,
            leases: Mutex::new(HashMap::new()),
            max_ttl_ms: std::sync::atomic::AtomicU64::new(crate::millis(max_ttl)),
        }
    }

    /// Applies a reloaded ceiling to leases taken from now on.
    pub fn set_max_ttl(&self, max_ttl: Duration) {
        self.max_ttl_ms
            .store(crate::millis(max_ttl), std::sync::atomic::Ordering::Relaxed);
    }

    fn max_ttl(&self) -> Duration {
        Duration::from_millis(self.max_ttl_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Pins what is present; returns the lease id and the absent digests.
    pub fn pin(&self, digests: Vec<Digest>, ttl: Duration) -> (String, Vec<Digest>) {
        let missing = self.store.pin(&digests);
        let pinned: Vec<Digest> = digests
            .into_iter()
            .filter(|d| !missing.contains(d) && !d.is_empty_blob())
            .collect();
        let id = uuid::Uuid::new_v4().to_string();
        let until = Instant::now() + ttl.min(self.max_ttl());
        self.leases.lock().insert(id.clone(), (pinned, until));
        (id, missing)
    }

    /// Releases a lease; false if unknown (already released or expired).
    pub fn unpin(&self, id: &str) -> bool {
        self.release(id).is_some()
    }

    /// Releases a lease and returns the blobs it held; `None` if unknown.
    pub fn release(&self, id: &str) -> Option<Vec<Digest>> {
        let (ds, _) = self.leases.lock().remove(id)?;
        self.store.unpin(&ds);
        Some(ds)
    }

    /// Releases expired leases; returns how many.
    pub fn sweep(&self) -> usize {
        self.sweep_released().len()
    }

    /// Releases expired leases; returns the blobs each held.
    pub fn sweep_released(&self) -> Vec<Vec<Digest>> {
        let now = Instant::now();
        let expired: Vec<Vec<Digest>> = {
            let mut l = self.leases.lock();
            let ids: Vec<String> = l
                .iter()
                .filter(|(_, (_, t))| *t <= now)
                .map(|(k, _)| k.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| l.remove(&id).map(|(d, _)| d))
                .collect()
        };
        for ds in &expired {
            self.store.unpin(ds);
        }
        expired
    }
}
