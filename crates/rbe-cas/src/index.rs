//! The in-memory index: which blobs are on disk, their sizes, LRU order and
//! pins. FindMissingBlobs, eviction and the action cache's completeness check
//! are answered from here, never from a directory walk.
//!
//! Layout, chosen for memory per blob (the benchmark target is <= 128 bytes):
//! entries live in a slab (`Vec<Entry>`, 56 bytes each) linked into an LRU
//! list by u32 indices; the hash table holds only the u32 slab index (plus
//! hashbrown's one control byte) and finds keys through the slab.

use hashbrown::HashTable;
use rbe_proto::{Digest, DigestFunction};

const NIL: u32 = u32::MAX;

/// An index key: the function and hash (the size follows from the content).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Key {
    /// Digest function.
    pub function: DigestFunction,
    /// Raw hash.
    pub hash: [u8; 32],
}

impl From<&Digest> for Key {
    fn from(d: &Digest) -> Self {
        Key {
            function: d.function,
            hash: d.hash,
        }
    }
}

struct Entry {
    size: u64,
    prev: u32,
    next: u32,
    pins: u32,
    key: Key,
}

/// What an eviction pass chose to remove.
pub struct Victim {
    /// The evicted blob.
    pub key: Key,
    /// Its size.
    pub size: u64,
}

/// The index. Not thread-safe by itself; the store wraps it in a mutex.
pub struct Index {
    table: HashTable<u32>,
    slab: Vec<Entry>,
    free: Vec<u32>,
    head: u32, // most recently used
    tail: u32, // least recently used
    bytes: u64,
    pinned: u64,
}

fn hash_key(k: &Key) -> u64 {
    // Keys are cryptographic hashes of verified content, so their first bytes
    // are already uniformly distributed and cannot be chosen by a client.
    let mut b = [0u8; 8];
    b.copy_from_slice(&k.hash[..8]);
    u64::from_le_bytes(b) ^ (k.function as u64)
}

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Index {
            table: HashTable::new(),
            slab: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            bytes: 0,
            pinned: 0,
        }
    }

    /// Reserves room for `n` more entries (startup scan knows the count).
    pub fn reserve(&mut self, n: usize) {
        self.slab.reserve(n);
        let slab = &self.slab;
        self.table.reserve(n, |&i| hash_key(&slab[i as usize].key));
    }

    /// Number of blobs.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Sum of blob sizes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of pinned blobs.
    pub fn pinned(&self) -> u64 {
        self.pinned
    }

    /// Every blob held, with its size, from the most recently used.
    pub fn entries(&self) -> Vec<(Key, u64)> {
        let mut out = Vec::with_capacity(self.table.len());
        let mut i = self.head;
        while i != NIL {
            let e = &self.slab[i as usize];
            out.push((e.key, e.size));
            i = e.next;
        }
        out
    }

    fn find(&self, k: &Key) -> Option<u32> {
        let slab = &self.slab;
        self.table
            .find(hash_key(k), |&i| slab[i as usize].key == *k)
            .copied()
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let e = &self.slab[i as usize];
            (e.prev, e.next)
        };
        if prev != NIL {
            self.slab[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.slab[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let e = &mut self.slab[i as usize];
            e.prev = NIL;
            e.next = old;
        }
        if old != NIL {
            self.slab[old as usize].prev = i;
        } else {
            self.tail = i;
        }
        self.head = i;
    }

    /// Whether the blob is present; a hit counts as a use.
    pub fn touch(&mut self, k: &Key) -> Option<u64> {
        let i = self.find(k)?;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        Some(self.slab[i as usize].size)
    }

    /// Whether the blob is present, without changing LRU order.
    pub fn peek(&self, k: &Key) -> Option<u64> {
        self.find(k).map(|i| self.slab[i as usize].size)
    }

    /// Adds a blob as most recently used (or touches it if present).
    /// `as_oldest` puts it at the cold end instead (startup scan in age order).
    pub fn insert(&mut self, k: Key, size: u64, as_oldest: bool) {
        if self.touch(&k).is_some() {
            return;
        }
        let entry = Entry {
            size,
            prev: NIL,
            next: NIL,
            pins: 0,
            key: k,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = entry;
                i
            }
            None => {
                self.slab.push(entry);
                (self.slab.len() - 1) as u32
            }
        };
        let slab = &self.slab;
        self.table
            .insert_unique(hash_key(&k), i, |&j| hash_key(&slab[j as usize].key));
        if as_oldest && self.tail != NIL {
            let t = self.tail;
            self.slab[i as usize].prev = t;
            self.slab[t as usize].next = i;
            self.tail = i;
        } else {
            self.push_front(i);
        }
        self.bytes += size;
    }

    /// Removes a blob; returns its size if it was present.
    pub fn remove(&mut self, k: &Key) -> Option<u64> {
        let slab = &self.slab;
        let entry = self
            .table
            .find_entry(hash_key(k), |&i| slab[i as usize].key == *k)
            .ok()?;
        let (i, _) = entry.remove();
        self.unlink(i);
        let e = &self.slab[i as usize];
        let size = e.size;
        if e.pins > 0 {
            self.pinned -= 1;
        }
        self.bytes -= size;
        self.free.push(i);
        Some(size)
    }

    /// Adds a pin; false when the blob is absent.
    pub fn pin(&mut self, k: &Key) -> bool {
        match self.find(k) {
            Some(i) => {
                let e = &mut self.slab[i as usize];
                if e.pins == 0 {
                    self.pinned += 1;
                }
                e.pins = e.pins.saturating_add(1);
                true
            }
            None => false,
        }
    }

    /// Pins the blob unless it is pinned already (the caller counts its
    /// holders itself); false when the blob is absent.
    pub fn hold(&mut self, k: &Key) -> bool {
        match self.find(k) {
            Some(i) if self.slab[i as usize].pins > 0 => true,
            Some(_) => self.pin(k),
            None => false,
        }
    }

    /// Drops a pin taken with [`Index::pin`].
    pub fn unpin(&mut self, k: &Key) {
        if let Some(i) = self.find(k) {
            let e = &mut self.slab[i as usize];
            if e.pins > 0 {
                e.pins -= 1;
                if e.pins == 0 {
                    self.pinned -= 1;
                }
            }
        }
    }

    /// Removes a blob if no pin holds it; returns its size if removed.
    pub fn remove_unpinned(&mut self, k: &Key) -> Option<u64> {
        let i = self.find(k)?;
        if self.slab[i as usize].pins > 0 {
            return None;
        }
        self.remove(k)
    }

    /// Removes least recently used, unpinned blobs until at most `target`
    /// bytes remain, and returns them for deletion from disk.
    pub fn evict_to(&mut self, target: u64) -> Vec<Victim> {
        let mut victims = Vec::new();
        let mut cursor = self.tail;
        while self.bytes > target && cursor != NIL {
            let e = &self.slab[cursor as usize];
            let prev = e.prev;
            if e.pins == 0 {
                let key = e.key;
                if let Some(size) = self.remove(&key) {
                    victims.push(Victim { key, size });
                }
            }
            cursor = prev;
        }
        victims
    }

    /// Approximate heap bytes used (for the memory-per-blob benchmark).
    pub fn heap_bytes(&self) -> usize {
        self.slab.capacity() * std::mem::size_of::<Entry>()
            + self.table.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.free.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        let mut hash = [0u8; 32];
        hash[0] = n;
        hash[31] = n;
        Key {
            function: DigestFunction::Sha256,
            hash,
        }
    }

    #[test]
    fn lru_order_and_eviction() {
        let mut ix = Index::new();
        for n in 0..5 {
            ix.insert(key(n), 10, false);
        }
        assert_eq!(ix.bytes(), 50);
        ix.touch(&key(0)); // 0 becomes newest; 1 is oldest
        assert!(ix.pin(&key(1)));
        let v = ix.evict_to(30);
        let evicted: Vec<u8> = v.iter().map(|v| v.key.hash[0]).collect();
        assert_eq!(evicted, vec![2, 3]); // 1 is pinned and skipped
        assert_eq!(ix.bytes(), 30);
        assert!(ix.peek(&key(1)).is_some());
        ix.unpin(&key(1));
        let v = ix.evict_to(10);
        assert_eq!(v.len(), 2);
        assert_eq!(ix.peek(&key(0)), Some(10));
    }

    #[test]
    fn entries_lists_every_live_blob_once() {
        let mut ix = Index::new();
        for n in 0..4 {
            ix.insert(key(n), u64::from(n) + 1, false);
        }
        ix.remove(&key(2));
        ix.touch(&key(0));
        let e: Vec<(u8, u64)> = ix.entries().iter().map(|(k, s)| (k.hash[0], *s)).collect();
        assert_eq!(e, vec![(0, 1), (3, 4), (1, 2)]);
    }

    #[test]
    fn slots_are_reused() {
        let mut ix = Index::new();
        ix.insert(key(1), 1, false);
        ix.remove(&key(1));
        ix.insert(key(2), 2, false);
        assert_eq!(ix.slab.len(), 1);
        assert_eq!(ix.len(), 1);
        assert_eq!(ix.peek(&key(1)), None);
        ix.insert(key(3), 3, true);
        let v = ix.evict_to(2);
        assert_eq!(v[0].key, key(3));
    }

    #[test]
    fn entry_is_compact() {
        assert!(std::mem::size_of::<Entry>() <= 56);
    }
}
