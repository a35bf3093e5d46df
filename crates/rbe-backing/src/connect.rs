//! The channel to the backing store, from `backing.url`: plaintext TCP,
//! TLS (rustls, the store's certificate checked against `tls_ca` for the
//! URL's host, our certificate if configured), or a Unix socket.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rbe_config::{Backing, BackingAddress};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::BackingError;

fn setup(address: &str, reason: impl Into<String>) -> BackingError {
    BackingError::Setup {
        address: address.to_owned(),
        reason: reason.into(),
    }
}

/// A lazily connecting channel: a store that is down is seen on the first
/// request, as UNAVAILABLE, and the channel reconnects when it is back.
pub(crate) async fn channel(s: &Backing) -> Result<Channel, BackingError> {
    let address = s.url.as_str();
    let connect_timeout = Duration::from_secs(s.connect_timeout_secs);
    let addr = s
        .address()
        .ok_or_else(|| setup(address, "backing.url is not set"))?;
    let tune = |e: Endpoint| {
        // Keep-alive pings find a store that vanished without closing the
        // connection (a dead host, a cut link) before a request waits for it.
        rbe_net::tune_endpoint(e)
            .connect_timeout(connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
    };
    match addr {
        BackingAddress::Unix { path } => rbe_net::unix_channel(&path)
            .await
            .map_err(|e| setup(address, e.to_string())),
        BackingAddress::Grpc { authority } => {
            let e = Endpoint::from_shared(format!("http://{authority}"))
                .map_err(|e| setup(address, e.to_string()))?;
            Ok(tune(e).connect_lazy())
        }
        BackingAddress::Grpcs { authority } => {
            let config = tls_config(s)?;
            let host = authority
                .rsplit_once(':')
                .map_or(authority.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let name = ServerName::try_from(host)
                .map_err(|e| setup(address, format!("host of backing.url: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let e = Endpoint::from_shared(format!("http://{authority}"))
                .map_err(|e| setup(address, e.to_string()))?;
            let svc = tower::service_fn(move |_: Uri| {
                let (connector, name, authority) =
                    (connector.clone(), name.clone(), authority.clone());
                async move {
                    let timed_out = |what: &str| {
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("{what} timed out"),
                        )
                    };
                    let tcp = tokio::time::timeout(
                        connect_timeout,
                        tokio::net::TcpStream::connect(authority.as_str()),
                    )
                    .await
                    .map_err(|_| timed_out("connect"))??;
                    tcp.set_nodelay(true)?;
                    let tls = tokio::time::timeout(connect_timeout, connector.connect(name, tcp))
                        .await
                        .map_err(|_| timed_out("TLS handshake"))??;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            });
            Ok(tune(e).connect_with_connector_lazy(svc))
        }
        BackingAddress::S3 { .. } | BackingAddress::Http { .. } => {
            Err(setup(address, "object storage is not a gRPC channel"))
        }
    }
}

fn tls_config(s: &Backing) -> Result<Arc<ClientConfig>, BackingError> {
    let address = s.url.as_str();
    let ca = s
        .tls_ca
        .as_ref()
        .ok_or_else(|| setup(address, "backing.tls_ca is required for grpcs://"))?;
    let certs =
        |key: &str, p: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, BackingError> {
            let v = CertificateDer::pem_file_iter(p)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| setup(address, format!("{key} {}: {e:?}", p.display())))?;
            if v.is_empty() {
                return Err(setup(
                    address,
                    format!("{key} {}: no PEM certificate in it", p.display()),
                ));
            }
            Ok(v)
        };
    let mut roots = RootCertStore::empty();
    for c in certs("backing.tls_ca", ca)? {
        roots
            .add(c)
            .map_err(|e| setup(address, format!("backing.tls_ca {}: {e}", ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(address, e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (&s.tls_cert, &s.tls_key) {
        (Some(cert), Some(key)) => {
            let chain = certs("backing.tls_cert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| setup(address, format!("backing.tls_key {}: {e:?}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| setup(address, format!("backing.tls_key: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
