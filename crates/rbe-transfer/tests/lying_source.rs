//! A source that lies: a real casd cannot be made to serve wrong bytes, so
//! this tiny in-test CAS does, to hold the copy to refusing them.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use rbe_proto::bytestream::byte_stream_server::{ByteStream, ByteStreamServer};
use rbe_proto::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse,
};
use rbe_proto::reapi::content_addressable_storage_server::{
    ContentAddressableStorage, ContentAddressableStorageServer,
};
use rbe_proto::reapi::{self, batch_read_blobs_response};
use rbe_proto::Digest;
use rbe_testkit::pseudo_random;
use rbe_transfer::{fetch_input_closure, Source, Timeouts, TransferError};
use support::*;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone, Copy, PartialEq)]
enum Lie {
    /// Other bytes of the same length.
    WrongBytes,
    /// The first half, then a clean end of stream.
    Truncated,
}

#[derive(Clone)]
struct Liar {
    blobs: Arc<HashMap<Digest, Vec<u8>>>,
    lies: Arc<HashMap<Digest, Lie>>,
}

impl Liar {
    fn serve(&self, d: &Digest) -> Option<Vec<u8>> {
        let mut data = self.blobs.get(d)?.clone();
        match self.lies.get(d) {
            Some(Lie::WrongBytes) => data[0] ^= 1,
            Some(Lie::Truncated) => data.truncate(data.len() / 2),
            None => {}
        }
        Some(data)
    }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ContentAddressableStorage for Liar {
    async fn find_missing_blobs(
        &self,
        _: Request<reapi::FindMissingBlobsRequest>,
    ) -> Result<Response<reapi::FindMissingBlobsResponse>, Status> {
        Err(Status::unimplemented("liar"))
    }

    async fn batch_update_blobs(
        &self,
        _: Request<reapi::BatchUpdateBlobsRequest>,
    ) -> Result<Response<reapi::BatchUpdateBlobsResponse>, Status> {
        Err(Status::unimplemented("liar"))
    }

    async fn batch_read_blobs(
        &self,
        req: Request<reapi::BatchReadBlobsRequest>,
    ) -> Result<Response<reapi::BatchReadBlobsResponse>, Status> {
        let responses = req
            .into_inner()
            .digests
            .iter()
            .map(|rd| {
                let d = Digest::from_reapi(F, rd).unwrap();
                let (code, data) = match self.serve(&d) {
                    Some(data) => (0, data),
                    None => (tonic::Code::NotFound as i32, Vec::new()),
                };
                batch_read_blobs_response::Response {
                    digest: Some(rd.clone()),
                    data,
                    compressor: 0,
                    status: Some(rbe_proto::rpc::Status {
                        code,
                        ..Default::default()
                    }),
                }
            })
            .collect();
        Ok(Response::new(reapi::BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = Boxed<reapi::GetTreeResponse>;

    async fn get_tree(
        &self,
        _: Request<reapi::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        Err(Status::unimplemented("liar"))
    }

    async fn split_blob(
        &self,
        _: Request<reapi::SplitBlobRequest>,
    ) -> Result<Response<reapi::SplitBlobResponse>, Status> {
        Err(Status::unimplemented("liar"))
    }

    type GetChunkMappingStream = Boxed<reapi::GetChunkMappingResponse>;

    async fn get_chunk_mapping(
        &self,
        _: Request<reapi::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        Err(Status::unimplemented("liar"))
    }

    async fn splice_blob(
        &self,
        _: Request<reapi::SpliceBlobRequest>,
    ) -> Result<Response<reapi::SpliceBlobResponse>, Status> {
        Err(Status::unimplemented("liar"))
    }

    async fn register_chunk_mapping(
        &self,
        _: Request<Streaming<reapi::RegisterChunkMappingRequest>>,
    ) -> Result<Response<reapi::RegisterChunkMappingResponse>, Status> {
        Err(Status::unimplemented("liar"))
    }
}

#[tonic::async_trait]
impl ByteStream for Liar {
    type ReadStream = Boxed<ReadResponse>;

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let name = req.into_inner().resource_name;
        let r = rbe_proto::resource::parse_read(&name).unwrap();
        let data = self
            .serve(&r.digest)
            .ok_or_else(|| Status::not_found("liar has no such blob"))?;
        let chunks: Vec<Result<ReadResponse, Status>> = data
            .chunks(64 << 10)
            .map(|c| Ok(ReadResponse { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn write(
        &self,
        _: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        Err(Status::unimplemented("liar"))
    }

    async fn query_write_status(
        &self,
        _: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        Err(Status::unimplemented("liar"))
    }
}

/// Serves `liar` on a Unix socket in `dir`; returns a source for it.
async fn start(liar: Liar, dir: &std::path::Path) -> Source {
    let path = dir.join("liar.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ContentAddressableStorageServer::new(liar.clone()))
            .add_service(ByteStreamServer::new(liar))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let ch = rbe_net::unix_channel(&path).await.unwrap();
    Source::new(
        ch,
        format!("unix:{}", path.display()),
        "",
        Timeouts::default(),
    )
}

/// A tree of a small and a large file, served by a liar that lies about
/// `victim` in the way given; the copy's error.
async fn copy_from_liar(lie: Lie, large: bool) -> (TransferError, Digest, Source, Blobs) {
    let mut blobs = Blobs::default();
    let small = blobs.add(b"small and honest".to_vec());
    let big = blobs.add(pseudo_random(1_500_000, 7));
    let root = blobs.dir(&[("big", big), ("small", small)], &[]);
    let victim = if large { big } else { small };
    let liar = Liar {
        blobs: Arc::new(blobs.0.iter().cloned().collect()),
        lies: Arc::new([(victim, lie)].into_iter().collect()),
    };
    let (t1, t2) = (tempdir(), tempdir());
    let source = start(liar, t1.path()).await;
    let dst = casd(t2.path()).await;
    let local = local_of(&dst).await;
    let err = fetch_input_closure(&source, &local, F, root)
        .await
        .unwrap_err();
    // The victim is not in the destination; whatever is there is right.
    let ch = dst.channel().await;
    let missing = rbe_testkit::client::find_missing(&ch, "", &[victim])
        .await
        .unwrap();
    assert_eq!(missing, vec![victim], "{victim} was stored");
    check_stored(&ch, &blobs).await;
    drop(t1);
    (err, victim, source, blobs)
}

#[tokio::test]
async fn wrong_bytes_in_a_batch_are_refused_naming_the_source() {
    let (err, victim, source, _) = copy_from_liar(Lie::WrongBytes, false).await;
    match &err {
        TransferError::DigestMismatch {
            address,
            digest,
            actual_size,
            ..
        } => {
            assert_eq!(*digest, victim);
            assert_eq!(address, source.address());
            assert_eq!(*actual_size, victim.size);
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn wrong_bytes_in_a_stream_are_refused_and_never_committed() {
    let (err, victim, source, _) = copy_from_liar(Lie::WrongBytes, true).await;
    match &err {
        TransferError::DigestMismatch {
            address, digest, ..
        } => {
            assert_eq!(*digest, victim);
            assert_eq!(address, source.address());
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cut_stream_is_truncated() {
    let (err, victim, source, _) = copy_from_liar(Lie::Truncated, true).await;
    match &err {
        TransferError::Truncated {
            address,
            digest,
            received,
        } => {
            assert_eq!(*digest, victim);
            assert_eq!(address, source.address());
            assert_eq!(*received, victim.size / 2);
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(err.to_string().contains(&victim.hex()));
}
