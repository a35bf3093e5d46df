//! [`Backing`] over REAPI: ContentAddressableStorage for existence and
//! small blobs, ByteStream for large ones, ActionCache for results.
//!
//! Every unary call is bounded by `backing.request_timeout_secs`; a
//! stream is bounded by the same time without progress (no message taken
//! by the store, none received from it), so a slow store slows uploads
//! and reads down but a silent one fails them as unavailable.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rbe_proto::bytestream::byte_stream_client::ByteStreamClient;
use rbe_proto::bytestream::{ReadRequest, WriteRequest};
use rbe_proto::reapi::action_cache_client::ActionCacheClient;
use rbe_proto::reapi::capabilities_client::CapabilitiesClient;
use rbe_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use rbe_proto::reapi::{
    batch_update_blobs_request, ActionResult, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
    GetActionResultRequest, GetCapabilitiesRequest, UpdateActionResultRequest,
};
use rbe_proto::resource::{self, Compressor};
use rbe_proto::{Digest, DigestFunction};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, OnceCell};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::{Backing, BackingError, BlobChunks, Body, FIND_MISSING_BATCH};

/// Pieces of a ByteStream upload.
const WRITE_CHUNK: usize = 1 << 20;
/// Batch size assumed when the store does not say (REAPI's usual 4 MiB).
const DEFAULT_MAX_BATCH: u64 = 4 << 20;
/// Messages of a batch carry framing besides the bytes; keep clear of the
/// store's limit by this fraction of it.
const BATCH_HEADROOM_DIV: u64 = 16;
/// Message limit on our clients: a full batch answer plus framing.
const MESSAGE_LIMIT: usize = 80 << 20;

/// A REAPI server used as the backing store.
pub struct GrpcBacking {
    channel: Channel,
    address: String,
    instance: String,
    auth: Option<AsciiMetadataValue>,
    timeout: Duration,
    max_batch: OnceCell<u64>,
}

impl GrpcBacking {
    /// A client for the store `s` names. Connecting is lazy; errors here
    /// are TLS files or a token that do not load.
    pub async fn connect(s: &rbe_config::Backing) -> Result<GrpcBacking, BackingError> {
        let channel = crate::connect::channel(s).await?;
        let auth = match &s.token_file {
            None => None,
            Some(p) => {
                let setup = |reason: String| BackingError::Setup {
                    address: s.url.clone(),
                    reason: format!("backing.token_file: {reason}"),
                };
                let token = rbe_config::read_token(p).map_err(setup)?;
                Some(
                    format!("Bearer {token}")
                        .parse::<AsciiMetadataValue>()
                        .map_err(|e| setup(e.to_string()))?,
                )
            }
        };
        Ok(GrpcBacking {
            channel,
            address: s.url.clone(),
            instance: s.instance_name.clone(),
            auth,
            timeout: Duration::from_secs(s.request_timeout_secs),
            max_batch: OnceCell::new(),
        })
    }

    fn request<T>(&self, m: T) -> Request<T> {
        let mut r = Request::new(m);
        if let Some(a) = &self.auth {
            r.metadata_mut().insert("authorization", a.clone());
        }
        r
    }

    fn unary_request<T>(&self, m: T) -> Request<T> {
        let mut r = self.request(m);
        r.set_timeout(self.timeout);
        r
    }

    async fn call<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, BackingError> {
        match tokio::time::timeout(self.timeout, f).await {
            Err(_) => Err(BackingError::timeout(
                &self.address,
                what,
                self.timeout.as_secs(),
            )),
            Ok(Err(s)) => Err(BackingError::from_status(&self.address, what, &s)),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(MESSAGE_LIMIT)
            .max_encoding_message_size(MESSAGE_LIMIT)
    }

    fn refused(&self, what: &str, reason: impl Into<String>) -> BackingError {
        BackingError::Refused {
            address: self.address.clone(),
            what: what.to_owned(),
            reason: reason.into(),
        }
    }

    /// The store's advertised batch limit, asked once; while the store
    /// cannot be asked, the usual 4 MiB (not remembered).
    async fn max_batch(&self) -> u64 {
        let ask = || async {
            let mut c = CapabilitiesClient::new(self.channel.clone());
            let caps = self
                .call(
                    "GetCapabilities",
                    c.get_capabilities(self.unary_request(GetCapabilitiesRequest {
                        instance_name: self.instance.clone(),
                    })),
                )
                .await?;
            let m = caps
                .cache_capabilities
                .map_or(0, |c| c.max_batch_total_size_bytes);
            // 0 means "no limit" in REAPI; gRPC's message limit still is.
            Ok::<u64, BackingError>(if m <= 0 {
                DEFAULT_MAX_BATCH
            } else {
                (m as u64).min(64 << 20)
            })
        };
        match self.max_batch.get_or_try_init(ask).await {
            Ok(m) => *m,
            Err(_) => DEFAULT_MAX_BATCH,
        }
    }

    fn status_error(&self, what: &str, d: Digest, s: &Status) -> BackingError {
        if s.code() == Code::NotFound {
            BackingError::NotFound {
                address: self.address.clone(),
                digest: d,
            }
        } else {
            BackingError::from_status(&self.address, what, s)
        }
    }

    async fn write_stream(&self, d: Digest, body: Body) -> Result<(), BackingError> {
        let what = format!("writing blob {d}");
        let name = resource::write_name(
            &self.instance,
            &uuid::Uuid::new_v4().to_string(),
            &d,
            Compressor::Identity,
        );
        let (tx, rx) = mpsc::channel::<WriteRequest>(2);
        let feeder = tokio::spawn(feed(d, body, name, tx));
        let progress = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&progress);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).inspect(move |_| {
            seen.fetch_add(1, Ordering::Relaxed);
        });
        let mut client = ByteStreamClient::new(self.channel.clone());
        let call = client.write(self.request(stream));
        tokio::pin!(call);
        let mut last = 0;
        let answer = loop {
            tokio::select! {
                r = &mut call => break r,
                _ = tokio::time::sleep(self.timeout) => {
                    let now = progress.load(Ordering::Relaxed);
                    if now == last {
                        feeder.abort();
                        return Err(BackingError::timeout(&self.address, &what, self.timeout.as_secs()));
                    }
                    last = now;
                }
            }
        };
        // A local read error explains a broken stream better than the
        // store's view of it.
        match feeder.await {
            Ok(Err(source)) => {
                return Err(BackingError::Io {
                    address: self.address.clone(),
                    digest: d,
                    path: source.0,
                    source: source.1,
                })
            }
            Ok(Ok(())) => {}
            Err(e) => return Err(self.refused(&what, format!("upload task failed: {e}"))),
        }
        let committed = answer
            .map_err(|s| BackingError::from_status(&self.address, &what, &s))?
            .into_inner()
            .committed_size;
        if committed != d.size as i64 {
            return Err(self.refused(
                &what,
                format!("it committed {committed} bytes of {}", d.size),
            ));
        }
        Ok(())
    }
}

type FeedError = (std::path::PathBuf, std::io::Error);

/// Sends `body` as ByteStream WriteRequests; the store going away (the
/// receiver dropped) ends it quietly: the call's status says why.
async fn feed(
    d: Digest,
    body: Body,
    name: String,
    tx: mpsc::Sender<WriteRequest>,
) -> Result<(), FeedError> {
    let mut offset: u64 = 0;
    let mut first = Some(name);
    let msg = |first: &mut Option<String>, offset: u64, data: Vec<u8>, last: bool| WriteRequest {
        resource_name: first.take().unwrap_or_default(),
        write_offset: offset as i64,
        finish_write: last,
        data,
    };
    match body {
        Body::Bytes(data) => {
            if data.len() as u64 != d.size {
                return Err((
                    Default::default(),
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} bytes for a blob of {}", data.len(), d.size),
                    ),
                ));
            }
            let mut pieces = data.chunks(WRITE_CHUNK).peekable();
            if pieces.peek().is_none() {
                let _ = tx.send(msg(&mut first, 0, Vec::new(), true)).await;
                return Ok(());
            }
            while let Some(p) = pieces.next() {
                let last = pieces.peek().is_none();
                if tx
                    .send(msg(&mut first, offset, p.to_vec(), last))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                offset += p.len() as u64;
            }
            Ok(())
        }
        Body::File(path) => {
            let err = |e: std::io::Error| (path.clone(), e);
            let mut f = tokio::fs::File::open(&path).await.map_err(err)?;
            loop {
                let want = (d.size - offset).min(WRITE_CHUNK as u64) as usize;
                let mut buf = vec![0u8; want];
                f.read_exact(&mut buf).await.map_err(err)?;
                offset += want as u64;
                let last = offset == d.size;
                if tx
                    .send(msg(&mut first, offset - want as u64, buf, last))
                    .await
                    .is_err()
                    || last
                {
                    return Ok(());
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Backing for GrpcBacking {
    fn address(&self) -> &str {
        &self.address
    }

    async fn find_missing(
        &self,
        f: DigestFunction,
        ds: &[Digest],
    ) -> Result<Vec<Digest>, BackingError> {
        let mut missing = Vec::new();
        for chunk in ds.chunks(FIND_MISSING_BATCH) {
            let req = FindMissingBlobsRequest {
                instance_name: self.instance.clone(),
                blob_digests: chunk.iter().map(Digest::to_reapi).collect(),
                digest_function: f.to_reapi(),
            };
            let answer = self
                .call(
                    "FindMissingBlobs",
                    self.cas().find_missing_blobs(self.unary_request(req)),
                )
                .await?;
            let asked: HashSet<&Digest> = chunk.iter().collect();
            for m in &answer.missing_blob_digests {
                let d = Digest::from_reapi(f, m).map_err(|e| {
                    self.refused("FindMissingBlobs", format!("answered a bad digest: {e}"))
                })?;
                if asked.contains(&d) {
                    missing.push(d);
                }
            }
        }
        Ok(missing)
    }

    async fn read(&self, d: Digest) -> Result<BlobChunks, BackingError> {
        let what = format!("reading blob {d}");
        let name = resource::read_name(&self.instance, &d, Compressor::Identity);
        let mut client =
            ByteStreamClient::new(self.channel.clone()).max_decoding_message_size(MESSAGE_LIMIT);
        let req = self.request(ReadRequest {
            resource_name: name,
            read_offset: 0,
            read_limit: 0,
        });
        let stream = match tokio::time::timeout(self.timeout, client.read(req)).await {
            Err(_) => {
                return Err(BackingError::timeout(
                    &self.address,
                    &what,
                    self.timeout.as_secs(),
                ))
            }
            Ok(Err(s)) => return Err(self.status_error(&what, d, &s)),
            Ok(Ok(r)) => r.into_inner(),
        };
        let address = self.address.clone();
        let chunks = stream.map(move |r| {
            r.map(|m| m.data).map_err(|s| {
                if s.code() == Code::NotFound {
                    BackingError::NotFound {
                        address: address.clone(),
                        digest: d,
                    }
                } else {
                    BackingError::from_status(&address, &format!("reading blob {d}"), &s)
                }
            })
        });
        Ok(BlobChunks::new(
            d,
            self.address.clone(),
            self.timeout,
            chunks,
        ))
    }

    async fn write(&self, d: Digest, body: Body) -> Result<(), BackingError> {
        match body {
            Body::Bytes(data) if d.size <= self.max_batch().await / 2 => self
                .write_batch(vec![(d, data)])
                .await
                .pop()
                .unwrap_or_else(|| Err(self.refused("BatchUpdateBlobs", "no answer"))),
            body => self.write_stream(d, body).await,
        }
    }

    async fn write_batch(&self, blobs: Vec<(Digest, Vec<u8>)>) -> Vec<Result<(), BackingError>> {
        let budget = {
            let m = self.max_batch().await;
            m - m / BATCH_HEADROOM_DIV
        };
        let mut results: Vec<Option<Result<(), BackingError>>> =
            (0..blobs.len()).map(|_| None).collect();
        // Batches of one function each, within the store's limit; a blob
        // too large for any batch is streamed.
        let mut batches: Vec<(DigestFunction, u64, Vec<usize>)> = Vec::new();
        let mut large = Vec::new();
        for (i, (d, _)) in blobs.iter().enumerate() {
            if d.size > budget {
                large.push(i);
                continue;
            }
            match batches
                .iter_mut()
                .find(|(f, total, _)| *f == d.function && total + d.size <= budget)
            {
                Some((_, total, idx)) => {
                    *total += d.size;
                    idx.push(i);
                }
                None => batches.push((d.function, d.size, vec![i])),
            }
        }
        let mut blobs: Vec<Option<(Digest, Vec<u8>)>> = blobs.into_iter().map(Some).collect();
        for i in large {
            if let Some((d, data)) = blobs[i].take() {
                results[i] = Some(self.write_stream(d, Body::Bytes(data)).await);
            }
        }
        for (f, _, idx) in batches {
            // A blob named twice in one request is one answer for both.
            let mut digests: HashMap<Digest, Vec<usize>> = HashMap::new();
            let requests = idx
                .iter()
                .filter_map(|&i| {
                    let (d, data) = blobs[i].take()?;
                    let seen = digests.contains_key(&d);
                    digests.entry(d).or_default().push(i);
                    if seen {
                        return None;
                    }
                    Some(batch_update_blobs_request::Request {
                        digest: Some(d.to_reapi()),
                        data,
                        compressor: 0,
                    })
                })
                .collect();
            let req = BatchUpdateBlobsRequest {
                instance_name: self.instance.clone(),
                requests,
                digest_function: f.to_reapi(),
            };
            match self
                .call(
                    "BatchUpdateBlobs",
                    self.cas().batch_update_blobs(self.unary_request(req)),
                )
                .await
            {
                Err(e) => {
                    let reason = e.to_string();
                    for &i in digests.values().flatten() {
                        results[i] = Some(Err(match &e {
                            BackingError::Refused { what, reason, .. } => BackingError::Refused {
                                address: self.address.clone(),
                                what: what.clone(),
                                reason: reason.clone(),
                            },
                            _ => BackingError::Unavailable {
                                address: self.address.clone(),
                                reason: reason.clone(),
                            },
                        }));
                    }
                }
                Ok(answer) => {
                    for r in answer.responses {
                        let Some(d) = r
                            .digest
                            .as_ref()
                            .and_then(|d| Digest::from_reapi(f, d).ok())
                        else {
                            continue;
                        };
                        let Some(idx) = digests.get(&d) else { continue };
                        let s = r.status.unwrap_or_default();
                        let status = Status::new(Code::from_i32(s.code), s.message);
                        for &i in idx {
                            results[i] = Some(if s.code == 0 {
                                Ok(())
                            } else {
                                Err(BackingError::from_status(
                                    &self.address,
                                    &format!("writing blob {d}"),
                                    &status,
                                ))
                            });
                        }
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                // A blob the answer did not mention was not acknowledged.
                r.unwrap_or_else(|| {
                    Err(self.refused("BatchUpdateBlobs", "a blob was left out of the answer"))
                })
            })
            .collect()
    }

    async fn get_action_result(
        &self,
        action: Digest,
    ) -> Result<Option<ActionResult>, BackingError> {
        let req = GetActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.to_reapi()),
            inline_stdout: false,
            inline_stderr: false,
            inline_output_files: Vec::new(),
            digest_function: action.function.to_reapi(),
        };
        let mut c =
            ActionCacheClient::new(self.channel.clone()).max_decoding_message_size(MESSAGE_LIMIT);
        let what = "GetActionResult";
        match tokio::time::timeout(self.timeout, c.get_action_result(self.unary_request(req))).await
        {
            Err(_) => Err(BackingError::timeout(
                &self.address,
                what,
                self.timeout.as_secs(),
            )),
            Ok(Ok(r)) => Ok(Some(r.into_inner())),
            Ok(Err(s)) if s.code() == Code::NotFound => Ok(None),
            Ok(Err(s)) => Err(BackingError::from_status(&self.address, what, &s)),
        }
    }

    async fn update_action_result(
        &self,
        action: Digest,
        result: ActionResult,
    ) -> Result<(), BackingError> {
        let req = UpdateActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.to_reapi()),
            action_result: Some(result),
            results_cache_policy: None,
            digest_function: action.function.to_reapi(),
        };
        let mut c =
            ActionCacheClient::new(self.channel.clone()).max_encoding_message_size(MESSAGE_LIMIT);
        self.call(
            "UpdateActionResult",
            c.update_action_result(self.unary_request(req)),
        )
        .await
        .map(|_| ())
    }
}
