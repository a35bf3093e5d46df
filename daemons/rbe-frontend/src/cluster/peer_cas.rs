//! The read-only CAS another cluster host reads through the peer listener:
//! the executing host pulls an offloaded action's missing inputs from its
//! origin, and the origin pulls the outputs back. Writes never cross the
//! network into another host's casd: the reading host stores what it
//! fetched in its own casd, which verifies every hash.
//!
//! Only a caller with a verified cluster certificate reaches these
//! services ([`super::PeerLayer`]); its streams count against the same
//! proxied-stream bounds as any client's, under the identity `peer:<node>`.

use rbe_proto::bytestream::{
    byte_stream_server::ByteStream, QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest,
    ReadResponse, WriteRequest, WriteResponse,
};
use rbe_proto::reapi::{self, content_addressable_storage_server::ContentAddressableStorage};
use tonic::{Request, Response, Status, Streaming};

use super::PeerNode;
use crate::proxy::relay::BoxStream;
use crate::proxy::Upstream;

/// ContentAddressableStorage for peers: FindMissingBlobs, BatchReadBlobs
/// and GetTree; the rest is refused.
pub struct PeerCas(pub Upstream);

/// ByteStream for peers: Read only.
pub struct PeerByteStream(pub Upstream);

fn read_only(rpc: &str) -> Status {
    Status::permission_denied(format!(
        "{rpc}: the peer CAS is read-only; a host stores what it fetched in its own casd"
    ))
}

#[tonic::async_trait]
impl ContentAddressableStorage for PeerCas {
    async fn find_missing_blobs(
        &self,
        req: Request<reapi::FindMissingBlobsRequest>,
    ) -> Result<Response<reapi::FindMissingBlobsResponse>, Status> {
        PeerNode::of(&req)?;
        self.0.cas().find_missing_blobs(req.into_inner()).await
    }

    async fn batch_update_blobs(
        &self,
        _: Request<reapi::BatchUpdateBlobsRequest>,
    ) -> Result<Response<reapi::BatchUpdateBlobsResponse>, Status> {
        Err(read_only("BatchUpdateBlobs"))
    }

    async fn batch_read_blobs(
        &self,
        req: Request<reapi::BatchReadBlobsRequest>,
    ) -> Result<Response<reapi::BatchReadBlobsResponse>, Status> {
        PeerNode::of(&req)?;
        self.0.cas().batch_read_blobs(req.into_inner()).await
    }

    type GetTreeStream = BoxStream<reapi::GetTreeResponse>;

    async fn get_tree(
        &self,
        req: Request<reapi::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        let who = PeerNode::of(&req)?.identity();
        Ok(Response::new(
            self.0.relay_get_tree(&who, req.into_inner()).await?,
        ))
    }

    async fn split_blob(
        &self,
        _: Request<reapi::SplitBlobRequest>,
    ) -> Result<Response<reapi::SplitBlobResponse>, Status> {
        Err(rbe_proto::status::chunking_not_offered("SplitBlob"))
    }

    type GetChunkMappingStream = BoxStream<reapi::GetChunkMappingResponse>;

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
        Err(read_only("SpliceBlob"))
    }

    async fn register_chunk_mapping(
        &self,
        _: Request<Streaming<reapi::RegisterChunkMappingRequest>>,
    ) -> Result<Response<reapi::RegisterChunkMappingResponse>, Status> {
        Err(read_only("RegisterChunkMapping"))
    }
}

#[tonic::async_trait]
impl ByteStream for PeerByteStream {
    type ReadStream = BoxStream<ReadResponse>;

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let who = PeerNode::of(&req)?.identity();
        Ok(Response::new(
            self.0.relay_read(&who, req.into_inner()).await?,
        ))
    }

    async fn write(
        &self,
        _: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        Err(read_only("ByteStream Write"))
    }

    async fn query_write_status(
        &self,
        _: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        Err(read_only("QueryWriteStatus"))
    }
}
