//! The public REAPI storage surface, forwarded to rbe-casd over its Unix
//! socket. Requests and streams pass through message by message: a blob is
//! never buffered whole here, and casd's statuses reach the client unchanged.

pub mod bytestream;
pub mod cas;

use tonic::transport::Channel;

/// Clients to casd share one lazily connected channel; a casd restart is
/// seen as UNAVAILABLE on the calls in flight and reconnects after.
#[derive(Clone)]
pub struct Upstream {
    pub channel: Channel,
    pub max_message: usize,
}

impl Upstream {
    pub fn cas(
        &self,
    ) -> rbe_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient<
        Channel,
    > {
        rbe_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient::new(
            self.channel.clone(),
        )
        .max_decoding_message_size(self.max_message)
        .max_encoding_message_size(self.max_message)
    }

    pub fn ac(&self) -> rbe_proto::reapi::action_cache_client::ActionCacheClient<Channel> {
        rbe_proto::reapi::action_cache_client::ActionCacheClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message)
    }

    pub fn bytestream(
        &self,
    ) -> rbe_proto::bytestream::byte_stream_client::ByteStreamClient<Channel> {
        rbe_proto::bytestream::byte_stream_client::ByteStreamClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message)
    }

    pub fn capabilities(
        &self,
    ) -> rbe_proto::reapi::capabilities_client::CapabilitiesClient<Channel> {
        rbe_proto::reapi::capabilities_client::CapabilitiesClient::new(self.channel.clone())
    }
}
