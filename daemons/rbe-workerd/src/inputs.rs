//! An action's inputs from casd, and the lease that holds them.
//!
//! Materialize pins the input tree under a lease so that nothing is evicted
//! (or, with `[backing] mode = "jit"`, reclaimed by another action's
//! release) between fetch and link; the lease is released when the action
//! is over, whichever way it ended, and in jit mode that release frees the
//! scratch. The call runs in a task of its own: an action cancelled or
//! timed out while casd is still building the tree does not leave the
//! lease casd answers with behind. Releasing never fails the action; the
//! lease's time to live is the backstop if this daemon dies.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rbe_proto::casd::{
    casd_client::CasdClient, MaterializeRequest, MaterializeResponse, UnpinRequest,
};
use tonic::transport::Channel;

/// Bound on one Unpin: a hung casd must not hold the report back.
const UNPIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The lease over one action's inputs, once casd has answered.
#[derive(Default)]
pub struct InputLease(Mutex<State>);

#[derive(Default)]
struct State {
    lease: Option<String>,
    over: bool,
}

impl InputLease {
    /// Records the lease casd answered with; when the action is already
    /// over, returns it to be released at once.
    fn set(&self, lease: String) -> Option<String> {
        let mut s = self.0.lock();
        if s.over {
            return Some(lease);
        }
        s.lease = Some(lease);
        None
    }

    /// Marks the action over and releases its lease, if any.
    pub async fn release(&self, casd: &Channel, operation: &str) {
        let lease = {
            let mut s = self.0.lock();
            s.over = true;
            s.lease.take()
        };
        if let Some(lease) = lease {
            unpin(casd, lease, operation).await;
        }
    }
}

/// Materializes `req` (which asks for a lease), recording the lease in
/// `held`. The call goes on if the caller goes away, and its lease is then
/// released as soon as casd answers.
pub async fn materialize(
    casd: &Channel,
    req: MaterializeRequest,
    held: &Arc<InputLease>,
    operation: &str,
) -> Result<MaterializeResponse, tonic::Status> {
    let (casd, held, operation) = (casd.clone(), Arc::clone(held), operation.to_owned());
    tokio::spawn(async move {
        let r = CasdClient::new(casd.clone())
            .max_decoding_message_size(64 << 20)
            .materialize(req)
            .await
            .map(tonic::Response::into_inner);
        if let Ok(m) = &r {
            if !m.lease.is_empty() {
                if let Some(late) = held.set(m.lease.clone()) {
                    unpin(&casd, late, &operation).await;
                }
            }
        }
        r
    })
    .await
    .map_err(|e| tonic::Status::internal(format!("the Materialize call failed: {e}")))?
}

async fn unpin(casd: &Channel, lease: String, operation: &str) {
    let mut client = CasdClient::new(casd.clone());
    let call = client.unpin(UnpinRequest {
        lease: lease.clone(),
    });
    match tokio::time::timeout(UNPIN_TIMEOUT, call).await {
        Ok(Ok(_)) => {}
        Ok(Err(s)) => {
            tracing::warn!(operation = %operation, lease = %lease, error = %s, "could not release the lease over the action's inputs; it expires by itself")
        }
        Err(_) => {
            tracing::warn!(operation = %operation, lease = %lease, "releasing the lease over the action's inputs timed out; it expires by itself")
        }
    }
}
