//! Copies a list of blobs from a source into the local casd: small ones in
//! batches, large ones streamed, each verified before it is committed.

use std::collections::HashMap;

use futures::StreamExt;
use rbe_proto::bytestream::{ReadRequest, WriteRequest};
use rbe_proto::reapi::{
    batch_update_blobs_request, BatchReadBlobsRequest, BatchUpdateBlobsRequest,
};
use rbe_proto::resource::{read_name, write_name, Compressor};
use rbe_proto::{Digest, DigestFunction};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::endpoint::{Local, Source};
use crate::error::TransferError;

/// Blobs up to this size travel in BatchReadBlobs; larger ones stream
/// through ByteStream, never whole in memory.
pub const MAX_BATCHED_BLOB: u64 = 1 << 20;

/// Batches and streams in flight at once.
pub const PARALLELISM: usize = 8;

/// Most digests in one batch, so a batch of tiny blobs stays a small
/// request.
const MAX_BATCH_DIGESTS: usize = 4096;

/// What one copy moved.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Copied {
    pub blobs: u64,
    pub bytes: u64,
}

impl Copied {
    fn add(self, o: Copied) -> Copied {
        Copied {
            blobs: self.blobs + o.blobs,
            bytes: self.bytes + o.bytes,
        }
    }
}

enum Unit {
    Batch(Vec<Digest>),
    Stream(Digest),
}

/// Copies `digests` (distinct) from `source` into `local`.
pub(crate) async fn copy_blobs(
    source: &Source,
    local: &Local,
    f: DigestFunction,
    digests: &[Digest],
) -> Result<Copied, TransferError> {
    let batch_limit = source.max_batch().await?.min(local.max_batch().await?);
    let mut units = Vec::new();
    let mut batch = Vec::new();
    let mut batch_bytes = 0u64;
    for d in digests.iter().filter(|d| !d.is_empty_blob()) {
        if d.size > MAX_BATCHED_BLOB.min(batch_limit) {
            units.push(Unit::Stream(*d));
            continue;
        }
        if batch_bytes + d.size > batch_limit || batch.len() >= MAX_BATCH_DIGESTS {
            units.push(Unit::Batch(std::mem::take(&mut batch)));
            batch_bytes = 0;
        }
        batch.push(*d);
        batch_bytes += d.size;
    }
    if !batch.is_empty() {
        units.push(Unit::Batch(batch));
    }
    let mut copies = futures::stream::iter(units)
        .map(|u| async move {
            match u {
                Unit::Batch(ds) => copy_batch(source, local, f, ds).await,
                Unit::Stream(d) => copy_stream(source, local, d).await,
            }
        })
        .buffer_unordered(PARALLELISM);
    // Blobs the source lacks are gathered from every unit, so the error
    // names them all; any other error ends the copy at once.
    let mut total = Copied::default();
    let mut absent = Vec::new();
    while let Some(c) = copies.next().await {
        match c {
            Ok(c) => total = total.add(c),
            Err(TransferError::NotFound { digests, .. }) => absent.extend(digests),
            Err(e) => return Err(e),
        }
    }
    if !absent.is_empty() {
        return Err(TransferError::NotFound {
            address: source.address().to_string(),
            digests: absent,
        });
    }
    Ok(total)
}

fn no_answer(source: &Source, digest: Option<Digest>) -> TransferError {
    TransferError::Unavailable {
        address: source.address().to_string(),
        digest,
        message: format!("no answer within {:?}", source.idle()),
    }
}

/// One BatchReadBlobs from the source, every blob checked, then one
/// BatchUpdateBlobs into casd: a batch with a bad blob stores nothing.
async fn copy_batch(
    source: &Source,
    local: &Local,
    f: DigestFunction,
    ds: Vec<Digest>,
) -> Result<Copied, TransferError> {
    let addr = source.address();
    let req = BatchReadBlobsRequest {
        instance_name: source.instance_name().to_string(),
        digests: ds.iter().map(Digest::to_reapi).collect(),
        acceptable_compressors: Vec::new(),
        digest_function: f.to_reapi(),
    };
    let single = (ds.len() == 1).then(|| ds[0]);
    let answer = tokio::time::timeout(source.idle(), source.cas().batch_read_blobs(req))
        .await
        .map_err(|_| no_answer(source, single))?
        .map_err(|s| TransferError::from_source(addr, single, s))?
        .into_inner();
    let mut wanted: HashMap<Digest, Option<Vec<u8>>> = ds.iter().map(|d| (*d, None)).collect();
    let mut absent = Vec::new();
    for r in answer.responses {
        let invalid = |digest, message: String| TransferError::InvalidArgument {
            address: addr.to_string(),
            digest,
            message,
        };
        let d = r
            .digest
            .as_ref()
            .ok_or_else(|| invalid(None, "a batch answer has no digest".into()))
            .and_then(|d| {
                Digest::from_reapi(f, d)
                    .map_err(|e| invalid(None, format!("a batch answer names a bad digest: {e}")))
            })?;
        let Some(slot) = wanted.get_mut(&d) else {
            return Err(invalid(
                Some(d),
                "a batch answer names a blob not asked for".into(),
            ));
        };
        if let Some(st) = r.status.as_ref().filter(|s| s.code != 0) {
            if st.code == tonic::Code::NotFound as i32 {
                // Every blob of the batch the source lacks is named.
                absent.push(d);
                continue;
            }
            let status = Status::new(st.code.into(), st.message.clone());
            return Err(TransferError::from_source(addr, Some(d), status));
        }
        if r.compressor != Compressor::Identity.to_reapi() {
            return Err(invalid(
                Some(d),
                "a blob came compressed, which was not asked for".into(),
            ));
        }
        let actual = Digest::of(f, &r.data);
        if actual != d {
            return Err(TransferError::DigestMismatch {
                address: addr.to_string(),
                digest: d,
                actual_hash: actual.hex(),
                actual_size: actual.size,
            });
        }
        *slot = Some(r.data);
    }
    if !absent.is_empty() {
        return Err(TransferError::NotFound {
            address: addr.to_string(),
            digests: absent,
        });
    }
    let mut requests = Vec::with_capacity(wanted.len());
    for (d, data) in wanted {
        let Some(data) = data else {
            return Err(TransferError::InvalidArgument {
                address: addr.to_string(),
                digest: Some(d),
                message: "the batch answer left this blob out".into(),
            });
        };
        requests.push(batch_update_blobs_request::Request {
            digest: Some(d.to_reapi()),
            data,
            compressor: Compressor::Identity.to_reapi(),
        });
    }
    let copied = Copied {
        blobs: requests.len() as u64,
        bytes: requests.iter().map(|r| r.data.len() as u64).sum(),
    };
    let req = BatchUpdateBlobsRequest {
        instance_name: local.instance_name().to_string(),
        requests,
        digest_function: f.to_reapi(),
    };
    let written = local
        .cas()
        .batch_update_blobs(req)
        .await
        .map_err(|s| TransferError::local(None, s))?
        .into_inner();
    for r in written.responses {
        if let Some(st) = r.status.filter(|s| s.code != 0) {
            let d = r.digest.and_then(|d| Digest::from_reapi(f, &d).ok());
            return Err(TransferError::local(
                d,
                Status::new(st.code.into(), st.message),
            ));
        }
    }
    Ok(copied)
}

/// ByteStream.Read from the source into ByteStream.Write to casd, hashing
/// on the way. The last chunk is held back until the whole blob has
/// arrived and matched its digest, and only it carries `finish_write`: a
/// blob that fails the check is never committed (the upload is cancelled).
async fn copy_stream(source: &Source, local: &Local, d: Digest) -> Result<Copied, TransferError> {
    let addr = source.address();
    let idle = source.idle();
    let req = ReadRequest {
        resource_name: read_name(source.instance_name(), &d, Compressor::Identity),
        read_offset: 0,
        read_limit: 0,
    };
    let mut inbound = tokio::time::timeout(idle, source.bytestream().read(req))
        .await
        .map_err(|_| no_answer(source, Some(d)))?
        .map_err(|s| TransferError::from_source(addr, Some(d), s))?
        .into_inner();
    let (tx, rx) = mpsc::channel::<WriteRequest>(2);
    let name = write_name(
        local.instance_name(),
        &uuid::Uuid::new_v4().to_string(),
        &d,
        Compressor::Identity,
    );
    let mut bs = local.bytestream();
    let writer = bs.write(ReceiverStream::new(rx));
    // Ok(false): casd ended the upload first (it already had the blob, or
    // refused it); its answer, awaited next, says which.
    let reader = async move {
        let mut hasher = d.function.hasher();
        let mut received = 0u64;
        let mut held: Option<Vec<u8>> = None;
        let mut offset = 0u64;
        let message = |offset: u64, data: Vec<u8>, finish_write: bool| WriteRequest {
            resource_name: if offset == 0 {
                name.clone()
            } else {
                String::new()
            },
            write_offset: offset as i64,
            finish_write,
            data,
        };
        loop {
            let next = tokio::time::timeout(idle, inbound.message())
                .await
                .map_err(|_| TransferError::Unavailable {
                    address: addr.to_string(),
                    digest: Some(d),
                    message: format!("the stream of {d} stalled for {idle:?}"),
                })?
                .map_err(|s| TransferError::from_source(addr, Some(d), s))?;
            let Some(chunk) = next else { break };
            if chunk.data.is_empty() {
                continue;
            }
            received += chunk.data.len() as u64;
            if received > d.size {
                return Err(TransferError::InvalidArgument {
                    address: addr.to_string(),
                    digest: Some(d),
                    message: format!("the stream carried more than {} bytes", d.size),
                });
            }
            hasher.update(&chunk.data);
            if let Some(prev) = held.replace(chunk.data) {
                let len = prev.len() as u64;
                if tx.send(message(offset, prev, false)).await.is_err() {
                    return Ok(false);
                }
                offset += len;
            }
        }
        if received < d.size {
            return Err(TransferError::Truncated {
                address: addr.to_string(),
                digest: d,
                received,
            });
        }
        let actual = hasher.finish();
        if actual != d.hash {
            return Err(TransferError::DigestMismatch {
                address: addr.to_string(),
                digest: d,
                actual_hash: Digest {
                    function: d.function,
                    hash: actual,
                    size: received,
                }
                .hex(),
                actual_size: received,
            });
        }
        let last = held.unwrap_or_default();
        Ok(tx.send(message(offset, last, true)).await.is_ok())
    };
    tokio::pin!(writer);
    tokio::pin!(reader);
    tokio::select! {
        // On an error the writer is dropped unfinished: the upload is
        // cancelled and casd commits nothing.
        r = &mut reader => { r?; }
        w = &mut writer => return committed(d, w),
    }
    committed(d, writer.await)
}

/// casd's answer to a streamed write: the whole blob committed, or why not.
fn committed(
    d: Digest,
    w: Result<tonic::Response<rbe_proto::bytestream::WriteResponse>, Status>,
) -> Result<Copied, TransferError> {
    let w = w
        .map_err(|s| TransferError::local(Some(d), s))?
        .into_inner();
    if w.committed_size != d.size as i64 {
        return Err(TransferError::local(
            Some(d),
            Status::internal(format!(
                "casd committed {} of {} bytes",
                w.committed_size, d.size
            )),
        ));
    }
    Ok(Copied {
        blobs: 1,
        bytes: d.size,
    })
}
