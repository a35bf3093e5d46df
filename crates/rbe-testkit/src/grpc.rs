//! Channels that carry credentials, for tests of who may do what.

use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::transport::Channel;

/// A channel the client helpers can use: a plain [`Channel`] or one
/// carrying credentials ([`WithToken`]).
pub trait Grpc:
    tower::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = tonic::transport::Error,
        Future: Send,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Grpc for T where
    T: tower::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = tonic::transport::Error,
            Future: Send,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// A channel whose every request carries `authorization: <value>`, as
/// Bazel's `--remote_header=authorization=Bearer …` does.
#[derive(Clone)]
pub struct WithToken {
    inner: Channel,
    value: http::HeaderValue,
}

impl WithToken {
    /// `authorization: Bearer <token>`.
    pub fn bearer(inner: Channel, token: &str) -> WithToken {
        Self::raw(inner, &format!("Bearer {token}"))
    }

    /// `authorization: <value>` exactly as given (malformed on purpose in
    /// tests of bad input).
    pub fn raw(inner: Channel, value: &str) -> WithToken {
        WithToken {
            inner,
            value: http::HeaderValue::from_str(value).expect("a header value"),
        }
    }
}

impl tower::Service<http::Request<Body>> for WithToken {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = <Channel as tower::Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        req.headers_mut()
            .insert("authorization", self.value.clone());
        tower::Service::call(&mut self.inner, req)
    }
}

/// An address of this host other than loopback (the source address of its
/// default route), for tests of callers from the network: a client that
/// connects to it is not a local peer. `None` on a host without a route.
pub fn network_ip() -> Option<std::net::IpAddr> {
    // connect() on UDP sends nothing; it only picks the route's source.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}
