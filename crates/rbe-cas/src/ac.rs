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
    /// Every distinct blob the result references, Trees included, and
    /// the Trees among them that could not be read (absent or corrupt):
    /// the files those list are unknown.
    Digests {
        blobs: Vec<Digest>,
        missing_trees: Vec<Digest>,
    },
    /// More than the check's bounds allow; the reason, for the log.
    TooLarge(String),
}

fn parse(
    f: DigestFunction,
    d: &rbe_proto::reapi::Digest,
    what: impl FnOnce() -> String,
) -> Result<Digest, CasError> {
    Digest::from_reapi(f, d).map_err(|e| CasError::Invalid(format!("{}: {e}", what())))
}

/// Every CAS digest an action result references, each once, for
/// completeness checks and for copying a result between hosts; each
/// distinct Tree is read once. The walk is flat (a Tree holds its
/// directories inline), so no depth can exhaust the stack.
fn referenced(
    store: &Arc<Store>,
    trees_read: &AtomicU64,
    f: DigestFunction,
    ar: &ActionResult,
) -> Result<Refs, CasError> {
    let too_many = || {
        Refs::TooLarge(format!(
            "it references more than {MAX_CHECK_DIGESTS} distinct blobs"
        ))
    };
    let mut out: HashSet<Digest> = HashSet::new();
    for o in &ar.output_files {
        if let Some(d) = o.digest.as_ref() {
            out.insert(parse(f, d, || format!("output file {:?}", o.path))?);
        }
    }
    if let Some(d) = ar.stdout_digest.as_ref() {
        out.insert(parse(f, d, || "stdout_digest".into())?);
    }
    if let Some(d) = ar.stderr_digest.as_ref() {
        out.insert(parse(f, d, || "stderr_digest".into())?);
    }
    let mut trees = HashSet::new();
    for o in &ar.output_directories {
        if let Some(t) = o.tree_digest.as_ref() {
            trees.insert(parse(f, t, || format!("output directory {:?}", o.path))?);
        }
    }
    let tree_bytes = trees.iter().map(|t| t.size).fold(0u64, u64::saturating_add);
    if tree_bytes > MAX_CHECK_TREE_BYTES {
        return Ok(Refs::TooLarge(format!(
            "its {} distinct output trees hold {tree_bytes} bytes, more than the {MAX_CHECK_TREE_BYTES} a check reads",
            trees.len()
        )));
    }
    let mut missing_trees = Vec::new();
    for t in trees {
        out.insert(t);
        trees_read.fetch_add(1, Ordering::Relaxed);
        let bytes = match store.read_all(t) {
            Ok(b) => b,
            Err(CasError::NotFound(_)) | Err(CasError::Corrupt(_)) => {
                missing_trees.push(t);
                continue;
            }
            Err(e) => return Err(e),
        };
        let tree = Tree::decode(bytes.as_slice())
            .map_err(|e| CasError::Invalid(format!("blob {t} is not a Tree: {e}")))?;
        for dir in tree.root.iter().chain(tree.children.iter()) {
            for file in &dir.files {
                if let Some(d) = file.digest.as_ref() {
                    out.insert(parse(f, d, || format!("tree {t}: file {:?}", file.name))?);
                }
            }
        }
        if out.len() > MAX_CHECK_DIGESTS {
            return Ok(too_many());
        }
    }
    if out.len() > MAX_CHECK_DIGESTS {
        return Ok(too_many());
    }
    Ok(Refs::Digests {
        blobs: out.into_iter().collect(),
        missing_trees,
    })
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
            Ok(Refs::Digests {
                blobs,
                missing_trees,
            }) => {
                if let Some(t) = missing_trees.first() {
                    tracing::info!(action_digest = %action, digest = %t, "action result incomplete: tree missing");
                    return Ok(None);
                }
                blobs
            }
            Ok(Refs::TooLarge(why)) => {
                tracing::warn!(action_digest = %action, reason = %why, "action result too large to check; answered as a cache miss");
                return Ok(None);
            }
            // The client runs the action and its new result replaces this one.
            Err(CasError::Invalid(why)) => {
                tracing::warn!(action_digest = %action, reason = %why, "action result names a malformed blob; answered as a cache miss");
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

    /// The blobs `ar` references that the store lacks (output files,
    /// output directory Trees and the files they list, stdout, stderr),
    /// each once: what a host must fetch before it may serve `ar`. A
    /// missing Tree is listed itself; the files it lists are known only
    /// once it is present, so a caller that fetches what is listed asks
    /// again. A malformed digest or Tree is [`CasError::Invalid`], a
    /// result beyond the check's bounds [`CasError::OverLimit`].
    pub fn missing_for_result(
        &self,
        f: DigestFunction,
        ar: &ActionResult,
    ) -> Result<Vec<Digest>, CasError> {
        match referenced(&self.store, &self.trees_read, f, ar)? {
            Refs::Digests { blobs, .. } => Ok(self.store.find_missing(&blobs)),
            Refs::TooLarge(why) => Err(CasError::OverLimit(format!(
                "the action result cannot be walked: {why}"
            ))),
        }
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
