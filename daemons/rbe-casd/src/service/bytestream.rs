//! ByteStream Read/Write/QueryWriteStatus over the store, streamed.
//!
//! Disk and hash work runs in short blocking calls of up to 1 MiB each;
//! waiting for the client is asynchronous, so a slow or idle client holds no
//! thread. A write buffers at most 1 MiB while the previous chunk is being
//! hashed and written, which overlaps network, hashing and disk.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rbe_cas::{BlobReader, BlobWriter, CasError};
use rbe_proto::bytestream::{
    byte_stream_server::ByteStream, QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest,
    ReadResponse, WriteRequest, WriteResponse,
};
use rbe_proto::resource::{self, Compressor};
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{blocking, cas_status, resource_status, Casd};

/// Chunk size for reads: large enough for throughput, well under the 4 MiB
/// default gRPC message limit of clients.
const READ_CHUNK: usize = 1 << 20;
/// Bytes gathered from a write stream before one blocking write.
const WRITE_BATCH: usize = 1 << 20;
/// A write stream that sends nothing for this long is cut (and parked for
/// resumption), so idle clients cannot pin resources.
const WRITE_IDLE: Duration = Duration::from_secs(60);

/// The ByteStream service.
pub struct ByteStreamService(pub Arc<Casd>);

impl ByteStreamService {
    /// In jit mode, whether the backing store lacks `d` (a local copy
    /// then does not complete an upload); false otherwise.
    async fn backing_lacks(&self, d: rbe_proto::Digest) -> Result<bool, Status> {
        match &self.0.through {
            Some(t) if !t.local_proves() => Ok(!t.find_missing(d.function, &[d]).await?.is_empty()),
            _ => Ok(false),
        }
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

/// A read in progress: the verified reader and, for compressed reads, the
/// encoder. Moved into each blocking call and back.
struct ReadState {
    reader: BlobReader,
    encoder: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
    done: bool,
}

impl ReadState {
    /// The next piece of wire data; empty at the end.
    fn next(&mut self) -> Result<Vec<u8>, Status> {
        use std::io::Write;
        loop {
            if self.done {
                return Ok(Vec::new());
            }
            match self.reader.next_chunk(READ_CHUNK).map_err(cas_status)? {
                Some(chunk) => match self.encoder.as_mut() {
                    None => return Ok(chunk),
                    Some(enc) => {
                        enc.write_all(&chunk)
                            .and_then(|_| enc.flush())
                            .map_err(|e| Status::internal(format!("zstd: {e}")))?;
                        let out = std::mem::take(enc.get_mut());
                        if !out.is_empty() {
                            return Ok(out);
                        }
                    }
                },
                None => {
                    self.done = true;
                    return match self.encoder.take() {
                        Some(enc) => enc
                            .finish()
                            .map_err(|e| Status::internal(format!("zstd: {e}"))),
                        None => Ok(Vec::new()),
                    };
                }
            }
        }
    }
}

async fn read_loop(mut state: ReadState, tx: mpsc::Sender<Result<ReadResponse, Status>>) {
    loop {
        let r = tokio::task::spawn_blocking(move || {
            let r = state.next();
            (state, r)
        })
        .await;
        let (s, r) = match r {
            Ok(x) => x,
            Err(e) => {
                let _ = tx
                    .send(Err(Status::internal(format!("reader failed: {e}"))))
                    .await;
                return;
            }
        };
        state = s;
        match r {
            Ok(data) if data.is_empty() && state.done => return,
            Ok(data) if data.is_empty() => continue,
            Ok(data) => {
                if tx.send(Ok(ReadResponse { data })).await.is_err() {
                    return; // the client went away
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// A write in progress: the writer and, for compressed uploads, the
/// decoder. Moved into each blocking call and back.
struct WriteState {
    writer: BlobWriter,
    decoder: Option<zstd::stream::raw::Decoder<'static>>,
    out: Vec<u8>,
}

impl WriteState {
    fn feed(&mut self, data: &[u8]) -> Result<(), Status> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let Some(dec) = self.decoder.as_mut() else {
            return self.writer.write(data).map_err(cas_status);
        };
        let mut input = InBuffer::around(data);
        // Run until the input is consumed and the decoder has no more
        // output pending (a full output buffer means there may be more).
        loop {
            let mut output = OutBuffer::around(&mut self.out[..]);
            dec.run(&mut input, &mut output)
                .map_err(|e| Status::invalid_argument(format!("zstd data is invalid: {e}")))?;
            let n = output.pos();
            let full = n == self.out.len();
            self.writer.write(&self.out[..n]).map_err(cas_status)?;
            if input.pos >= data.len() && !full {
                return Ok(());
            }
        }
    }

    fn end(&mut self) -> Result<(), Status> {
        if self.decoder.is_some() {
            // Drain what the decoder still holds.
            self.feed(&[])?;
        }
        Ok(())
    }
}

async fn write_chunk(
    state: WriteState,
    data: Vec<u8>,
) -> Result<(WriteState, Result<(), Status>), Status> {
    blocking(move || {
        let mut state = state;
        let r = state.feed(&data);
        (state, r)
    })
    .await
}

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let req = req.into_inner();
        let res = resource::parse_read(&req.resource_name).map_err(resource_status)?;
        self.0.partition(&res.instance)?;
        if req.read_offset < 0 {
            return Err(Status::out_of_range("read_offset must not be negative"));
        }
        if req.read_limit < 0 {
            return Err(Status::invalid_argument("read_limit must not be negative"));
        }
        if res.compressor != Compressor::Identity && req.read_limit != 0 {
            return Err(Status::invalid_argument(
                "read_limit must be 0 for compressed-blobs reads",
            ));
        }
        let offset = req.read_offset as u64;
        if offset > res.digest.size {
            return Err(Status::out_of_range(format!(
                "read_offset {offset} is past the end of {}",
                res.digest
            )));
        }
        if let Some(t) = &self.0.through {
            t.ensure_local(&self.0.store, res.digest).await?;
        }
        if !self.0.store.contains(&res.digest) {
            return Err(Status::not_found(format!(
                "blob {} is not in the CAS",
                res.digest
            )));
        }
        self.0.note_read(1);
        let store = Arc::clone(&self.0.store);
        let (d, limit) = (res.digest, req.read_limit as u64);
        let reader = blocking(move || store.reader(d, offset, limit))
            .await?
            .map_err(cas_status)?;
        let encoder = match res.compressor {
            Compressor::Identity => None,
            Compressor::Zstd => Some(
                zstd::stream::write::Encoder::new(Vec::new(), 1)
                    .map_err(|e| Status::internal(format!("zstd: {e}")))?,
            ),
        };
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(read_loop(
            ReadState {
                reader,
                encoder,
                done: false,
            },
            tx,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn write(
        &self,
        req: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let mut stream = req.into_inner();
        let first = match tokio::time::timeout(WRITE_IDLE, stream.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err(Status::invalid_argument("write stream had no messages")),
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "write stream sent nothing for 60 s",
                ))
            }
        };
        let name = first.resource_name.clone();
        let res = resource::parse_write(&name).map_err(resource_status)?;
        self.0.partition(&res.instance)?;
        let d = res.digest;
        let compressed = res.compressor != Compressor::Identity;
        if self.0.store.contains(&d) && !self.backing_lacks(d).await? {
            // Someone already uploaded it: complete at once, as REAPI allows.
            return Ok(Response::new(WriteResponse {
                committed_size: if compressed { -1 } else { d.size as i64 },
            }));
        }
        let Some(active) = self.0.uploads.activate(&name) else {
            return Err(Status::aborted(format!(
                "another stream is writing {name}; retry"
            )));
        };
        let offset = first.write_offset;
        let parked = self.0.uploads.take(&name);
        let writer = match (offset, parked, compressed) {
            (0, _, _) => {
                let store = Arc::clone(&self.0.store);
                blocking(move || store.begin_write(d))
                    .await?
                    .map_err(cas_status)?
            }
            (o, Some(w), false) if o >= 0 && o as u64 == w.written() => w,
            (o, w, _) => {
                let committed = w.as_ref().map(|w| w.written()).unwrap_or(0);
                if let Some(w) = w {
                    self.0.uploads.park(name.clone(), w);
                }
                return Err(Status::invalid_argument(format!(
                    "write_offset {o} does not continue this upload: {committed} bytes are committed{}",
                    if compressed { " (compressed uploads restart at 0)" } else { "" }
                )));
            }
        };
        active.set_committed(writer.written());
        let decoder = if compressed {
            Some(
                zstd::stream::raw::Decoder::new()
                    .map_err(|e| Status::internal(format!("zstd: {e}")))?,
            )
        } else {
            None
        };
        let mut state = Some(WriteState {
            writer,
            decoder,
            out: vec![0u8; 1 << 20],
        });
        let mut in_flight: Option<
            tokio::task::JoinHandle<Result<(WriteState, Result<(), Status>), Status>>,
        > = None;
        let mut buf: Vec<u8> = Vec::new();
        let mut expected = offset;
        let mut msg = Some(first);
        let mut finished = false;
        let mut stream_err: Option<Status> = None;
        let mut write_err: Option<Status> = None;
        while let Some(m) = msg.take() {
            if m.write_offset != expected {
                stream_err = Some(Status::invalid_argument(format!(
                    "write_offset {} where {expected} was expected",
                    m.write_offset
                )));
                break;
            }
            if !m.resource_name.is_empty() && m.resource_name != name {
                stream_err = Some(Status::invalid_argument(
                    "resource_name changed within one write stream",
                ));
                break;
            }
            expected += m.data.len() as i64;
            if buf.is_empty() {
                // A whole message becomes the batch without a copy.
                buf = m.data;
            } else {
                buf.extend_from_slice(&m.data);
            }
            finished = m.finish_write;
            if buf.len() >= WRITE_BATCH || finished {
                // Wait for the previous chunk, then hand this one over.
                if let Some(h) = in_flight.take() {
                    let (s, r) = h
                        .await
                        .map_err(|e| Status::internal(format!("writer failed: {e}")))??;
                    active.set_committed(s.writer.written());
                    state = Some(s);
                    if let Err(e) = r {
                        write_err = Some(e);
                        break;
                    }
                }
                let s = state
                    .take()
                    .ok_or_else(|| Status::internal("writer lost"))?;
                in_flight = Some(tokio::spawn(write_chunk(s, std::mem::take(&mut buf))));
            }
            if finished {
                break;
            }
            msg = match tokio::time::timeout(WRITE_IDLE, stream.next()).await {
                Ok(Some(Ok(m))) => Some(m),
                Ok(Some(Err(e))) => {
                    stream_err = Some(e);
                    None
                }
                Ok(None) => None,
                Err(_) => {
                    stream_err = Some(Status::deadline_exceeded(
                        "write stream sent nothing for 60 s; resume with QueryWriteStatus",
                    ));
                    None
                }
            };
        }
        if let Some(h) = in_flight.take() {
            let (s, r) = h
                .await
                .map_err(|e| Status::internal(format!("writer failed: {e}")))??;
            state = Some(s);
            if let (Err(e), None) = (r, &write_err) {
                write_err = Some(e);
            }
        }
        let mut state = state.ok_or_else(|| Status::internal("writer lost"))?;
        if let Some(e) = write_err {
            return Err(e);
        }
        if !buf.is_empty() {
            // Bytes received before the stream broke are kept for a resume.
            let (s, r) = write_chunk(state, std::mem::take(&mut buf)).await?;
            state = s;
            r?;
        }
        if let Some(e) = stream_err {
            // A broken or stalled stream can be resumed; a protocol error
            // cannot.
            if !compressed && e.code() != Code::InvalidArgument {
                let committed = state.writer.written();
                drop(active);
                self.0.uploads.park(name, state.writer);
                tracing::debug!(digest = %d, committed, "upload interrupted; parked for resumption");
            }
            return Err(e);
        }
        if !finished {
            let committed = state.writer.written();
            drop(active);
            if !compressed {
                self.0.uploads.park(name, state.writer);
            }
            return Err(Status::invalid_argument(format!(
                "write stream ended without finish_write after {committed} bytes; QueryWriteStatus tells where to resume"
            )));
        }
        let r = match self.0.through.clone() {
            None => {
                blocking(move || -> Result<(), Status> {
                    state.end()?;
                    match state.writer.finish() {
                        Ok(()) => Ok(()),
                        Err(e @ CasError::DigestMismatch { .. }) => Err(cas_status(e)),
                        Err(e) => Err(cas_status(e)),
                    }
                })
                .await?
            }
            // Verified bytes go to the backing store first; only once it
            // acknowledged them is the blob committed and indexed here. On
            // failure the writer is dropped with its temp file: nothing is
            // advertised, and the client uploads again.
            Some(t) => {
                let (state, r) = blocking(move || {
                    let r = state
                        .end()
                        .and_then(|()| state.writer.check().map_err(cas_status));
                    (state, r)
                })
                .await?;
                match r {
                    Err(e) => Err(e),
                    Ok(()) => match t.write_file(d, state.writer.temp_path().to_owned()).await {
                        Err(e) => Err(e),
                        Ok(()) => {
                            blocking(move || state.writer.finish().map_err(cas_status)).await?
                        }
                    },
                }
            }
        };
        drop(active);
        if let Err(e) = r {
            // Another client may have completed the same blob meanwhile.
            if self.0.local_proves()
                && self.0.store.contains(&d)
                && e.code() != Code::InvalidArgument
            {
                return Ok(Response::new(WriteResponse {
                    committed_size: if compressed { expected } else { d.size as i64 },
                }));
            }
            return Err(e);
        }
        tracing::debug!(digest = %d, "blob written");
        // For a compressed upload, ByteStream counts the bytes on the wire.
        Ok(Response::new(WriteResponse {
            committed_size: if compressed { expected } else { d.size as i64 },
        }))
    }

    async fn query_write_status(
        &self,
        req: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let name = req.into_inner().resource_name;
        let res = resource::parse_write(&name).map_err(resource_status)?;
        self.0.partition(&res.instance)?;
        if self.0.local_proves() && self.0.store.contains(&res.digest) {
            return Ok(Response::new(QueryWriteStatusResponse {
                committed_size: res.digest.size as i64,
                complete: true,
            }));
        }
        match self.0.uploads.committed(&name) {
            Some(n) => Ok(Response::new(QueryWriteStatusResponse {
                committed_size: n as i64,
                complete: false,
            })),
            None => Err(Status::not_found(format!(
                "no upload in progress for {name}"
            ))),
        }
    }
}
