//! `[tls]` of `frontend.toml`: TLS on the public TCP listeners.
//!
//! The files themselves are read by the daemon (`rbe_net::tls`); this
//! module only checks that the keys make sense together and turns relative
//! paths into credential paths.

use crate::layer::Provenance;
use crate::ConfigError;
use serde::{Deserialize, Serialize, Serializer};
use std::path::{Path, PathBuf};

/// Whether a TLS client must present a certificate signed by `client_ca`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertificates {
    /// A client may present one (and is then identified by it) or not.
    #[default]
    Optional,
    /// The handshake fails without a valid client certificate.
    Required,
}

/// `[tls]`: when `certificate` and `key` are set, every TCP listener of
/// the frontend speaks TLS only; the local Unix socket stays plaintext.
///
/// Paths are absolute here: a relative one in the file names a credential
/// under `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrontendTls {
    /// PEM certificate chain, the server's certificate first.
    #[serde(serialize_with = "unset_as_empty")]
    pub certificate: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(serialize_with = "unset_as_empty")]
    pub key: Option<PathBuf>,
    /// PEM CA bundle client certificates are verified against; unset: no
    /// client certificates are asked for.
    #[serde(serialize_with = "unset_as_empty")]
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required (with `client_ca` only).
    pub client_certificates: ClientCertificates,
    /// A connection that has not finished its TLS handshake (or, on a
    /// plaintext port, sent its first bytes) after this many seconds is
    /// closed.
    pub handshake_timeout_secs: u64,
}

impl FrontendTls {
    /// Whether the TCP listeners speak TLS.
    pub fn enabled(&self) -> bool {
        self.certificate.is_some() && self.key.is_some()
    }
}

impl Default for FrontendTls {
    fn default() -> Self {
        FrontendTls {
            certificate: None,
            key: None,
            client_ca: None,
            client_certificates: ClientCertificates::Optional,
            handshake_timeout_secs: 10,
        }
    }
}

/// The files say `""` for "not set", so the vendor defaults can list every
/// key and a drop-in can switch TLS off again.
fn unset_as_empty<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => p.serialize(s),
        None => s.serialize_str(""),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFragment {
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    client_certificates: Option<ClientCertificates>,
    handshake_timeout_secs: Option<u64>,
}

/// Longest `handshake_timeout_secs`: a client that needs more than five
/// minutes for a handshake is indistinguishable from one holding a slot.
const MAX_HANDSHAKE_TIMEOUT_SECS: u64 = 300;

impl TlsFragment {
    pub(crate) fn build(f: Option<Self>, prov: &Provenance) -> Result<FrontendTls, ConfigError> {
        let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Self::build_with(f, prov, creds.as_deref())
    }

    /// [`build`](Self::build) with `$CREDENTIALS_DIRECTORY` given.
    pub(crate) fn build_with(
        f: Option<Self>,
        prov: &Provenance,
        creds: Option<&Path>,
    ) -> Result<FrontendTls, ConfigError> {
        let f = f.unwrap_or_default();
        let d = FrontendTls::default();
        let path = |key: &str, p: Option<PathBuf>| credential_path(prov, key, p, creds);
        let tls = FrontendTls {
            certificate: path("tls.certificate", f.certificate)?,
            key: path("tls.key", f.key)?,
            client_ca: path("tls.client_ca", f.client_ca)?,
            client_certificates: f.client_certificates.unwrap_or(d.client_certificates),
            handshake_timeout_secs: f.handshake_timeout_secs.unwrap_or(d.handshake_timeout_secs),
        };
        match (&tls.certificate, &tls.key) {
            (Some(_), None) => {
                return Err(prov.error("tls.key", "must be set when tls.certificate is"))
            }
            (None, Some(_)) => {
                return Err(prov.error("tls.certificate", "must be set when tls.key is"))
            }
            _ => {}
        }
        if tls.client_ca.is_some() && !tls.enabled() {
            return Err(prov.error(
                "tls.client_ca",
                "client certificates need TLS: set tls.certificate and tls.key too",
            ));
        }
        if tls.client_certificates == ClientCertificates::Required && tls.client_ca.is_none() {
            return Err(prov.error(
                "tls.client_certificates",
                "\"required\" needs tls.client_ca, the CA client certificates are verified against",
            ));
        }
        if !(1..=MAX_HANDSHAKE_TIMEOUT_SECS).contains(&tls.handshake_timeout_secs) {
            return Err(prov.error(
                "tls.handshake_timeout_secs",
                format!(
                    "{} is out of range (1 to {MAX_HANDSHAKE_TIMEOUT_SECS})",
                    tls.handshake_timeout_secs
                ),
            ));
        }
        Ok(tls)
    }
}

/// The path configured at `key`, [`resolve`]d; none when unset or empty.
pub(crate) fn credential_path(
    prov: &Provenance,
    key: &str,
    p: Option<PathBuf>,
    creds: Option<&Path>,
) -> Result<Option<PathBuf>, ConfigError> {
    match p {
        Some(p) if !p.as_os_str().is_empty() => resolve(&p, creds)
            .map(Some)
            .map_err(|reason| prov.error(key, reason)),
        _ => Ok(None),
    }
}

/// An absolute path as is; a relative one names a credential that
/// systemd's `LoadCredential=` put under `$CREDENTIALS_DIRECTORY`.
pub(crate) fn resolve(p: &Path, creds: Option<&Path>) -> Result<PathBuf, String> {
    if p.is_absolute() {
        return Ok(p.to_owned());
    }
    let shown = p.display().to_string();
    match creds {
        Some(dir) if dir.is_absolute() => {
            // A credential name is one path component; "../x" would leave
            // the credentials directory.
            if p.components().count() != 1 || p.file_name().is_none() {
                return Err(format!(
                    "{shown:?} is neither an absolute path nor a credential name"
                ));
            }
            Ok(dir.join(p))
        }
        _ => Err(format!(
            "path {shown:?} is relative and $CREDENTIALS_DIRECTORY is not set: give an \
             absolute path, or load it with LoadCredential= in the unit"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_credentials() {
        let creds = Path::new("/run/credentials/rbe-frontend.service");
        assert_eq!(
            resolve(Path::new("tls.key"), Some(creds)).unwrap(),
            creds.join("tls.key")
        );
        assert_eq!(
            resolve(Path::new("/etc/rbe/tls/server.key"), Some(creds)).unwrap(),
            Path::new("/etc/rbe/tls/server.key")
        );
        let e = resolve(Path::new("tls.key"), None).unwrap_err();
        assert!(e.contains("CREDENTIALS_DIRECTORY"), "{e}");
        for bad in ["../tls.key", "a/b", "."] {
            assert!(resolve(Path::new(bad), Some(creds)).is_err(), "{bad}");
        }
    }

    fn build(text: &str, creds: Option<&Path>) -> Result<FrontendTls, String> {
        let f: TlsFragment = toml::from_str(text).unwrap();
        TlsFragment::build_with(Some(f), &Provenance::default(), creds).map_err(|e| e.to_string())
    }

    #[test]
    fn keys_must_come_together() {
        let creds = Path::new("/creds");
        let t = build("certificate = \"c.pem\"\nkey = \"k.pem\"\n", Some(creds)).unwrap();
        assert!(t.enabled());
        assert_eq!(t.key.as_deref(), Some(Path::new("/creds/k.pem")));
        assert!(!build("", None).unwrap().enabled());
        assert!(!build("certificate = \"\"\nkey = \"\"\n", None)
            .unwrap()
            .enabled());
        for (text, key) in [
            ("certificate = \"/c\"\n", "tls.key"),
            ("key = \"/k\"\n", "tls.certificate"),
            ("client_ca = \"/ca\"\n", "tls.client_ca"),
            (
                "certificate = \"/c\"\nkey = \"/k\"\nclient_certificates = \"required\"\n",
                "tls.client_certificates",
            ),
            (
                "certificate = \"/c\"\nkey = \"/k\"\nhandshake_timeout_secs = 0\n",
                "tls.handshake_timeout_secs",
            ),
            ("certificate = \"c\"\nkey = \"/k\"\n", "tls.certificate"),
        ] {
            let e = build(text, None).unwrap_err();
            assert!(e.contains(&format!("key {key}:")), "{text}: {e}");
        }
    }
}
