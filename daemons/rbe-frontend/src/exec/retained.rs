//! What operation handles nobody streams keep, bounded in bytes.
//!
//! A completed operation stays for `execution.operation_retention_secs` so
//! WaitExecution, GetOperation and ListOperations find it. What each of
//! its handles keeps is its ExecuteResponse without inlined payloads
//! (stdout, stderr and file contents that also have a digest: a client
//! reads them from the CAS), plus, for the handle that submitted the
//! action, the Action and Command bytes the scheduler holds. Handles that
//! are done, or that no stream follows (a client left, or cancelled), are
//! counted here; all of that together stays under
//! `execution.max_retained_bytes`, and beyond it the oldest are forgotten
//! first, and look expired. Handles with a stream open are bounded by the
//! streams instead.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use prost::Message;
use rbe_proto::reapi::ExecuteResponse;

/// Bytes counted per handle for its name, maps and watch channel.
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

/// What a handle is counted for.
pub fn cost(name: &str, kept: Option<&ExecuteResponse>, payload_bytes: usize) -> usize {
    OVERHEAD + name.len() + kept.map_or(0, Message::encoded_len) + payload_bytes
}

/// Counted entries in the order they were (last) counted, with their cost.
pub struct Retained<K> {
    /// Entries with the generation they were counted at: one removed and
    /// counted again is found at its new place only.
    order: VecDeque<(K, u64)>,
    cost: HashMap<K, (usize, u64)>,
    bytes: usize,
    generation: u64,
}

impl<K> Default for Retained<K> {
    fn default() -> Self {
        Retained {
            order: VecDeque::new(),
            cost: HashMap::new(),
            bytes: 0,
            generation: 0,
        }
    }
}

impl<K: Copy + Eq + Hash> Retained<K> {
    /// Counts an entry, or updates the cost of one counted already (it
    /// keeps its place).
    pub fn add(&mut self, id: K, bytes: usize) {
        if let Some((old, _)) = self.cost.get_mut(&id) {
            self.bytes = self.bytes - *old + bytes;
            *old = bytes;
            return;
        }
        self.generation += 1;
        self.cost.insert(id, (bytes, self.generation));
        self.order.push_back((id, self.generation));
        self.bytes += bytes;
    }

    /// Stops counting an entry (it expired, or is in use again).
    pub fn remove(&mut self, id: K) {
        if let Some((b, _)) = self.cost.remove(&id) {
            self.bytes -= b;
        }
        // Entries mostly expire oldest first, so this keeps `order` short.
        while self.order.front().is_some_and(|f| !self.counted(f)) {
            self.order.pop_front();
        }
    }

    fn counted(&self, (id, generation): &(K, u64)) -> bool {
        self.cost.get(id).is_some_and(|(_, g)| g == generation)
    }

    /// The oldest entries to forget so that at most `max` bytes stay; they
    /// are no longer counted.
    pub fn over(&mut self, max: usize) -> Vec<K> {
        let mut evict = Vec::new();
        while self.bytes > max {
            let Some(entry) = self.order.pop_front() else {
                break;
            };
            if self.counted(&entry) {
                if let Some((b, _)) = self.cost.remove(&entry.0) {
                    self.bytes -= b;
                }
                evict.push(entry.0);
            }
        }
        evict
    }

    /// Bytes counted now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries counted now.
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
        let mut r = Retained::<u64>::default();
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
        let mut r = Retained::<u64>::default();
        r.add(1, 100);
        r.add(2, 100);
        r.add(3, 100);
        r.remove(2);
        assert_eq!(r.bytes(), 200);
        assert_eq!(r.over(100), vec![1]);
        assert_eq!(r.over(0), vec![3]);
    }

    #[test]
    fn one_counted_again_moves_to_the_back() {
        let mut r = Retained::<u64>::default();
        r.add(1, 100);
        r.add(2, 100);
        r.remove(1);
        r.add(1, 50);
        r.add(2, 70);
        assert_eq!(r.bytes(), 120);
        assert_eq!(r.over(50), vec![2]);
        assert_eq!(r.over(0), vec![1]);
        assert_eq!((r.bytes(), r.len()), (0, 0));
    }
}
