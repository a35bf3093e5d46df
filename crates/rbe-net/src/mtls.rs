//! The client end of the peer channel between the hosts of a cluster:
//! mutual TLS where both sides hold a certificate from the cluster CA, and
//! the server must prove the node name it is dialled as. The server end is
//! an ordinary [`crate::serve`] listener whose [`crate::tls::TlsFiles`]
//! require client certificates from the same CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::{TlsError, TlsFiles};

/// A loaded client configuration for dialling peers: our host certificate
/// and the cluster CA that peers' certificates must chain to.
#[derive(Clone, Debug)]
pub struct PeerClientTls {
    config: Arc<ClientConfig>,
}

impl PeerClientTls {
    /// Loads the host certificate and key and the CA named by `files`
    /// (`client_ca` is the cluster CA, which must be set).
    pub fn load(files: &TlsFiles) -> Result<PeerClientTls, TlsError> {
        let ca = files.client_ca.as_ref().ok_or_else(|| TlsError::File {
            key: files.keys.client_ca,
            path: Default::default(),
            reason: "the cluster CA must be set".to_owned(),
        })?;
        let roots = crate::tls::read_roots(files.keys.client_ca, ca)?;
        let chain = crate::tls::read_certs(files.keys.certificate, &files.certificate)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::File {
            key: files.keys.key,
            path: files.key.clone(),
            reason: format!("no usable private key: {e:?}"),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                key: files.keys.certificate,
                path: files.certificate.clone(),
                source,
            })?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|source| TlsError::Rustls {
                key: files.keys.key,
                path: files.key.clone(),
                source,
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(PeerClientTls {
            config: Arc::new(config),
        })
    }
}

/// A lazily connecting channel to the peer `node` at `addr`. The server's
/// certificate must be valid for the DNS name `node` (its SAN), so a host
/// holding the cluster key but another host's address cannot pose as it.
pub fn peer_channel(
    addr: SocketAddr,
    node: &str,
    tls: &PeerClientTls,
    connect_timeout: Duration,
) -> Result<Channel, crate::NetError> {
    let name = ServerName::try_from(node.to_owned()).map_err(|e| crate::NetError::Io {
        path: node.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
    })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
    // The URI only fills :authority; the connector dials `addr`.
    let endpoint = crate::tune_endpoint(Endpoint::from_shared(format!("http://{node}")).map_err(
        |e| crate::NetError::Io {
            path: node.into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        },
    )?)
    .connect_timeout(connect_timeout)
    .http2_keep_alive_interval(Duration::from_secs(5))
    .keep_alive_timeout(Duration::from_secs(5))
    .keep_alive_while_idle(true);
    let svc = tower::service_fn(move |_: Uri| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            tcp.set_nodelay(true)?;
            let tls = tokio::time::timeout(connect_timeout, connector.connect(name, tcp))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(svc))
}
