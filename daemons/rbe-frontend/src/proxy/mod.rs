//! The public REAPI storage surface, forwarded to rbe-casd over its Unix
//! socket. Requests and streams pass through message by message: a blob is
//! never buffered whole here, and casd's statuses reach the client unchanged.
//!
//! Two HTTP/2 connections go to casd, so that what one client leaves
//! unread cannot hold back another client's calls:
//! - `unary`: every unary call (FindMissingBlobs, batches, the action
//!   cache, Capabilities, QueryWriteStatus) and the frontend's own reads and
//!   writes for Execute. Each response is read whole as it arrives, so no
//!   client can leave bytes unread on it.
//! - `streams`: ByteStream Read/Write and GetTree, at most
//!   `limits.max_proxied_streams` at once ([`relay::StreamLimits`]), with
//!   [`rbe_net::Windows::ISOLATING`]: a stream nobody reads holds 2 MiB of
//!   window, never the connection's.
//!
//! A stream whose client takes or sends nothing for
//! `limits.stream_idle_timeout_secs` is ended ([`relay`]).

pub mod bytestream;
pub mod cas;
pub mod relay;

use std::sync::Arc;

use tonic::transport::Channel;

use relay::StreamLimits;

// The configured stream limit must keep every stream's window inside the
// stream connection's window, or stalled streams could hold back others.
const _: () = assert!(rbe_config::MAX_PROXIED_STREAMS <= rbe_net::MAX_ISOLATED_STREAMS as u64);

/// Clients to casd share two lazily connected channels; a casd restart is
/// seen as UNAVAILABLE on the calls in flight and reconnects after.
#[derive(Clone)]
pub struct Upstream {
    pub unary: Channel,
    pub streams: Channel,
    pub max_message: usize,
    pub limits: Arc<StreamLimits>,
}

/// A call to casd that the connection's end cancelled (casd died under
/// it) is UNAVAILABLE to the client, which retries; CANCELLED would tell it
/// that it cancelled the call itself.
fn casd_lost(s: tonic::Status) -> tonic::Status {
    if s.code() == tonic::Code::Cancelled {
        tonic::Status::unavailable(format!(
            "the connection to casd broke ({}); retry",
            s.message()
        ))
    } else {
        s
    }
}

impl Upstream {
    /// GetTree from casd, relayed under one of `who`'s stream slots.
    pub async fn relay_get_tree(
        &self,
        who: &rbe_auth::Identity,
        req: rbe_proto::reapi::GetTreeRequest,
    ) -> Result<relay::BoxStream<rbe_proto::reapi::GetTreeResponse>, tonic::Status> {
        const RPC: &str = "GetTree";
        let slot = self.limits.slot(who, RPC).await?;
        let inner = self
            .cas_streams()
            .get_tree(req)
            .await
            .map_err(casd_lost)?
            .into_inner();
        Ok(relay::relay(&self.limits, RPC, inner, slot, relay::whole))
    }

    /// ByteStream Read from casd, relayed under one of `who`'s stream slots.
    pub async fn relay_read(
        &self,
        who: &rbe_auth::Identity,
        req: rbe_proto::bytestream::ReadRequest,
    ) -> Result<relay::BoxStream<rbe_proto::bytestream::ReadResponse>, tonic::Status> {
        const RPC: &str = "ByteStream Read";
        let slot = self.limits.slot(who, RPC).await?;
        let inner = self
            .bytestream(true)
            .read(req)
            .await
            .map_err(casd_lost)?
            .into_inner();
        Ok(relay::relay(
            &self.limits,
            RPC,
            inner,
            slot,
            relay::split_read,
        ))
    }

    /// Both channels to casd's socket at `path`.
    pub async fn connect(
        path: &std::path::Path,
        max_message: usize,
        limits: StreamLimits,
    ) -> Result<Upstream, rbe_net::NetError> {
        Ok(Upstream {
            unary: rbe_net::unix_channel(path).await?,
            streams: rbe_net::unix_channel_with(path, rbe_net::Windows::ISOLATING).await?,
            max_message,
            limits: Arc::new(limits),
        })
    }

    /// CAS unary calls.
    pub fn cas(
        &self,
    ) -> rbe_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient<
        Channel,
    > {
        Self::cas_on(&self.unary, self.max_message)
    }

    /// GetTree, a stream.
    pub fn cas_streams(
        &self,
    ) -> rbe_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient<
        Channel,
    > {
        Self::cas_on(&self.streams, self.max_message)
    }

    fn cas_on(
        ch: &Channel,
        max_message: usize,
    ) -> rbe_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient<
        Channel,
    > {
        rbe_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient::new(
            ch.clone(),
        )
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
    }

    pub fn ac(&self) -> rbe_proto::reapi::action_cache_client::ActionCacheClient<Channel> {
        rbe_proto::reapi::action_cache_client::ActionCacheClient::new(self.unary.clone())
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message)
    }

    /// ByteStream on the stream connection (Read, Write) or, for
    /// QueryWriteStatus, the unary one.
    pub fn bytestream(
        &self,
        streaming: bool,
    ) -> rbe_proto::bytestream::byte_stream_client::ByteStreamClient<Channel> {
        let ch = if streaming {
            &self.streams
        } else {
            &self.unary
        };
        rbe_proto::bytestream::byte_stream_client::ByteStreamClient::new(ch.clone())
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message)
    }

    pub fn capabilities(
        &self,
    ) -> rbe_proto::reapi::capabilities_client::CapabilitiesClient<Channel> {
        rbe_proto::reapi::capabilities_client::CapabilitiesClient::new(self.unary.clone())
    }
}
