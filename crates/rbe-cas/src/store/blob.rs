//! Streaming a blob in and out of the store: [`BlobWriter`] hashes while
//! it writes a temp file and publishes it under its name only once
//! verified and durable; [`BlobReader`] reads in chunks, re-hashing when
//! the store verifies reads.

use super::*;

/// A blob being written: bytes go to a temp file and through the hasher.
/// Dropping it without [`BlobWriter::finish`] deletes the temp file.
pub struct BlobWriter {
    pub(super) store: Arc<Store>,
    pub(super) digest: Digest,
    pub(super) tmp_path: PathBuf,
    pub(super) file: Option<File>,
    pub(super) hasher: Hasher,
    pub(super) written: u64,
    // Bytes already handed to writeback with `start_writeback`.
    pub(super) flushed: u64,
    pub(super) renamed: bool,
}

impl BlobWriter {
    /// The blob being written.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends bytes; refuses more than the digest's size.
    pub fn write(&mut self, data: &[u8]) -> Result<(), CasError> {
        let received = self.written + data.len() as u64;
        if received > self.digest.size {
            return Err(CasError::TooLarge {
                digest: self.digest,
                received,
            });
        }
        let file = self.file.as_mut().ok_or_else(|| {
            CasError::io(
                "write",
                &self.tmp_path,
                std::io::Error::other("writer already closed"),
                None,
            )
        })?;
        let hasher = &mut self.hasher;
        let written = if data.len() >= PARALLEL_HASH_BYTES {
            // Hash on a second thread while this one copies into the page
            // cache: the two cost about the same, and both must finish
            // before the call returns.
            std::thread::scope(|s| {
                let h = s.spawn(|| hasher.update(data));
                let w = file.write_all(data);
                let joined = h.join();
                if joined.is_err() {
                    return Err(std::io::Error::other("hashing thread panicked"));
                }
                w
            })
        } else {
            let w = file.write_all(data);
            hasher.update(data);
            w
        };
        written.map_err(|e| CasError::io("write", &self.tmp_path, e, Some(&self.digest)))?;
        self.written = received;
        // Start writeback of what has accumulated, without waiting for it,
        // so the final fsync has little left to do. Durability still comes
        // only from that fsync.
        if self.written - self.flushed >= WRITEBACK_BYTES {
            start_writeback(file, self.flushed, self.written - self.flushed);
            self.flushed = self.written;
        }
        Ok(())
    }

    /// Checks size and hash of everything written, without committing:
    /// a caller that must copy the verified bytes elsewhere first (a
    /// write-through to a backing store) reads them from
    /// [`BlobWriter::temp_path`], then calls [`BlobWriter::finish`].
    pub fn check(&mut self) -> Result<(), CasError> {
        self.verify()
    }

    /// The temp file holding the bytes written so far (complete once
    /// [`BlobWriter::check`] passed); unnamed once finished.
    pub fn temp_path(&self) -> &Path {
        &self.tmp_path
    }

    /// Checks size and hash of everything written.
    pub(super) fn verify(&mut self) -> Result<(), CasError> {
        let hash = self.hasher.clone().finish();
        if self.written != self.digest.size || hash != self.digest.hash {
            return Err(CasError::DigestMismatch {
                expected: self.digest,
                actual_hash: hex::encode(hash),
                actual_size: self.written,
            });
        }
        Ok(())
    }

    pub(super) fn rename_into_place(&mut self) -> Result<(), CasError> {
        self.file = None;
        let key = Key::from(&self.digest);
        let dest = self.store.path(&key);
        // Marked before the rename, so from the moment the name exists until
        // `publish`, eviction and quarantine leave it alone; the rename
        // itself runs without any lock held.
        *self.store.publishing.lock().entry(key).or_insert(0) += 1;
        self.renamed = true;
        let rename_err = |e| CasError::io("rename", &dest, e, Some(&self.digest));
        if !place_new(&self.tmp_path, &dest).map_err(rename_err)? {
            // Another upload of the same blob is in place. Keep its inode:
            // a materialization may be linking it (replacing it would drop
            // its last name under that `linkat`). Only a file of the wrong
            // size, a damaged copy, is replaced.
            match fs::symlink_metadata(&dest) {
                Ok(m) if m.len() == self.digest.size => {
                    let _ = fs::remove_file(&self.tmp_path);
                }
                _ => fs::rename(&self.tmp_path, &dest).map_err(rename_err)?,
            }
        }
        // From here the temp name is gone; Drop must not try to delete it.
        self.tmp_path = PathBuf::new();
        Ok(())
    }

    pub(super) fn publish(&mut self) {
        let key = Key::from(&self.digest);
        self.store.index.lock().insert(key, self.digest.size, false);
        self.unmark();
    }

    pub(super) fn unmark(&mut self) {
        if !std::mem::replace(&mut self.renamed, false) {
            return;
        }
        let key = Key::from(&self.digest);
        let mut publishing = self.store.publishing.lock();
        if let Some(n) = publishing.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                publishing.remove(&key);
            }
        }
    }

    /// Verifies, makes durable, moves into place and indexes the blob.
    pub fn finish(mut self) -> Result<(), CasError> {
        self.verify()?;
        if let Some(f) = self.file.as_ref() {
            f.sync_all()
                .map_err(|e| CasError::io("fsync", &self.tmp_path, e, Some(&self.digest)))?;
        }
        self.rename_into_place()?;
        let dest = self.store.path(&Key::from(&self.digest));
        if let Some(dir) = dest.parent() {
            sync_dir(dir)?;
        }
        self.publish();
        self.store.maybe_evict();
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Renamed but never indexed (a sync failed): the file stays until a
        // restart's scan indexes it; it is no longer protected.
        self.unmark();
        if !self.tmp_path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// A verified chunked reader over one blob.
pub struct BlobReader {
    pub(super) store: Arc<Store>,
    pub(super) inode: (u64, u64),
    pub(super) digest: Digest,
    pub(super) file: Option<File>,
    pub(super) hasher: Option<Hasher>,
    pub(super) pos: u64,
    pub(super) offset: u64,
    pub(super) end: u64,
}

impl BlobReader {
    /// The next chunk of the requested range, `None` at its end. With
    /// verification on, reading past the range's end happens internally to
    /// finish the hash, and a mismatch is an error (the blob is removed).
    pub fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>, CasError> {
        loop {
            let Some(file) = self.file.as_mut() else {
                return Ok(None);
            };
            let total = if self.hasher.is_some() {
                self.digest.size
            } else {
                self.end
            };
            if self.pos >= total {
                self.file = None;
                if let Some(h) = self.hasher.take() {
                    if h.finish() != self.digest.hash {
                        self.store.quarantine_file(&self.digest, Some(self.inode));
                        return Err(CasError::Corrupt(self.digest));
                    }
                }
                return Ok(None);
            }
            let want = (total - self.pos).min(max as u64) as usize;
            // Read into fresh capacity: no need to zero a buffer first.
            let mut buf = Vec::with_capacity(want);
            let got = file
                .take(want as u64)
                .read_to_end(&mut buf)
                .map_err(|e| CasError::io("read", Path::new("blob"), e, Some(&self.digest)))?;
            if got < want {
                self.store.quarantine_file(&self.digest, Some(self.inode));
                return Err(CasError::Corrupt(self.digest));
            }
            if let Some(h) = self.hasher.as_mut() {
                h.update(&buf);
            }
            let start = self.pos;
            self.pos += want as u64;
            // Keep only the part inside [offset, end).
            let lo = self.offset.max(start);
            let hi = self.end.min(self.pos);
            if lo >= hi {
                continue;
            }
            if lo == start && hi == self.pos {
                return Ok(Some(buf));
            }
            return Ok(Some(
                buf[(lo - start) as usize..(hi - start) as usize].to_vec(),
            ));
        }
    }
}
