//! Resumable ByteStream uploads. When a Write stream breaks, its writer is
//! parked under the resource name so `QueryWriteStatus` can report the
//! committed size and a new Write can continue from there. Parked uploads
//! expire; their temp files are deleted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::store::BlobWriter;

/// Parked, resumable uploads keyed by resource name.
pub struct Uploads {
    parked: Mutex<HashMap<String, (BlobWriter, Instant)>>,
    // Uploads with a stream attached right now, and their committed bytes.
    active: Mutex<HashMap<String, Arc<AtomicU64>>>,
    // Milliseconds; a reload may change it.
    expiry_ms: std::sync::atomic::AtomicU64,
    max_parked: usize,
}

impl Uploads {
    /// A registry whose entries lapse after `expiry`; at most `max_parked`
    /// are kept (the oldest is dropped first) so memory and fds stay bounded.
    pub fn new(expiry: Duration, max_parked: usize) -> Self {
        Uploads {
            parked: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            expiry_ms: std::sync::atomic::AtomicU64::new(crate::millis(expiry)),
            max_parked,
        }
    }

    /// Applies a reloaded expiry to parked uploads from now on.
    pub fn set_expiry(&self, expiry: Duration) {
        self.expiry_ms
            .store(crate::millis(expiry), std::sync::atomic::Ordering::Relaxed);
    }

    /// Parks an interrupted upload.
    pub fn park(&self, name: String, w: BlobWriter) {
        let mut p = self.parked.lock();
        if p.len() >= self.max_parked {
            if let Some(oldest) = p
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            {
                p.remove(&oldest);
            }
        }
        p.insert(name, (w, Instant::now()));
    }

    /// Takes a parked upload to continue it.
    pub fn take(&self, name: &str) -> Option<BlobWriter> {
        self.parked.lock().remove(name).map(|(w, _)| w)
    }

    /// Marks an upload as having a stream attached; `None` if another
    /// stream is already writing it. The counter is for QueryWriteStatus.
    pub fn activate(&self, name: &str) -> Option<ActiveUpload<'_>> {
        let mut a = self.active.lock();
        if a.contains_key(name) {
            return None;
        }
        let committed = Arc::new(AtomicU64::new(0));
        a.insert(name.to_string(), Arc::clone(&committed));
        Some(ActiveUpload {
            uploads: self,
            name: name.to_string(),
            committed,
        })
    }

    /// Bytes committed by an active or parked upload.
    pub fn committed(&self, name: &str) -> Option<u64> {
        if let Some(c) = self.active.lock().get(name) {
            return Some(c.load(Ordering::Acquire));
        }
        self.parked.lock().get(name).map(|(w, _)| w.written())
    }

    /// Drops expired uploads; returns how many.
    pub fn sweep(&self) -> usize {
        let mut p = self.parked.lock();
        let before = p.len();
        let expiry =
            Duration::from_millis(self.expiry_ms.load(std::sync::atomic::Ordering::Relaxed));
        p.retain(|_, (_, t)| t.elapsed() < expiry);
        before - p.len()
    }
}

/// An upload with a stream attached; dropping it detaches.
pub struct ActiveUpload<'a> {
    uploads: &'a Uploads,
    name: String,
    committed: Arc<AtomicU64>,
}

impl ActiveUpload<'_> {
    /// Records the bytes committed so far.
    pub fn set_committed(&self, n: u64) {
        self.committed.store(n, Ordering::Release);
    }
}

impl Drop for ActiveUpload<'_> {
    fn drop(&mut self) {
        self.uploads.active.lock().remove(&self.name);
    }
}
