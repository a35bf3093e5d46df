//! Small REAPI client helpers for tests and benchmarks.

use futures::StreamExt;
use rbe_proto::bytestream::{byte_stream_client::ByteStreamClient, ReadRequest, WriteRequest};
use rbe_proto::reapi::{
    batch_update_blobs_request,
    content_addressable_storage_client::ContentAddressableStorageClient, BatchUpdateBlobsRequest,
    FindMissingBlobsRequest,
};
use rbe_proto::resource::{self, Compressor};
use rbe_proto::Digest;
use tonic::Status;

/// Uploads `data` with ByteStream Write in `chunk`-sized messages.
pub async fn write<C: crate::grpc::Grpc>(
    ch: &C,
    instance: &str,
    d: &Digest,
    data: &[u8],
    chunk: usize,
) -> Result<i64, Status> {
    let name = resource::write_name(
        instance,
        &uuid::Uuid::new_v4().to_string(),
        d,
        Compressor::Identity,
    );
    let mut msgs = Vec::new();
    let mut off = 0usize;
    loop {
        let end = (off + chunk).min(data.len());
        msgs.push(WriteRequest {
            resource_name: if off == 0 {
                name.clone()
            } else {
                String::new()
            },
            write_offset: off as i64,
            finish_write: end == data.len(),
            data: data[off..end].to_vec(),
        });
        off = end;
        if off == data.len() {
            break;
        }
    }
    let mut c = ByteStreamClient::new(ch.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    Ok(c.write(futures::stream::iter(msgs))
        .await?
        .into_inner()
        .committed_size)
}

/// Reads a whole blob with ByteStream Read.
pub async fn read<C: crate::grpc::Grpc>(
    ch: &C,
    instance: &str,
    d: &Digest,
) -> Result<Vec<u8>, Status> {
    let name = resource::read_name(instance, d, Compressor::Identity);
    read_name(ch, &name, 0, 0).await
}

/// Reads a resource name with offset and limit.
pub async fn read_name<C: crate::grpc::Grpc>(
    ch: &C,
    name: &str,
    offset: i64,
    limit: i64,
) -> Result<Vec<u8>, Status> {
    let mut c = ByteStreamClient::new(ch.clone()).max_decoding_message_size(64 << 20);
    let mut s = c
        .read(ReadRequest {
            resource_name: name.to_string(),
            read_offset: offset,
            read_limit: limit,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.next().await {
        out.extend_from_slice(&m?.data);
    }
    Ok(out)
}

/// BatchUpdateBlobs of `(digest, bytes)` pairs; returns per-blob codes.
pub async fn batch_update<C: crate::grpc::Grpc>(
    ch: &C,
    instance: &str,
    blobs: &[(Digest, Vec<u8>)],
) -> Result<Vec<i32>, Status> {
    let f = blobs.first().map(|b| b.0.function.to_reapi()).unwrap_or(0);
    let req = BatchUpdateBlobsRequest {
        instance_name: instance.into(),
        requests: blobs
            .iter()
            .map(|(d, data)| batch_update_blobs_request::Request {
                digest: Some(d.to_reapi()),
                data: data.clone(),
                compressor: 0,
            })
            .collect(),
        digest_function: f,
    };
    let mut c =
        ContentAddressableStorageClient::new(ch.clone()).max_encoding_message_size(64 << 20);
    let r = c.batch_update_blobs(req).await?.into_inner();
    Ok(r.responses
        .iter()
        .map(|r| r.status.as_ref().map(|s| s.code).unwrap_or(-1))
        .collect())
}

/// FindMissingBlobs.
pub async fn find_missing<C: crate::grpc::Grpc>(
    ch: &C,
    instance: &str,
    ds: &[Digest],
) -> Result<Vec<Digest>, Status> {
    let f = ds
        .first()
        .map(|d| d.function)
        .unwrap_or(rbe_proto::DigestFunction::Sha256);
    let req = FindMissingBlobsRequest {
        instance_name: instance.into(),
        blob_digests: ds.iter().map(Digest::to_reapi).collect(),
        digest_function: f.to_reapi(),
    };
    let mut c =
        ContentAddressableStorageClient::new(ch.clone()).max_encoding_message_size(64 << 20);
    let r = c.find_missing_blobs(req).await?.into_inner();
    r.missing_blob_digests
        .iter()
        .map(|d| Digest::from_reapi(f, d).map_err(|e| Status::internal(e.to_string())))
        .collect()
}
