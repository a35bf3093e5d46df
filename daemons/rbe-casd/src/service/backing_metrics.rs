//! What the backing store costs and saves (Stats `backing`, shown by
//! `rbectl status`), and the journal lines for its failures.
//!
//! Every request to the store goes through [`super::through::Through`],
//! which times it here per [`Op`]: a count, the failures, and a latency
//! histogram (lock-free, `rbe_metrics`). Hit counters say how much the
//! local store and the existence cache spare the backing store.
//!
//! A failure is logged with the fields `backing` (the store's URL),
//! `backing_op`, `digest` where there is one, and `error`, at most once
//! per operation per second ([`FailureLog`]): a dead store under a build's
//! load would otherwise write a line per request. The next line of that
//! operation carries `suppressed`, the count left out before it; Stats
//! counts them all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rbe_backing::BackingError;
use rbe_metrics::Histogram;
use rbe_proto::casd::{BackingOpStats, BackingStats};
use rbe_proto::Digest;

/// A kind of request to the backing store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    FindMissing,
    Read,
    Write,
    WriteBatch,
    GetActionResult,
    UpdateActionResult,
}

impl Op {
    pub const ALL: [Op; 6] = [
        Op::FindMissing,
        Op::Read,
        Op::Write,
        Op::WriteBatch,
        Op::GetActionResult,
        Op::UpdateActionResult,
    ];

    /// The name in Stats and in the journal (`RBE_BACKING_OP`).
    pub fn name(self) -> &'static str {
        match self {
            Op::FindMissing => "find_missing",
            Op::Read => "read",
            Op::Write => "write",
            Op::WriteBatch => "write_batch",
            Op::GetActionResult => "get_action_result",
            Op::UpdateActionResult => "update_action_result",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Default)]
struct OpStats {
    count: AtomicU64,
    errors: AtomicU64,
    latency_us: Histogram,
}

/// Hit counters; each is what its Stats field of the same name says.
#[derive(Default)]
pub struct Hits {
    pub reads_local: AtomicU64,
    pub reads_fetched: AtomicU64,
    pub find_missing_local: AtomicU64,
    pub find_missing_cached: AtomicU64,
    pub find_missing_asked: AtomicU64,
    pub find_missing_absent: AtomicU64,
    pub ac_hits_local: AtomicU64,
    pub ac_hits_backing: AtomicU64,
    pub ac_misses: AtomicU64,
}

/// Adds `n` to a hit counter.
pub fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

/// The backing store's counters since start.
#[derive(Default)]
pub struct Metrics {
    ops: [OpStats; 6],
    pub hits: Hits,
    log: FailureLog,
}

impl Metrics {
    /// Counts a request of `op` that began at `started`.
    pub fn finished(&self, op: Op, started: Instant, failed: bool) {
        let s = &self.ops[op.index()];
        s.count.fetch_add(1, Ordering::Relaxed);
        if failed {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        s.latency_us
            .record(started.elapsed().as_micros().try_into().unwrap_or(u64::MAX));
    }

    /// Failed requests of every kind (Stats `backing_errors`).
    pub fn errors(&self) -> u64 {
        self.ops
            .iter()
            .map(|s| s.errors.load(Ordering::Relaxed))
            .sum()
    }

    /// Logs a failure of `op` unless one was logged within the second.
    pub fn log_failure(&self, address: &str, op: Op, digest: Option<Digest>, e: &BackingError) {
        let Some(suppressed) = self.log.admit(op, Instant::now()) else {
            return;
        };
        let digest = digest.map(tracing::field::display);
        let backing_op = op.name();
        if matches!(e, BackingError::DigestMismatch { .. }) {
            tracing::warn!(backing = address, backing_op, digest, error = %e, suppressed, "backing store sent wrong bytes; refused");
        } else {
            tracing::warn!(backing = address, backing_op, digest, error = %e, suppressed, "backing store request failed");
        }
    }

    pub fn to_proto(&self, address: &str, mode: &str, existence_entries: u64) -> BackingStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let h = &self.hits;
        BackingStats {
            address: address.to_owned(),
            mode: mode.to_owned(),
            ops: Op::ALL
                .iter()
                .map(|op| {
                    let s = &self.ops[op.index()];
                    BackingOpStats {
                        op: op.name().to_owned(),
                        count: load(&s.count),
                        errors: load(&s.errors),
                        p50_us: s.latency_us.quantile(0.5),
                        p99_us: s.latency_us.quantile(0.99),
                    }
                })
                .collect(),
            reads_local: load(&h.reads_local),
            reads_fetched: load(&h.reads_fetched),
            find_missing_local: load(&h.find_missing_local),
            find_missing_cached: load(&h.find_missing_cached),
            find_missing_asked: load(&h.find_missing_asked),
            find_missing_absent: load(&h.find_missing_absent),
            ac_hits_local: load(&h.ac_hits_local),
            ac_hits_backing: load(&h.ac_hits_backing),
            ac_misses: load(&h.ac_misses),
            existence_cache_entries: existence_entries,
            log_lines_suppressed: self.log.suppressed.load(Ordering::Relaxed),
        }
    }
}

/// One failure line per operation per [`FailureLog::WINDOW`].
#[derive(Default)]
pub struct FailureLog {
    windows: [Mutex<Window>; 6],
    suppressed: AtomicU64,
}

#[derive(Default)]
struct Window {
    last: Option<Instant>,
    suppressed: u64,
}

impl FailureLog {
    pub const WINDOW: Duration = Duration::from_secs(1);

    /// `Some(n)`: log this failure of `op`, noting `n` left out since the
    /// last line; `None`: leave it out.
    pub fn admit(&self, op: Op, now: Instant) -> Option<u64> {
        let mut w = self.windows[op.index()].lock();
        match w.last {
            Some(t) if now.saturating_duration_since(t) < Self::WINDOW => {
                w.suppressed += 1;
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                w.last = Some(now);
                Some(std::mem::take(&mut w.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_op_per_second_with_the_count_left_out() {
        let log = FailureLog::default();
        let t0 = Instant::now();
        assert_eq!(log.admit(Op::Read, t0), Some(0));
        for i in 1..=500 {
            assert_eq!(log.admit(Op::Read, t0 + Duration::from_micros(i)), None);
        }
        // Another operation has its own window.
        assert_eq!(log.admit(Op::Write, t0), Some(0));
        assert_eq!(log.admit(Op::Read, t0 + Duration::from_secs(1)), Some(500));
        assert_eq!(log.admit(Op::Read, t0 + Duration::from_secs(3)), Some(0));
        assert_eq!(log.suppressed.load(Ordering::Relaxed), 500);
    }

    #[test]
    fn stats_list_every_op_in_order() {
        let m = Metrics::default();
        m.finished(Op::Read, Instant::now(), false);
        m.finished(Op::Read, Instant::now(), true);
        let p = m.to_proto("unix:/b", "cache", 0);
        let names: Vec<&str> = p.ops.iter().map(|o| o.op.as_str()).collect();
        assert_eq!(
            names,
            [
                "find_missing",
                "read",
                "write",
                "write_batch",
                "get_action_result",
                "update_action_result"
            ]
        );
        assert_eq!((p.ops[1].count, p.ops[1].errors), (2, 1));
        assert!(p.ops[1].p99_us.is_some() && p.ops[0].p50_us.is_none());
        assert_eq!(m.errors(), 1);
    }
}
