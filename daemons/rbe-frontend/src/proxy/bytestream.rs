//! ByteStream, forwarded as streams in both directions.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use rbe_proto::bytestream::{
    byte_stream_server::ByteStream, QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest,
    ReadResponse, WriteRequest, WriteResponse,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::Upstream;

pub struct ByteStreamProxy(pub Upstream);

#[tonic::async_trait]
impl ByteStream for ByteStreamProxy {
    type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let inner = self
            .0
            .bytestream()
            .read(req.into_inner())
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(inner)))
    }

    async fn write(
        &self,
        req: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let mut incoming = req.into_inner();
        // A small channel gives backpressure: the client is read only as fast
        // as casd takes the bytes.
        let (tx, rx) = mpsc::channel::<WriteRequest>(4);
        let pump = tokio::spawn(async move {
            while let Some(m) = incoming.next().await {
                match m {
                    Ok(m) => {
                        let fin = m.finish_write;
                        if tx.send(m).await.is_err() || fin {
                            return Ok(());
                        }
                    }
                    // Dropping the sender ends casd's stream without
                    // finish_write, so casd keeps the upload for a resume.
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        let upstream = self
            .0
            .bytestream()
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
        self.0
            .bytestream()
            .query_write_status(req.into_inner())
            .await
    }
}
