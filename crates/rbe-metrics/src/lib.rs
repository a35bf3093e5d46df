//! Latency quantiles for the daemons' status counters: `rbectl cluster
//! status` (how long the offload decision and an offer's round trip take,
//! design §5) and `rbectl status` (each backing-store operation of casd),
//! since start.
//!
//! A log-linear histogram of atomics: values below 16 have a bucket each,
//! larger ones share a bucket with everything of the same power of two and
//! the same next three bits, so a quantile is off by at most 1/16 of the
//! value (the bucket's middle is reported). Recording is two relaxed
//! increments and takes no lock, so the rebalance pass and the lease tasks
//! never wait on a reader; a reader may see a count and buckets from a
//! moment apart, which a quantile does not notice.

#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::sync::atomic::{AtomicU64, Ordering};

/// Values below this have a bucket each.
const EXACT: u64 = 16;
/// Mantissa bits kept above the leading one.
const SUB_BITS: u32 = 3;
const SUBS: usize = 1 << SUB_BITS;
/// 16 exact buckets, then 8 for each power of two from 2^4 to 2^63.
const BUCKETS: usize = EXACT as usize + (64 - 4) * SUBS;

/// A histogram of `u64` values (the unit is the caller's, in its name).
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let sub = (v >> (exp - SUB_BITS)) as usize & (SUBS - 1);
    EXACT as usize + (exp as usize - 4) * SUBS + sub
}

/// The middle of bucket `i`'s range.
fn middle(i: usize) -> u64 {
    if i < EXACT as usize {
        return i as u64;
    }
    let exp = ((i - EXACT as usize) / SUBS + 4) as u32;
    let sub = ((i - EXACT as usize) % SUBS) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    let low = (1u64 << exp) + sub * width;
    low + width / 2
}

impl Histogram {
    /// Counts one value.
    pub fn record(&self, v: u64) {
        self.buckets[bucket(v)].fetch_add(1, Ordering::Relaxed);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The `q`-quantile (0 < q ≤ 1) of what was recorded, by nearest rank;
    /// `None` before anything was.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(middle(i));
            }
        }
        None
    }

    /// `{name}_count`, `{name}_p50` and `{name}_p99` for the status
    /// counters; only the count before anything was recorded.
    pub fn named(&self, name: &'static str, out: &mut Vec<(String, u64)>) {
        out.push((format!("{name}_count"), self.count()));
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            if let Some(v) = self.quantile(q) {
                out.push((format!("{name}_{label}"), v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        for v in 0..EXACT {
            assert_eq!(middle(bucket(v)), v);
        }
    }

    #[test]
    fn every_value_lands_within_a_sixteenth() {
        let mut v = 1u64;
        while v < u64::MAX / 3 {
            for x in [v, v + 1, v * 3 / 2, v * 2 - 1] {
                let m = middle(bucket(x));
                let err = m.abs_diff(x) as f64 / x.max(1) as f64;
                assert!(err <= 1.0 / 16.0 + 1e-9, "{x} -> {m}");
            }
            v *= 2;
        }
        assert!(bucket(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        let p50 = h.quantile(0.5).expect("p50");
        let p99 = h.quantile(0.99).expect("p99");
        assert!((47..=53).contains(&p50), "{p50}");
        assert!((93..=105).contains(&p99), "{p99}");
        // One slow outlier among fast values shows at p99 only when it is
        // more than 1 % of them.
        let h = Histogram::default();
        for _ in 0..99 {
            h.record(10);
        }
        h.record(1_000_000);
        assert_eq!(h.quantile(0.99), Some(10));
        h.record(1_000_000);
        assert!(h.quantile(0.99).expect("p99") > 900_000);
    }

    #[test]
    fn named_lists_count_then_quantiles() {
        let h = Histogram::default();
        let mut out = Vec::new();
        h.named("offer_rtt_us", &mut out);
        assert_eq!(out, vec![("offer_rtt_us_count".to_owned(), 0)]);
        h.record(700);
        out.clear();
        h.named("offer_rtt_us", &mut out);
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["offer_rtt_us_count", "offer_rtt_us_p50", "offer_rtt_us_p99"]
        );
    }
}
