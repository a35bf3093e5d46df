//! A throwaway PKI for TLS tests: a CA, a server certificate for
//! `localhost`/`127.0.0.1`/`::1`, client certificates, and the bad ones a
//! server must refuse (expired, not yet valid, self-signed, signed by
//! another CA). Everything is written as PEM files into one directory.
//!
//! ```ignore
//! let dir = tempfile::tempdir().unwrap();
//! let pki = rbe_testkit::tls::TestPki::new(dir.path());
//! // frontend.toml: [tls] certificate = pki.server_cert, key = pki.server_key,
//! //                client_ca = pki.ca
//! let (cert, key) = pki.client("ci");
//! let channel = pki.channel("127.0.0.1:19100", Some((&cert, &key))).await.unwrap();
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A CA and a server certificate signed by it, as files in `dir`.
pub struct TestPki {
    /// Where every file is written.
    pub dir: PathBuf,
    /// The CA certificate (PEM): the server's `client_ca` and the clients'
    /// trust root (Bazel's `--tls_certificate`).
    pub ca: PathBuf,
    /// The server certificate (PEM), for localhost, 127.0.0.1 and ::1.
    pub server_cert: PathBuf,
    /// Its PKCS#8 key (PEM).
    pub server_key: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

/// How a generated certificate is (in)valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Validity {
    Now,
    Expired,
    NotYetValid,
}

impl TestPki {
    /// Makes a CA (`ca.crt`, `ca.key`) and a server certificate
    /// (`server.crt`, `server.key`) in `dir`, which must exist.
    pub fn new(dir: &Path) -> TestPki {
        let (ca_cert, ca_key) = make_ca("rbe test CA");
        let ca = write(dir, "ca.crt", &ca_cert.pem());
        write(dir, "ca.key", &ca_key.serialize_pem());
        let mut pki = TestPki {
            dir: dir.to_owned(),
            ca,
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            ca_cert,
            ca_key,
        };
        pki.renew_server();
        pki
    }

    /// Issues a fresh server certificate (new key, new serial) over
    /// `server.crt` and `server.key`, as a renewal would, and returns its
    /// DER bytes to compare with what a client is shown.
    pub fn renew_server(&mut self) -> Vec<u8> {
        let (pem, key) = self.issue(
            "localhost",
            &["localhost", "127.0.0.1", "::1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            Validity::Now,
        );
        // Key first: a reload between the two writes then fails (key does
        // not match) and keeps the old pair rather than mixing them.
        write(&self.dir, "server.key", &key);
        write(&self.dir, "server.crt", &pem);
        cert_der(&self.server_cert)
    }

    /// A valid client certificate with CN=`name`: (`name.crt`, `name.key`).
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        self.client_with(name, name, Validity::Now)
    }

    /// A cluster host's certificate: CN and DNS SAN `name`, for both ends
    /// of the peer channel (server and client auth): (`name.crt`,
    /// `name.key`).
    pub fn host(&self, name: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        set_common(&mut params, name, Validity::Now);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        self.write_pair(name, &cert.pem(), &key)
    }

    /// A client certificate whose validity ended yesterday.
    pub fn expired_client(&self, name: &str) -> (PathBuf, PathBuf) {
        self.client_with(&format!("{name}-expired"), name, Validity::Expired)
    }

    /// A client certificate valid only from tomorrow.
    pub fn not_yet_valid_client(&self, name: &str) -> (PathBuf, PathBuf) {
        self.client_with(&format!("{name}-future"), name, Validity::NotYetValid)
    }

    /// A self-signed client certificate with CN=`name`.
    pub fn self_signed_client(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let cert = client_params(name, Validity::Now)
            .self_signed(&key)
            .unwrap();
        self.write_pair(&format!("{name}-self-signed"), &cert.pem(), &key)
    }

    /// A client certificate with CN=`name` signed by a different CA.
    pub fn other_ca_client(&self, name: &str) -> (PathBuf, PathBuf) {
        let (other, other_key) = make_ca("another CA");
        let key = KeyPair::generate().unwrap();
        let cert = client_params(name, Validity::Now)
            .signed_by(&key, &other, &other_key)
            .unwrap();
        self.write_pair(&format!("{name}-other-ca"), &cert.pem(), &key)
    }

    /// A gRPC channel to `addr` over TLS trusting the test CA, as
    /// `localhost`; with `client` = (cert, key) it presents that
    /// certificate. Connects now, so a refused handshake is the error.
    pub async fn channel(
        &self,
        addr: &str,
        client: Option<(&Path, &Path)>,
    ) -> Result<Channel, tonic::transport::Error> {
        let ca = std::fs::read(&self.ca).unwrap();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        if let Some((cert, key)) = client {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(cert).unwrap(),
                std::fs::read(key).unwrap(),
            ));
        }
        Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await
    }

    /// A raw TLS handshake with `addr` (ALPN h2, trusting the test CA), for
    /// tests that look at the certificate the server shows or at the
    /// handshake error itself.
    pub async fn handshake(
        &self,
        addr: &str,
        client: Option<(&Path, &Path)>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der(&self.ca).into()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match client {
            Some((cert, key)) => {
                use rustls_pki_types::pem::PemObject;
                let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        // TLS 1.3 clients finish before the server has checked the client
        // certificate; its verdict (an alert) arrives with the first read.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(crate::tls::H2_PREFACE).await?;
        let mut b = [0u8; 1];
        match tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut b)).await {
            Ok(Ok(0)) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            )),
            Ok(Ok(_)) => Ok(tls),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "server sent nothing after the handshake",
            )),
        }
    }

    fn client_with(&self, file: &str, cn: &str, validity: Validity) -> (PathBuf, PathBuf) {
        let (pem, key) = self.issue(cn, &[], ExtendedKeyUsagePurpose::ClientAuth, validity);
        let cert = write(&self.dir, &format!("{file}.crt"), &pem);
        let key = write(&self.dir, &format!("{file}.key"), &key);
        (cert, key)
    }

    fn write_pair(&self, file: &str, pem: &str, key: &KeyPair) -> (PathBuf, PathBuf) {
        (
            write(&self.dir, &format!("{file}.crt"), pem),
            write(&self.dir, &format!("{file}.key"), &key.serialize_pem()),
        )
    }

    /// A certificate signed by the CA: (PEM, PKCS#8 key PEM).
    fn issue(
        &self,
        cn: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
        validity: Validity,
    ) -> (String, String) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        set_common(&mut params, cn, validity);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The DER bytes of the first certificate in a PEM file.
pub fn cert_der(pem: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(pem)
        .unwrap()
        .to_vec()
}

fn make_ca(cn: &str) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::default();
    set_common(&mut params, cn, Validity::Now);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap(), key)
}

fn client_params(cn: &str, validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    set_common(&mut params, cn, validity);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn set_common(params: &mut CertificateParams, cn: &str, validity: Validity) {
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    let now = OffsetDateTime::now_utc();
    let day = Duration::days(1);
    (params.not_before, params.not_after) = match validity {
        Validity::Now => (now - day, now + day * 30),
        Validity::Expired => (now - day * 30, now - day),
        Validity::NotYetValid => (now + day, now + day * 30),
    };
    // Random, positive, and different for every certificate, so a renewed
    // one is told apart from the old by its serial too.
    params.serial_number = Some(SerialNumber::from(
        uuid::Uuid::new_v4().as_u64_pair().0 >> 1,
    ));
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
