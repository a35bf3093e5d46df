//! Bounds on what a proxied stream may hold while its client stalls.
//!
//! A client that stops reading a ByteStream Read (or GetTree) would
//! otherwise keep casd's stream open and its bytes buffered here for as
//! long as its connection lives. [`relay`] reads casd's stream into a
//! one-message buffer (a Read in 64 KiB pieces); when the client has not
//! taken the buffered piece for the idle timeout, casd's stream and its
//! slot are dropped at once and the client, should it read again, gets
//! DEADLINE_EXCEEDED after the (at most two) pieces already on their way. Writes are bounded the same way by the
//! ByteStream proxy, Execute streams by the Execution service.
//!
//! The timer runs only while the frontend waits for the client: a slow
//! casd never ends a client's stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::{Status, Streaming};

use crate::quota::{QuotaGuard, QuotaLimits, Quotas};
use rbe_auth::Identity;

/// A response stream to the client.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Slots on the stream connection to casd, what one client may hold, and
/// how long a client may stall.
pub struct StreamLimits {
    slots: Arc<Semaphore>,
    max: usize,
    /// `limits.stream_idle_timeout_secs`.
    pub idle: Duration,
    /// Per-client streams and upload bytes.
    pub clients: Arc<Quotas>,
}

/// One stream's hold on a slot to casd and on its client's quota.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _quota: QuotaGuard,
}

impl StreamLimits {
    pub fn new(max_streams: usize, idle: Duration, clients: QuotaLimits) -> StreamLimits {
        StreamLimits {
            slots: Arc::new(Semaphore::new(max_streams)),
            max: max_streams,
            idle,
            clients: Quotas::new(clients),
        }
    }

    /// Small limits for unit tests that need an `Upstream`.
    #[cfg(test)]
    pub fn for_tests() -> StreamLimits {
        StreamLimits::new(
            4,
            Duration::from_secs(60),
            QuotaLimits {
                streams: 4,
                upload_bytes: 1 << 20,
            },
        )
    }

    /// A slot for one stream of `who` to casd: refused at once with
    /// RESOURCE_EXHAUSTED when `who` holds its share; when all slots are
    /// taken this waits up to twice the idle timeout (a stalled holder is
    /// cut within one), then RESOURCE_EXHAUSTED.
    pub async fn slot(&self, who: &Identity, rpc: &str) -> Result<Slot, Status> {
        let quota = self.clients.stream(who, rpc)?;
        let wait = self.idle.saturating_mul(2);
        match tokio::time::timeout(wait, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(p)) => Ok(Slot {
                _permit: p,
                _quota: quota,
            }),
            Ok(Err(_)) => Err(Status::unavailable("the server is stopping; retry")),
            Err(_) => Err(rbe_proto::status::exhausted_retry(
                format!(
                    "{rpc}: all {} streams to the store are in use \
                     (limits.max_proxied_streams); retry",
                    self.max
                ),
                Duration::from_secs(1),
            )),
        }
    }

    /// The status a stalled stream ends with; `stalled` says what the
    /// client did not do ("took no data", "sent nothing").
    pub fn idle_status(&self, rpc: &str, stalled: &str) -> Status {
        Status::deadline_exceeded(format!(
            "{rpc}: the client {stalled} for {} s (limits.stream_idle_timeout_secs); \
             the stream was ended",
            self.idle.as_secs()
        ))
    }

    /// Streams to casd open now.
    pub fn in_use(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }
}

/// Forwards casd's response stream to the client, one message ahead,
/// each message of casd's cut into the pieces `split` makes. The client
/// must take each piece within the idle timeout; when it does not, casd's
/// stream and `slot` are dropped, and the client's stream ends with
/// DEADLINE_EXCEEDED once it reads again. A client that goes away ends
/// casd's stream too.
pub fn relay<T: Send + 'static>(
    limits: &StreamLimits,
    rpc: &'static str,
    mut upstream: Streaming<T>,
    slot: Slot,
    split: fn(T) -> Vec<T>,
) -> BoxStream<T> {
    let (tx, rx) = mpsc::channel::<Result<T, Status>>(1);
    let idle = limits.idle;
    let stalled = limits.idle_status(rpc, "took no data");
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                m = upstream.next() => m,
                _ = tx.closed() => return,
            };
            let pieces = match next {
                None => return,
                Some(Err(st)) => {
                    let _ = tokio::time::timeout(idle, tx.send(Err(st))).await;
                    return;
                }
                Some(Ok(m)) => split(m),
            };
            match deliver_all(&tx, idle, pieces).await {
                Delivered::All => {}
                Delivered::Gone => return,
                Delivered::Stalled => break,
            }
        }
        drop(upstream);
        drop(slot);
        tracing::info!(
            rpc,
            idle_secs = idle.as_secs(),
            "a client took no data; its stream to casd was dropped"
        );
        // Delivered if the client ever reads again; until then this task
        // holds only the status.
        let _ = tx.send(Err(stalled)).await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

enum Delivered {
    All,
    /// The client's stream is closed.
    Gone,
    /// The client took nothing for the idle timeout.
    Stalled,
}

/// Sends `pieces` in order, each within `idle`.
async fn deliver_all<T>(
    tx: &mpsc::Sender<Result<T, Status>>,
    idle: Duration,
    pieces: Vec<T>,
) -> Delivered {
    for p in pieces {
        match tokio::time::timeout(idle, tx.send(Ok(p))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Delivered::Gone,
            Err(_) => return Delivered::Stalled,
        }
    }
    Delivered::All
}

/// The size of the pieces a ByteStream Read is relayed in. casd reads in
/// 1 MiB chunks; smaller pieces bound what a stalled reader leaves queued
/// here (one piece waiting, one in HTTP/2's send buffer) and what a slow
/// reader must take per idle period.
pub const READ_PIECE: usize = 64 << 10;

/// Cuts a ReadResponse into [`READ_PIECE`]s.
pub fn split_read(
    m: rbe_proto::bytestream::ReadResponse,
) -> Vec<rbe_proto::bytestream::ReadResponse> {
    if m.data.len() <= READ_PIECE {
        return vec![m];
    }
    m.data
        .chunks(READ_PIECE)
        .map(|c| rbe_proto::bytestream::ReadResponse { data: c.to_vec() })
        .collect()
}

/// Relays a message as it is.
pub fn whole<T>(m: T) -> Vec<T> {
    vec![m]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_cut_into_pieces_in_order() {
        let data: Vec<u8> = (0..(3 * READ_PIECE + 5)).map(|i| i as u8).collect();
        let pieces = split_read(rbe_proto::bytestream::ReadResponse { data: data.clone() });
        assert_eq!(pieces.len(), 4);
        assert!(pieces.iter().all(|p| p.data.len() <= READ_PIECE));
        assert_eq!(pieces.concat_data(), data);
        let small = split_read(rbe_proto::bytestream::ReadResponse { data: vec![1; 10] });
        assert_eq!(small.len(), 1);
    }

    trait Concat {
        fn concat_data(&self) -> Vec<u8>;
    }

    impl Concat for Vec<rbe_proto::bytestream::ReadResponse> {
        fn concat_data(&self) -> Vec<u8> {
            self.iter().flat_map(|p| p.data.iter().copied()).collect()
        }
    }
}
