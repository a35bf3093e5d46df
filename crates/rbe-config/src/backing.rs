//! `[backing]` of `casd.toml`: an authoritative store casd keeps a local
//! cache (`mode = "cache"`) or a scratch space (`mode = "jit"`) in front
//! of (issue 13). Only REAPI servers (`grpc://`, `grpcs://`, `unix:`) are
//! supported; object storage is refused here until it is built, so a
//! config asking for it fails at start instead of silently running as a
//! single host.

use crate::casd::check_instance_name;
use crate::layer::Provenance;
use crate::tls::resolve;
use crate::ConfigError;
use serde::{Deserialize, Serialize, Serializer};
use std::path::{Path, PathBuf};

/// How casd uses its backing store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackingMode {
    /// No backing store: casd's own store is authoritative.
    #[default]
    None,
    /// Write-through cache: a blob is advertised only once the backing
    /// store acknowledged it; local misses are fetched from it.
    Cache,
    /// Just-in-time hydration: uploads write through as in `Cache`, but
    /// existence is always the backing store's answer, action results are
    /// read from it, and the local store is scratch: blobs whose last pin
    /// is released are removed at once.
    Jit,
}

/// Where the backing store is, as parsed from `backing.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackingAddress {
    /// `grpc://host:port`: plaintext HTTP/2 over TCP.
    Grpc {
        /// `host:port` as written.
        authority: String,
    },
    /// `grpcs://host:port`: TLS; the server's certificate must name `host`.
    Grpcs {
        /// `host:port` as written.
        authority: String,
    },
    /// `unix:/path` (or `unix:///path`): a Unix socket.
    Unix {
        /// The socket's absolute path.
        path: PathBuf,
    },
}

/// `[backing]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backing {
    /// `none`, `cache` or `jit`.
    pub mode: BackingMode,
    /// `grpc://host:port`, `grpcs://host:port` or `unix:/path`; `""` unset.
    pub url: String,
    /// REAPI instance name used for every request to the backing store.
    pub instance_name: String,
    /// PEM CA bundle the backing store's certificate must chain to
    /// (`grpcs://` only); unset: the CA bundle is required.
    #[serde(serialize_with = "unset_as_empty")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate chain presented to the backing store.
    #[serde(serialize_with = "unset_as_empty")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(serialize_with = "unset_as_empty")]
    pub tls_key: Option<PathBuf>,
    /// File holding a bearer token sent as `authorization: Bearer <token>`.
    #[serde(serialize_with = "unset_as_empty")]
    pub token_file: Option<PathBuf>,
    /// Bound on connecting to the backing store.
    pub connect_timeout_secs: u64,
    /// Bound on each answer, and on each message of a stream.
    pub request_timeout_secs: u64,
}

impl Default for Backing {
    fn default() -> Self {
        Backing {
            mode: BackingMode::None,
            url: String::new(),
            instance_name: String::new(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            token_file: None,
            connect_timeout_secs: 10,
            request_timeout_secs: 60,
        }
    }
}

impl Backing {
    /// The parsed `url`; `None` when unset. Validation has already
    /// refused a URL that does not parse.
    pub fn address(&self) -> Option<BackingAddress> {
        parse_url(&self.url).ok().flatten()
    }
}

fn unset_as_empty<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => p.serialize(s),
        None => s.serialize_str(""),
    }
}

/// Parses `backing.url`; `Ok(None)` for `""`.
pub fn parse_url(url: &str) -> Result<Option<BackingAddress>, String> {
    if url.is_empty() {
        return Ok(None);
    }
    let authority = |rest: &str, scheme: &str| -> Result<String, String> {
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let ok = match rest.rsplit_once(':') {
            Some((host, port)) => {
                !host.is_empty()
                    && !rest.contains('/')
                    && !rest.contains('@')
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            }
            None => false,
        };
        if ok {
            Ok(rest.to_owned())
        } else {
            Err(format!(
                "{url:?}: expected {scheme}://host:port (a port is required, no path)"
            ))
        }
    };
    if let Some(rest) = url.strip_prefix("grpc://") {
        return Ok(Some(BackingAddress::Grpc {
            authority: authority(rest, "grpc")?,
        }));
    }
    if let Some(rest) = url.strip_prefix("grpcs://") {
        return Ok(Some(BackingAddress::Grpcs {
            authority: authority(rest, "grpcs")?,
        }));
    }
    if let Some(rest) = url.strip_prefix("unix:") {
        // gRPC writes both unix:/path and unix:///path.
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if !Path::new(path).is_absolute() {
            return Err(format!("{url:?}: expected unix:/absolute/path/to/socket"));
        }
        return Ok(Some(BackingAddress::Unix { path: path.into() }));
    }
    let scheme = url.split_once(':').map_or(url, |(s, _)| s);
    Err(format!(
        "{url:?}: scheme {scheme:?} is not supported; use grpc://host:port, grpcs://host:port \
         or unix:/path (object storage is not implemented yet)"
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackingFragment {
    mode: Option<BackingMode>,
    url: Option<String>,
    instance_name: Option<String>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    token_file: Option<PathBuf>,
    connect_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
}

impl BackingFragment {
    pub(crate) fn build(f: Option<Self>, prov: &Provenance) -> Result<Backing, ConfigError> {
        let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Self::build_with(f, prov, creds.as_deref())
    }

    pub(crate) fn build_with(
        f: Option<Self>,
        prov: &Provenance,
        creds: Option<&Path>,
    ) -> Result<Backing, ConfigError> {
        let f = f.unwrap_or_default();
        let d = Backing::default();
        let path = |key: &str, p: Option<PathBuf>| -> Result<Option<PathBuf>, ConfigError> {
            match p {
                Some(p) if !p.as_os_str().is_empty() => resolve(&p, creds)
                    .map(Some)
                    .map_err(|reason| prov.error(key, reason)),
                _ => Ok(None),
            }
        };
        let b = Backing {
            mode: f.mode.unwrap_or(d.mode),
            url: f.url.unwrap_or(d.url),
            instance_name: f.instance_name.unwrap_or(d.instance_name),
            tls_ca: path("backing.tls_ca", f.tls_ca)?,
            tls_cert: path("backing.tls_cert", f.tls_cert)?,
            tls_key: path("backing.tls_key", f.tls_key)?,
            token_file: path("backing.token_file", f.token_file)?,
            connect_timeout_secs: f.connect_timeout_secs.unwrap_or(d.connect_timeout_secs),
            request_timeout_secs: f.request_timeout_secs.unwrap_or(d.request_timeout_secs),
        };
        let addr = parse_url(&b.url).map_err(|r| prov.error("backing.url", r))?;
        check_instance_name(&b.instance_name)
            .map_err(|r| prov.error("backing.instance_name", r))?;
        for (key, v) in [
            ("backing.connect_timeout_secs", b.connect_timeout_secs),
            ("backing.request_timeout_secs", b.request_timeout_secs),
        ] {
            if !(1..=3600).contains(&v) {
                return Err(prov.error(key, format!("{v} is out of range (1 to 3600)")));
            }
        }
        if b.mode == BackingMode::None {
            return Ok(b);
        }
        let Some(addr) = addr else {
            return Err(prov.error(
                "backing.url",
                format!(
                    "must be set when backing.mode = \"{}\" (set in {})",
                    if b.mode == BackingMode::Jit {
                        "jit"
                    } else {
                        "cache"
                    },
                    prov.origin("backing.mode")
                ),
            ));
        };
        let tls = matches!(addr, BackingAddress::Grpcs { .. });
        for (key, p) in [
            ("backing.tls_ca", &b.tls_ca),
            ("backing.tls_cert", &b.tls_cert),
            ("backing.tls_key", &b.tls_key),
        ] {
            if p.is_some() && !tls {
                return Err(prov.error(key, "is only used with a grpcs:// backing.url"));
            }
        }
        if tls && b.tls_ca.is_none() {
            return Err(prov.error(
                "backing.tls_ca",
                "must be set for a grpcs:// backing.url (the CA the store's certificate chains to)",
            ));
        }
        match (&b.tls_cert, &b.tls_key) {
            (Some(_), None) => {
                return Err(prov.error("backing.tls_key", "must be set when backing.tls_cert is"))
            }
            (None, Some(_)) => {
                return Err(prov.error("backing.tls_cert", "must be set when backing.tls_key is"))
            }
            _ => {}
        }
        if let Some(t) = &b.token_file {
            read_token(t).map_err(|r| prov.error("backing.token_file", r))?;
        }
        Ok(b)
    }
}

/// Reads a bearer token file: one line, trimmed, not empty, printable
/// ASCII (it becomes an HTTP header value).
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if token.lines().count() > 1 || !token.bytes().all(|c| (0x21..0x7f).contains(&c)) {
        return Err(format!(
            "{} must hold one token of printable ASCII without spaces",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("grpc://cas.example:8980").unwrap(),
            Some(BackingAddress::Grpc {
                authority: "cas.example:8980".into()
            })
        );
        assert_eq!(
            parse_url("grpcs://[::1]:443/").unwrap(),
            Some(BackingAddress::Grpcs {
                authority: "[::1]:443".into()
            })
        );
        for u in ["unix:/run/x.sock", "unix:///run/x.sock"] {
            assert_eq!(
                parse_url(u).unwrap(),
                Some(BackingAddress::Unix {
                    path: "/run/x.sock".into()
                })
            );
        }
        assert_eq!(parse_url("").unwrap(), None);
        for bad in [
            "s3://bucket",
            "http://h:1",
            "grpc://h",
            "grpc://h:0",
            "grpc://h:1/x",
            "grpc://u@h:1",
            "unix:rel.sock",
            "cas.example:8980",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let e = parse_url("s3://bucket/x").unwrap_err();
        assert!(e.contains("\"s3\"") && e.contains("object storage"), "{e}");
    }

    fn build(text: &str) -> Result<Backing, String> {
        let f: BackingFragment = toml::from_str(text).unwrap();
        BackingFragment::build_with(Some(f), &Provenance::default(), None)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn bad_configs_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "rbe_secret\n").unwrap();
        let missing = dir.path().join("absent");
        let ok = build(&format!(
            "mode = \"cache\"\nurl = \"grpc://h:1\"\ntoken_file = {:?}\n",
            token.display().to_string()
        ))
        .unwrap();
        assert_eq!(ok.mode, BackingMode::Cache);
        assert_eq!(
            read_token(ok.token_file.as_deref().unwrap()).unwrap(),
            "rbe_secret"
        );
        assert_eq!(build("").unwrap(), Backing::default());
        let jit = build("mode = \"jit\"\nurl = \"grpc://h:1\"\n").unwrap();
        assert_eq!(jit.mode, BackingMode::Jit);
        for (text, key, words) in [
            (
                "mode = \"cache\"\nurl = \"s3://b\"\n".to_owned(),
                "backing.url",
                "not supported",
            ),
            (
                "mode = \"cache\"\n".to_owned(),
                "backing.url",
                "must be set",
            ),
            (
                "mode = \"jit\"\n".to_owned(),
                "backing.url",
                "must be set when backing.mode = \"jit\"",
            ),
            (
                format!(
                    "mode = \"cache\"\nurl = \"grpc://h:1\"\ntoken_file = {:?}\n",
                    missing.display().to_string()
                ),
                "backing.token_file",
                "cannot read",
            ),
            (
                "mode = \"cache\"\nurl = \"grpcs://h:1\"\n".to_owned(),
                "backing.tls_ca",
                "must be set",
            ),
            (
                "mode = \"cache\"\nurl = \"grpc://h:1\"\ntls_ca = \"/ca\"\n".to_owned(),
                "backing.tls_ca",
                "grpcs",
            ),
            (
                "mode = \"cache\"\nurl = \"grpcs://h:1\"\ntls_ca = \"/ca\"\ntls_cert = \"/c\"\n"
                    .to_owned(),
                "backing.tls_key",
                "must be set",
            ),
            (
                "mode = \"cache\"\nurl = \"grpc://h:1\"\nrequest_timeout_secs = 0\n".to_owned(),
                "backing.request_timeout_secs",
                "out of range",
            ),
            (
                "mode = \"cache\"\nurl = \"grpc://h:1\"\ninstance_name = \"a//b\"\n".to_owned(),
                "backing.instance_name",
                "empty",
            ),
        ] {
            let e = build(&text).unwrap_err();
            assert!(
                e.contains(&format!("key {key}:")) && e.contains(words),
                "{text}: {e}"
            );
        }
    }
}
