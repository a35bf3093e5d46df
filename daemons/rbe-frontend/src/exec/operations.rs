//! google.longrunning.Operations over execution operations.
//!
//! Every call sees only the operations of one instance: the one its
//! operation name carries (`{instance}/operations/{uuid}`), or for
//! ListOperations the one `name` gives (`{instance}/operations` or
//! `{instance}`).
//!
//! ListOperations pages hold at most `page_size` operations (100 when
//! unset, never more than 1,000) and at most 4 MiB (half the message limit
//! when that is smaller), so one reply never grows with the number or size
//! of retained operations; `next_page_token` names the last operation
//! listed.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rbe_proto::longrunning::{
    operations_server::Operations, CancelOperationRequest, DeleteOperationRequest,
    GetOperationRequest, ListOperationsRequest, ListOperationsResponse, Operation,
    WaitOperationRequest,
};
use rbe_proto::wkt::Empty;
use rbe_sched::OpId;
use tonic::{Request, Response, Status};

use super::{operation, Exec};

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

fn unknown(name: &str) -> Status {
    Status::not_found(format!("operation {name:?} is unknown or has expired"))
}

impl OperationsService {
    fn current(&self, name: &str) -> Result<Operation, Status> {
        let id = self.0.lookup(name).ok_or_else(|| unknown(name))?;
        let ops = self.0.ops.lock();
        let o = ops
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("operation {name:?} has expired")))?;
        let snap = o.watch.borrow().clone();
        Ok(operation(
            &o.name,
            &o.action_digest,
            o.digest_function,
            &snap,
        ))
    }
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_operations(
        &self,
        req: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let req = req.into_inner();
        // The token is the last id of the previous page: operations that
        // expire or are added meanwhile shift nothing.
        let after: Option<OpId> = if req.page_token.is_empty() {
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
        let all = self.0.sched.lock().ids();
        let ops = self.0.ops.lock();
        let mut listed = all
            .into_iter()
            .filter(|id| after.is_none_or(|a| *id > a))
            .filter_map(|id| ops.get(&id).map(|o| (id, o)))
            .filter(|(_, o)| o.instance == instance)
            .peekable();
        let mut operations = Vec::new();
        let (mut bytes, mut last) = (0usize, None);
        while let Some((id, o)) = listed.peek() {
            if operations.len() == page {
                break;
            }
            let op = operation(
                &o.name,
                &o.action_digest,
                o.digest_function,
                &o.watch.borrow(),
            );
            // Field tag and length prefix included.
            let n = op.encoded_len() + 8;
            // One operation is always listed, so paging moves on.
            if !operations.is_empty() && bytes + n > max_bytes {
                break;
            }
            bytes += n;
            last = Some(*id);
            operations.push(op);
            listed.next();
        }
        let more = listed.peek().is_some();
        Ok(Response::new(ListOperationsResponse {
            operations,
            next_page_token: match (more, last) {
                (true, Some(id)) => id.to_string(),
                _ => String::new(),
            },
            unreachable: vec![],
        }))
    }

    async fn get_operation(
        &self,
        req: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        self.current(&req.into_inner().name).map(Response::new)
    }

    async fn delete_operation(
        &self,
        req: Request<DeleteOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        let name = req.into_inner().name;
        let op = self.current(&name)?;
        if !op.done {
            return Err(Status::failed_precondition(format!(
                "operation {name:?} is still running; cancel it first"
            )));
        }
        // Forgetting the name is enough: the scheduler drops the completed
        // operation at its retention time.
        self.0.names.lock().remove(&name);
        Ok(Response::new(Empty {}))
    }

    async fn cancel_operation(
        &self,
        req: Request<CancelOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        let name = req.into_inner().name;
        let id = self.0.lookup(&name).ok_or_else(|| unknown(&name))?;
        let effect = self
            .0
            .sched
            .lock()
            .cancel(id)
            .map_err(|e| Status::not_found(e.to_string()))?;
        self.0.apply_cancel(id, effect);
        self.0.dispatch();
        Ok(Response::new(Empty {}))
    }

    async fn wait_operation(
        &self,
        req: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let req = req.into_inner();
        let id = self.0.lookup(&req.name).ok_or_else(|| unknown(&req.name))?;
        let mut rx = {
            let ops = self.0.ops.lock();
            ops.get(&id)
                .ok_or_else(|| Status::not_found("operation has expired"))?
                .watch
                .subscribe()
        };
        let limit = req
            .timeout
            .map(|t| Duration::from_secs(t.seconds.max(0) as u64))
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(600));
        let _ = tokio::time::timeout(limit, rx.wait_for(|s| s.response.is_some())).await;
        self.current(&req.name).map(Response::new)
    }
}
