//! TLS for the public TCP listeners: the server certificate and, with a
//! client CA, client-certificate verification (mTLS), with rustls and its
//! ring provider (no OpenSSL).
//!
//! [`ServerTls`] holds the current [`TlsConfig`] behind an `ArcSwap`:
//! [`ServerTls::reload`] (on `systemctl reload`) swaps in a freshly loaded
//! one for the connections accepted afterwards, while established
//! connections keep the session they negotiated. A set of files that does
//! not load leaves the running configuration in place.
//!
//! How connections are accepted, sniffed and handshaken is in `accept.rs`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The files and policy a [`TlsConfig`] is loaded from (frontend.toml's
/// `[tls]`, with paths already absolute).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub certificate: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 or SEC1.
    pub key: PathBuf,
    /// PEM CA bundle to verify client certificates against; `None`: no
    /// client certificates are asked for.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: whether a client without a certificate is refused.
    pub require_client_certificate: bool,
    /// How long a connection may take from accept to a finished handshake.
    pub handshake_timeout: Duration,
    /// The config keys these files were named by, for errors.
    pub keys: TlsKeys,
}

/// The config keys naming a [`TlsFiles`]' certificate, key and CA, so an
/// error points at the line to fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsKeys {
    /// The certificate chain's key.
    pub certificate: &'static str,
    /// The private key's key.
    pub key: &'static str,
    /// The CA bundle's key.
    pub client_ca: &'static str,
}

impl TlsKeys {
    /// frontend.toml's `[tls]`.
    pub const PUBLIC: TlsKeys = TlsKeys {
        certificate: "tls.certificate",
        key: "tls.key",
        client_ca: "tls.client_ca",
    };
    /// frontend.toml's `[cluster]` TLS files (the peer channel).
    pub const CLUSTER: TlsKeys = TlsKeys {
        certificate: "cluster.tls_cert",
        key: "cluster.tls_key",
        client_ca: "cluster.tls_ca",
    };
}

impl TlsFiles {
    /// The files frontend.toml's `[tls]` names, when TLS is on (both
    /// certificate and key set).
    pub fn from_settings(tls: &rbe_config::FrontendTls) -> Option<TlsFiles> {
        Some(TlsFiles {
            certificate: tls.certificate.clone()?,
            key: tls.key.clone()?,
            client_ca: tls.client_ca.clone(),
            require_client_certificate: tls.client_certificates
                == rbe_config::ClientCertificates::Required,
            handshake_timeout: Duration::from_secs(tls.handshake_timeout_secs),
            keys: TlsKeys::PUBLIC,
        })
    }
}

impl TlsFiles {
    /// The peer listener's files from frontend.toml's `[cluster]`: this
    /// host's certificate and key, and the cluster CA every peer's
    /// certificate must chain to (required). `None` unless all three are
    /// set.
    pub fn cluster(c: &rbe_config::ClusterSettings) -> Option<TlsFiles> {
        Some(TlsFiles {
            certificate: c.tls_cert.clone()?,
            key: c.tls_key.clone()?,
            client_ca: Some(c.tls_ca.clone()?),
            require_client_certificate: true,
            handshake_timeout: Duration::from_secs(10),
            keys: TlsKeys::CLUSTER,
        })
    }
}

/// Whether and how clients are asked for certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates (no `client_ca`).
    Off,
    /// Verified when presented; a client may present none.
    Optional,
    /// Every client must present a valid one.
    Required,
}

impl ClientAuth {
    /// `off`, `optional` or `required`, for log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Off => "off",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        }
    }
}

/// Why a [`TlsConfig`] could not be loaded. `Display` names the config
/// key, the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds nothing usable.
    #[error("key {key}: {}: {reason}", .path.display())]
    File {
        /// The config key naming the file, e.g. `tls.certificate`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The files load but do not make a usable configuration (the key does
    /// not belong to the certificate, an unsupported key type...).
    #[error("key {key}: {}: {source}", .path.display())]
    Rustls {
        /// The key the problem is blamed on.
        key: &'static str,
        /// Its file.
        path: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
}

/// A loaded, usable TLS server configuration.
pub struct TlsConfig {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) handshake_timeout: Duration,
    client_auth: ClientAuth,
    files: TlsFiles,
    not_after: Option<std::time::SystemTime>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("files", &self.files)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Reads and checks the certificate chain, the key (it must belong to
    /// the chain's first certificate) and the client CA bundle.
    pub fn load(files: &TlsFiles) -> Result<TlsConfig, TlsError> {
        let chain = read_certs(files.keys.certificate, &files.certificate)?;
        let not_after = chain.first().and_then(|c| {
            let (_, cert) = x509_parser::parse_x509_certificate(c).ok()?;
            let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
            Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
        });
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::File {
            key: files.keys.key,
            path: files.key.clone(),
            reason: pem_reason(
                e,
                "no private key found (PEM PKCS#8, PKCS#1 or SEC1 expected)",
            ),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                key: files.keys.certificate,
                path: files.certificate.clone(),
                source,
            })?;
        let (builder, client_auth) = match &files.client_ca {
            None => (builder.with_no_client_auth(), ClientAuth::Off),
            Some(ca) => {
                let roots = read_roots(files.keys.client_ca, ca)?;
                let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let auth = if files.require_client_certificate {
                    ClientAuth::Required
                } else {
                    v = v.allow_unauthenticated();
                    ClientAuth::Optional
                };
                let verifier = v.build().map_err(|e| TlsError::File {
                    key: files.keys.client_ca,
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
                (builder.with_client_cert_verifier(verifier), auth)
            }
        };
        let mut server =
            builder
                .with_single_cert(chain, key)
                .map_err(|source| TlsError::Rustls {
                    key: files.keys.key,
                    path: files.key.clone(),
                    source,
                })?;
        // gRPC is HTTP/2 only; Bazel's netty refuses a TLS server that does
        // not negotiate h2.
        server.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsConfig {
            server: Arc::new(server),
            handshake_timeout: files.handshake_timeout,
            client_auth,
            files: files.clone(),
            not_after,
        })
    }

    /// When the server certificate expires (`None` if it cannot be read).
    pub fn not_after(&self) -> Option<std::time::SystemTime> {
        self.not_after
    }

    /// Logs the certificate's expiry: a warning when it is past or less
    /// than 14 days away, since clients then refuse every connection.
    pub fn log_expiry(&self) {
        let Some(at) = self.not_after else { return };
        let now = std::time::SystemTime::now();
        let cert = self.files.certificate.display();
        match at.duration_since(now) {
            Err(_) => tracing::warn!(
                certificate = %cert,
                "the server certificate has expired: TLS clients will refuse it; renew it and reload"
            ),
            Ok(left) if left < Duration::from_secs(14 * 86_400) => tracing::warn!(
                certificate = %cert,
                days_left = left.as_secs() / 86_400,
                "the server certificate expires soon; renew it and reload"
            ),
            Ok(left) => tracing::info!(
                certificate = %cert,
                days_left = left.as_secs() / 86_400,
                "server certificate valid"
            ),
        }
    }

    /// Whether clients are asked for certificates.
    pub fn client_auth(&self) -> ClientAuth {
        self.client_auth
    }

    /// The files this was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

/// The TLS configuration a listener uses, replaceable while it serves.
#[derive(Debug)]
pub struct ServerTls {
    current: ArcSwap<TlsConfig>,
}

impl ServerTls {
    /// Loads `files` ([`TlsConfig::load`]).
    pub fn load(files: &TlsFiles) -> Result<ServerTls, TlsError> {
        Ok(ServerTls::new(TlsConfig::load(files)?))
    }

    /// Serves `config`.
    pub fn new(config: TlsConfig) -> ServerTls {
        ServerTls {
            current: ArcSwap::from_pointee(config),
        }
    }

    /// Loads `files` and, if that works, uses them for every connection
    /// accepted from now on; otherwise keeps the running configuration.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        self.replace(TlsConfig::load(files)?);
        Ok(())
    }

    /// Uses `config` for every connection accepted from now on.
    pub fn replace(&self, config: TlsConfig) {
        self.current.store(Arc::new(config));
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<TlsConfig> {
        self.current.load_full()
    }
}

/// A CA bundle as a trust store; every certificate in it must be usable.
pub(crate) fn read_roots(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, c) in read_certs(key, path)?.into_iter().enumerate() {
        roots.add(c).map_err(|e| TlsError::File {
            key,
            path: path.to_owned(),
            reason: format!("certificate {} is not a usable CA: {e}", i + 1),
        })?;
    }
    Ok(roots)
}

pub(crate) fn read_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File {
        key,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(pem_reason(e, "")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(pem_reason(e, "")))?;
    if certs.is_empty() {
        return Err(err("no PEM CERTIFICATE block found".to_owned()));
    }
    Ok(certs)
}

/// A PEM reading error as a sentence; `none` for "nothing found".
fn pem_reason(e: rustls_pki_types::pem::Error, none: &str) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(e) => e.to_string(),
        Error::NoItemsFound if !none.is_empty() => none.to_owned(),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// The name a verified client certificate identifies: its subject's
/// common name, or else its first DNS, e-mail or URI alternative name.
/// `None` when it has none or the name is unfit for logs and config
/// (control characters, over [`MAX_NAME_BYTES`]).
pub(crate) fn certificate_name(der: &[u8]) -> Option<Arc<str>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok().map(str::to_owned));
    let name = cn.or_else(|| {
        let san = cert.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|g| match g {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                Some((*s).to_owned())
            }
            _ => None,
        })
    })?;
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        tracing::warn!(
            name = %name.escape_debug(),
            "client certificate name is empty, too long or has control characters; ignored"
        );
        return None;
    }
    Some(name.into())
}

/// Longest certificate name used as an identity.
pub const MAX_NAME_BYTES: usize = 256;
