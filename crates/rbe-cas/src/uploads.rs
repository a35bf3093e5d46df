//! Resumable ByteStream uploads. When a Write stream breaks, its writer is
//! parked under the resource name so `QueryWriteStatus` can report the
//! committed size and a new Write can continue from there. Parked uploads
//! expire; their temp files are deleted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::store::BlobWriter;

/// Parked, resumable uploads keyed by resource name.
pub struct Uploads {
    parked: Mutex<HashMap<String, (BlobWriter, Instant)>>,
    expiry: Duration,
    max_parked: usize,
}

impl Uploads {
    /// A registry whose entries lapse after `expiry`; at most `max_parked`
    /// are kept (the oldest is dropped first) so memory and fds stay bounded.
    pub fn new(expiry: Duration, max_parked: usize) -> Self {
        Uploads {
            parked: Mutex::new(HashMap::new()),
            expiry,
            max_parked,
        }
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

    /// Bytes committed by a parked upload.
    pub fn committed(&self, name: &str) -> Option<u64> {
        self.parked.lock().get(name).map(|(w, _)| w.written())
    }

    /// Drops expired uploads; returns how many.
    pub fn sweep(&self) -> usize {
        let mut p = self.parked.lock();
        let before = p.len();
        let expiry = self.expiry;
        p.retain(|_, (_, t)| t.elapsed() < expiry);
        before - p.len()
    }
}
