//! Leases: named sets of pinned blobs with a time to live, so that an upload
//! in progress or an action's inputs are not evicted under it, and a client
//! that disappears cannot pin blobs forever.
//!
//! How many leases hold a blob is counted here, not in the index: the
//! index's pin is on or off. An index entry can be removed while pinned (a
//! corrupt file, a file gone behind the store's back) and the blob stored
//! again; a count in the entry would restart at zero, and the release of a
//! lease taken on the old entry would then take away the pin of a lease
//! taken on the new one. Counted per digest here, a release unpins only
//! when no lease holds the blob any more.
//!
//! A blob is pinned only if present, under the index's lock, so pinning is
//! also the existence check that counts: a caller that saw a blob present
//! (a walk, a finished fetch) and pins it afterwards learns from
//! [`Leases::add`] whether it is still there, and fetches it again if a
//! reclaim or an eviction got there first.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rbe_proto::Digest;

use crate::store::Store;

struct Lease {
    held: HashSet<Digest>,
    until: Instant,
    ttl: Duration,
}

#[derive(Default)]
struct Table {
    leases: HashMap<String, Lease>,
    /// Leases holding each pinned blob.
    holders: HashMap<Digest, u32>,
}

impl Table {
    /// Forgets the lease's holds; unpins in the store what no other lease
    /// holds. Called under the table's lock, so a concurrent `add` of the
    /// same blob cannot have its fresh pin undone.
    fn drop_holds(&mut self, store: &Store, held: &HashSet<Digest>) {
        let mut last = Vec::new();
        for d in held {
            if let Some(n) = self.holders.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    self.holders.remove(d);
                    last.push(*d);
                }
            }
        }
        store.unpin(&last);
    }
}

/// The lease table.
pub struct Leases {
    store: Arc<Store>,
    table: Mutex<Table>,
    // Milliseconds; a reload may change it.
    max_ttl_ms: AtomicU64,
}

impl Leases {
    /// A table whose leases last at most `max_ttl`.
    pub fn new(store: Arc<Store>, max_ttl: Duration) -> Self {
        Leases {
            store,
            table: Mutex::new(Table::default()),
            max_ttl_ms: AtomicU64::new(crate::millis(max_ttl)),
        }
    }

    /// Applies a reloaded ceiling to leases taken from now on.
    pub fn set_max_ttl(&self, max_ttl: Duration) {
        self.max_ttl_ms
            .store(crate::millis(max_ttl), Ordering::Relaxed);
    }

    fn max_ttl(&self) -> Duration {
        Duration::from_millis(self.max_ttl_ms.load(Ordering::Relaxed))
    }

    /// An empty lease lasting `ttl` (capped by the ceiling) from its last
    /// [`Leases::add`]; returns its id.
    pub fn open(&self, ttl: Duration) -> String {
        let ttl = ttl.min(self.max_ttl());
        let id = uuid::Uuid::new_v4().to_string();
        let lease = Lease {
            held: HashSet::new(),
            until: Instant::now() + ttl,
            ttl,
        };
        self.table.lock().leases.insert(id.clone(), lease);
        id
    }

    /// Pins those of `ds` that are present under the lease (each once,
    /// however often it is named or added) and restarts its time to live.
    /// Returns the absent ones, or `None` if the lease is unknown (released,
    /// or expired).
    pub fn add(&self, id: &str, ds: &[Digest]) -> Option<Vec<Digest>> {
        let mut t = self.table.lock();
        let Table { leases, holders } = &mut *t;
        let lease = leases.get_mut(id)?;
        lease.until = Instant::now() + lease.ttl;
        let mut wanted: Vec<Digest> = ds
            .iter()
            .filter(|d| !d.is_empty_blob() && !lease.held.contains(*d))
            .copied()
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let absent = self.store.hold(&wanted);
        let absent_set: HashSet<&Digest> = absent.iter().collect();
        for d in wanted.iter().filter(|d| !absent_set.contains(d)) {
            lease.held.insert(*d);
            *holders.entry(*d).or_insert(0) += 1;
        }
        Some(absent)
    }

    /// Pins what is present under a new lease; returns the lease id and
    /// the absent digests.
    pub fn pin(&self, digests: Vec<Digest>, ttl: Duration) -> (String, Vec<Digest>) {
        let id = self.open(ttl);
        let missing = self.add(&id, &digests).unwrap_or_default();
        (id, missing)
    }

    /// Releases a lease; false if unknown (already released or expired).
    pub fn unpin(&self, id: &str) -> bool {
        self.release(id).is_some()
    }

    /// Releases a lease and returns the blobs it held; `None` if unknown.
    /// Those other leases hold stay pinned.
    pub fn release(&self, id: &str) -> Option<Vec<Digest>> {
        let mut t = self.table.lock();
        let lease = t.leases.remove(id)?;
        t.drop_holds(&self.store, &lease.held);
        Some(lease.held.into_iter().collect())
    }

    /// Releases expired leases; returns how many.
    pub fn sweep(&self) -> usize {
        self.sweep_released().len()
    }

    /// Releases expired leases; returns the blobs each held.
    pub fn sweep_released(&self) -> Vec<Vec<Digest>> {
        let now = Instant::now();
        let mut t = self.table.lock();
        let ids: Vec<String> = t
            .leases
            .iter()
            .filter(|(_, l)| l.until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut expired = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(lease) = t.leases.remove(&id) {
                t.drop_holds(&self.store, &lease.held);
                expired.push(lease.held.into_iter().collect());
            }
        }
        expired
    }
}
