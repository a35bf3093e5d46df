//! Capabilities, CAS and action cache, forwarded.

use std::sync::Arc;
use std::time::Duration;

use rbe_proto::reapi::{
    self, action_cache_server::ActionCache, capabilities_server::Capabilities,
    content_addressable_storage_server::ContentAddressableStorage,
};
use rbe_proto::{Digest, DigestFunction};
use tonic::{Request, Response, Status};

use super::relay::BoxStream;
use super::Upstream;
use crate::access;
use crate::exec::results::{action_key, RecentResults};
use rbe_auth::Permission;

pub struct CapabilitiesProxy(pub Upstream);
pub struct CasProxy(pub Upstream);
pub struct AcProxy {
    pub upstream: Upstream,
    /// Results of executed actions whose write may still be on its way.
    pub recent: Arc<RecentResults>,
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesProxy {
    async fn get_capabilities(
        &self,
        req: Request<reapi::GetCapabilitiesRequest>,
    ) -> Result<Response<reapi::ServerCapabilities>, Status> {
        // What this caller may do decides what it is offered: a client
        // without ac-write is told updates are off (Bazel then uploads no
        // local results), one without execute that execution is off.
        let caller = access::caller(&req);
        let instance = req.get_ref().instance_name.clone();
        let may = |p| caller.as_ref().is_some_and(|c| c.may(&instance, p));
        let (ac_write, execute) = (may(Permission::AcWrite), may(Permission::Execute));
        // casd decides the cache capabilities, so the advertised batch limit
        // is always the one casd enforces; execution is the frontend's.
        let mut caps = self
            .0
            .capabilities()
            .get_capabilities(req.into_inner())
            .await?;
        // A batch must also fit this frontend's own message limit.
        let fits = self.0.max_message.saturating_sub(64 << 10) as i64;
        if let Some(cc) = caps.get_mut().cache_capabilities.as_mut() {
            if cc.max_batch_total_size_bytes > fits {
                cc.max_batch_total_size_bytes = fits;
            }
            if !ac_write {
                cc.action_cache_update_capabilities = Some(reapi::ActionCacheUpdateCapabilities {
                    update_enabled: false,
                });
            }
        }
        use reapi::digest_function::Value as F;
        caps.get_mut().execution_capabilities = Some(reapi::ExecutionCapabilities {
            digest_function: F::Sha256 as i32,
            exec_enabled: execute,
            execution_priority_capabilities: Some(reapi::PriorityCapabilities {
                priorities: vec![reapi::priority_capabilities::PriorityRange {
                    min_priority: i32::MIN,
                    max_priority: i32::MAX,
                }],
            }),
            supported_node_properties: vec![],
            digest_functions: vec![F::Sha256 as i32, F::Blake3 as i32],
        });
        Ok(caps)
    }
}

#[tonic::async_trait]
impl ContentAddressableStorage for CasProxy {
    async fn find_missing_blobs(
        &self,
        req: Request<reapi::FindMissingBlobsRequest>,
    ) -> Result<Response<reapi::FindMissingBlobsResponse>, Status> {
        let instance = &req.get_ref().instance_name;
        access::check(
            &req,
            "FindMissingBlobs",
            instance,
            Permission::CasRead,
            None,
        )?;
        self.0.cas().find_missing_blobs(req.into_inner()).await
    }

    async fn batch_update_blobs(
        &self,
        req: Request<reapi::BatchUpdateBlobsRequest>,
    ) -> Result<Response<reapi::BatchUpdateBlobsResponse>, Status> {
        let instance = &req.get_ref().instance_name;
        let who = access::check(
            &req,
            "BatchUpdateBlobs",
            instance,
            Permission::CasWrite,
            None,
        )?
        .identity;
        let req = req.into_inner();
        let bytes = req.requests.iter().map(|r| r.data.len() as u64).sum();
        let _quota = self
            .0
            .limits
            .clients
            .upload(&who, "BatchUpdateBlobs", bytes)?;
        self.0.cas().batch_update_blobs(req).await
    }

    async fn batch_read_blobs(
        &self,
        req: Request<reapi::BatchReadBlobsRequest>,
    ) -> Result<Response<reapi::BatchReadBlobsResponse>, Status> {
        let instance = &req.get_ref().instance_name;
        access::check(&req, "BatchReadBlobs", instance, Permission::CasRead, None)?;
        self.0.cas().batch_read_blobs(req.into_inner()).await
    }

    type GetTreeStream = BoxStream<reapi::GetTreeResponse>;

    async fn get_tree(
        &self,
        req: Request<reapi::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        const RPC: &str = "GetTree";
        let instance = &req.get_ref().instance_name;
        let who = access::check(&req, RPC, instance, Permission::CasRead, None)?.identity;
        Ok(Response::new(
            self.0.relay_get_tree(&who, req.into_inner()).await?,
        ))
    }

    async fn split_blob(
        &self,
        _: Request<reapi::SplitBlobRequest>,
    ) -> Result<Response<reapi::SplitBlobResponse>, Status> {
        Err(rbe_proto::status::chunking_not_offered("SplitBlob"))
    }

    type GetChunkMappingStream = BoxStream<reapi::GetChunkMappingResponse>;

    async fn get_chunk_mapping(
        &self,
        _: Request<reapi::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        Err(rbe_proto::status::chunking_not_offered("GetChunkMapping"))
    }

    async fn splice_blob(
        &self,
        _: Request<reapi::SpliceBlobRequest>,
    ) -> Result<Response<reapi::SpliceBlobResponse>, Status> {
        Err(rbe_proto::status::chunking_not_offered("SpliceBlob"))
    }

    async fn register_chunk_mapping(
        &self,
        _: Request<tonic::Streaming<reapi::RegisterChunkMappingRequest>>,
    ) -> Result<Response<reapi::RegisterChunkMappingResponse>, Status> {
        Err(rbe_proto::status::chunking_not_offered(
            "RegisterChunkMapping",
        ))
    }
}

#[tonic::async_trait]
impl ActionCache for AcProxy {
    async fn get_action_result(
        &self,
        req: Request<reapi::GetActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        let instance = &req.get_ref().instance_name;
        let digest = req
            .get_ref()
            .action_digest
            .as_ref()
            .map(access::digest_label);
        let shown = digest.as_ref().map(|d| d as &dyn std::fmt::Display);
        access::check(&req, "GetActionResult", instance, Permission::AcRead, shown)?;
        let req = req.into_inner();
        // An action this frontend just executed: let its write land first,
        // so a client that saw the result finds it cached. casd validates
        // the request either way.
        if let Ok(d) = DigestFunction::from_reapi(req.digest_function)
            .map_err(|_| ())
            .and_then(|f| Digest::from_reapi_opt(f, req.action_digest.as_ref()).map_err(|_| ()))
        {
            let key = action_key(&req.instance_name, &d);
            self.recent.landed(&key, Duration::from_secs(5)).await;
        }
        self.upstream.ac().get_action_result(req).await
    }

    async fn update_action_result(
        &self,
        req: Request<reapi::UpdateActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        const RPC: &str = "UpdateActionResult";
        let instance = req.get_ref().instance_name.clone();
        let digest = req
            .get_ref()
            .action_digest
            .as_ref()
            .map(access::digest_label);
        let shown = digest.as_ref().map(|d| d as &dyn std::fmt::Display);
        let caller = access::check(&req, RPC, &instance, Permission::AcWrite, shown)?;
        let exit_code = req
            .get_ref()
            .action_result
            .as_ref()
            .map_or(0, |r| r.exit_code);
        let r = self
            .upstream
            .ac()
            .update_action_result(req.into_inner())
            .await;
        // The audit trail of who put what into the cache everyone reads.
        match &r {
            Ok(_) => tracing::info!(
                client = %caller.identity,
                client_via = caller.identity.via().as_str(),
                peer = %caller.peer,
                rpc = RPC,
                instance_name = %instance,
                digest = digest.as_deref().unwrap_or(""),
                exit_code,
                "action cache written by a client"
            ),
            Err(e) => tracing::info!(
                client = %caller.identity,
                peer = %caller.peer,
                rpc = RPC,
                instance_name = %instance,
                digest = digest.as_deref().unwrap_or(""),
                code = ?e.code(),
                "action cache write refused by the store"
            ),
        }
        r
    }
}
