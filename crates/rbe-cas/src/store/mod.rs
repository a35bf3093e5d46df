//! The on-disk CAS: `<root>/cas.v1/<function>/<2 hex>/<64 hex>`, read-only
//! files written as `<root>/tmp/<uuid>` and renamed into place only after
//! their content has been hashed, checked and made durable.
//!
//! Durability order (so a crash never leaves a torn file under a blob's name):
//! data written -> data synced -> rename -> directory synced -> index insert.
//! The index, and so FindMissingBlobs, learns of a blob only after that.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use rbe_proto::{Digest, DigestFunction, Hasher};

use crate::error::CasError;
use crate::index::{Index, Key};

mod blob;
pub use blob::{BlobReader, BlobWriter};

/// Batches with at least this many new blobs use one `syncfs` per phase
/// instead of one `fsync` per file: a batch of 1 KiB blobs is otherwise
/// bounded by fsync latency, not by bandwidth.
const SYNCFS_BATCH: usize = 8;

/// Store settings (a subset of the daemon's validated config).
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Directory holding `cas.v1/`, `ac.v1/` and `tmp/`.
    pub root: PathBuf,
    /// Upper bound on stored bytes.
    pub max_size: u64,
    /// Eviction starts above `high_watermark * max_size` ...
    pub high_watermark: f64,
    /// ... and stops at `low_watermark * max_size`.
    pub low_watermark: f64,
    /// Hash every blob again while it is read, and refuse corrupt ones.
    pub verify_reads: bool,
}

/// The parts of [`StoreConfig`] a configuration reload may change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Upper bound on stored bytes.
    pub max_size: u64,
    /// Eviction starts above `high_watermark * max_size` ...
    pub high_watermark: f64,
    /// ... and stops at `low_watermark * max_size`.
    pub low_watermark: f64,
    /// Hash every blob again while it is read, and refuse corrupt ones.
    pub verify_reads: bool,
}

impl StoreConfig {
    fn policy(&self) -> Policy {
        Policy {
            max_size: self.max_size,
            high_watermark: self.high_watermark,
            low_watermark: self.low_watermark,
            verify_reads: self.verify_reads,
        }
    }
}

/// Live figures.
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    /// Blobs indexed.
    pub blobs: u64,
    /// Bytes indexed.
    pub bytes: u64,
    /// Blobs evicted since start.
    pub evicted: u64,
    /// Corrupt files removed since start.
    pub corrupt_removed: u64,
    /// Pinned blobs.
    pub pinned: u64,
    /// True while the startup scan runs.
    pub loading: bool,
    /// Approximate heap used by the index.
    pub index_heap_bytes: u64,
    /// Input files copied, not linked, because the blob's inode had
    /// reached the file system's hard-link limit.
    pub link_limit_copies: u64,
}

/// The content-addressable store.
pub struct Store {
    root: PathBuf,
    policy: parking_lot::RwLock<Policy>,
    cas_dir: PathBuf,
    tmp_dir: PathBuf,
    index: Mutex<Index>,
    // Blobs renamed into place but not yet indexed (a writer may be between
    // its rename and its directory sync or batch syncfs). Eviction and
    // quarantine hold this lock while they unlink, and never unlink a blob
    // that is indexed or listed here: a re-upload is never deleted under its
    // writer.
    publishing: Mutex<HashMap<Key, u32>>,
    // Keys removed while the startup scan runs, so the scan does not put
    // them back.
    removed_while_loading: Mutex<HashSet<Key>>,
    loading: AtomicBool,
    evicting: AtomicBool,
    evicted: AtomicU64,
    corrupt_removed: AtomicU64,
    link_limit_copies: AtomicU64,
}

fn io_err<'a>(
    op: &'static str,
    p: &'a Path,
    d: Option<&'a Digest>,
) -> impl FnOnce(std::io::Error) -> CasError + 'a {
    move |e| CasError::io(op, p, e, d)
}

fn is_hex64(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Chunks at least this large are hashed on a second thread while they are
/// written.
const PARALLEL_HASH_BYTES: usize = 256 << 10;

/// A streaming write asks the kernel to start writing back every this many
/// bytes, instead of leaving a large blob's whole writeback to its fsync.
const WRITEBACK_BYTES: u64 = 8 << 20;

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: starts writeback of dirty pages
/// in the range and returns without waiting for it. Only a hint: errors are
/// ignored, and durability still comes from the fsync that follows.
#[allow(unsafe_code)]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the call only reads its integer arguments; `file` keeps the
    // descriptor open for its duration.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

/// Moves `tmp` to `dest` unless `dest` exists; `Ok(false)` when it does
/// (`tmp` is then left for the caller to remove). A published name in the
/// store is never replaced: a materialization may have resolved the inode
/// under it for `linkat`, and replacing it would drop that inode's last
/// link, making the `linkat` fail ENOENT.
fn place_new(tmp: &Path, dest: &Path) -> std::io::Result<bool> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, tmp, CWD, dest, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        // A file system without RENAME_NOREPLACE: link(2) never replaces
        // either, and the temp name is dropped afterwards.
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            match fs::hard_link(tmp, dest) {
                Ok(()) => {
                    let _ = fs::remove_file(tmp);
                    Ok(true)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn sync_dir(p: &Path) -> Result<(), CasError> {
    File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync directory", p, None))
}

impl Store {
    /// Opens (creating if needed) the store and removes leftover temp files.
    /// The index starts empty and in "loading" state; call
    /// [`Store::load_index`] (typically on a background thread) to fill it.
    pub fn open(cfg: StoreConfig) -> Result<Arc<Store>, CasError> {
        let cas_dir = cfg.root.join("cas.v1");
        let tmp_dir = cfg.root.join("tmp");
        for f in DigestFunction::ALL {
            for shard in 0..=255u8 {
                let d = cas_dir.join(f.name()).join(hex::encode([shard]));
                fs::create_dir_all(&d).map_err(io_err("create", &d, None))?;
            }
        }
        fs::create_dir_all(&tmp_dir).map_err(io_err("create", &tmp_dir, None))?;
        // Temp files are uploads that never completed; none was acknowledged.
        let entries = fs::read_dir(&tmp_dir).map_err(io_err("read", &tmp_dir, None))?;
        let mut removed = 0u64;
        for e in entries.flatten() {
            if fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed leftover temp files from an earlier run");
        }
        Ok(Arc::new(Store {
            policy: parking_lot::RwLock::new(cfg.policy()),
            root: cfg.root,
            cas_dir,
            tmp_dir,
            index: Mutex::new(Index::new()),
            publishing: Mutex::new(HashMap::new()),
            removed_while_loading: Mutex::new(HashSet::new()),
            loading: AtomicBool::new(true),
            evicting: AtomicBool::new(false),
            evicted: AtomicU64::new(0),
            corrupt_removed: AtomicU64::new(0),
            link_limit_copies: AtomicU64::new(0),
        }))
    }

    /// The directory holding the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Capacity, watermarks and read verification as they are now.
    pub fn policy(&self) -> Policy {
        *self.policy.read()
    }

    /// Applies a reloaded policy. A smaller capacity takes effect at the
    /// next [`Store::maybe_evict`].
    pub fn set_policy(&self, p: Policy) {
        *self.policy.write() = p;
    }

    /// Directory for temp files (same filesystem as the store).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp_dir
    }

    fn path(&self, k: &Key) -> PathBuf {
        let hex = hex::encode(k.hash);
        self.cas_dir
            .join(k.function.name())
            .join(&hex[..2])
            .join(hex)
    }

    /// Path of a present blob's file (for hard links into action trees).
    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.path(&Key::from(d))
    }

    /// Path of the executable twin of a blob: a separate inode with mode
    /// 0555, made on first use, so that linking an executable input never
    /// changes the mode of the plain blob's inode.
    ///
    /// A twin, once published, is never replaced: concurrent first uses
    /// each copy, the first to publish wins and the others use its inode.
    /// (Publishing by `rename` over a twin another materialization had
    /// just resolved dropped that inode's last name, and the other
    /// `linkat` failed ENOENT: issue 10's spurious "blob not found".)
    pub(crate) fn exec_variant(&self, d: &Digest) -> Result<PathBuf, CasError> {
        let plain = self.blob_path(d);
        let mut x = plain.clone().into_os_string();
        x.push(".x");
        let x = PathBuf::from(x);
        if x.exists() {
            return Ok(x);
        }
        let tmp = self.tmp_dir.join(uuid::Uuid::new_v4().to_string());
        let r = (|| -> std::io::Result<()> {
            let mut src = File::open(&plain)?;
            let mut dst = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o555)
                .open(&tmp)?;
            std::io::copy(&mut src, &mut dst)?;
            dst.sync_all()?;
            Ok(())
        })();
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            if e.kind() == std::io::ErrorKind::NotFound {
                self.forget_if_absent(&Key::from(d));
                return Err(CasError::NotFound(*d));
            }
            return Err(CasError::io("make executable copy", &plain, e, Some(d)));
        }
        let _g = self.publishing.lock();
        // Copied from a blob that may have been evicted meanwhile: publish
        // only while the plain blob is still indexed.
        if self.index.lock().peek(&Key::from(d)).is_none() {
            let _ = fs::remove_file(&tmp);
            return Err(CasError::NotFound(*d));
        }
        let placed = place_new(&tmp, &x);
        if !matches!(placed, Ok(true)) {
            // Not placed: another materialization published the twin first
            // (use that one), or the rename failed.
            let _ = fs::remove_file(&tmp);
        }
        placed.map_err(|e| CasError::io("publish executable copy", &x, e, Some(d)))?;
        Ok(x)
    }

    /// Drops a blob from the index when its file is gone (removed behind
    /// the store's back), so FindMissingBlobs asks for it again; a blob
    /// being put back meanwhile is left alone.
    fn forget_if_absent(&self, k: &Key) {
        let publishing = self.publishing.lock();
        if !publishing.contains_key(k) && !self.path(k).exists() {
            self.index.lock().remove(k);
        }
    }

    /// Whether the blob is indexed with this size (no use is recorded).
    pub(crate) fn is_indexed(&self, d: &Digest) -> bool {
        self.index.lock().peek(&Key::from(d)) == Some(d.size)
    }

    /// Counts a file copied because its store inode had reached the file
    /// system's hard-link limit.
    pub(crate) fn note_link_limit_copy(&self) {
        self.link_limit_copies.fetch_add(1, Ordering::Relaxed);
    }

    fn remove_files(&self, k: &Key) -> bool {
        if self.is_loading() {
            self.removed_while_loading.lock().insert(*k);
        }
        let p = self.path(k);
        let mut x = p.clone().into_os_string();
        x.push(".x");
        let _ = fs::remove_file(PathBuf::from(x));
        fs::remove_file(p).is_ok()
    }

    fn high_bytes(&self) -> u64 {
        let p = self.policy();
        (p.max_size as f64 * p.high_watermark) as u64
    }

    /// Scans the disk and fills the index, oldest files coldest. Files whose
    /// names are not hashes are removed. Blobs added while this runs stay.
    pub fn load_index(&self) -> Result<(), CasError> {
        let started = std::time::Instant::now();
        let mut found: Vec<(Key, u64, SystemTime)> = Vec::new();
        for f in DigestFunction::ALL {
            for shard in 0..=255u8 {
                let dir = self.cas_dir.join(f.name()).join(hex::encode([shard]));
                let entries = fs::read_dir(&dir).map_err(io_err("read", &dir, None))?;
                for e in entries.flatten() {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    let mut hash = [0u8; 32];
                    if name.strip_suffix(".x").is_some_and(is_hex64) {
                        continue; // an executable twin; removed with its blob
                    }
                    if !is_hex64(&name) || hex::decode_to_slice(name.as_bytes(), &mut hash).is_err()
                    {
                        tracing::warn!(path = %e.path().display(), "removing stray file from the CAS");
                        let _ = fs::remove_file(e.path());
                        continue;
                    }
                    let Ok(meta) = e.metadata() else { continue };
                    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((Key { function: f, hash }, meta.len(), mtime));
                }
            }
        }
        // Newest first, each appended at the cold end: the oldest ends coldest.
        found.sort_by_key(|e| std::cmp::Reverse(e.2));
        {
            let removed = self.removed_while_loading.lock();
            let mut ix = self.index.lock();
            ix.reserve(found.len());
            for (k, size, _) in &found {
                if !removed.contains(k) {
                    ix.insert(*k, *size, true);
                }
            }
            self.loading.store(false, Ordering::Release);
        }
        self.removed_while_loading.lock().clear();
        tracing::info!(
            blobs = found.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "CAS index loaded"
        );
        self.maybe_evict();
        Ok(())
    }

    /// Whether the index is still being loaded.
    pub fn is_loading(&self) -> bool {
        self.loading.load(Ordering::Acquire)
    }

    /// Whether the blob is present (a hit counts as a use). While the index
    /// loads, a miss is checked on disk so the answer is never wrong.
    pub fn contains(&self, d: &Digest) -> bool {
        if d.is_empty_blob() {
            return true;
        }
        let k = Key::from(d);
        if let Some(size) = self.index.lock().touch(&k) {
            return size == d.size;
        }
        if self.is_loading() {
            if let Ok(meta) = fs::metadata(self.path(&k)) {
                if meta.len() == d.size {
                    self.index.lock().insert(k, d.size, false);
                    return true;
                }
            }
        }
        false
    }

    /// The digests among `ds` that are not present.
    pub fn find_missing(&self, ds: &[Digest]) -> Vec<Digest> {
        if !self.is_loading() {
            let mut ix = self.index.lock();
            return ds
                .iter()
                .filter(|d| !d.is_empty_blob() && ix.touch(&Key::from(*d)) != Some(d.size))
                .copied()
                .collect();
        }
        ds.iter().filter(|d| !self.contains(d)).copied().collect()
    }

    /// Starts a streaming write; bytes are hashed as they arrive.
    pub fn begin_write(self: &Arc<Self>, digest: Digest) -> Result<BlobWriter, CasError> {
        if digest.size > self.high_bytes() {
            return Err(CasError::NoSpace {
                digest,
                reason: format!(
                    "blob is larger than the store's bound of {} bytes",
                    self.high_bytes()
                ),
            });
        }
        let tmp_path = self.tmp_dir.join(uuid::Uuid::new_v4().to_string());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&tmp_path)
            .map_err(io_err("create", &tmp_path, Some(&digest)))?;
        Ok(BlobWriter {
            store: Arc::clone(self),
            digest,
            tmp_path,
            file: Some(file),
            hasher: digest.function.hasher(),
            written: 0,
            flushed: 0,
            renamed: false,
        })
    }

    /// Stores one blob whose bytes are all in memory (fsync'd before return).
    pub fn put(self: &Arc<Self>, digest: Digest, data: &[u8]) -> Result<(), CasError> {
        if self.contains(&digest) {
            return Ok(());
        }
        let mut w = self.begin_write(digest)?;
        w.write(data)?;
        w.finish()
    }

    /// Stores many small blobs with two filesystem syncs in all, not two per
    /// blob. Each result says whether that blob is now durably present.
    pub fn put_batch(self: &Arc<Self>, items: &[(Digest, &[u8])]) -> Vec<Result<(), CasError>> {
        let mut results: Vec<Result<(), CasError>> = Vec::with_capacity(items.len());
        let mut pending: Vec<(usize, BlobWriter)> = Vec::new();
        for (i, (d, data)) in items.iter().enumerate() {
            if self.contains(d) {
                results.push(Ok(()));
                continue;
            }
            let r = self.begin_write(*d).and_then(|mut w| {
                w.write(data)?;
                w.verify()?;
                Ok(w)
            });
            // Close each temp file once written: syncfs needs no open fds,
            // and a batch of thousands of tiny blobs must not hold
            // thousands of descriptors.
            let r = r.map(|mut w| {
                if pending.len() + 1 >= SYNCFS_BATCH {
                    w.file = None;
                }
                w
            });
            match r {
                Ok(w) => {
                    pending.push((i, w));
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if pending.len() < SYNCFS_BATCH {
            for (i, w) in pending {
                results[i] = w.finish();
            }
            return results;
        }
        let sync_failed = |e: &std::io::Error, d: &Digest| {
            CasError::io(
                "syncfs",
                &self.tmp_dir,
                std::io::Error::new(e.kind(), e.to_string()),
                Some(d),
            )
        };
        if let Err(e) = self.syncfs() {
            for (i, w) in &pending {
                results[*i] = Err(match e.raw_os_error() {
                    Some(code) => CasError::io(
                        "syncfs",
                        &self.tmp_dir,
                        std::io::Error::from_raw_os_error(code),
                        Some(&w.digest),
                    ),
                    None => sync_failed(&e, &w.digest),
                });
            }
            return results;
        }
        let mut placed = Vec::with_capacity(pending.len());
        for (i, mut w) in pending {
            match w.rename_into_place() {
                Ok(()) => placed.push((i, w)),
                Err(e) => results[i] = Err(e),
            }
        }
        let synced = self.syncfs();
        for (i, mut w) in placed {
            match &synced {
                Ok(()) => w.publish(),
                Err(e) => {
                    results[i] = Err(match e.raw_os_error() {
                        Some(code) => CasError::io(
                            "syncfs",
                            &self.tmp_dir,
                            std::io::Error::from_raw_os_error(code),
                            Some(&w.digest),
                        ),
                        None => sync_failed(e, &w.digest),
                    })
                }
            }
        }
        self.maybe_evict();
        results
    }

    fn syncfs(&self) -> std::io::Result<()> {
        let f = File::open(&self.tmp_dir)?;
        rustix::fs::syncfs(&f).map_err(std::io::Error::from)
    }

    /// Opens a blob for a verified, chunked read of `[offset, offset+limit)`
    /// (`limit` 0 means to the end).
    pub fn reader(
        self: &Arc<Self>,
        d: Digest,
        offset: u64,
        limit: u64,
    ) -> Result<BlobReader, CasError> {
        let end = if limit == 0 {
            d.size
        } else {
            d.size.min(offset.saturating_add(limit))
        };
        if d.is_empty_blob() {
            return Ok(BlobReader {
                store: Arc::clone(self),
                inode: (0, 0),
                digest: d,
                file: None,
                hasher: None,
                pos: 0,
                offset: 0,
                end: 0,
            });
        }
        let k = Key::from(&d);
        let path = self.path(&k);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.index.lock().remove(&k);
                return Err(CasError::NotFound(d));
            }
            Err(e) => return Err(CasError::io("open", &path, e, Some(&d))),
        };
        let meta = file.metadata().map_err(io_err("stat", &path, Some(&d)))?;
        let inode = (meta.dev(), meta.ino());
        if meta.len() != d.size {
            // The hash names the file, so a request with the right hash and
            // the wrong size is only a wrong request, unless the index
            // agrees with the request: then the file was truncated.
            if self.index.lock().peek(&k) == Some(d.size) {
                self.quarantine_file(&d, Some(inode));
                return Err(CasError::Corrupt(d));
            }
            return Err(CasError::NotFound(d));
        }
        self.index.lock().touch(&k);
        let verify = self.policy().verify_reads;
        // Verification needs every byte, so a verified ranged read still
        // hashes from the start; unverified reads seek.
        let pos = if verify { 0 } else { offset.min(end) };
        if pos > 0 {
            file.seek(SeekFrom::Start(pos))
                .map_err(io_err("seek", &path, Some(&d)))?;
        }
        Ok(BlobReader {
            store: Arc::clone(self),
            inode,
            digest: d,
            file: Some(file),
            hasher: verify.then(|| d.function.hasher()),
            pos,
            offset,
            end,
        })
    }

    /// Reads a whole blob into memory, verified.
    pub fn read_all(self: &Arc<Self>, d: Digest) -> Result<Vec<u8>, CasError> {
        let mut r = self.reader(d, 0, 0)?;
        let mut out = Vec::with_capacity(d.size as usize);
        while let Some(chunk) = r.next_chunk(1 << 20)? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Removes a blob found corrupt so it is never served again.
    pub fn quarantine(&self, d: &Digest) {
        self.quarantine_file(d, None);
    }

    /// Removes the corrupt file, but only if `inode` (when given) is still
    /// the one under the blob's name: a good copy may have replaced it.
    fn quarantine_file(&self, d: &Digest, inode: Option<(u64, u64)>) {
        let k = Key::from(d);
        let publishing = self.publishing.lock();
        if publishing.contains_key(&k) {
            return; // a verified copy is being put in place
        }
        let p = self.path(&k);
        if let Some((dev, ino)) = inode {
            match fs::symlink_metadata(&p) {
                Ok(m) if m.dev() == dev && m.ino() == ino => {}
                _ => return,
            }
        }
        self.index.lock().remove(&k);
        if self.remove_files(&k) {
            self.corrupt_removed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(digest = %d, path = %p.display(), "corrupt blob removed from the CAS");
        }
    }

    /// Pins present blobs against eviction; returns those that are absent.
    pub fn pin(&self, ds: &[Digest]) -> Vec<Digest> {
        let mut ix = self.index.lock();
        ds.iter()
            .filter(|d| !d.is_empty_blob() && !ix.pin(&Key::from(*d)))
            .copied()
            .collect()
    }

    /// Pins present blobs that are not pinned yet, for a caller that
    /// counts its holders itself ([`crate::pins::Leases`]); returns those
    /// that are absent. Present and pinned are decided under one lock, so
    /// a blob reported present cannot be reclaimed or evicted before it is
    /// pinned.
    pub fn hold(&self, ds: &[Digest]) -> Vec<Digest> {
        let mut ix = self.index.lock();
        ds.iter()
            .filter(|d| !d.is_empty_blob() && !ix.hold(&Key::from(*d)))
            .copied()
            .collect()
    }

    /// Releases pins taken with [`Store::pin`] or [`Store::hold`].
    pub fn unpin(&self, ds: &[Digest]) {
        let mut ix = self.index.lock();
        for d in ds {
            ix.unpin(&Key::from(d));
        }
    }

    /// Removes those of `ds` no pin holds, at once rather than when the
    /// store fills (a scratch store in front of a backing store, where a
    /// blob is not needed once the action that pinned it is done); counted
    /// as evicted. Returns how many blobs and bytes were freed.
    pub fn reclaim(&self, ds: &[Digest]) -> (u64, u64) {
        let mut freed = 0u64;
        let mut removed = 0u64;
        for d in ds {
            let k = Key::from(d);
            let publishing = self.publishing.lock();
            // A writer about to index the blob again keeps it.
            if publishing.contains_key(&k) {
                continue;
            }
            let Some(size) = self.index.lock().remove_unpinned(&k) else {
                continue;
            };
            if self.remove_files(&k) {
                freed += size;
                removed += 1;
            }
        }
        self.evicted.fetch_add(removed, Ordering::Relaxed);
        (removed, freed)
    }

    /// Every blob indexed now (a snapshot: blobs may come and go after),
    /// for a walk over the whole store. Complete only once the index has
    /// loaded ([`Store::is_loading`] false).
    pub fn digests(&self) -> Vec<Digest> {
        self.index
            .lock()
            .entries()
            .into_iter()
            .map(|(k, size)| Digest {
                function: k.function,
                hash: k.hash,
                size,
            })
            .collect()
    }

    /// The file holding present blob `d` (its bytes were verified when it
    /// was stored; a reader that must be sure hashes them again).
    pub fn file_of(&self, d: &Digest) -> PathBuf {
        self.blob_path(d)
    }

    /// Live figures.
    pub fn stats(&self) -> StoreStats {
        let ix = self.index.lock();
        StoreStats {
            blobs: ix.len() as u64,
            bytes: ix.bytes(),
            evicted: self.evicted.load(Ordering::Relaxed),
            corrupt_removed: self.corrupt_removed.load(Ordering::Relaxed),
            pinned: ix.pinned(),
            loading: self.is_loading(),
            index_heap_bytes: ix.heap_bytes() as u64,
            link_limit_copies: self.link_limit_copies.load(Ordering::Relaxed),
        }
    }

    /// Evicts down to the low watermark when above the high one.
    pub fn maybe_evict(&self) {
        if self.index.lock().bytes() <= self.high_bytes() {
            return;
        }
        if self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let p = self.policy();
        let low = (p.max_size as f64 * p.low_watermark) as u64;
        let victims = self.index.lock().evict_to(low);
        let mut freed = 0u64;
        let mut removed = 0u64;
        for v in &victims {
            let publishing = self.publishing.lock();
            // A writer may have put the blob back since it was chosen, or
            // be about to index it.
            if self.index.lock().peek(&v.key).is_none()
                && !publishing.contains_key(&v.key)
                && self.remove_files(&v.key)
            {
                freed += v.size;
                removed += 1;
            }
        }
        self.evicted.fetch_add(removed, Ordering::Relaxed);
        self.evicting.store(false, Ordering::Release);
        tracing::info!(
            evicted = removed,
            freed_bytes = freed,
            "evicted least recently used blobs"
        );
    }
}
