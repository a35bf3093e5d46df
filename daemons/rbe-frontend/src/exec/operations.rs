//! google.longrunning.Operations over operation handles (one per Execute;
//! see [`super::handles`]).
//!
//! Every call sees only the operations of one instance: the one its
//! operation name carries (`{instance}/operations/{uuid}`), or for
//! ListOperations the one `name` gives (`{instance}/operations` or
//! `{instance}`). A client sees and cancels its own operations; another
//! client's need `operations-read` (Get, Wait, List) or
//! `operations-cancel` (Cancel, Delete) on the instance, else
//! PERMISSION_DENIED; ListOperations without `operations-read` lists the
//! caller's own. CancelOperation withdraws one handle: the action runs on
//! while another handle waits for it.
//!
//! In a cluster, GetOperation, CancelOperation, DeleteOperation and
//! WaitOperation about a name another host holds are answered by that host
//! ([`super::route`]), under its rules for this caller. ListOperations
//! lists this host's operations only: the ones whose clients called this
//! host.
//!
//! ListOperations pages hold at most `page_size` operations (100 when
//! unset, never more than 1,000) and at most 4 MiB (half the message limit
//! when that is smaller), so one reply never grows with the number or size
//! of retained operations; `next_page_token` names the last operation
//! listed.

use std::sync::Arc;
use std::time::Duration;

use rbe_auth::{Identity, Permission};
use rbe_proto::longrunning::{
    operations_server::Operations, CancelOperationRequest, DeleteOperationRequest,
    GetOperationRequest, ListOperationsRequest, ListOperationsResponse, Operation,
    WaitOperationRequest,
};
use rbe_proto::wkt::Empty;
use tonic::{Request, Response, Status};

use super::handles::{Caller, HandleId};
use super::route::{route, Remote, Route};
use super::{instance_of_name, Exec};
use crate::access;
use crate::cluster::forward;

/// Operations per ListOperations page when the client names no size.
const DEFAULT_PAGE: usize = 100;
/// The most per page, whatever the client asks.
const MAX_PAGE: usize = 1000;
/// The most bytes per page (less under a small `limits.max_message_bytes`).
const MAX_PAGE_BYTES: usize = 4 << 20;

/// A page's byte bound: well inside the message limit.
fn page_bytes(max_message: usize) -> usize {
    MAX_PAGE_BYTES.min(max_message / 2)
}

/// The Operations service.
pub struct OperationsService(pub Arc<Exec>);

/// Runs `f` as `who` acting on the operation `name`: permissions are
/// asked about on the instance the name carries.
pub(crate) fn with_caller<R>(
    exec: &Exec,
    who: &Identity,
    name: &str,
    f: impl FnOnce(&Caller<'_>) -> R,
) -> R {
    let instance = instance_of_name(name).unwrap_or_default();
    let granted = |p| exec.access.may(who, instance, p);
    f(&Caller {
        who,
        granted: &granted,
    })
}

impl OperationsService {
    fn as_caller<R>(&self, who: &Identity, name: &str, f: impl FnOnce(&Caller<'_>) -> R) -> R {
        with_caller(&self.0, who, name, f)
    }
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_operations(
        &self,
        req: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let who = access::identity(&req);
        let req = req.into_inner();
        // The token is the last handle listed on the previous page:
        // operations that expire or are added meanwhile shift nothing.
        let after: Option<HandleId> = if req.page_token.is_empty() {
            None
        } else {
            Some(req.page_token.parse().map_err(|_| {
                Status::invalid_argument("page_token is not one this server issued")
            })?)
        };
        let page = if req.page_size <= 0 {
            DEFAULT_PAGE
        } else {
            (req.page_size as usize).min(MAX_PAGE)
        };
        let max_bytes = page_bytes(self.0.upstream.max_message);
        let instance = match req.name.as_str() {
            "operations" => "",
            n => n.strip_suffix("/operations").unwrap_or(n),
        };
        rbe_proto::resource::validate_instance(instance)
            .map_err(|r| Status::invalid_argument(format!("instance name {instance:?}: {r}")))?;
        // Everyone's with operations-read, else the caller's own.
        let all = self
            .0
            .access
            .may(&who, instance, Permission::OperationsRead);
        let (operations, next) =
            self.0
                .list(instance, (!all).then_some(&who), after, page, max_bytes);
        Ok(Response::new(ListOperationsResponse {
            operations,
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
            unreachable: vec![],
        }))
    }

    async fn get_operation(
        &self,
        req: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let who = access::identity(&req);
        let name = req.into_inner().name;
        if let Route::Forward(r) = route(&self.0, &name)? {
            return Ok(Response::new(forward::get(&r, &name, &who).await?));
        }
        let op = self.as_caller(&who, &name, |c| self.0.get(&name, c))?;
        Ok(Response::new(op))
    }

    async fn delete_operation(
        &self,
        req: Request<DeleteOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        let who = access::identity(&req);
        let name = req.into_inner().name;
        if let Route::Forward(r) = route(&self.0, &name)? {
            forward::delete(&r, &name, &who).await?;
            return Ok(Response::new(Empty {}));
        }
        // The handle goes; its execution too once no handle is left.
        self.as_caller(&who, &name, |c| self.0.delete(&name, c))?;
        Ok(Response::new(Empty {}))
    }

    async fn cancel_operation(
        &self,
        req: Request<CancelOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        let who = access::identity(&req);
        let name = req.into_inner().name;
        if let Route::Forward(r) = route(&self.0, &name)? {
            forward::cancel(&r, &name, &who).await?;
            return Ok(Response::new(Empty {}));
        }
        // One step of the owner, so a stream of this handle ending now
        // cannot also take its waiter off.
        let cancelled = self.as_caller(&who, &name, |c| self.0.cancel(&name, c))?;
        if let Some(last) = cancelled {
            tracing::info!(operation = %name, client = %who, last, "operation cancelled by its client");
        }
        Ok(Response::new(Empty {}))
    }

    async fn wait_operation(
        &self,
        req: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let who = access::identity(&req);
        let req = req.into_inner();
        let limit = req
            .timeout
            .map(|t| Duration::from_secs(t.seconds.max(0) as u64))
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(600));
        if let Route::Forward(r) = route(&self.0, &req.name)? {
            return Ok(Response::new(
                wait_remote(&r, &req.name, &who, limit).await?,
            ));
        }
        let mut rx = self.as_caller(&who, &req.name, |c| self.0.subscribe(&req.name, c))?;
        let _ = tokio::time::timeout(limit, rx.wait_for(|s| s.response.is_some())).await;
        let op = self.as_caller(&who, &req.name, |c| self.0.get(&req.name, c))?;
        Ok(Response::new(op))
    }
}

/// WaitOperation at the holder: its updates (without being a waiter) until
/// done or `limit`, then the latest.
async fn wait_remote(
    r: &Remote,
    name: &str,
    who: &Identity,
    limit: Duration,
) -> Result<Operation, Status> {
    use futures::StreamExt;
    let mut updates = forward::wait(r, name, who, true).await?;
    let mut latest = None;
    let follow = async {
        while let Some(op) = updates.next().await {
            let op = op?;
            let done = op.done;
            latest = Some(op);
            if done {
                break;
            }
        }
        Ok::<(), Status>(())
    };
    if let Ok(r) = tokio::time::timeout(limit, follow).await {
        r?;
    }
    match latest {
        Some(op) => Ok(op),
        // Nothing yet within the limit (or the holder ended early): ask
        // for where it stands now.
        None => forward::get(r, name, who).await,
    }
}
