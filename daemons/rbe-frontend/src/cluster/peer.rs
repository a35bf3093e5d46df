//! The Peer service on the peer listener: what other hosts of the cluster
//! ask this one.

use std::sync::Arc;

use rbe_proto::cluster::peer_server::Peer;
use rbe_proto::cluster::{
    CancelResponse, DeleteResponse, DescribeRequest, DescribeResponse, HostMessage,
    OperationRequest, OperationUpdate, OriginMessage,
};
use tonic::{Request, Response, Status, Streaming};

use super::{Cluster, PeerNode};
use crate::exec::Exec;
use crate::proxy::relay::BoxStream;

pub struct PeerService {
    pub cluster: Arc<Cluster>,
    pub exec: Arc<Exec>,
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn describe(
        &self,
        req: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        let caller = PeerNode::of(&req)?.0.clone();
        let r = req.into_inner();
        // The certificate names the caller; it may not speak for another.
        if r.node != caller.as_str() {
            return Err(Status::permission_denied(format!(
                "the certificate names {caller}, the request {:?}",
                r.node
            )));
        }
        if r.cluster != self.cluster.name {
            return Err(Status::failed_precondition(format!(
                "this host is in cluster {:?}, not {:?}",
                self.cluster.name, r.cluster
            )));
        }
        Ok(Response::new(DescribeResponse {
            node: self.cluster.node.to_string(),
            generation: self.cluster.generation(),
            cluster: self.cluster.name.clone(),
            load: Some(self.cluster.own_report(&self.exec)),
        }))
    }

    type RunStream = BoxStream<HostMessage>;

    async fn run(
        &self,
        req: Request<Streaming<OriginMessage>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        super::host::run(&self.cluster, &self.exec, req)
            .await
            .map(Response::new)
    }

    type WaitOperationStream = BoxStream<OperationUpdate>;

    async fn wait_operation(
        &self,
        req: Request<OperationRequest>,
    ) -> Result<Response<Self::WaitOperationStream>, Status> {
        super::forward::hold_wait(&self.cluster, &self.exec, req).await
    }

    async fn get_operation(
        &self,
        req: Request<OperationRequest>,
    ) -> Result<Response<OperationUpdate>, Status> {
        super::forward::hold_get(&self.cluster, &self.exec, req).await
    }

    async fn cancel_operation(
        &self,
        req: Request<OperationRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        super::forward::hold_cancel(&self.cluster, &self.exec, req).await
    }

    async fn delete_operation(
        &self,
        req: Request<OperationRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        super::forward::hold_delete(&self.cluster, &self.exec, req).await
    }
}
