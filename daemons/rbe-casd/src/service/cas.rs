//! Capabilities and ContentAddressableStorage.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use rbe_proto::reapi::{
    self, batch_read_blobs_response, batch_update_blobs_response,
    capabilities_server::Capabilities,
    content_addressable_storage_server::ContentAddressableStorage, BatchReadBlobsRequest,
    BatchReadBlobsResponse, BatchUpdateBlobsRequest, BatchUpdateBlobsResponse, Directory,
    FindMissingBlobsRequest, FindMissingBlobsResponse, GetCapabilitiesRequest, GetTreeRequest,
    GetTreeResponse, ServerCapabilities,
};
use rbe_proto::resource::Compressor;
use rbe_proto::{rpc, Digest, DigestFunction};
use tonic::{Code, Request, Response, Status};

use super::{blocking, cas_status, digest_status, Casd, MAX_DIRECTORY_BYTES};

/// One entry of a BatchUpdateBlobs request once its digest is parsed.
type BatchEntry = Result<(Digest, Compressor, Vec<u8>), Status>;

/// The Capabilities service.
pub struct CapabilitiesService(pub Arc<Casd>);
/// The CAS service.
pub struct CasService(pub Arc<Casd>);

/// What casd advertises; rbe-frontend adds execution capabilities on top.
pub fn server_capabilities(max_batch: u64) -> ServerCapabilities {
    use reapi::{compressor, symlink_absolute_path_strategy};
    ServerCapabilities {
        cache_capabilities: Some(reapi::CacheCapabilities {
            digest_functions: DigestFunction::ALL.iter().map(|f| f.to_reapi()).collect(),
            action_cache_update_capabilities: Some(reapi::ActionCacheUpdateCapabilities {
                update_enabled: true,
            }),
            cache_priority_capabilities: None,
            max_batch_total_size_bytes: max_batch as i64,
            symlink_absolute_path_strategy: symlink_absolute_path_strategy::Value::Allowed as i32,
            supported_compressors: vec![compressor::Value::Zstd as i32],
            supported_batch_update_compressors: vec![compressor::Value::Zstd as i32],
            ..Default::default()
        }),
        execution_capabilities: None,
        deprecated_api_version: None,
        low_api_version: Some(rbe_proto::semver::SemVer {
            major: 2,
            minor: 0,
            patch: 0,
            prerelease: String::new(),
        }),
        high_api_version: Some(rbe_proto::semver::SemVer {
            major: 2,
            minor: 3,
            patch: 0,
            prerelease: String::new(),
        }),
    }
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        req: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        self.0.partition(&req.get_ref().instance_name)?;
        Ok(Response::new(server_capabilities(
            self.0.settings.load().limits.max_batch_total_size_bytes,
        )))
    }
}

fn status_ok() -> Option<rpc::Status> {
    Some(rpc::Status {
        code: 0,
        message: String::new(),
        details: vec![],
    })
}

fn status_of(s: &Status) -> Option<rpc::Status> {
    Some(rpc::Status {
        code: s.code() as i32,
        message: s.message().to_string(),
        details: vec![],
    })
}

fn decompress(d: &Digest, data: &[u8]) -> Result<Vec<u8>, Status> {
    // The digest bounds the output, so a zstd bomb cannot grow memory.
    zstd::bulk::decompress(data, d.size as usize).map_err(|e| {
        Status::invalid_argument(format!(
            "zstd data for {d} does not decompress within its size: {e}"
        ))
    })
}

impl CasService {
    fn function(&self, v: i32) -> Result<DigestFunction, Status> {
        DigestFunction::from_reapi(v).map_err(digest_status)
    }
}

/// A breadth-first walk of a directory tree, each directory once, resumable
/// by the count of directories already returned.
struct TreeWalk {
    store: Arc<rbe_cas::Store>,
    f: DigestFunction,
    queue: VecDeque<Digest>,
    seen: HashSet<Digest>,
    index: usize,
    skip: usize,
}

/// Pages stop at this many encoded bytes, below clients' 4 MiB default.
const TREE_PAGE_BYTES: usize = 2 << 20;

impl TreeWalk {
    /// The next page; its token is empty when the walk is complete. Missing
    /// directories are omitted, as REAPI specifies.
    fn next_page(&mut self, max_dirs: usize) -> Result<GetTreeResponse, Status> {
        let mut dirs = Vec::new();
        let mut bytes = 0usize;
        while let Some(d) = self.queue.pop_front() {
            if d.size > MAX_DIRECTORY_BYTES {
                return Err(Status::invalid_argument(format!(
                    "directory {d} is larger than {MAX_DIRECTORY_BYTES} bytes"
                )));
            }
            let data = match self.store.read_all(d) {
                Ok(b) => b,
                Err(rbe_cas::CasError::NotFound(_)) | Err(rbe_cas::CasError::Corrupt(_)) => {
                    continue
                }
                Err(e) => return Err(cas_status(e)),
            };
            let dir = Directory::decode(data.as_slice()).map_err(|e| {
                Status::new(
                    Code::InvalidArgument,
                    format!("blob {d} is not a Directory: {e}"),
                )
            })?;
            for c in &dir.directories {
                let cd = Digest::from_reapi_opt(self.f, c.digest.as_ref()).map_err(|e| {
                    Status::invalid_argument(format!("directory {d}, entry {:?}: {e}", c.name))
                })?;
                if self.seen.insert(cd) {
                    self.queue.push_back(cd);
                }
            }
            self.index += 1;
            if self.index <= self.skip {
                continue;
            }
            bytes += data.len();
            dirs.push(dir);
            if dirs.len() >= max_dirs || bytes >= TREE_PAGE_BYTES {
                break;
            }
        }
        let token = if self.queue.is_empty() {
            String::new()
        } else {
            self.index.to_string()
        };
        Ok(GetTreeResponse {
            directories: dirs,
            next_page_token: token,
        })
    }
}

type TreeStream = Pin<Box<dyn Stream<Item = Result<GetTreeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        req: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let req = req.into_inner();
        self.0.partition(&req.instance_name)?;
        let f = self.function(req.digest_function)?;
        let ds = req
            .blob_digests
            .iter()
            .map(|d| Digest::from_reapi(f, d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(digest_status)?;
        let store = Arc::clone(&self.0.store);
        let (ds, missing) = if store.is_loading() {
            blocking(move || {
                let missing = store.find_missing(&ds);
                (ds, missing)
            })
            .await?
        } else {
            let missing = store.find_missing(&ds);
            (ds, missing)
        };
        // In front of a backing store, it answers for what is not local
        // (or, in jit mode, for everything).
        let missing = match &self.0.through {
            Some(t) => t.missing(f, &ds, missing).await?,
            None => missing,
        };
        // `missing` keeps the request's order, so the answer can reuse the
        // request's own messages (already valid lowercase hex) instead of
        // encoding each hash again.
        let mut missing_blob_digests = Vec::with_capacity(missing.len());
        let mut next = missing.iter().peekable();
        for (m, d) in req.blob_digests.into_iter().zip(&ds) {
            if next.peek() == Some(&d) {
                next.next();
                missing_blob_digests.push(m);
            }
        }
        // Anything not matched in order (never expected) is encoded afresh.
        missing_blob_digests.extend(next.map(Digest::to_reapi));
        Ok(Response::new(FindMissingBlobsResponse {
            missing_blob_digests,
        }))
    }

    async fn batch_update_blobs(
        &self,
        req: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        let req = req.into_inner();
        self.0.partition(&req.instance_name)?;
        let f = self.function(req.digest_function)?;
        let max = self.0.settings.load().limits.max_batch_total_size_bytes;
        let total: u64 = req.requests.iter().map(|r| r.data.len() as u64).sum();
        if total > max {
            return Err(Status::invalid_argument(format!(
                "batch carries {total} bytes, more than the advertised max_batch_total_size_bytes {max}; use ByteStream"
            )));
        }
        // Validate every entry first; per-blob failures are reported per
        // blob. Compressed entries are bounded by their digests' sizes,
        // whose sum must also fit the advertised limit, before anything is
        // decompressed: a small zstd bomb cannot grow memory.
        let mut responses = Vec::with_capacity(req.requests.len());
        let mut entries: Vec<BatchEntry> = Vec::with_capacity(req.requests.len());
        let mut uncompressed: u64 = 0;
        for r in req.requests {
            responses.push(batch_update_blobs_response::Response {
                digest: r.digest.clone(),
                status: None,
            });
            let d = Digest::from_reapi_opt(f, r.digest.as_ref()).map_err(digest_status);
            entries.push(d.and_then(|d| match Compressor::from_reapi(r.compressor) {
                Some(c) => {
                    uncompressed = uncompressed.saturating_add(d.size);
                    Ok((d, c, r.data))
                }
                None => Err(Status::invalid_argument(format!(
                    "compressor {} is not supported",
                    r.compressor
                ))),
            }));
        }
        if uncompressed > max {
            return Err(Status::invalid_argument(format!(
                "batch holds {uncompressed} bytes once decompressed, more than the advertised max_batch_total_size_bytes {max}; use ByteStream"
            )));
        }
        if let Some(t) = &self.0.through {
            let results = write_through_batch(&self.0, t, entries).await?;
            for (resp, st) in responses.iter_mut().zip(results) {
                resp.status = st;
            }
            return Ok(Response::new(BatchUpdateBlobsResponse { responses }));
        }
        let store = Arc::clone(&self.0.store);
        let results = blocking(move || {
            let prepared: Vec<Result<(Digest, Vec<u8>), Status>> = entries
                .into_iter()
                .map(|e| {
                    e.and_then(|(d, c, data)| match c {
                        Compressor::Identity => Ok((d, data)),
                        Compressor::Zstd => decompress(&d, &data).map(|data| (d, data)),
                    })
                })
                .collect();
            let ok: Vec<(usize, Digest, &[u8])> = prepared
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.as_ref().ok().map(|(d, data)| (i, *d, data.as_slice())))
                .collect();
            let items: Vec<(Digest, &[u8])> = ok.iter().map(|(_, d, data)| (*d, *data)).collect();
            let res = store.put_batch(&items);
            let mut out: Vec<Option<rpc::Status>> = prepared
                .iter()
                .map(|p| p.as_ref().err().and_then(status_of))
                .collect();
            for ((i, _, _), r) in ok.iter().zip(res) {
                out[*i] = match r {
                    Ok(()) => status_ok(),
                    Err(e) => status_of(&cas_status(e)),
                };
            }
            out
        })
        .await?;
        for (resp, st) in responses.iter_mut().zip(results) {
            resp.status = st;
        }
        Ok(Response::new(BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        req: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        let req = req.into_inner();
        self.0.partition(&req.instance_name)?;
        let f = self.function(req.digest_function)?;
        let ds = req
            .digests
            .iter()
            .map(|d| Digest::from_reapi(f, d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(digest_status)?;
        let max = self.0.settings.load().limits.max_batch_total_size_bytes;
        let total: u64 = ds.iter().map(|d| d.size).sum();
        if total > max {
            return Err(Status::invalid_argument(format!(
                "batch asks for {total} bytes, more than the advertised max_batch_total_size_bytes {max}; use ByteStream"
            )));
        }
        let zstd_ok = req
            .acceptable_compressors
            .contains(&Compressor::Zstd.to_reapi());
        let mut failed: std::collections::HashMap<Digest, Status> = Default::default();
        if let Some(t) = &self.0.through {
            // Local blobs return at once (and are counted as local reads).
            failed = t
                .ensure_all_local(&self.0.store, &ds)
                .await
                .into_iter()
                .collect();
        }
        let store = Arc::clone(&self.0.store);
        let responses: Vec<batch_read_blobs_response::Response> = blocking(move || {
            ds.iter()
                .map(|d| {
                    let mut resp = batch_read_blobs_response::Response {
                        digest: Some(d.to_reapi()),
                        ..Default::default()
                    };
                    if let Some(e) = failed.get(d) {
                        resp.status = status_of(e);
                        return resp;
                    }
                    match store.read_all(*d) {
                        Ok(data) => {
                            resp.status = status_ok();
                            // Small blobs are not worth the compressor's framing.
                            if zstd_ok && data.len() > 512 {
                                if let Ok(c) = zstd::bulk::compress(&data, 1) {
                                    if c.len() < data.len() {
                                        resp.data = c;
                                        resp.compressor = Compressor::Zstd.to_reapi();
                                        return resp;
                                    }
                                }
                            }
                            resp.data = data;
                        }
                        Err(e) => resp.status = status_of(&cas_status(e)),
                    }
                    resp
                })
                .collect()
        })
        .await?;
        let served = responses
            .iter()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.code == 0))
            .count();
        self.0.note_read(served as u64);
        Ok(Response::new(BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = TreeStream;

    async fn get_tree(
        &self,
        req: Request<GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        let req = req.into_inner();
        self.0.partition(&req.instance_name)?;
        let f = self.function(req.digest_function)?;
        let root = Digest::from_reapi_opt(f, req.root_digest.as_ref()).map_err(digest_status)?;
        if self.0.through.is_some() {
            // The tree's directories are fetched through first, so the
            // walk omits only those the backing store lacks too.
            super::local::hydrate(&self.0, None, f, root, false).await?;
        }
        if !self.0.store.contains(&root) {
            return Err(Status::not_found(format!(
                "root directory {root} is not in the CAS"
            )));
        }
        let skip: usize = if req.page_token.is_empty() {
            0
        } else {
            req.page_token.parse().map_err(|_| {
                Status::invalid_argument(format!(
                    "page_token {:?} is not one this server issued",
                    req.page_token
                ))
            })?
        };
        let page = if req.page_size <= 0 {
            1000
        } else {
            (req.page_size as usize).min(10_000)
        };
        let store = Arc::clone(&self.0.store);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let mut walk = TreeWalk {
            store,
            f,
            queue: VecDeque::from([root]),
            seen: HashSet::from([root]),
            index: 0,
            skip,
        };
        tokio::spawn(async move {
            loop {
                // Each page is read on a blocking thread; waiting for the
                // client to take it is asynchronous.
                let r = tokio::task::spawn_blocking(move || {
                    let r = walk.next_page(page);
                    (walk, r)
                })
                .await;
                let Ok((w, r)) = r else { return };
                walk = w;
                let last = !matches!(&r, Ok(p) if !p.next_page_token.is_empty());
                if tx.send(r).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn split_blob(
        &self,
        _: Request<reapi::SplitBlobRequest>,
    ) -> Result<Response<reapi::SplitBlobResponse>, Status> {
        Err(rbe_proto::status::chunking_not_offered("SplitBlob"))
    }

    type GetChunkMappingStream =
        Pin<Box<dyn Stream<Item = Result<reapi::GetChunkMappingResponse, Status>> + Send>>;

    async fn get_chunk_mapping(
        &self,
        _: Request<reapi::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        Err(rbe_proto::status::chunking_not_offered("GetChunkMapping"))
    }

    async fn splice_blob(
        &self,
        _: Request<reapi::SpliceBlobRequest>,
    ) -> Result<Response<reapi::SpliceBlobResponse>, Status> {
        Err(rbe_proto::status::chunking_not_offered("SpliceBlob"))
    }

    async fn register_chunk_mapping(
        &self,
        _: Request<tonic::Streaming<reapi::RegisterChunkMappingRequest>>,
    ) -> Result<Response<reapi::RegisterChunkMappingResponse>, Status> {
        Err(rbe_proto::status::chunking_not_offered(
            "RegisterChunkMapping",
        ))
    }
}

/// BatchUpdateBlobs in front of a backing store: every blob is checked
/// against its digest, then those not yet local are sent to the backing
/// store, and only those it acknowledged are stored and indexed here. A
/// blob the backing store did not take gets UNAVAILABLE naming it.
async fn write_through_batch(
    casd: &Casd,
    t: &Arc<super::through::Through>,
    entries: Vec<BatchEntry>,
) -> Result<Vec<Option<rpc::Status>>, Status> {
    let decompressed = blocking(move || {
        entries
            .into_iter()
            .map(|e| {
                e.and_then(|(d, c, data)| match c {
                    Compressor::Identity => Ok((d, data)),
                    Compressor::Zstd => decompress(&d, &data).map(|data| (d, data)),
                })
            })
            .collect::<Vec<_>>()
    })
    .await?;
    let mut out: Vec<Option<rpc::Status>> = Vec::with_capacity(decompressed.len());
    let mut valid = Vec::new();
    let mut index = Vec::new();
    for (i, e) in decompressed.into_iter().enumerate() {
        match e {
            Ok(b) => {
                out.push(None);
                index.push(i);
                valid.push(b);
            }
            Err(s) => out.push(status_of(&s)),
        }
    }
    let checked = super::through::check_blobs(valid).await?;
    let mut to_send = Vec::new();
    let mut sent_index = Vec::new();
    let mut local = Vec::new();
    for (i, c) in index.into_iter().zip(checked) {
        match c {
            Err(s) => out[i] = status_of(&s),
            // In jit mode the backing store may lack a blob held here.
            Ok((d, _)) if t.local_proves() && casd.store.contains(&d) => out[i] = status_ok(),
            Ok(b) => {
                sent_index.push(i);
                to_send.push(b);
            }
        }
    }
    // The bytes are needed again after the backing store took them.
    let acks = t.write_blobs(to_send.clone()).await;
    for ((i, r), blob) in sent_index.iter().zip(acks).zip(to_send) {
        match r {
            Ok(()) => local.push((*i, blob)),
            Err(s) => out[*i] = status_of(&s),
        }
    }
    let store = Arc::clone(&casd.store);
    let stored = blocking(move || {
        let items: Vec<(Digest, &[u8])> =
            local.iter().map(|(_, (d, b))| (*d, b.as_slice())).collect();
        let res = store.put_batch(&items);
        local.iter().map(|(i, _)| *i).zip(res).collect::<Vec<_>>()
    })
    .await?;
    for (i, r) in stored {
        out[i] = match r {
            Ok(()) => status_ok(),
            Err(e) => status_of(&cas_status(e)),
        };
    }
    Ok(out)
}
