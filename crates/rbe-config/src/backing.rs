//! `[backing]` of `casd.toml`: an authoritative store casd keeps a local
//! cache (`mode = "cache"`) or a scratch space (`mode = "jit"`) in front
//! of (issue 13): a REAPI server (`grpc://`, `grpcs://`, `unix:`) or object
//! storage (`s3://bucket/prefix`, `http(s)://host/prefix` for WebDAV). A
//! config that cannot work fails at start instead of silently running as a
//! single host.

use crate::casd::check_instance_name;
pub use crate::credentials::{
    read_basic_credentials, read_s3_credentials, read_token, BasicCredentials, S3Credentials,
};
use crate::layer::Provenance;
use crate::tls::credential_path;
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
    /// `s3://bucket/prefix`: an S3-compatible object store (`endpoint`,
    /// `region`, `credentials_file`, `path_style` say where and how).
    S3 {
        /// The bucket.
        bucket: String,
        /// Key prefix inside the bucket, without slashes at either end;
        /// `""` for none.
        prefix: String,
    },
    /// `http://host[:port]/prefix` or `https://...`: a WebDAV server
    /// (GET, HEAD, PUT; nginx's `dav_methods PUT`).
    Http {
        /// The URL as written, without a trailing slash.
        url: String,
    },
}

impl BackingAddress {
    /// Whether this is object storage (S3 or WebDAV), not a REAPI server.
    pub fn is_object_store(&self) -> bool {
        matches!(
            self,
            BackingAddress::S3 { .. } | BackingAddress::Http { .. }
        )
    }
}

/// `[backing]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backing {
    /// `none`, `cache` or `jit`.
    pub mode: BackingMode,
    /// `grpc://host:port`, `grpcs://host:port`, `unix:/path`,
    /// `s3://bucket/prefix` or `http(s)://host/prefix`; `""` unset.
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
    /// `s3://` only: the S3 API's base URL (`http://127.0.0.1:9000` for a
    /// local server); `""`: AWS's endpoint for `region`.
    pub endpoint: String,
    /// `s3://` only: the bucket's region.
    pub region: String,
    /// `s3://`: a file of `access_key_id = ...`, `secret_access_key =
    /// ...` and optionally `session_token = ...` lines; unset: unsigned
    /// requests. `http(s)://`: a file of `username = ...` and `password =
    /// ...` lines, sent as HTTP basic authentication.
    #[serde(serialize_with = "unset_as_empty")]
    pub credentials_file: Option<PathBuf>,
    /// `s3://` only: `endpoint/bucket/key` URLs instead of
    /// `bucket.endpoint/key` (what most local S3 servers need).
    pub path_style: bool,
    /// Bound on connecting to the backing store.
    pub connect_timeout_secs: u64,
    /// Bound on each answer, and on each message of a stream.
    pub request_timeout_secs: u64,
    /// `cache` mode: how long a blob the backing store said it holds (or
    /// acknowledged) is taken as present without asking again; 0: never.
    pub existence_cache_secs: u64,
    /// `cache` mode: most digests remembered so (the oldest go first);
    /// 0: none.
    pub existence_cache_entries: u64,
    /// A name for the store that hosts reaching it by different URLs
    /// share (its hash is the store id the cluster compares); `""`: the
    /// id is derived from `url` and `instance_name` ([`Backing::store_id`]).
    pub store_id: String,
}

/// Longest `existence_cache_secs`: a day. The window is how long a blob
/// the store lost may still be reported present.
pub const MAX_EXISTENCE_CACHE_SECS: u64 = 86_400;
/// Most `existence_cache_entries` (each costs up to about 250 bytes).
pub const MAX_EXISTENCE_CACHE_ENTRIES: u64 = 100_000_000;

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
            endpoint: String::new(),
            region: "us-east-1".to_owned(),
            credentials_file: None,
            path_style: false,
            connect_timeout_secs: 10,
            request_timeout_secs: 60,
            existence_cache_secs: 60,
            existence_cache_entries: 1_000_000,
            store_id: String::new(),
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
    if let Some(rest) = url.strip_prefix("s3://") {
        let rest = rest.trim_end_matches('/');
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's bucket naming rules, the part that matters for a URL.
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
        if !bucket_ok {
            return Err(format!(
                "{url:?}: expected s3://bucket/prefix (a bucket of 3 to 63 characters a-z 0-9 . -)"
            ));
        }
        check_prefix(url, prefix)?;
        return Ok(Some(BackingAddress::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        }));
    }
    for scheme in ["http://", "https://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let rest = rest.trim_end_matches('/');
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            if host.is_empty() || host.contains('@') || rest.contains(['?', '#']) {
                return Err(format!(
                    "{url:?}: expected {scheme}host[:port]/prefix (no user, query or fragment)"
                ));
            }
            check_prefix(url, path)?;
            return Ok(Some(BackingAddress::Http {
                url: format!("{scheme}{rest}"),
            }));
        }
    }
    let scheme = url.split_once(':').map_or(url, |(s, _)| s);
    Err(format!(
        "{url:?}: scheme {scheme:?} is not supported; use grpc://host:port, grpcs://host:port, \
         unix:/path, s3://bucket/prefix or http(s)://host/prefix"
    ))
}

fn check_prefix(url: &str, prefix: &str) -> Result<(), String> {
    let ok = prefix.is_empty()
        || prefix.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{url:?}: the path prefix must be segments of a-z A-Z 0-9 - _ . separated by /"
        ))
    }
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
    endpoint: Option<String>,
    region: Option<String>,
    credentials_file: Option<PathBuf>,
    path_style: Option<bool>,
    connect_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
    existence_cache_secs: Option<u64>,
    existence_cache_entries: Option<u64>,
    store_id: Option<String>,
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
        let path = |key: &str, p: Option<PathBuf>| credential_path(prov, key, p, creds);
        let b = Backing {
            mode: f.mode.unwrap_or(d.mode),
            url: f.url.unwrap_or(d.url),
            instance_name: f.instance_name.unwrap_or(d.instance_name),
            tls_ca: path("backing.tls_ca", f.tls_ca)?,
            tls_cert: path("backing.tls_cert", f.tls_cert)?,
            tls_key: path("backing.tls_key", f.tls_key)?,
            token_file: path("backing.token_file", f.token_file)?,
            endpoint: f.endpoint.unwrap_or(d.endpoint),
            region: f.region.unwrap_or(d.region),
            credentials_file: path("backing.credentials_file", f.credentials_file)?,
            path_style: f.path_style.unwrap_or(d.path_style),
            connect_timeout_secs: f.connect_timeout_secs.unwrap_or(d.connect_timeout_secs),
            request_timeout_secs: f.request_timeout_secs.unwrap_or(d.request_timeout_secs),
            existence_cache_secs: f.existence_cache_secs.unwrap_or(d.existence_cache_secs),
            existence_cache_entries: f
                .existence_cache_entries
                .unwrap_or(d.existence_cache_entries),
            store_id: f.store_id.unwrap_or(d.store_id),
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
        for (key, v, max) in [
            (
                "backing.existence_cache_secs",
                b.existence_cache_secs,
                MAX_EXISTENCE_CACHE_SECS,
            ),
            (
                "backing.existence_cache_entries",
                b.existence_cache_entries,
                MAX_EXISTENCE_CACHE_ENTRIES,
            ),
        ] {
            if v > max {
                return Err(prov.error(key, format!("{v} is out of range (0 to {max})")));
            }
        }
        // "" is unset, as for `url`: what the serialized defaults say.
        if !b.store_id.is_empty() {
            crate::store_id::check_store_id(&b.store_id)
                .map_err(|r| prov.error("backing.store_id", r))?;
        }
        if b.mode == BackingMode::None {
            if !b.store_id.is_empty() {
                return Err(prov.error(
                    "backing.store_id",
                    "is only used with backing.mode = \"cache\" or \"jit\"",
                ));
            }
            return Ok(b);
        }
        if b.mode == BackingMode::Jit {
            for (key, set) in [
                (
                    "backing.existence_cache_secs",
                    b.existence_cache_secs != d.existence_cache_secs,
                ),
                (
                    "backing.existence_cache_entries",
                    b.existence_cache_entries != d.existence_cache_entries,
                ),
            ] {
                if set {
                    return Err(prov.error(
                        key,
                        "is not used with backing.mode = \"jit\", where existence is always \
                         the backing store's answer",
                    ));
                }
            }
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
        check_object_keys(&b, &addr, prov)?;
        let tls = matches!(addr, BackingAddress::Grpcs { .. });
        let object_tls = match &addr {
            BackingAddress::Http { url } => url.starts_with("https://"),
            BackingAddress::S3 { .. } => !b.endpoint.starts_with("http://"),
            _ => false,
        };
        if b.tls_ca.is_some() && !tls && !object_tls {
            return Err(prov.error(
                "backing.tls_ca",
                "is only used with a grpcs://, https:// or s3:// (https endpoint) backing.url",
            ));
        }
        for (key, p) in [
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

/// The object-storage keys: used only with `s3://`, each well formed.
fn check_object_keys(
    b: &Backing,
    addr: &BackingAddress,
    prov: &Provenance,
) -> Result<(), ConfigError> {
    let s3 = matches!(addr, BackingAddress::S3 { .. });
    let d = Backing::default();
    for (key, set) in [
        ("backing.endpoint", !b.endpoint.is_empty()),
        ("backing.region", b.region != d.region),
        ("backing.path_style", b.path_style),
    ] {
        if set && !s3 {
            return Err(prov.error(key, "is only used with an s3:// backing.url"));
        }
    }
    if let (Some(p), BackingAddress::Http { .. }) = (&b.credentials_file, addr) {
        if b.token_file.is_some() {
            return Err(prov.error(
                "backing.credentials_file",
                "and backing.token_file are both set; an http(s):// store takes one of them",
            ));
        }
        read_basic_credentials(p).map_err(|r| prov.error("backing.credentials_file", r))?;
    } else if b.credentials_file.is_some() && !addr.is_object_store() {
        return Err(prov.error(
            "backing.credentials_file",
            "is only used with an s3:// or http(s):// backing.url; a REAPI store takes \
             backing.token_file",
        ));
    }
    if !b.instance_name.is_empty() && addr.is_object_store() {
        return Err(prov.error(
            "backing.instance_name",
            "is only used with a REAPI backing.url (grpc://, grpcs://, unix:); \
             put a prefix in the object store's URL instead",
        ));
    }
    if b.token_file.is_some() && s3 {
        return Err(prov.error(
            "backing.token_file",
            "is not used with s3://; use backing.credentials_file",
        ));
    }
    if !b.endpoint.is_empty() {
        let ok = ["http://", "https://"].iter().any(|p| {
            b.endpoint
                .strip_prefix(p)
                .is_some_and(|h| !h.is_empty() && !h.contains(['@', '?', '#']))
        });
        if !ok {
            return Err(prov.error(
                "backing.endpoint",
                format!("{:?}: expected http(s)://host[:port]", b.endpoint),
            ));
        }
    }
    if b.region.is_empty()
        || !b
            .region
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
    {
        return Err(prov.error(
            "backing.region",
            format!("{:?} is not a region name", b.region),
        ));
    }
    if let (Some(p), true) = (&b.credentials_file, s3) {
        read_s3_credentials(p).map_err(|r| prov.error("backing.credentials_file", r))?;
    }
    Ok(())
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
        assert_eq!(
            parse_url("s3://rbe-cache/ci/main/").unwrap(),
            Some(BackingAddress::S3 {
                bucket: "rbe-cache".into(),
                prefix: "ci/main".into()
            })
        );
        assert_eq!(
            parse_url("http://127.0.0.1:8080/dav/").unwrap(),
            Some(BackingAddress::Http {
                url: "http://127.0.0.1:8080/dav".into()
            })
        );
        for bad in [
            "s3://b",
            "s3://Bucket/x",
            "s3://bucket/../x",
            "s3://bucket/a//b",
            "http://",
            "http://u@h/x",
            "http://h/x?y",
            "ftp://h/x",
            "grpc://h",
            "grpc://h:0",
            "grpc://h:1/x",
            "grpc://u@h:1",
            "unix:rel.sock",
            "cas.example:8980",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let e = parse_url("gs://bucket/x").unwrap_err();
        assert!(e.contains("\"gs\"") && e.contains("s3://"), "{e}");
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
        let bad_creds = dir.path().join("bad-creds");
        std::fs::write(&bad_creds, "access_key_id = AKIA\n").unwrap();
        let creds = dir.path().join("creds");
        std::fs::write(
            &creds,
            "# test\naccess_key_id = AKIA\nsecret_access_key = s3cr3t\n",
        )
        .unwrap();
        let s3 = build(&format!(
            "mode = \"cache\"\nurl = \"s3://bkt/p\"\nendpoint = \"http://127.0.0.1:9000\"\n\
             path_style = true\ncredentials_file = {:?}\n",
            creds.display().to_string()
        ))
        .unwrap();
        let c = read_s3_credentials(s3.credentials_file.as_deref().unwrap()).unwrap();
        assert_eq!(c.secret_access_key, "s3cr3t");
        assert!(!format!("{c:?}").contains("s3cr3t"));
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
        let basic = dir.path().join("basic");
        std::fs::write(&basic, "username = rbe\npassword = pa55\n").unwrap();
        let dav = build(&format!(
            "mode = \"cache\"\nurl = \"https://h/dav\"\ncredentials_file = {:?}\n",
            basic.display().to_string()
        ))
        .unwrap();
        let c = read_basic_credentials(dav.credentials_file.as_deref().unwrap()).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("rbe", "pa55"));
        assert!(!format!("{c:?}").contains("pa55"));
        assert_eq!(build("").unwrap(), Backing::default());
        let jit = build("mode = \"jit\"\nurl = \"grpc://h:1\"\n").unwrap();
        assert_eq!(jit.mode, BackingMode::Jit);
        let off = build(
            "mode = \"cache\"\nurl = \"grpc://h:1\"\nexistence_cache_secs = 0\n\
             existence_cache_entries = 0\n",
        )
        .unwrap();
        assert_eq!(
            (off.existence_cache_secs, off.existence_cache_entries),
            (0, 0)
        );
        for (text, key, words) in [
            (
                "mode = \"cache\"\nurl = \"ftp://b\"\n".to_owned(),
                "backing.url",
                "not supported",
            ),
            (
                "mode = \"cache\"\nurl = \"http://h/x\"\nendpoint = \"http://h\"\n".to_owned(),
                "backing.endpoint",
                "s3://",
            ),
            (
                "mode = \"cache\"\nurl = \"s3://bkt/x\"\nendpoint = \"h:9000\"\n".to_owned(),
                "backing.endpoint",
                "expected",
            ),
            (
                "mode = \"cache\"\nurl = \"s3://bkt/x\"\ninstance_name = \"a\"\n".to_owned(),
                "backing.instance_name",
                "prefix",
            ),
            (
                format!(
                    "mode = \"cache\"\nurl = \"s3://bkt\"\ncredentials_file = {:?}\n",
                    bad_creds.display().to_string()
                ),
                "backing.credentials_file",
                "must name both",
            ),
            (
                format!(
                    "mode = \"cache\"\nurl = \"http://h/x\"\ncredentials_file = {:?}\n",
                    creds.display().to_string()
                ),
                "backing.credentials_file",
                "unknown name \"access_key_id\"",
            ),
            (
                format!(
                    "mode = \"cache\"\nurl = \"http://h/x\"\ncredentials_file = {:?}\n\
                     token_file = {:?}\n",
                    basic.display().to_string(),
                    token.display().to_string()
                ),
                "backing.credentials_file",
                "one of them",
            ),
            (
                format!(
                    "mode = \"cache\"\nurl = \"grpc://h:1\"\ncredentials_file = {:?}\n",
                    basic.display().to_string()
                ),
                "backing.credentials_file",
                "backing.token_file",
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
                "mode = \"cache\"\nurl = \"grpc://h:1\"\nexistence_cache_secs = 86401\n".to_owned(),
                "backing.existence_cache_secs",
                "out of range (0 to 86400)",
            ),
            (
                "mode = \"cache\"\nurl = \"grpc://h:1\"\nexistence_cache_entries = 100000001\n"
                    .to_owned(),
                "backing.existence_cache_entries",
                "out of range",
            ),
            (
                "mode = \"jit\"\nurl = \"grpc://h:1\"\nexistence_cache_secs = 5\n".to_owned(),
                "backing.existence_cache_secs",
                "not used with backing.mode = \"jit\"",
            ),
            (
                "mode = \"jit\"\nurl = \"grpc://h:1\"\nexistence_cache_entries = 0\n".to_owned(),
                "backing.existence_cache_entries",
                "not used with backing.mode = \"jit\"",
            ),
            (
                "mode = \"cache\"\nurl = \"grpc://h:1\"\ninstance_name = \"a//b\"\n".to_owned(),
                "backing.instance_name",
                "empty",
            ),
            (
                "mode = \"cache\"\nurl = \"grpc://h:1\"\nstore_id = \"  \"\n".to_owned(),
                "backing.store_id",
                "blank",
            ),
            (
                "mode = \"cache\"\nurl = \"grpc://h:1\"\nstore_id = \"a\\u0007b\"\n".to_owned(),
                "backing.store_id",
                "printable",
            ),
            (
                "store_id = \"team\"\n".to_owned(),
                "backing.store_id",
                "only used",
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
