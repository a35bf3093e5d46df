//! Adopting a local store into a backing store.
//!
//! In cache mode a local blob stands for "the backing store holds it"
//! (`Through::local_proves`). That is true of every blob casd stored
//! through this backing store, and false of a store filled while casd ran
//! without one (`mode = "none"`, where casd was authoritative) or in front
//! of another store. So casd records which backing store its local store
//! is consistent with, in `<storage.path>/backing.id`, and until the file
//! names the configured store no local copy answers for the store:
//! existence and action results are asked of it, as in jit mode. A
//! background walk meanwhile sends it every local blob it lacks (nothing a
//! store that was authoritative held is lost), then writes the file.
//! Running without a backing store removes the file, since blobs stored
//! then do not reach any store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rbe_proto::{Digest, DigestFunction};
use tokio_util::sync::CancellationToken;

use super::through::{Through, FETCH_PARALLELISM};
use super::Casd;

/// The file naming the backing store the local store is consistent with.
pub const MARKER: &str = "backing.id";

/// Digests asked of the backing store at once.
const BATCH: usize = rbe_backing::FIND_MISSING_BATCH;

/// Longest wait between attempts while the backing store fails.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the marker records: the store's address and instance name, which
/// together name the action cache and CAS casd writes to.
pub fn identity(b: &rbe_config::Backing) -> String {
    format!("url={}\ninstance_name={}\n", b.url, b.instance_name)
}

fn marker(root: &Path) -> PathBuf {
    root.join(MARKER)
}

/// Whether the local store was recorded as consistent with the store
/// `identity` names (called before serving, so a restart in front of the
/// same store answers from local copies from its first request).
pub fn recorded(root: &Path, identity: &str) -> bool {
    std::fs::read_to_string(marker(root)).is_ok_and(|s| s == identity)
}

/// Without a backing store: blobs stored from now on reach no store, so a
/// later start in front of one must check them all again.
pub fn forget(root: &Path) {
    match std::fs::remove_file(marker(root)) {
        Ok(()) => {
            tracing::info!(path = %marker(root).display(), "no backing store: the local store's record of one was removed")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %marker(root).display(), error = %e, "cannot remove the backing-store record")
        }
    }
}

/// How many blobs a walk found and sent.
#[derive(Debug, Default, Clone, Copy)]
struct Walk {
    checked: u64,
    sent: u64,
    gone: u64,
    corrupt: u64,
}

/// Trusts the local store at once if the marker names this backing store;
/// otherwise walks it (after the index has loaded), sending the backing
/// store what it lacks, retrying while it fails, until done or shut down.
pub async fn run(casd: Arc<Casd>, t: Arc<Through>, identity: String, stop: CancellationToken) {
    let root = casd.store.root().to_path_buf();
    let path = marker(&root);
    if recorded(&root, &identity) {
        t.set_adopted();
        return;
    }
    tracing::info!(backing = t.address(), path = %path.display(), "the local store is not known to be in this backing store; it answers for nothing until checked");
    while casd.store.is_loading() {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let digests = casd.store.digests();
    let mut walk = Walk::default();
    let mut backoff = Duration::from_secs(1);
    for batch in digests.chunks(BATCH) {
        loop {
            match send_missing(&casd, &t, batch, &mut walk).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(backing = t.address(), error = %e, retry_secs = backoff.as_secs(), "checking the local store against the backing store failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
    if let Err(e) = write_marker(&root, &identity).await {
        // Correct either way: the next start walks the store again.
        tracing::warn!(path = %path.display(), error = %e, "cannot record the backing store");
    }
    t.set_adopted();
    tracing::info!(
        backing = t.address(),
        checked = walk.checked,
        sent = walk.sent,
        gone = walk.gone,
        corrupt = walk.corrupt,
        "the local store is in the backing store; local copies answer for it again"
    );
}

/// Sends the blobs of `batch` the backing store lacks; an error is a
/// failure of the store (the batch is tried again).
async fn send_missing(
    casd: &Arc<Casd>,
    t: &Arc<Through>,
    batch: &[Digest],
    walk: &mut Walk,
) -> Result<(), String> {
    let mut lacking = Vec::new();
    for f in [DigestFunction::Sha256, DigestFunction::Blake3] {
        let of_f: Vec<Digest> = batch.iter().filter(|d| d.function == f).copied().collect();
        if of_f.is_empty() {
            continue;
        }
        let missing = t
            .find_missing(f, &of_f)
            .await
            .map_err(|e| e.message().to_owned())?;
        lacking.extend(missing);
    }
    let results: Vec<Result<Outcome, String>> = futures::stream::iter(lacking)
        .map(|d| send_one(casd, t, d))
        .buffer_unordered(FETCH_PARALLELISM)
        .collect()
        .await;
    let mut first_error = None;
    for r in results {
        match r {
            Ok(Outcome::Sent) => walk.sent += 1,
            Ok(Outcome::Gone) => walk.gone += 1,
            Ok(Outcome::Corrupt) => walk.corrupt += 1,
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            walk.checked += batch.len() as u64;
            Ok(())
        }
    }
}

enum Outcome {
    Sent,
    /// Evicted meanwhile: nothing to send, nothing advertised.
    Gone,
    /// Its file no longer matches its digest: removed, not sent.
    Corrupt,
}

/// Checks the file of `d` against its digest (a store that was
/// authoritative may have rotted) and sends it.
async fn send_one(casd: &Arc<Casd>, t: &Arc<Through>, d: Digest) -> Result<Outcome, String> {
    let store = Arc::clone(&casd.store);
    let file = store.file_of(&d);
    let f2 = file.clone();
    let hashed = super::blocking(move || {
        std::fs::File::open(&f2).and_then(|f| Digest::of_reader(d.function, f))
    })
    .await
    .map_err(|e| e.to_string())?;
    match hashed {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Gone),
        Err(e) => {
            tracing::warn!(digest = %d, path = %file.display(), error = %e, "cannot read a local blob to send it to the backing store");
            return Ok(Outcome::Gone);
        }
        Ok(got) if got != d => {
            tracing::warn!(digest = %d, path = %file.display(), "local blob does not match its digest; removed, not sent");
            store.quarantine(&d);
            return Ok(Outcome::Corrupt);
        }
        Ok(_) => {}
    }
    match t.write_file(d, file).await {
        Ok(()) => Ok(Outcome::Sent),
        Err(_) if !store.contains(&d) => Ok(Outcome::Gone),
        Err(s) => Err(s.message().to_owned()),
    }
}

/// Writes the marker atomically (temp file, rename, directory sync).
async fn write_marker(root: &Path, identity: &str) -> std::io::Result<()> {
    let (root, identity) = (root.to_path_buf(), identity.to_owned());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let tmp = root.join(format!("{MARKER}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(identity.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, marker(&root))?;
        std::fs::File::open(&root)?.sync_all()
    })
    .await
    .map_err(std::io::Error::other)?
}
