//! Results on their way to the action cache.
//!
//! Waiters are answered as soon as a worker reports. Writing the action-cache
//! entry (casd fsyncs the file and its directory) happens here, in the
//! background, so it is on nobody's critical path and one slow write does not
//! hold up the next report from the same worker.
//!
//! The "dedup gap": once an operation completes, the scheduler no longer
//! offers it to identical requests, and until the write lands the action
//! cache does not have it either. So every cacheable result is also kept in
//! [`RecentResults`] from the moment it completes (inserted while the
//! scheduler is locked, before the action leaves the in-flight map) until
//! [`RECENT_TTL`] after its write landed. Execute consults it before the
//! action cache and again when it submits: an identical request in the gap
//! gets the result as a cache hit instead of running the action again.
//!
//! GetActionResult through the frontend waits (briefly) for a pending write
//! of the same action, so a client that saw a result and then asks the
//! action cache finds it there, as it did when the write came first.
//!
//! Writes are drained in batches: everything queued while the previous batch
//! was written goes out together, concurrently, with only the latest result
//! per action (REAPI: a `skip_cache_lookup` run overwrites the entry), so
//! writes of one action never race each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rbe_proto::reapi::{ActionResult, UpdateActionResultRequest};
use rbe_sched::ActionKey;
use tokio::sync::{mpsc, Notify};

use crate::proxy::Upstream;

/// How long a result stays findable after its action-cache write landed. An
/// Execute looks here twice: before its action-cache lookup and when it
/// submits; this covers one whose lookup missed just before the write
/// landed and which submits afterwards.
pub const RECENT_TTL: Duration = Duration::from_secs(10);

/// Most writes sent to casd at once.
const MAX_BATCH: usize = 64;

struct Recent {
    result: ActionResult,
    generation: u64,
    landed: Option<Instant>,
}

struct Write {
    key: ActionKey,
    generation: u64,
    operation: String,
    request: UpdateActionResultRequest,
}

#[derive(Default)]
struct Shared {
    recent: Mutex<HashMap<ActionKey, Recent>>,
    /// Writes accepted and not yet answered by casd.
    pending: AtomicUsize,
    /// Notified after every batch of writes.
    written: Notify,
}

/// The key a result is kept under: the scheduler's key for the action.
pub fn action_key(instance: &str, action: &rbe_proto::Digest) -> ActionKey {
    ActionKey {
        instance: instance.to_string(),
        action: format!("{}:{action}", action.function.name()),
    }
}

/// Cacheable results not yet (or only just) in the action cache, and the
/// background writer that puts them there.
pub struct RecentResults {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Write>,
    generation: AtomicU64,
}

impl RecentResults {
    /// Starts the writer (a task on the current runtime; it ends when this
    /// is dropped).
    pub fn start(upstream: Upstream) -> RecentResults {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(Arc::clone(&shared), rx, upstream));
        RecentResults {
            shared,
            tx,
            generation: AtomicU64::new(1),
        }
    }

    /// Keeps `result` findable under `key` and queues its action-cache write.
    pub fn put(&self, key: ActionKey, operation: String, request: UpdateActionResultRequest) {
        let Some(result) = request.action_result.clone() else {
            return;
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        self.shared.recent.lock().insert(
            key.clone(),
            Recent {
                result,
                generation,
                landed: None,
            },
        );
        self.shared.pending.fetch_add(1, Ordering::AcqRel);
        let write = Write {
            key,
            generation,
            operation,
            request,
        };
        if self.tx.send(write).is_err() {
            // Only after the writer is gone, at shutdown.
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The recent result for `key`, if any.
    pub fn get(&self, key: &ActionKey) -> Option<ActionResult> {
        self.shared.recent.lock().get(key).map(|r| r.result.clone())
    }

    /// Forgets results whose write landed more than [`RECENT_TTL`] ago.
    pub fn expire(&self) {
        let now = Instant::now();
        self.shared
            .recent
            .lock()
            .retain(|_, r| r.landed.is_none_or(|t| now.duration_since(t) < RECENT_TTL));
    }

    /// Results waiting for their write (for STATUS= and tests of drain).
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Acquire)
    }

    /// Waits up to `limit` for every accepted write to be answered, so a
    /// stopping frontend does not drop results it already reported.
    pub async fn drain(&self, limit: Duration) {
        self.wait_until(limit, || self.pending() == 0).await;
    }

    /// Waits up to `limit` until no write for `key` is pending.
    pub async fn landed(&self, key: &ActionKey, limit: Duration) {
        self.wait_until(limit, || {
            self.shared
                .recent
                .lock()
                .get(key)
                .is_none_or(|r| r.landed.is_some())
        })
        .await;
    }

    async fn wait_until(&self, limit: Duration, done: impl Fn() -> bool) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let written = self.shared.written.notified();
                if done() {
                    return;
                }
                written.await;
            }
        })
        .await;
    }
}

async fn write_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Write>, up: Upstream) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let taken = batch.len();
        // The latest result per action wins; the ones it replaces need no write.
        let mut latest: HashMap<ActionKey, Write> = HashMap::with_capacity(taken);
        for w in batch {
            latest.insert(w.key.clone(), w);
        }
        let writes = latest.into_values().map(|w| {
            let mut ac = up.ac();
            async move {
                let r = ac.update_action_result(w.request.clone()).await;
                (w, r)
            }
        });
        for (w, r) in futures::future::join_all(writes).await {
            let mut recent = shared.recent.lock();
            match r {
                Ok(_) => {
                    if let Some(e) = recent.get_mut(&w.key) {
                        if e.generation == w.generation {
                            e.landed = Some(Instant::now());
                        }
                    }
                }
                Err(e) => {
                    // Not in the action cache, so not to be served as if it were.
                    if recent
                        .get(&w.key)
                        .is_some_and(|r| r.generation == w.generation)
                    {
                        recent.remove(&w.key);
                    }
                    drop(recent);
                    tracing::warn!(operation = %w.operation, error = %e, "could not store the action result");
                }
            }
        }
        shared.pending.fetch_sub(taken, Ordering::AcqRel);
        shared.written.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbe_proto::reapi::action_cache_server::{ActionCache, ActionCacheServer};
    use rbe_proto::reapi::GetActionResultRequest;
    use tokio::sync::Semaphore;
    use tonic::{Request, Response, Status};

    /// An action cache whose writes wait for `gate` and are recorded by
    /// the result's exit code; exit code 99 is refused.
    #[derive(Clone)]
    struct FakeAc {
        gate: Arc<Semaphore>,
        written: Arc<Mutex<Vec<i32>>>,
    }

    #[tonic::async_trait]
    impl ActionCache for FakeAc {
        async fn get_action_result(
            &self,
            _: Request<GetActionResultRequest>,
        ) -> Result<Response<ActionResult>, Status> {
            Err(Status::not_found("fake"))
        }

        async fn update_action_result(
            &self,
            req: Request<UpdateActionResultRequest>,
        ) -> Result<Response<ActionResult>, Status> {
            let _permit = self.gate.acquire().await;
            let ar = req.into_inner().action_result.unwrap_or_default();
            self.written.lock().push(ar.exit_code);
            if ar.exit_code == 99 {
                return Err(Status::invalid_argument("refused"));
            }
            Ok(Response::new(ar))
        }
    }

    async fn setup() -> (RecentResults, FakeAc, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ac.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let fake = FakeAc {
            gate: Arc::new(Semaphore::new(0)),
            written: Arc::default(),
        };
        let router =
            tonic::transport::Server::builder().add_service(ActionCacheServer::new(fake.clone()));
        tokio::spawn(rbe_net::serve(
            router,
            rbe_net::Listener::Unix(listener),
            None,
            std::future::pending(),
        ));
        let up = Upstream::connect(
            &path,
            4 << 20,
            crate::proxy::relay::StreamLimits::for_tests(),
        )
        .await
        .expect("channels");
        (RecentResults::start(up), fake, dir)
    }

    fn key(n: u8) -> ActionKey {
        ActionKey {
            instance: String::new(),
            action: format!("sha256:{n:064x}/1"),
        }
    }

    fn write(exit_code: i32) -> UpdateActionResultRequest {
        UpdateActionResultRequest {
            action_result: Some(ActionResult {
                exit_code,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_result_is_findable_before_and_after_its_write_lands() {
        let (r, fake, _dir) = setup().await;
        r.put(key(1), "op".into(), write(7));
        assert_eq!(r.get(&key(1)).map(|a| a.exit_code), Some(7));
        // The write is held up: the entry waits, still findable.
        r.landed(&key(1), Duration::from_millis(100)).await;
        assert_eq!(r.pending(), 1);
        assert!(r.get(&key(1)).is_some());
        fake.gate.add_permits(100);
        r.drain(Duration::from_secs(30)).await;
        assert_eq!(r.pending(), 0);
        assert_eq!(*fake.written.lock(), vec![7]);
        // Landed, but kept for RECENT_TTL: expiring now keeps it.
        r.expire();
        assert_eq!(r.get(&key(1)).map(|a| a.exit_code), Some(7));
    }

    #[tokio::test]
    async fn the_latest_result_per_action_wins_and_refused_ones_are_dropped() {
        let (r, fake, _dir) = setup().await;
        r.put(key(1), "op1".into(), write(1));
        r.put(key(1), "op2".into(), write(2));
        r.put(key(1), "op3".into(), write(3));
        r.put(key(2), "op4".into(), write(99));
        assert_eq!(r.get(&key(1)).map(|a| a.exit_code), Some(3));
        fake.gate.add_permits(100);
        r.drain(Duration::from_secs(30)).await;
        let written = fake.written.lock().clone();
        // The puts ran without yielding on this single-threaded runtime, so
        // the writer found them in one batch: only the latest per action.
        let mut sorted = written.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![3, 99], "{written:?}");
        assert_eq!(r.get(&key(1)).map(|a| a.exit_code), Some(3));
        assert!(r.get(&key(2)).is_none(), "a refused result is not served");
    }
}
