//! The positive existence cache of `[backing] mode = "cache"`: digests the
//! backing store said it holds (answering FindMissingBlobs, or by
//! acknowledging an upload) are taken as present for
//! `backing.existence_cache_secs` without asking it again, so a build
//! that asks about the same inputs over and over costs the store one
//! question per blob and window.
//!
//! The trade-off, documented in rbe.toml(5): a blob deleted from the store
//! inside the window is still reported present; a read then fetches it,
//! fails NOT_FOUND, and the client uploads it again. Never used in jit
//! mode, where existence is always the store's answer. Only positive
//! answers are kept: a blob reported missing is asked about again, since
//! a client is about to upload it.
//!
//! Bounded by `backing.existence_cache_entries`: when full, the entry
//! inserted (or refreshed) longest ago goes first. Memory: a map slot is
//! 73 bytes (a 48-byte digest, its time and number, a control byte) and
//! the table holds 1.15 to 2.3 slots an entry; the queue's 56-byte
//! entries are kept within 1.25 times the bound: up to about 250 bytes
//! an entry. Time is passed in, so
//! tests need no clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rbe_proto::Digest;

/// Digests the backing store holds, as of a recent answer.
pub struct ExistenceCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    /// When each digest was last confirmed, and that insertion's number.
    at: HashMap<Digest, (Instant, u64)>,
    /// Insertions, oldest first; one whose number differs from `at`'s is
    /// stale (refreshed or dropped since) and skipped.
    order: VecDeque<(Digest, u64)>,
    next: u64,
}

impl ExistenceCache {
    /// `None` when either bound is zero: the cache is off.
    pub fn new(ttl: Duration, capacity: usize) -> Option<ExistenceCache> {
        if ttl.is_zero() || capacity == 0 {
            return None;
        }
        Some(ExistenceCache {
            ttl,
            capacity,
            inner: Mutex::new(Inner {
                at: HashMap::new(),
                order: VecDeque::new(),
                next: 0,
            }),
        })
    }

    /// From `[backing]`: off in jit mode.
    pub fn from_settings(b: &rbe_config::Backing) -> Option<ExistenceCache> {
        if b.mode != rbe_config::BackingMode::Cache {
            return None;
        }
        ExistenceCache::new(
            Duration::from_secs(b.existence_cache_secs),
            usize::try_from(b.existence_cache_entries).unwrap_or(usize::MAX),
        )
    }

    /// Remembers that the store held each of `ds` at `now`.
    pub fn insert_all(&self, ds: impl IntoIterator<Item = Digest>, now: Instant) {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        for d in ds {
            let n = inner.next;
            inner.next += 1;
            inner.at.insert(d, (now, n));
            inner.order.push_back((d, n));
            while inner.at.len() > self.capacity {
                match inner.order.pop_front() {
                    Some((old, n)) if inner.at.get(&old).is_some_and(|e| e.1 == n) => {
                        inner.at.remove(&old);
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        }
        // Refreshes leave stale entries behind; drop them before the
        // queue outgrows the bound by a quarter (amortized: a quarter of
        // the bound's inserts happen between two passes).
        if inner.order.len() > self.slack() {
            let at = &inner.at;
            inner
                .order
                .retain(|(d, n)| at.get(d).is_some_and(|e| e.1 == *n));
        }
    }

    /// Those of `ds` the cache does not know to be present at `now`, in
    /// their order; the others are taken as present.
    pub fn unknown(&self, ds: Vec<Digest>, now: Instant) -> Vec<Digest> {
        let mut g = self.inner.lock();
        ds.into_iter()
            .filter(|d| match g.at.get(d) {
                Some((t, _)) if now.saturating_duration_since(*t) < self.ttl => false,
                Some(_) => {
                    g.at.remove(d);
                    true
                }
                None => true,
            })
            .collect()
    }

    /// Most queue entries, live or stale, before stale ones are dropped.
    fn slack(&self) -> usize {
        self.capacity + self.capacity / 4 + 1024
    }

    /// Digests remembered now (expired ones included until looked up or
    /// pushed out).
    pub fn len(&self) -> usize {
        self.inner.lock().at.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rbe_proto::DigestFunction;

    fn d(i: u32) -> Digest {
        Digest::of(DigestFunction::Sha256, &i.to_le_bytes())
    }

    #[test]
    fn off_when_a_bound_is_zero_or_in_jit_mode() {
        assert!(ExistenceCache::new(Duration::ZERO, 10).is_none());
        assert!(ExistenceCache::new(Duration::from_secs(1), 0).is_none());
        let mut b = rbe_config::Backing {
            mode: rbe_config::BackingMode::Jit,
            ..Default::default()
        };
        assert!(ExistenceCache::from_settings(&b).is_none());
        b.mode = rbe_config::BackingMode::Cache;
        assert!(ExistenceCache::from_settings(&b).is_some());
    }

    #[test]
    fn known_digests_answer_until_they_expire() {
        let c = ExistenceCache::new(Duration::from_secs(60), 100).unwrap();
        let t0 = Instant::now();
        c.insert_all([d(1), d(2)], t0);
        let ask = vec![d(1), d(3), d(2)];
        assert_eq!(c.unknown(ask.clone(), t0), vec![d(3)]);
        assert_eq!(
            c.unknown(ask.clone(), t0 + Duration::from_secs(59)),
            vec![d(3)]
        );
        // At the window's end each is asked about again, and forgotten.
        assert_eq!(c.unknown(ask.clone(), t0 + Duration::from_secs(60)), ask);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn a_refresh_restarts_the_window() {
        let c = ExistenceCache::new(Duration::from_secs(10), 100).unwrap();
        let t0 = Instant::now();
        c.insert_all([d(1)], t0);
        c.insert_all([d(1)], t0 + Duration::from_secs(8));
        assert!(c
            .unknown(vec![d(1)], t0 + Duration::from_secs(15))
            .is_empty());
    }

    #[test]
    fn the_bound_holds_and_the_oldest_go_first() {
        let c = ExistenceCache::new(Duration::from_secs(60), 3).unwrap();
        let t0 = Instant::now();
        c.insert_all((1..=3).map(d), t0);
        // 1 is refreshed, so 2 is now the oldest.
        c.insert_all([d(1)], t0);
        c.insert_all([d(4)], t0);
        assert_eq!(c.len(), 3);
        assert_eq!(c.unknown((1..=4).map(d).collect(), t0), vec![d(2)]);
        c.insert_all((10..1000).map(d), t0);
        assert_eq!(c.len(), 3);
        assert_eq!(
            c.unknown((995..1000).map(d).collect(), t0),
            vec![d(995), d(996)]
        );
    }

    #[test]
    fn refreshing_one_digest_forever_keeps_the_queue_bounded() {
        let c = ExistenceCache::new(Duration::from_secs(60), 2).unwrap();
        let t0 = Instant::now();
        for i in 0..100_000u64 {
            c.insert_all([d(1)], t0 + Duration::from_nanos(i));
        }
        assert_eq!(c.len(), 1);
        assert!(c.inner.lock().order.len() <= c.slack());
    }
}
