//! ByteStream Read/Write/QueryWriteStatus over the store, streamed: reads and
//! writes run on a blocking thread connected by a small channel, so hashing
//! and disk I/O overlap with the network and no blob is held in memory.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use rbe_cas::BlobWriter;
use rbe_proto::bytestream::{
    byte_stream_server::ByteStream, QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest,
    ReadResponse, WriteRequest, WriteResponse,
};
use rbe_proto::resource::{self, Compressor};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::{blocking, cas_status, resource_status, Casd};

/// Chunk size for reads: large enough for throughput, well under the 4 MiB
/// default gRPC message limit of clients.
const READ_CHUNK: usize = 1 << 20;

/// The ByteStream service.
pub struct ByteStreamService(pub Arc<Casd>);

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

fn reader_thread(
    casd: Arc<Casd>,
    res: resource::ReadResource,
    offset: u64,
    limit: u64,
    tx: mpsc::Sender<Result<ReadResponse, Status>>,
) {
    let d = res.digest;
    let mut reader = match casd.store.reader(d, offset, limit) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.blocking_send(Err(cas_status(e)));
            return;
        }
    };
    let mut encoder = match res.compressor {
        Compressor::Identity => None,
        Compressor::Zstd => match zstd::stream::write::Encoder::new(Vec::new(), 1) {
            Ok(e) => Some(e),
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(format!("zstd: {e}"))));
                return;
            }
        },
    };
    loop {
        match reader.next_chunk(READ_CHUNK) {
            Ok(Some(chunk)) => {
                let data = match encoder.as_mut() {
                    None => chunk,
                    Some(enc) => {
                        use std::io::Write;
                        if let Err(e) = enc.write_all(&chunk).and_then(|_| enc.flush()) {
                            let _ = tx.blocking_send(Err(Status::internal(format!("zstd: {e}"))));
                            return;
                        }
                        std::mem::take(enc.get_mut())
                    }
                };
                if !data.is_empty() && tx.blocking_send(Ok(ReadResponse { data })).is_err() {
                    return; // client went away
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx.blocking_send(Err(cas_status(e)));
                return;
            }
        }
    }
    if let Some(enc) = encoder {
        match enc.finish() {
            Ok(tail) if !tail.is_empty() => {
                let _ = tx.blocking_send(Ok(ReadResponse { data: tail }));
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(format!("zstd: {e}"))));
            }
        }
    }
}

/// Feeds a writer from a channel on a blocking thread; gives it back at the
/// end (or with the first error).
fn writer_thread(
    mut w: BlobWriter,
    mut rx: mpsc::Receiver<Vec<u8>>,
    compressed: bool,
) -> (BlobWriter, Result<(), Status>) {
    let mut decoder = if compressed {
        match zstd::stream::raw::Decoder::new() {
            Ok(d) => Some(d),
            Err(e) => return (w, Err(Status::internal(format!("zstd: {e}")))),
        }
    } else {
        None
    };
    let mut out = vec![0u8; 1 << 20];
    while let Some(chunk) = rx.blocking_recv() {
        let r = match decoder.as_mut() {
            None => w.write(&chunk).map_err(cas_status),
            Some(dec) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut input = InBuffer::around(&chunk);
                let mut res = Ok(());
                while input.pos < chunk.len() {
                    let mut output = OutBuffer::around(&mut out[..]);
                    if let Err(e) = dec.run(&mut input, &mut output) {
                        res = Err(Status::invalid_argument(format!(
                            "zstd data is invalid: {e}"
                        )));
                        break;
                    }
                    let n = output.pos();
                    if n == 0 && input.pos < chunk.len() {
                        continue;
                    }
                    if let Err(e) = w.write(&out[..n]) {
                        res = Err(cas_status(e));
                        break;
                    }
                }
                res
            }
        };
        if let Err(e) = r {
            return (w, Err(e));
        }
    }
    (w, Ok(()))
}

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let req = req.into_inner();
        let res = resource::parse_read(&req.resource_name).map_err(resource_status)?;
        self.0.partition(&res.instance)?;
        if req.read_offset < 0 || req.read_limit < 0 {
            return Err(Status::invalid_argument(
                "read_offset and read_limit must not be negative",
            ));
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
        if !self.0.store.contains(&res.digest) {
            return Err(Status::not_found(format!(
                "blob {} is not in the CAS",
                res.digest
            )));
        }
        let (tx, rx) = mpsc::channel(4);
        let casd = Arc::clone(&self.0);
        let limit = req.read_limit as u64;
        tokio::task::spawn_blocking(move || reader_thread(casd, res, offset, limit, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn write(
        &self,
        req: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let mut stream = req.into_inner();
        let first = match stream.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(e),
            None => return Err(Status::invalid_argument("write stream had no messages")),
        };
        let name = first.resource_name.clone();
        let res = resource::parse_write(&name).map_err(resource_status)?;
        self.0.partition(&res.instance)?;
        let d = res.digest;
        let compressed = res.compressor != Compressor::Identity;
        let done = || WriteResponse {
            committed_size: if compressed { -1 } else { d.size as i64 },
        };
        if self.0.store.contains(&d) {
            // Someone already uploaded it: complete at once, as REAPI allows.
            return Ok(Response::new(done()));
        }
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
        let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
        let worker = tokio::task::spawn_blocking(move || writer_thread(writer, rx, compressed));
        let mut expected = offset;
        let mut msg = Some(first);
        let mut finished = false;
        let mut stream_err: Option<Status> = None;
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
            let fin = m.finish_write;
            if !m.data.is_empty() && tx.send(m.data).await.is_err() {
                break; // the writer failed; its error is reported below
            }
            if fin {
                finished = true;
                break;
            }
            msg = match stream.next().await {
                Some(Ok(m)) => Some(m),
                Some(Err(e)) => {
                    stream_err = Some(e);
                    None
                }
                None => None,
            };
        }
        drop(tx);
        let (writer, written) = worker
            .await
            .map_err(|e| Status::internal(format!("writer thread failed: {e}")))?;
        written?;
        if let Some(e) = stream_err {
            if !compressed && e.code() != tonic::Code::InvalidArgument {
                self.0.uploads.park(name, writer);
            }
            return Err(e);
        }
        if !finished {
            let committed = writer.written();
            if !compressed {
                self.0.uploads.park(name, writer);
            }
            return Err(Status::invalid_argument(format!(
                "write stream ended without finish_write after {committed} bytes; QueryWriteStatus tells where to resume"
            )));
        }
        if self.0.store.contains(&d) {
            return Ok(Response::new(done()));
        }
        blocking(move || writer.finish())
            .await?
            .map_err(cas_status)?;
        tracing::debug!(digest = %d, "blob written");
        // For a compressed upload, ByteStream counts the bytes on the wire.
        let committed_size = if compressed { expected } else { d.size as i64 };
        Ok(Response::new(WriteResponse { committed_size }))
    }

    async fn query_write_status(
        &self,
        req: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let name = req.into_inner().resource_name;
        let res = resource::parse_write(&name).map_err(resource_status)?;
        self.0.partition(&res.instance)?;
        if self.0.store.contains(&res.digest) {
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
