//! Who is calling on the peer listener: another host of the cluster, named
//! by the verified certificate of its mutual-TLS connection. Requests
//! without one never reach a peer service.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use rbe_cluster::NodeName;
use tonic::Status;

/// The cluster host that sent a request: the node name its certificate
/// (signed by the cluster CA, checked in the handshake) carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerNode(pub NodeName);

impl PeerNode {
    /// The calling node of `req`, put there by [`PeerLayer`].
    pub fn of<T>(req: &tonic::Request<T>) -> Result<&PeerNode, Status> {
        req.extensions()
            .get::<PeerNode>()
            .ok_or_else(|| Status::unauthenticated("not a cluster host"))
    }

    /// The identity its streams are counted under.
    pub fn identity(&self) -> rbe_auth::Identity {
        rbe_auth::Identity::new(
            Arc::<str>::from(format!("peer:{}", self.0)),
            rbe_auth::Via::Certificate,
        )
    }
}

/// The certificate's name as a node, or why a request is refused.
fn node_of(peer: Option<&rbe_net::PeerInfo>) -> Result<PeerNode, Status> {
    let Some(peer) = peer else {
        return Err(Status::internal("the connection has no peer information"));
    };
    let Some(name) = peer.certificate.as_deref() else {
        return Err(Status::unauthenticated(
            "the peer listener needs a cluster host certificate (mutual TLS)",
        ));
    };
    NodeName::new(name).map(PeerNode).map_err(|e| {
        Status::permission_denied(format!(
            "the certificate's name {name:?} is not a node name: {e}"
        ))
    })
}

/// A tower layer in front of every peer service: attaches the calling
/// [`PeerNode`] or answers without reaching the service.
#[derive(Clone, Default)]
pub struct PeerLayer;

impl<S> tower::Layer<S> for PeerLayer {
    type Service = PeerService<S>;
    fn layer(&self, inner: S) -> PeerService<S> {
        PeerService { inner }
    }
}

#[derive(Clone)]
pub struct PeerService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for PeerService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, std::future::Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match node_of(req.extensions().get::<rbe_net::PeerInfo>()) {
            Ok(node) => {
                req.extensions_mut().insert(node);
                Either::Left(self.inner.call(req))
            }
            Err(status) => {
                let peer = req
                    .extensions()
                    .get::<rbe_net::PeerInfo>()
                    .map(|p| p.addr.to_string())
                    .unwrap_or_default();
                tracing::warn!(
                    peer = %peer,
                    rpc = req.uri().path(),
                    error = %status.message(),
                    "peer listener: refused"
                );
                Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rbe_auth::PeerAddr;

    fn info(cert: Option<&str>) -> rbe_net::PeerInfo {
        rbe_net::PeerInfo {
            addr: PeerAddr::Tcp("10.0.0.2:5000".parse().unwrap()),
            certificate: cert.map(Arc::from),
            tls: true,
        }
    }

    #[test]
    fn only_certificates_naming_a_node_get_through() {
        assert_eq!(
            node_of(Some(&info(Some("b3")))).unwrap(),
            PeerNode(NodeName::new("b3").unwrap())
        );
        let e = node_of(Some(&info(None))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let e = node_of(Some(&info(Some("Alice Smith")))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(node_of(None).unwrap_err().code(), tonic::Code::Internal);
    }
}
