//! ByteStream, forwarded as streams in both directions, each holding one
//! of the `limits.max_proxied_streams` slots and ended when its client
//! stalls (see [`super::relay`]).

use futures::StreamExt;
use rbe_proto::bytestream::{
    byte_stream_server::ByteStream, QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest,
    ReadResponse, WriteRequest, WriteResponse,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::relay::BoxStream;
use super::Upstream;
use crate::access;
use rbe_auth::Permission;

pub struct ByteStreamProxy(pub Upstream);

#[tonic::async_trait]
impl ByteStream for ByteStreamProxy {
    type ReadStream = BoxStream<ReadResponse>;

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        const RPC: &str = "ByteStream Read";
        // A name that does not parse is casd's to refuse precisely; it
        // reads nothing.
        let who = match rbe_proto::resource::parse_read(&req.get_ref().resource_name) {
            Ok(r) => {
                let d = r.digest.to_string();
                access::check(&req, RPC, &r.instance, Permission::CasRead, Some(&d))?.identity
            }
            Err(_) => access::identity(&req),
        };
        Ok(Response::new(
            self.0.relay_read(&who, req.into_inner()).await?,
        ))
    }

    async fn write(
        &self,
        req: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        const RPC: &str = "ByteStream Write";
        let caller = access::caller(&req);
        let who = access::identity(&req);
        let _slot = self.0.limits.slot(&who, RPC).await?;
        let mut incoming = req.into_inner();
        // The first message names the blob and its size, which is what
        // the upload holds of its client's quota until it ends.
        let first = match tokio::time::timeout(self.0.limits.idle, incoming.next()).await {
            Err(_) => return Err(self.0.limits.idle_status(RPC, "sent nothing")),
            Ok(None) => return Err(Status::invalid_argument("ByteStream Write: no message")),
            Ok(Some(m)) => m?,
        };
        // A bad name is casd's to refuse, with its precise status; it
        // writes nothing.
        let declared = match rbe_proto::resource::parse_write(&first.resource_name) {
            Ok(r) => {
                let c = caller
                    .as_ref()
                    .ok_or_else(|| Status::permission_denied("no authenticated caller"))?;
                let d = r.digest.to_string();
                c.check(RPC, &r.instance, Permission::CasWrite, Some(&d))?;
                r.digest.size
            }
            Err(_) => 0,
        };
        let _quota = self.0.limits.clients.upload(&who, RPC, declared)?;
        let mut first = Some(first);
        let idle = self.0.limits.idle;
        let stalled = self.0.limits.idle_status(RPC, "sent nothing");
        // A small channel gives backpressure: the client is read only as fast
        // as casd takes the bytes. Only the wait for the client's next
        // message is timed, never the wait for casd.
        let (tx, rx) = mpsc::channel::<WriteRequest>(4);
        let pump = tokio::spawn(async move {
            loop {
                if let Some(m) = first.take() {
                    let fin = m.finish_write;
                    if tx.send(m).await.is_err() || fin {
                        return Ok(());
                    }
                    continue;
                }
                let m = match tokio::time::timeout(idle, incoming.next()).await {
                    Err(_) => {
                        tracing::info!(
                            rpc = RPC,
                            idle_secs = idle.as_secs(),
                            "a client sent nothing; its upload was ended"
                        );
                        return Err(stalled);
                    }
                    Ok(None) => return Ok(()),
                    // Dropping the sender ends casd's stream without
                    // finish_write, so casd keeps the upload for a resume.
                    Ok(Some(Err(e))) => return Err(e),
                    Ok(Some(Ok(m))) => m,
                };
                let fin = m.finish_write;
                if tx.send(m).await.is_err() || fin {
                    return Ok(());
                }
            }
        });
        let upstream = self
            .0
            .bytestream(true)
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        if let Ok(r) = upstream {
            // casd may complete early (blob already present); the rest of
            // the client's stream is not needed.
            pump.abort();
            return Ok(r);
        }
        match pump.await {
            Ok(Err(client_err)) => Err(client_err),
            _ => upstream,
        }
    }

    async fn query_write_status(
        &self,
        req: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        const RPC: &str = "QueryWriteStatus";
        if let Ok(r) = rbe_proto::resource::parse_write(&req.get_ref().resource_name) {
            let d = r.digest.to_string();
            access::check(&req, RPC, &r.instance, Permission::CasWrite, Some(&d))?;
        }
        self.0
            .bytestream(false)
            .query_write_status(req.into_inner())
            .await
    }
}
