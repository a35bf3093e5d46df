//! Bounds on what a proxied stream may hold while its client stalls.
//!
//! A client that stops reading a ByteStream Read (or GetTree) would
//! otherwise keep casd's stream open and its bytes buffered here for as
//! long as its connection lives. [`relay`] reads casd's stream into a
//! one-message buffer; when the client has not taken the buffered message
//! for the idle timeout, casd's stream and its slot are dropped at once
//! and the client, should it read again, gets DEADLINE_EXCEEDED after the
//! bytes already on their way. Writes are bounded the same way by the
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

/// A response stream to the client.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Slots on the stream connection to casd, and how long a client may stall.
pub struct StreamLimits {
    slots: Arc<Semaphore>,
    max: usize,
    /// `limits.stream_idle_timeout_secs`.
    pub idle: Duration,
}

impl StreamLimits {
    pub fn new(max_streams: usize, idle: Duration) -> StreamLimits {
        StreamLimits {
            slots: Arc::new(Semaphore::new(max_streams)),
            max: max_streams,
            idle,
        }
    }

    /// A slot for one stream to casd. When all are taken this waits (a
    /// stalled stream gives its slot back within the idle timeout), at most
    /// the idle timeout, then RESOURCE_EXHAUSTED.
    pub async fn slot(&self, rpc: &str) -> Result<OwnedSemaphorePermit, Status> {
        match tokio::time::timeout(self.idle, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
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

/// Forwards casd's response stream to the client, one message ahead. The
/// client must take each message within the idle timeout; when it does
/// not, casd's stream and `slot` are dropped, and the client's stream
/// ends with DEADLINE_EXCEEDED once it reads again. A client that goes
/// away ends casd's stream too.
pub fn relay<T: Send + 'static>(
    limits: &StreamLimits,
    rpc: &'static str,
    mut upstream: Streaming<T>,
    slot: OwnedSemaphorePermit,
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
            let Some(item) = next else { return };
            let last = item.is_err();
            match tokio::time::timeout(idle, tx.send(item)).await {
                Ok(Ok(())) if !last => {}
                Ok(_) => return,
                Err(_) => break,
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
