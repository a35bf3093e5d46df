//! The two ends of a copy: a source CAS (any REAPI server) and the local
//! casd (its Unix-socket channel).

use std::time::Duration;

use rbe_proto::bytestream::byte_stream_client::ByteStreamClient;
use rbe_proto::casd::casd_client::CasdClient;
use rbe_proto::reapi::capabilities_client::CapabilitiesClient;
use rbe_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use rbe_proto::reapi::GetCapabilitiesRequest;
use tokio::sync::OnceCell;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::error::TransferError;

/// Largest batch of small blobs in one BatchReadBlobs or BatchUpdateBlobs,
/// unless a server advertises less.
pub const MAX_BATCH_BYTES: u64 = 4 << 20;

/// gRPC message limit on the clients: a full batch plus framing, and a
/// MissingTree answer of casd's per-call bound of digests.
const MESSAGE_LIMIT: usize = 16 << 20;

/// Time limits on talking to a source.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Bound on establishing a connection.
    pub connect: Duration,
    /// Bound on one call's answer, and on each message of a stream: a
    /// source that stops sending is given up, not waited on.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

/// A CAS to copy from: another host's read-only peer endpoint, a backing
/// store, or any REAPI server.
pub struct Source {
    channel: Channel,
    address: String,
    instance_name: String,
    timeouts: Timeouts,
    max_batch: OnceCell<u64>,
}

impl Source {
    /// A source on an existing channel (with TLS, or a Unix socket).
    /// `address` names it in errors and logs; the channel should bound its
    /// connect time itself.
    pub fn new(
        channel: Channel,
        address: impl Into<String>,
        instance_name: impl Into<String>,
        timeouts: Timeouts,
    ) -> Source {
        Source {
            channel,
            address: address.into(),
            instance_name: instance_name.into(),
            timeouts,
            max_batch: OnceCell::new(),
        }
    }

    /// A source at a plain-text `http://host:port` URI. Connecting is lazy
    /// and bounded by `timeouts.connect`; an unreachable source shows as
    /// [`TransferError::Unavailable`] on the first call.
    pub fn connect(
        uri: &str,
        instance_name: impl Into<String>,
        timeouts: Timeouts,
    ) -> Result<Source, TransferError> {
        let endpoint =
            Endpoint::from_shared(uri.to_string()).map_err(|e| TransferError::InvalidArgument {
                address: uri.to_string(),
                digest: None,
                message: format!("not a URI: {e}"),
            })?;
        let channel = endpoint
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.idle)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Source::new(channel, uri, instance_name, timeouts))
    }

    /// The address errors name.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub(crate) fn instance_name(&self) -> &str {
        &self.instance_name
    }

    pub(crate) fn idle(&self) -> Duration {
        self.timeouts.idle
    }

    pub(crate) fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(MESSAGE_LIMIT)
            .max_encoding_message_size(MESSAGE_LIMIT)
    }

    pub(crate) fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel.clone()).max_decoding_message_size(MESSAGE_LIMIT)
    }

    /// The batch bound: the source's advertised maximum when below
    /// [`MAX_BATCH_BYTES`]. Asked once; a source without Capabilities gets
    /// the default, an unreachable one is an error.
    pub(crate) async fn max_batch(&self) -> Result<u64, TransferError> {
        self.max_batch
            .get_or_try_init(|| async {
                let req = GetCapabilitiesRequest {
                    instance_name: self.instance_name.clone(),
                };
                let mut c = CapabilitiesClient::new(self.channel.clone());
                let answer =
                    tokio::time::timeout(self.timeouts.idle, c.get_capabilities(req)).await;
                match answer {
                    Err(_) => Err(TransferError::Unavailable {
                        address: self.address.clone(),
                        digest: None,
                        message: format!("no answer within {:?}", self.timeouts.idle),
                    }),
                    Ok(Ok(caps)) => Ok(advertised(
                        caps.into_inner()
                            .cache_capabilities
                            .map(|c| c.max_batch_total_size_bytes),
                    )),
                    Ok(Err(s))
                        if matches!(
                            s.code(),
                            Code::Unavailable
                                | Code::DeadlineExceeded
                                | Code::Cancelled
                                | Code::Unauthenticated
                        ) =>
                    {
                        Err(TransferError::from_source(&self.address, None, s))
                    }
                    Ok(Err(_)) => Ok(MAX_BATCH_BYTES),
                }
            })
            .await
            .copied()
    }
}

/// The batch bound given a server's advertised maximum (0: none).
fn advertised(max: Option<i64>) -> u64 {
    match max.and_then(|m| u64::try_from(m).ok()) {
        Some(m) if m > 0 => m.min(MAX_BATCH_BYTES),
        _ => MAX_BATCH_BYTES,
    }
}

/// The local casd, where copies are written (it verifies every blob too).
pub struct Local {
    channel: Channel,
    instance_name: String,
    max_batch: OnceCell<u64>,
}

impl Local {
    /// casd on `channel` (`rbe_net::unix_channel` of its socket), with the
    /// instance name its calls carry.
    pub fn new(channel: Channel, instance_name: impl Into<String>) -> Local {
        Local {
            channel,
            instance_name: instance_name.into(),
            max_batch: OnceCell::new(),
        }
    }

    pub(crate) fn instance_name(&self) -> &str {
        &self.instance_name
    }

    pub(crate) fn casd(&self) -> CasdClient<Channel> {
        CasdClient::new(self.channel.clone())
            .max_decoding_message_size(MESSAGE_LIMIT)
            .max_encoding_message_size(MESSAGE_LIMIT)
    }

    pub(crate) fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(MESSAGE_LIMIT)
            .max_encoding_message_size(MESSAGE_LIMIT)
    }

    pub(crate) fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel.clone())
    }

    pub(crate) async fn max_batch(&self) -> Result<u64, TransferError> {
        self.max_batch
            .get_or_try_init(|| async {
                let req = GetCapabilitiesRequest {
                    instance_name: self.instance_name.clone(),
                };
                let caps = CapabilitiesClient::new(self.channel.clone())
                    .get_capabilities(req)
                    .await
                    .map_err(|s| TransferError::local(None, s))?;
                Ok(advertised(
                    caps.into_inner()
                        .cache_capabilities
                        .map(|c| c.max_batch_total_size_bytes),
                ))
            })
            .await
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_bound_respects_a_smaller_server_maximum() {
        assert_eq!(advertised(None), MAX_BATCH_BYTES);
        assert_eq!(advertised(Some(0)), MAX_BATCH_BYTES);
        assert_eq!(advertised(Some(-5)), MAX_BATCH_BYTES);
        assert_eq!(advertised(Some(1 << 20)), 1 << 20);
        assert_eq!(advertised(Some(64 << 20)), MAX_BATCH_BYTES);
    }
}
