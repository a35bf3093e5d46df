//! Who is calling and what they may do, at the service edge.
//!
//! [`AuthLayer`] sits in front of every service on every listener: it
//! takes the connection's peer (and verified client certificate) from
//! [`rbe_net::PeerInfo`] and the request's `authorization` metadata, asks
//! the [`rbe_auth::Authenticator`] for an identity, and either attaches a
//! [`Caller`] (and its [`Identity`]) to the request or answers
//! UNAUTHENTICATED without reaching a service. Handlers then ask the
//! caller for a permission on the instance they serve ([`Caller::check`]).
//!
//! Both the authenticator (tokens) and the policy (roles, grants) are
//! replaced as one on `systemctl reload`; a request keeps the snapshot it
//! started with, so a stream is judged by the rules it was admitted under.
//!
//! Every refusal is one journal line with `RBE_CLIENT`, `RBE_PEER`,
//! `RBE_INSTANCE_NAME`, `RBE_PERMISSION` and, where there is one,
//! `RBE_DIGEST`: `journalctl RBE_CLIENT=<name>` lists what one client was
//! refused (and, with the action-cache writes logged by the proxy, wrote).

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use futures::future::Either;
use rbe_auth::{Authenticator, Identity, PeerAddr, Permission, Policy};
use tonic::Status;

/// The rules in force: replaced whole on reload.
pub struct Rules {
    pub authenticator: Authenticator,
    pub policy: Policy,
}

/// The rules, swappable.
pub struct Access {
    rules: ArcSwap<Rules>,
}

impl Access {
    pub fn new(rules: Rules) -> Arc<Access> {
        Arc::new(Access {
            rules: ArcSwap::from_pointee(rules),
        })
    }

    /// The rules of a host with no `[auth]` settings and no tokens.
    #[cfg(test)]
    pub fn builtin() -> Arc<Access> {
        Access::new(Rules {
            authenticator: Authenticator::default(),
            policy: Policy::default(),
        })
    }

    /// Whether `who` holds `p` on `instance` under the rules in force now
    /// (for operations, whose owner is checked first by the caller).
    pub fn may(&self, who: &Identity, instance: &str, p: Permission) -> bool {
        self.rules.load().policy.check(who, instance, p).is_ok()
    }

    /// Applies reloaded tokens and policy to requests from now on.
    pub fn replace(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }

    fn authenticate<B>(&self, req: &http::Request<B>) -> Result<Caller, Status> {
        let Some(peer) = peer_of(req) else {
            // Every listener sets the peer; a connection without one is a
            // bug, and refusing is the safe side of it.
            return Err(Status::internal("the connection has no peer information"));
        };
        let rules = self.rules.load_full();
        let mut values = req.headers().get_all("authorization").iter();
        let authorization = values.next().map(|v| v.as_bytes());
        if values.next().is_some() {
            // Which one would count is anyone's guess; refuse rather than
            // let a proxy's header and a client's disagree silently.
            tracing::warn!(
                client = "unauthenticated",
                peer = %peer.addr,
                rpc = req.uri().path(),
                reason = "several-authorization-headers",
                "refused: not authenticated"
            );
            return Err(Status::unauthenticated(
                "the request carries several authorization headers; send one",
            ));
        }
        let creds = peer.credentials(authorization);
        match rules.authenticator.authenticate(&creds) {
            Ok(identity) => Ok(Caller {
                identity,
                peer: peer.addr,
                rules,
            }),
            Err(e) => {
                tracing::warn!(
                    client = "unauthenticated",
                    peer = %peer.addr,
                    rpc = req.uri().path(),
                    reason = e.kind(),
                    error = %e.message(),
                    "refused: not authenticated"
                );
                Err(Status::unauthenticated(e.message()))
            }
        }
    }
}

fn peer_of<B>(req: &http::Request<B>) -> Option<rbe_net::PeerInfo> {
    req.extensions().get::<rbe_net::PeerInfo>().cloned()
}

/// The authenticated caller of one request.
#[derive(Clone)]
pub struct Caller {
    pub identity: Identity,
    pub peer: PeerAddr,
    rules: Arc<Rules>,
}

impl Caller {
    /// Whether the caller holds `p` on `instance`.
    pub fn may(&self, instance: &str, p: Permission) -> bool {
        self.rules.policy.check(&self.identity, instance, p).is_ok()
    }

    /// `p` on `instance`, or PERMISSION_DENIED naming it (logged, with
    /// `digest` when the request names one).
    pub fn check(
        &self,
        rpc: &str,
        instance: &str,
        p: Permission,
        digest: Option<&dyn std::fmt::Display>,
    ) -> Result<(), Status> {
        match self.rules.policy.check(&self.identity, instance, p) {
            Ok(()) => Ok(()),
            Err(denied) => {
                tracing::warn!(
                    client = %self.identity,
                    client_via = self.identity.via().as_str(),
                    peer = %self.peer,
                    rpc,
                    instance_name = instance,
                    permission = p.as_str(),
                    digest = digest.map(|d| d.to_string()),
                    "refused: permission denied"
                );
                Err(Status::permission_denied(denied.message()))
            }
        }
    }
}

/// The caller of `req`. Every request through the listeners has one; a
/// request without (only if the layer were missing) holds no permission.
pub fn caller<T>(req: &tonic::Request<T>) -> Option<Caller> {
    req.extensions().get::<Caller>().cloned()
}

/// [`Caller::check`] for `req`'s caller; PERMISSION_DENIED without one.
pub fn check<T>(
    req: &tonic::Request<T>,
    rpc: &str,
    instance: &str,
    p: Permission,
    digest: Option<&dyn std::fmt::Display>,
) -> Result<Caller, Status> {
    let c = caller(req).ok_or_else(|| Status::permission_denied("no authenticated caller"))?;
    c.check(rpc, instance, p, digest)?;
    Ok(c)
}

/// `hash/size` of a digest as a client sent it, for journal lines.
pub fn digest_label(d: &rbe_proto::reapi::Digest) -> String {
    format!("{}/{}", d.hash, d.size_bytes)
}

/// The caller's identity (the anonymous network caller without one).
pub fn identity<T>(req: &tonic::Request<T>) -> Identity {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .unwrap_or_else(Identity::anonymous)
}

/// The tower layer authenticating every request.
#[derive(Clone)]
pub struct AuthLayer(pub Arc<Access>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;
    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            access: Arc::clone(&self.0),
        }
    }
}

/// A service behind [`AuthLayer`].
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    access: Arc<Access>,
}

type Body = tonic::body::Body;

impl<S> tower::Service<http::Request<Body>> for Authenticated<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, std::future::Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        match self.access.authenticate(&req) {
            Ok(caller) => {
                req.extensions_mut().insert(caller.identity.clone());
                req.extensions_mut().insert(caller);
                Either::Left(self.inner.call(req))
            }
            Err(status) => Either::Right(std::future::ready(Ok(status.into_http()))),
        }
    }
}
