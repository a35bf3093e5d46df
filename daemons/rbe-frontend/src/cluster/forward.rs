//! Operation requests between hosts: a client asked one host about an
//! operation another holds ([`crate::exec::route`]).
//!
//! The asking side ([`get`], [`cancel`], [`delete`], [`wait`]) calls the holder's Peer
//! service over the mutual-TLS peer channel and relays the answer: one
//! Operation, or the stream of them for WaitExecution and WaitOperation.
//! The holder's statuses pass through unchanged in code, so NOT_FOUND from
//! the holder is NOT_FOUND to Bazel.
//!
//! The holder side ([`hold_get`], [`hold_cancel`], [`hold_delete`],
//! [`hold_wait`]) answers
//! only for names it holds, under a generation this process has had: one
//! hop, never forwarded again, so two hosts with different views can never
//! bounce a request between them.
//!
//! # Trust
//!
//! The forwarding host has authenticated the client; the request carries
//! only its name and how it was proven (`client`, `client_via`). The holder
//! applies its own rules to that identity, as if the client had called it:
//! the owner of an operation sees it, anyone else needs `operations-read`
//! (`operations-cancel` to cancel or delete). So any host with a valid cluster
//! certificate can act for any client name: a cluster member is trusted
//! like the frontend itself, and the cluster CA must sign hosts only.
//!
//! A caller without credentials keeps how it came: `local` (the forwarding
//! host's loopback or local socket) stays local at the holder, so the
//! holder's `local_role` applies to it and it owns what a local caller of
//! the holder started. On separate machines such a caller can own nothing
//! at the holder (it was not local there), and on one machine (the test
//! clusters) it is the same caller. An unknown `client_via` is anonymous.

use futures::StreamExt;
use prost::Message;
use rbe_auth::{Identity, Via};
use rbe_proto::cluster::peer_client::PeerClient;
use rbe_proto::cluster::{CancelResponse, DeleteResponse, OperationRequest, OperationUpdate};
use rbe_proto::longrunning::Operation;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::{Cluster, PeerNode};
use crate::exec::execution::{ExecutionService, OpStream};
use crate::exec::operations::with_caller;
use crate::exec::route::Remote;
use crate::exec::Exec;
use crate::proxy::relay::BoxStream;

fn request(name: &str, who: &Identity, watch_only: bool) -> OperationRequest {
    OperationRequest {
        name: name.to_owned(),
        client: who.name().to_owned(),
        client_via: who.via().as_str().to_owned(),
        watch_only,
    }
}

/// A client of the holder's Peer service; each call is one forwarded
/// request (`operations_forwarded`).
fn client(r: &Remote) -> PeerClient<tonic::transport::Channel> {
    super::Counters::bump(&r.cluster.counters.forwarded);
    PeerClient::new(r.channel.clone())
        .max_decoding_message_size(r.max_message)
        .max_encoding_message_size(r.max_message)
}

/// The holder's status, its code unchanged, saying where it came from.
fn from_holder(r: &Remote, s: Status) -> Status {
    Status::new(
        s.code(),
        format!("{} (from holder {})", s.message(), r.node),
    )
}

fn decode(r: &Remote, u: &OperationUpdate) -> Result<Operation, Status> {
    Operation::decode(u.operation.as_slice()).map_err(|e| {
        Status::internal(format!(
            "holder {} sent an operation that does not decode: {e}",
            r.node
        ))
    })
}

/// GetOperation at the holder.
pub async fn get(r: &Remote, name: &str, who: &Identity) -> Result<Operation, Status> {
    tracing::debug!(operation = %name, client = %who, node = %r.node, "GetOperation forwarded to the holder");
    let u = client(r)
        .get_operation(request(name, who, false))
        .await
        .map_err(|s| from_holder(r, s))?
        .into_inner();
    decode(r, &u)
}

/// CancelOperation at the holder.
pub async fn cancel(r: &Remote, name: &str, who: &Identity) -> Result<(), Status> {
    tracing::debug!(operation = %name, client = %who, node = %r.node, "CancelOperation forwarded to the holder");
    client(r)
        .cancel_operation(request(name, who, false))
        .await
        .map_err(|s| from_holder(r, s))?;
    Ok(())
}

/// DeleteOperation at the holder.
pub async fn delete(r: &Remote, name: &str, who: &Identity) -> Result<(), Status> {
    tracing::debug!(operation = %name, client = %who, node = %r.node, "DeleteOperation forwarded to the holder");
    client(r)
        .delete_operation(request(name, who, false))
        .await
        .map_err(|s| from_holder(r, s))?;
    Ok(())
}

/// The holder's stream of the operation `name`, ending after the completed
/// one. With `watch_only` the holder follows it without being a waiter
/// (WaitOperation); without, this stream is one of its waiters, as
/// WaitExecution's is, and ending it early may cancel the operation.
pub async fn wait(
    r: &Remote,
    name: &str,
    who: &Identity,
    watch_only: bool,
) -> Result<OpStream, Status> {
    tracing::debug!(operation = %name, client = %who, node = %r.node, watch_only, "wait forwarded to the holder");
    let updates = client(r)
        .wait_operation(request(name, who, watch_only))
        .await
        .map_err(|s| from_holder(r, s))?
        .into_inner();
    let node = r.node.clone();
    let remote = Remote {
        node: r.node.clone(),
        channel: r.channel.clone(),
        max_message: r.max_message,
        cluster: std::sync::Arc::clone(&r.cluster),
    };
    // Dropping this stream drops the call to the holder, which ends its
    // side the way a client leaving ends a local stream.
    let ops = updates.map(move |u| match u {
        Ok(u) => decode(&remote, &u),
        Err(s) => Err(Status::new(
            s.code(),
            format!("{} (from holder {node})", s.message()),
        )),
    });
    Ok(Box::pin(ops))
}

/// The client a peer speaks for, proven as the peer says it proved it.
fn forwarded_identity(r: &OperationRequest) -> Identity {
    let via = match r.client_via.as_str() {
        "token" => Via::Token,
        "certificate" => Via::Certificate,
        "local" => Via::Local,
        _ => Via::Anonymous,
    };
    if r.client.is_empty() || via == Via::Anonymous {
        return Identity::anonymous();
    }
    Identity::new(r.client.as_str(), via)
}

/// The request of a peer about a name this host holds, or NOT_FOUND: a
/// name held elsewhere, or by an earlier process of this host, is never
/// forwarded again.
fn held(
    cluster: &Cluster,
    req: Request<OperationRequest>,
) -> Result<(PeerNode, OperationRequest), Status> {
    let peer = PeerNode::of(&req)?.clone();
    let r = req.into_inner();
    let name = r.name.as_str();
    let parsed = rbe_cluster::names::parse_operation_name(name);
    match parsed.holder {
        Some(h) if h.node == cluster.node && cluster.is_ours(h.generation) => Ok((peer, r)),
        Some(h) if h.node == cluster.node => Err(Status::not_found(format!(
            "operation {name:?} was given out by this host ({}) before it restarted; \
             the holder restarted and the operation is gone: retry Execute",
            cluster.node
        ))),
        _ => Err(Status::not_found(format!(
            "operation {name:?} is not held by host {} (requests are forwarded one hop only)",
            cluster.node
        ))),
    }
}

/// Peer GetOperation: the holder's answer, under its rules for `client`.
pub async fn hold_get(
    cluster: &Cluster,
    exec: &Exec,
    req: Request<OperationRequest>,
) -> Result<Response<OperationUpdate>, Status> {
    let (peer, r) = held(cluster, req)?;
    let who = forwarded_identity(&r);
    tracing::debug!(operation = %r.name, client = %who, node = %peer.0, "GetOperation from a peer");
    let op = with_caller(exec, &who, &r.name, |c| exec.get(&r.name, c))?;
    Ok(Response::new(OperationUpdate {
        operation: op.encode_to_vec(),
    }))
}

/// Peer CancelOperation: withdraws the handle, as the client's own
/// CancelOperation would.
pub async fn hold_cancel(
    cluster: &Cluster,
    exec: &Exec,
    req: Request<OperationRequest>,
) -> Result<Response<CancelResponse>, Status> {
    let (peer, r) = held(cluster, req)?;
    let who = forwarded_identity(&r);
    let cancelled = with_caller(exec, &who, &r.name, |c| exec.cancel(&r.name, c))?;
    if let Some(last) = cancelled {
        tracing::info!(operation = %r.name, client = %who, node = %peer.0, last, "operation cancelled by its client through a peer");
    }
    Ok(Response::new(CancelResponse {}))
}

/// Peer DeleteOperation: forgets the done handle, as the client's own
/// DeleteOperation would.
pub async fn hold_delete(
    cluster: &Cluster,
    exec: &Exec,
    req: Request<OperationRequest>,
) -> Result<Response<DeleteResponse>, Status> {
    let (peer, r) = held(cluster, req)?;
    let who = forwarded_identity(&r);
    tracing::debug!(operation = %r.name, client = %who, node = %peer.0, "DeleteOperation from a peer");
    with_caller(exec, &who, &r.name, |c| exec.delete(&r.name, c))?;
    Ok(Response::new(DeleteResponse {}))
}

/// Peer WaitOperation: the operation's updates until it completes; a
/// waiter (as WaitExecution) unless `watch_only`.
pub async fn hold_wait(
    cluster: &Cluster,
    exec: &std::sync::Arc<Exec>,
    req: Request<OperationRequest>,
) -> Result<Response<BoxStream<OperationUpdate>>, Status> {
    let (peer, r) = held(cluster, req)?;
    let who = forwarded_identity(&r);
    tracing::debug!(operation = %r.name, client = %who, node = %peer.0, watch_only = r.watch_only, "wait from a peer");
    let ops: OpStream = if r.watch_only {
        watch(exec, &who, r.name)?
    } else {
        ExecutionService(std::sync::Arc::clone(exec)).wait_stream(&r.name, &who)?
    };
    let updates = ops.map(|op| {
        op.map(|op| OperationUpdate {
            operation: op.encode_to_vec(),
        })
    });
    Ok(Response::new(Box::pin(updates)))
}

/// The operation `name` at each change, without being a waiter, ending
/// after the completed one or when the reader leaves.
fn watch(exec: &std::sync::Arc<Exec>, who: &Identity, name: String) -> Result<OpStream, Status> {
    let mut rx = with_caller(exec, who, &name, |c| exec.subscribe(&name, c))?;
    let (tx, out) = mpsc::channel(4);
    let exec = std::sync::Arc::clone(exec);
    let who = who.clone();
    let idle = exec.upstream.limits.idle;
    tokio::spawn(async move {
        loop {
            rx.borrow_and_update();
            let op = with_caller(&exec, &who, &name, |c| exec.get(&name, c)).map_err(Status::from);
            let done = op.as_ref().map_or(true, |o| o.done);
            // A reader that takes nothing for the idle timeout is left.
            match tokio::time::timeout(idle, tx.send(op)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
            if done {
                break;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = tx.closed() => break,
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out)))
}
