//! The action cache: `<root>/ac.v1/<partition>/<function>/<2 hex>/<64 hex>`,
//! each file an encoded `ActionResult`, written atomically.
//!
//! A result is only returned when every blob it references (output files,
//! output directory trees and their files, stdout, stderr) is still in the
//! CAS; otherwise the client is told NOT_FOUND and re-runs the action rather
//! than failing to download an evicted output.
//!
//! The check is bounded: each distinct Tree is read once, at most
//! [`MAX_CHECK_TREE_BYTES`] of Trees and [`MAX_CHECK_DIGESTS`] blobs per
//! check. A result beyond that is answered as a cache miss, never an
//! error: the client runs the action, which is always correct, where an
//! error would fail its build.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prost::Message;
use rbe_proto::reapi::{ActionResult, Tree};
use rbe_proto::{Digest, DigestFunction};

use crate::error::CasError;
use crate::store::Store;

/// The partition shared by every instance that is not configured apart.
pub const SHARED_PARTITION: &str = "shared";

/// Most bytes of Tree messages one completeness check reads. Each distinct
/// Tree is read once however often a result names it; a result whose
/// distinct Trees hold more than this is answered as a cache miss (the
/// client runs the action), so a small result cannot make every lookup
/// read gigabytes.
pub const MAX_CHECK_TREE_BYTES: u64 = 64 << 20;

/// Most distinct blob digests one completeness check looks up in the
/// index; beyond this the result is answered as a cache miss.
pub const MAX_CHECK_DIGESTS: usize = 1_000_000;

/// The action cache.
pub struct ActionCache {
    dir: PathBuf,
    store: Arc<Store>,
    trees_read: AtomicU64,
}

/// What a completeness check must look up.
enum Refs {
    /// Every distinct blob the result references.
    Digests(Vec<Digest>),
    /// More than the check's bounds allow; the reason, for the log.
    TooLarge(String),
}

/// Every CAS digest an action result references, each once, for
/// completeness checks; each distinct Tree is read once.
fn referenced(
    store: &Arc<Store>,
    trees_read: &AtomicU64,
    f: DigestFunction,
    ar: &ActionResult,
) -> Result<Refs, CasError> {
    let mut out: HashSet<Digest> = HashSet::new();
    let mut push = |d: Option<&rbe_proto::reapi::Digest>| -> Result<(), CasError> {
        if let Some(d) = d {
            let d = Digest::from_reapi(f, d)
                .map_err(|_| CasError::BadActionResult(Digest::empty(f)))?;
            out.insert(d);
        }
        Ok(())
    };
    for o in &ar.output_files {
        push(o.digest.as_ref())?;
    }
    push(ar.stdout_digest.as_ref())?;
    push(ar.stderr_digest.as_ref())?;
    let mut trees = HashSet::new();
    for o in &ar.output_directories {
        if let Some(t) = o.tree_digest.as_ref() {
            let t = Digest::from_reapi(f, t)
                .map_err(|_| CasError::BadActionResult(Digest::empty(f)))?;
            trees.insert(t);
        }
    }
    let tree_bytes = trees.iter().map(|t| t.size).fold(0u64, u64::saturating_add);
    if tree_bytes > MAX_CHECK_TREE_BYTES {
        return Ok(Refs::TooLarge(format!(
            "its {} distinct output trees hold {tree_bytes} bytes, more than the {MAX_CHECK_TREE_BYTES} a check reads",
            trees.len()
        )));
    }
    for t in trees {
        out.insert(t);
        // A missing or unreadable tree makes the whole result incomplete.
        trees_read.fetch_add(1, Ordering::Relaxed);
        let bytes = store.read_all(t)?;
        let tree = Tree::decode(bytes.as_slice()).map_err(|_| CasError::BadActionResult(t))?;
        for dir in tree.root.iter().chain(tree.children.iter()) {
            for file in &dir.files {
                if let Some(d) = file.digest.as_ref() {
                    out.insert(Digest::from_reapi(f, d).map_err(|_| CasError::BadActionResult(t))?);
                }
            }
        }
        if out.len() > MAX_CHECK_DIGESTS {
            return Ok(Refs::TooLarge(format!(
                "it references more than {MAX_CHECK_DIGESTS} distinct blobs"
            )));
        }
    }
    if out.len() > MAX_CHECK_DIGESTS {
        return Ok(Refs::TooLarge(format!(
            "it references more than {MAX_CHECK_DIGESTS} distinct blobs"
        )));
    }
    Ok(Refs::Digests(out.into_iter().collect()))
}

impl ActionCache {
    /// Opens the action cache under the store's root.
    pub fn open(store: Arc<Store>) -> Result<Self, CasError> {
        let dir = store.root().join("ac.v1");
        fs::create_dir_all(&dir).map_err(|e| CasError::io("create", &dir, e, None))?;
        Ok(ActionCache {
            dir,
            store,
            trees_read: AtomicU64::new(0),
        })
    }

    /// Tree blobs read by completeness checks since start.
    pub fn trees_read(&self) -> u64 {
        self.trees_read.load(Ordering::Relaxed)
    }

    fn path(&self, partition: &str, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.dir
            .join(partition)
            .join(d.function.name())
            .join(&hex[..2])
            .join(hex)
    }

    /// Looks a result up; `Ok(None)` when absent or incomplete.
    pub fn get(&self, partition: &str, action: &Digest) -> Result<Option<ActionResult>, CasError> {
        let path = self.path(partition, action);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CasError::io("read", &path, e, Some(action))),
        };
        let Ok(ar) = ActionResult::decode(bytes.as_slice()) else {
            let _ = fs::remove_file(&path);
            return Err(CasError::BadActionResult(*action));
        };
        let refs = match referenced(&self.store, &self.trees_read, action.function, &ar) {
            Ok(Refs::Digests(r)) => r,
            Ok(Refs::TooLarge(why)) => {
                tracing::warn!(action_digest = %action, reason = %why, "action result too large to check; answered as a cache miss");
                return Ok(None);
            }
            Err(CasError::NotFound(missing)) | Err(CasError::Corrupt(missing)) => {
                tracing::info!(action_digest = %action, digest = %missing, "action result incomplete: tree missing");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let missing = self.store.find_missing(&refs);
        if let Some(m) = missing.first() {
            tracing::info!(action_digest = %action, digest = %m, missing = missing.len(), "action result incomplete: outputs evicted");
            return Ok(None);
        }
        Ok(Some(ar))
    }

    /// Stores a result, replacing any earlier one atomically.
    pub fn put(&self, partition: &str, action: &Digest, ar: &ActionResult) -> Result<(), CasError> {
        let path = self.path(partition, action);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| CasError::io("create", parent, e, None))?;
        }
        let tmp = self.store.tmp_dir().join(uuid::Uuid::new_v4().to_string());
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&tmp)?;
            f.write_all(&ar.encode_to_vec())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            if let Some(parent) = path.parent() {
                File::open(parent)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            CasError::io("store action result", &path, e, Some(action))
        })
    }
}
