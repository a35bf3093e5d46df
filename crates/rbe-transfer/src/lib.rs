//! Moves the blobs an action needs between the hosts of a cluster.
//!
//! The host that runs an action copies its missing inputs from the origin
//! ([`fetch_input_closure`]); the origin copies the outputs back before it
//! completes the operation and writes the action cache
//! ([`fetch_result_outputs`]). No host then answers a client with a digest
//! its own store cannot serve.
//!
//! Both ask the local casd what it lacks (`MissingTree`,
//! `MissingForResult` of its local API), copy that from the [`Source`],
//! and ask again until nothing is missing: below a missing Directory or
//! Tree nothing is known until it is copied, so a tree takes at most as
//! many rounds as it is deep, plus one to confirm. Blobs up to
//! [`MAX_BATCHED_BLOB`] travel in BatchReadBlobs batches of at most
//! [`MAX_BATCH_BYTES`] (less if either server advertises less), larger ones
//! stream from ByteStream.Read into casd's ByteStream.Write, [`PARALLELISM`]
//! batches or streams at a time. Each blob is hashed before casd is asked
//! to commit it, so bytes that do not match are refused with an error
//! naming the source (casd would refuse them too, but could not say where
//! they came from).
//!
//! To copy from another kind of store, give [`Source`] a channel to any
//! REAPI server.
#![warn(missing_docs)]

mod copy;
mod endpoint;
mod error;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message;
use rbe_proto::casd::{MissingForResultRequest, MissingTreeRequest};
use rbe_proto::reapi::ActionResult;
use rbe_proto::{Digest, DigestFunction};

pub use copy::{MAX_BATCHED_BLOB, PARALLELISM};
pub use endpoint::{Local, Source, Timeouts, MAX_BATCH_BYTES};
pub use error::TransferError;

/// Times a blob may be copied and then found missing again before the
/// copy gives up: a store too small for the tree would otherwise evict
/// and re-fetch for ever.
const MAX_COPIES: u32 = 2;

/// What a copy did, for the journal (`hydrate_bytes`, `hydrate_ms`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Blobs copied.
    pub blobs: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Questions asked of casd (`MissingTree` or `MissingForResult`),
    /// the confirming ones included.
    pub rounds: u32,
    /// Wall time, from the first question to the last answer.
    pub duration: Duration,
}

fn to_casd(d: &Digest) -> rbe_proto::casd::Digest {
    rbe_proto::casd::Digest {
        hash: d.hex(),
        size_bytes: d.size as i64,
    }
}

fn from_casd(
    f: DigestFunction,
    ds: &[rbe_proto::casd::Digest],
) -> Result<Vec<Digest>, TransferError> {
    ds.iter()
        .map(|d| {
            Digest::parse(f, &d.hash, d.size_bytes).map_err(|e| {
                TransferError::local(
                    None,
                    tonic::Status::internal(format!("casd named a bad digest: {e}")),
                )
            })
        })
        .collect()
}

/// Counts copies per blob; a blob listed missing after [`MAX_COPIES`]
/// copies is [`TransferError::Lost`].
#[derive(Default)]
struct Copies(HashMap<Digest, u32>);

impl Copies {
    fn note(&mut self, ds: &[Digest]) -> Result<(), TransferError> {
        for d in ds {
            let n = self.0.entry(*d).or_insert(0);
            if *n >= MAX_COPIES {
                return Err(TransferError::Lost {
                    digest: *d,
                    times: *n,
                });
            }
            *n += 1;
        }
        Ok(())
    }
}

/// Copies into `casd` every blob of the input tree under `root` that it
/// lacks, from `source`. Returns once casd confirms nothing of the tree is
/// missing.
pub async fn fetch_input_closure(
    source: &Source,
    casd: &Local,
    f: DigestFunction,
    root: Digest,
) -> Result<TransferStats, TransferError> {
    let started = Instant::now();
    let mut stats = TransferStats::default();
    let mut copies = Copies::default();
    let mut client = casd.casd();
    // After the first round only the directories just copied are walked,
    // so each directory is read about once; the root is walked again at
    // the end to confirm.
    let mut roots = vec![root];
    loop {
        stats.rounds += 1;
        let answer = client
            .missing_tree(MissingTreeRequest {
                instance_name: casd.instance_name().to_string(),
                digest_function: f.to_reapi(),
                roots: roots.iter().map(to_casd).collect(),
            })
            .await
            .map_err(|s| TransferError::local(Some(root), s))?
            .into_inner();
        let dirs = from_casd(f, &answer.missing_directories)?;
        let mut missing = dirs.clone();
        missing.extend(from_casd(f, &answer.missing_files)?);
        if missing.is_empty() {
            if roots == [root] {
                break;
            }
            roots = vec![root];
            continue;
        }
        copies.note(&missing)?;
        let c = copy::copy_blobs(source, casd, f, &missing).await?;
        stats.blobs += c.blobs;
        stats.bytes += c.bytes;
        roots = if answer.truncated {
            // What was left out lies under the same roots, and so do the
            // directories just copied: walking them again finds both.
            roots
        } else if dirs.is_empty() {
            vec![root]
        } else {
            dirs
        };
    }
    stats.duration = started.elapsed();
    tracing::debug!(digest = %root, peer = source.address(), hydrate_bytes = stats.bytes, hydrate_ms = stats.duration.as_millis() as u64, blobs = stats.blobs, rounds = stats.rounds, "input tree copied");
    Ok(stats)
}

/// Copies into `casd` every blob `result` references that it lacks
/// (output files, output directory Trees and their files, stdout, stderr),
/// from `source`. Returns once casd confirms nothing is missing, so the
/// caller may then store the result and answer clients with it.
pub async fn fetch_result_outputs(
    source: &Source,
    casd: &Local,
    f: DigestFunction,
    result: &ActionResult,
) -> Result<TransferStats, TransferError> {
    let started = Instant::now();
    let mut stats = TransferStats::default();
    let mut copies = Copies::default();
    let mut client = casd.casd();
    let encoded = result.encode_to_vec();
    loop {
        stats.rounds += 1;
        let answer = client
            .missing_for_result(MissingForResultRequest {
                instance_name: casd.instance_name().to_string(),
                digest_function: f.to_reapi(),
                action_result: encoded.clone(),
            })
            .await
            .map_err(|s| TransferError::local(None, s))?
            .into_inner();
        let missing = from_casd(f, &answer.missing)?;
        if missing.is_empty() {
            break;
        }
        copies.note(&missing)?;
        let c = copy::copy_blobs(source, casd, f, &missing).await?;
        stats.blobs += c.blobs;
        stats.bytes += c.bytes;
    }
    stats.duration = started.elapsed();
    tracing::debug!(
        peer = source.address(),
        hydrate_bytes = stats.bytes,
        hydrate_ms = stats.duration.as_millis() as u64,
        blobs = stats.blobs,
        rounds = stats.rounds,
        "action result outputs copied"
    );
    Ok(stats)
}
