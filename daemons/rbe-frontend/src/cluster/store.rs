//! This host's backing store id, as the cluster compares it.
//!
//! casd knows its `[backing]` (the frontend's config does not), so the id
//! comes from casd's Stats (`backing_store_id`): asked at start, again
//! after a reload, and every [`RECHECK`] (casd may have restarted with
//! another store). Until casd answered the id is 0, which shares nothing:
//! a casd that is briefly away makes offload transfer blobs as before,
//! never skip a transfer it needs. The id goes in every load report and
//! Offer; an executor whose own non-zero id equals the Offer's pulls no
//! inputs, and the origin pulls no outputs back ([`same_store`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rbe_proto::casd::{casd_client::CasdClient, StatsRequest};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::Cluster;

/// How often casd is asked while it has not answered yet.
const UNTIL_KNOWN: Duration = Duration::from_secs(1);
/// How often casd is asked once it has.
const RECHECK: Duration = Duration::from_secs(10);
/// Bound on one Stats call.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether an origin and an executor stand in front of the same backing
/// store, so no blob needs to move between them: both ids known and
/// equal. 0 is "none" or "not known yet", which never matches.
pub fn same_store(a: u64, b: u64) -> bool {
    a != 0 && a == b
}

/// A store id as `rbectl` and the logs show it.
pub fn hex(id: u64) -> String {
    format!("{id:016x}")
}

impl Cluster {
    /// This host's backing store id; 0 without one or while unknown.
    pub fn store_id(&self) -> u64 {
        self.store_id.load(Ordering::Relaxed)
    }

    /// Asks casd again now (after a reload).
    pub fn recheck_store(&self) {
        self.store_recheck.notify_one();
    }

    /// Follows casd's backing store id until `stop`.
    pub fn spawn_store_watch(self: &Arc<Self>, casd: Channel, stop: CancellationToken) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut known = false;
            loop {
                match ask(casd.clone()).await {
                    Ok((id, address, mode)) => {
                        known = true;
                        let old = me.store_id.swap(id, Ordering::Relaxed);
                        if old != id {
                            tracing::info!(
                                store_id = %hex(id),
                                backing = %address,
                                backing_mode = %mode,
                                "cluster: backing store id"
                            );
                        }
                    }
                    // The last id stays: casd restarting says nothing
                    // about its store.
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster: casd did not say its backing store")
                    }
                }
                let wait = if known { RECHECK } else { UNTIL_KNOWN };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = me.store_recheck.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
    }
}

async fn ask(casd: Channel) -> Result<(u64, String, String), tonic::Status> {
    let mut client = CasdClient::new(casd);
    let call = client.stats(StatsRequest {});
    let s = tokio::time::timeout(ASK_TIMEOUT, call)
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("casd Stats"))??
        .into_inner();
    Ok((s.backing_store_id, s.backing_address, s.backing_mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_equal_ids_share_a_store() {
        assert!(same_store(7, 7));
        assert!(!same_store(7, 8));
        assert!(!same_store(0, 0), "neither has a store");
        assert!(!same_store(0, 7));
        assert!(!same_store(7, 0), "the other's id is not known");
        assert_eq!(hex(0xab), "00000000000000ab");
    }
}
