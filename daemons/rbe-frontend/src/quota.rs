//! What one client may hold at once: streams to the store and upload bytes
//! in flight (`limits.max_streams_per_client`,
//! `limits.max_upload_bytes_per_client`).
//!
//! The stream slots to casd and the store's write bandwidth are shared by
//! every client; without a per-client bound one Bazel with a large
//! `--jobs` takes all of them and everyone else waits. Over a bound the
//! call gets RESOURCE_EXHAUSTED with a RetryInfo, which Bazel retries with
//! backoff. Counts are kept per identity name and forgotten as soon as a
//! client holds nothing, so the table never outgrows the calls in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rbe_auth::Identity;
use tonic::Status;

/// How long a refused client is told to wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The configured bounds; replaced on reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Proxied streams (ByteStream Read/Write, GetTree) per client.
    pub streams: u64,
    /// Bytes of uploads (ByteStream Write, BatchUpdateBlobs) in flight per client.
    pub upload_bytes: u64,
}

#[derive(Default)]
struct Held {
    streams: u64,
    upload_bytes: u64,
}

/// Per-client counters.
pub struct Quotas {
    held: Mutex<HashMap<Arc<str>, Held>>,
    limits: arc_swap::ArcSwap<QuotaLimits>,
}

/// What one call holds; released when dropped.
pub struct QuotaGuard {
    quotas: Arc<Quotas>,
    client: Arc<str>,
    streams: u64,
    upload_bytes: u64,
}

impl Quotas {
    pub fn new(limits: QuotaLimits) -> Arc<Quotas> {
        Arc::new(Quotas {
            held: Mutex::new(HashMap::new()),
            limits: arc_swap::ArcSwap::from_pointee(limits),
        })
    }

    /// Applies reloaded limits; calls in flight keep what they hold.
    pub fn set_limits(&self, limits: QuotaLimits) {
        self.limits.store(Arc::new(limits));
    }

    /// One stream for `who`, or RESOURCE_EXHAUSTED when it holds its limit.
    pub fn stream(self: &Arc<Self>, who: &Identity, rpc: &str) -> Result<QuotaGuard, Status> {
        let limit = self.limits.load().streams;
        self.take(who, 1, 0, |h| {
            (h.streams >= limit).then(|| {
                format!(
                    "{rpc}: client {:?} already has {} streams open \
                     (limits.max_streams_per_client); retry",
                    who.name(),
                    h.streams
                )
            })
        })
    }

    /// `bytes` of upload for `who`. One upload larger than the limit is
    /// let through when the client has nothing else in flight, or a big
    /// blob could never be stored.
    pub fn upload(
        self: &Arc<Self>,
        who: &Identity,
        rpc: &str,
        bytes: u64,
    ) -> Result<QuotaGuard, Status> {
        let limit = self.limits.load().upload_bytes;
        self.take(who, 0, bytes, |h| {
            (h.upload_bytes > 0 && h.upload_bytes.saturating_add(bytes) > limit).then(|| {
                format!(
                    "{rpc}: client {:?} already has {} bytes of uploads in flight; \
                     {bytes} more would pass limits.max_upload_bytes_per_client ({limit}); retry",
                    who.name(),
                    h.upload_bytes
                )
            })
        })
    }

    fn take(
        self: &Arc<Self>,
        who: &Identity,
        streams: u64,
        upload_bytes: u64,
        refuse: impl FnOnce(&Held) -> Option<String>,
    ) -> Result<QuotaGuard, Status> {
        let client: Arc<str> = Arc::from(who.name());
        let mut held = self.held.lock();
        let h = held.entry(Arc::clone(&client)).or_default();
        if let Some(message) = refuse(h) {
            if h.streams == 0 && h.upload_bytes == 0 {
                held.remove(&client);
            }
            drop(held);
            tracing::info!(client = %client, %message, "refused: per-client limit");
            return Err(rbe_proto::status::exhausted_retry(message, RETRY_AFTER));
        }
        h.streams += streams;
        h.upload_bytes += upload_bytes;
        Ok(QuotaGuard {
            quotas: Arc::clone(self),
            client,
            streams,
            upload_bytes,
        })
    }

    /// Clients holding anything now.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.held.lock().len()
    }
}

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        let mut held = self.quotas.held.lock();
        if let Some(h) = held.get_mut(&self.client) {
            h.streams = h.streams.saturating_sub(self.streams);
            h.upload_bytes = h.upload_bytes.saturating_sub(self.upload_bytes);
            if h.streams == 0 && h.upload_bytes == 0 {
                held.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rbe_auth::Via;

    fn quotas() -> Arc<Quotas> {
        Quotas::new(QuotaLimits {
            streams: 2,
            upload_bytes: 100,
        })
    }

    #[test]
    fn streams_are_bounded_per_client_and_released() {
        let q = quotas();
        let (a, b) = (
            Identity::new("a", Via::Token),
            Identity::new("b", Via::Token),
        );
        let g1 = q.stream(&a, "Read").unwrap();
        let _g2 = q.stream(&a, "Read").unwrap();
        let e = q.stream(&a, "Read").err().unwrap();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("max_streams_per_client"), "{e:?}");
        assert!(rbe_proto::status::decode_details(&e).is_some());
        // Another client is not affected.
        let _g3 = q.stream(&b, "Read").unwrap();
        drop(g1);
        let _g4 = q.stream(&a, "Read").unwrap();
    }

    #[test]
    fn upload_bytes_are_bounded_but_one_large_blob_passes() {
        let q = quotas();
        let a = Identity::new("a", Via::Token);
        let big = q.upload(&a, "Write", 1000).unwrap();
        assert!(q.upload(&a, "Write", 1).is_err());
        drop(big);
        let _s = q.upload(&a, "Write", 60).unwrap();
        assert!(q.upload(&a, "Write", 41).is_err());
        let _t = q.upload(&a, "Write", 40).unwrap();
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let q = quotas();
        let a = Identity::new("a", Via::Token);
        let g = q.stream(&a, "Read").unwrap();
        assert_eq!(q.clients(), 1);
        drop(g);
        assert_eq!(q.clients(), 0);
        let _g = q.upload(&a, "Write", 1000).unwrap();
        assert!(q.upload(&a, "Write", 1).is_err());
        assert_eq!(q.clients(), 1);
    }
}
