//! What completed operations keep, bounded in bytes.
//!
//! A completed operation stays for `execution.operation_retention_secs` so
//! WaitExecution, GetOperation and ListOperations find it. What it keeps is
//! its ExecuteResponse without inlined payloads (stdout, stderr and file
//! contents that also have a digest: a client reads them from the CAS),
//! plus the Action and Command bytes the scheduler holds. All of that
//! together stays under `execution.max_retained_bytes`; beyond it the
//! oldest completed operations are forgotten first, and look expired.

use std::collections::{HashMap, VecDeque};

use prost::Message;
use rbe_proto::reapi::ExecuteResponse;
use rbe_sched::OpId;

/// Bytes counted per operation for its name, maps and watch channel.
const OVERHEAD: usize = 512;

/// Removes inlined payloads whose digest is also given.
pub fn strip_inlined(r: &mut ExecuteResponse) {
    let Some(ar) = r.result.as_mut() else { return };
    if ar.stdout_digest.is_some() {
        ar.stdout_raw = Vec::new();
    }
    if ar.stderr_digest.is_some() {
        ar.stderr_raw = Vec::new();
    }
    for f in &mut ar.output_files {
        if f.digest.is_some() {
            f.contents = Vec::new();
        }
    }
}

/// What a completed operation is counted for.
pub fn cost(name: &str, kept: &ExecuteResponse, payload_bytes: usize) -> usize {
    OVERHEAD + name.len() + kept.encoded_len() + payload_bytes
}

/// Completed operations in the order they completed, with their cost.
#[derive(Default)]
pub struct Retained {
    order: VecDeque<OpId>,
    cost: HashMap<OpId, usize>,
    bytes: usize,
}

impl Retained {
    /// Counts a newly completed operation.
    pub fn add(&mut self, id: OpId, bytes: usize) {
        if let Some(old) = self.cost.insert(id, bytes) {
            self.bytes -= old;
        } else {
            self.order.push_back(id);
        }
        self.bytes += bytes;
    }

    /// Stops counting an operation that expired.
    pub fn remove(&mut self, id: OpId) {
        if let Some(b) = self.cost.remove(&id) {
            self.bytes -= b;
        }
        // Operations expire oldest first, so this keeps `order` short.
        while self
            .order
            .front()
            .is_some_and(|f| !self.cost.contains_key(f))
        {
            self.order.pop_front();
        }
    }

    /// The oldest operations to forget so that at most `max` bytes stay;
    /// they are no longer counted.
    pub fn over(&mut self, max: usize) -> Vec<OpId> {
        let mut evict = Vec::new();
        while self.bytes > max {
            let Some(id) = self.order.pop_front() else {
                break;
            };
            if let Some(b) = self.cost.remove(&id) {
                self.bytes -= b;
                evict.push(id);
            }
        }
        evict
    }

    /// Bytes counted now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Operations counted now.
    pub fn len(&self) -> usize {
        self.cost.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbe_proto::reapi::{ActionResult, Digest, OutputFile};

    fn digest() -> Option<Digest> {
        Some(Digest {
            hash: "ab".repeat(32),
            size_bytes: 1 << 20,
        })
    }

    #[test]
    fn inlined_payloads_with_a_digest_are_not_kept() {
        let mut r = ExecuteResponse {
            result: Some(ActionResult {
                stdout_raw: vec![1; 1 << 20],
                stdout_digest: digest(),
                stderr_raw: vec![2; 10],
                stderr_digest: None,
                output_files: vec![
                    OutputFile {
                        path: "a".into(),
                        digest: digest(),
                        contents: vec![3; 1 << 20],
                        ..Default::default()
                    },
                    OutputFile {
                        path: "b".into(),
                        digest: None,
                        contents: vec![4; 5],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        strip_inlined(&mut r);
        let ar = r.result.expect("result");
        assert!(ar.stdout_raw.is_empty());
        assert_eq!(ar.stdout_digest, digest(), "the digest stays");
        assert_eq!(ar.stderr_raw, vec![2; 10], "no digest: kept");
        assert!(ar.output_files[0].contents.is_empty());
        assert_eq!(ar.output_files[1].contents, vec![4; 5]);
    }

    #[test]
    fn many_large_completions_stay_under_the_bound_oldest_forgotten_first() {
        let max = 4 << 20;
        let mut r = Retained::default();
        let mut forgotten = Vec::new();
        for id in 1..=1000u64 {
            r.add(id, 1 << 20);
            forgotten.extend(r.over(max));
            assert!(r.bytes() <= max, "{} bytes after {id}", r.bytes());
        }
        assert_eq!(r.len(), 4);
        assert_eq!(forgotten, (1..=996).collect::<Vec<_>>());
        // Expiry and eviction agree on the count.
        for id in 997..=1000 {
            r.remove(id);
        }
        assert_eq!((r.bytes(), r.len(), r.order.len()), (0, 0, 0));
        assert!(r.over(0).is_empty());
    }

    #[test]
    fn expired_ones_are_not_evicted_again() {
        let mut r = Retained::default();
        r.add(1, 100);
        r.add(2, 100);
        r.add(3, 100);
        r.remove(2);
        assert_eq!(r.bytes(), 200);
        assert_eq!(r.over(100), vec![1]);
        assert_eq!(r.over(0), vec![3]);
    }
}
