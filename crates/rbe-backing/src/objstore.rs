//! [`Backing`] over object storage through the `object_store` crate:
//! S3-compatible stores (`s3://bucket/prefix`) and WebDAV servers
//! (`http(s)://host/prefix`).
//!
//! Layout under the prefix: `cas/<function>/<hash>/<size>` for blobs and
//! `ac/<function>/<hash>/<size>` (the action's digest) for encoded
//! `ActionResult`s. The size is in the key so that a blob is never
//! confused with another of the same hash under another size, and so a
//! HEAD can be checked against it.
//!
//! An object store does not check what it holds, and a misconfigured one
//! (a proxy, a login page) may answer 200 with HTML. So: existence is
//! "present" only if the HEAD's size is the digest's size; a blob's PUT
//! is acknowledged only once such a HEAD follows it; every read is
//! hashed by [`BlobChunks`]; an action result that does not decode is
//! refused. Each request is bounded by twice `request_timeout_secs`
//! (retries included), plus, for an upload, the time its bytes take at
//! [`SLOWEST_TRANSFER`]; a download's body by `request_timeout_secs`
//! without a byte ([`BlobChunks`]). So a store that is down fails as
//! unavailable instead of hanging, and a slow one is never cut while a
//! large blob's bytes flow (the HTTP client's own whole-request timeout
//! is off: it would cut them).

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::http::HttpBuilder;
use object_store::path::Path as ObjPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, PutPayload, RetryConfig};
use prost::Message;
use rbe_config::BackingAddress;
use rbe_proto::reapi::ActionResult;
use rbe_proto::{Digest, DigestFunction};
use tokio::io::AsyncReadExt;

use crate::{Backing, BackingError, BlobChunks, Body};

/// HEADs in flight at once for one FindMissingBlobs question.
const HEAD_CONCURRENCY: usize = 32;
/// Pieces a file is read in before it is sent.
const READ_CHUNK: usize = 1 << 20;
/// Files larger than this go to S3 as a multipart upload, never whole in
/// memory.
const MULTIPART_OVER: u64 = 16 << 20;
/// Parts of a multipart upload (S3's minimum is 5 MiB), and how many are
/// in flight at once.
const PART_SIZE: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 2;
/// Bytes per second below which an upload counts as stalled: its bound
/// grows by its size at this rate. (A PUT's body gives no progress to
/// watch, so an idle timeout like the reads' is not possible.)
const SLOWEST_TRANSFER: u64 = 256 << 10;

/// An object store used as the backing store.
pub struct ObjectBacking {
    store: Arc<dyn ObjectStore>,
    address: String,
    prefix: String,
    timeout: Duration,
    multipart: bool,
}

fn setup(address: &str, reason: impl Into<String>) -> BackingError {
    BackingError::Setup {
        address: address.to_owned(),
        reason: reason.into(),
    }
}

impl ObjectBacking {
    /// A client for the store `s` names (`s3://` or `http(s)://`).
    /// Nothing is sent yet; errors here are files that do not load.
    pub fn connect(s: &rbe_config::Backing) -> Result<ObjectBacking, BackingError> {
        let address = s.url.as_str();
        let timeout = Duration::from_secs(s.request_timeout_secs);
        // No whole-request timeout: it would cut a large blob on a slow
        // link while its bytes flow. Requests are bounded here instead.
        let mut options = ClientOptions::new()
            .with_timeout_disabled()
            .with_connect_timeout(Duration::from_secs(s.connect_timeout_secs))
            .with_allow_http(true);
        if let Some(ca) = &s.tls_ca {
            let pem = std::fs::read(ca)
                .map_err(|e| setup(address, format!("backing.tls_ca {}: {e}", ca.display())))?;
            let certs = object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| setup(address, format!("backing.tls_ca {}: {e}", ca.display())))?;
            for c in certs {
                options = options.with_root_certificate(c);
            }
        }
        // A short retry budget: casd answers its client UNAVAILABLE and the
        // client retries; waiting minutes here would only hold the upload.
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: timeout,
        };
        let multipart = matches!(s.address(), Some(BackingAddress::S3 { .. }));
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match s.address() {
            Some(BackingAddress::S3 { bucket, prefix }) => {
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(&s.region)
                    .with_virtual_hosted_style_request(!s.path_style)
                    .with_allow_http(true)
                    .with_retry(retry)
                    .with_client_options(options);
                if !s.endpoint.is_empty() {
                    b = b.with_endpoint(&s.endpoint);
                }
                match &s.credentials_file {
                    Some(p) => {
                        let c = rbe_config::read_s3_credentials(p).map_err(|r| {
                            setup(address, format!("backing.credentials_file: {r}"))
                        })?;
                        b = b
                            .with_access_key_id(c.access_key_id)
                            .with_secret_access_key(c.secret_access_key);
                        if let Some(t) = c.session_token {
                            b = b.with_token(t);
                        }
                    }
                    None => b = b.with_skip_signature(true),
                }
                let store = b.build().map_err(|e| setup(address, e.to_string()))?;
                (Arc::new(store), prefix)
            }
            Some(BackingAddress::Http { url }) => {
                let auth = match (&s.token_file, &s.credentials_file) {
                    (Some(p), _) => {
                        let token = rbe_config::read_token(p)
                            .map_err(|r| setup(address, format!("backing.token_file: {r}")))?;
                        Some(("backing.token_file", format!("Bearer {token}")))
                    }
                    (None, Some(p)) => {
                        let c = rbe_config::read_basic_credentials(p).map_err(|r| {
                            setup(address, format!("backing.credentials_file: {r}"))
                        })?;
                        let pair = format!("{}:{}", c.username, c.password);
                        Some((
                            "backing.credentials_file",
                            format!("Basic {}", base64(pair.as_bytes())),
                        ))
                    }
                    (None, None) => None,
                };
                if let Some((key, value)) = auth {
                    let mut v: object_store::HeaderValue = value
                        .parse()
                        .map_err(|_| setup(address, format!("{key}: not a header value")))?;
                    v.set_sensitive(true);
                    let mut headers = object_store::HeaderMap::new();
                    headers.insert("authorization", v);
                    options = options.with_default_headers(headers);
                }
                let store = HttpBuilder::new()
                    .with_url(url)
                    .with_retry(retry)
                    .with_client_options(options)
                    .build()
                    .map_err(|e| setup(address, e.to_string()))?;
                // The URL's path is the prefix already.
                (Arc::new(store), String::new())
            }
            _ => return Err(setup(address, "not an object storage URL")),
        };
        Ok(ObjectBacking {
            store,
            address: s.url.clone(),
            prefix,
            timeout,
            multipart,
        })
    }

    fn key(&self, kind: &str, d: Digest) -> ObjPath {
        let rel = format!("{kind}/{}/{}/{}", d.function.name(), d.hex(), d.size);
        if self.prefix.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn error(&self, what: &str, e: object_store::Error) -> BackingError {
        use object_store::Error as E;
        match e {
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => BackingError::Refused {
                address: self.address.clone(),
                what: what.to_owned(),
                reason: format!("{} ({e})", crate::error::CREDENTIALS),
            },
            E::NotSupported { .. } | E::NotImplemented => BackingError::Refused {
                address: self.address.clone(),
                what: what.to_owned(),
                reason: e.to_string(),
            },
            e => BackingError::Unavailable {
                address: self.address.clone(),
                reason: format!("{what}: {e}"),
            },
        }
    }

    /// `f` bounded by twice the request timeout (retries included).
    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, object_store::Error>>,
    ) -> Result<Result<T, object_store::Error>, BackingError> {
        self.bounded_sending(what, 0, f).await
    }

    /// [`Self::bounded`] for a request sending `bytes`: longer by their
    /// time at [`SLOWEST_TRANSFER`].
    async fn bounded_sending<T>(
        &self,
        what: &str,
        bytes: u64,
        f: impl std::future::Future<Output = Result<T, object_store::Error>>,
    ) -> Result<Result<T, object_store::Error>, BackingError> {
        let bound = self.timeout * 2 + Duration::from_secs(bytes / SLOWEST_TRANSFER);
        tokio::time::timeout(bound, f)
            .await
            .map_err(|_| BackingError::timeout(&self.address, what, bound.as_secs()))
    }

    async fn put(&self, what: &str, key: ObjPath, p: PutPayload) -> Result<(), BackingError> {
        let bytes = p.content_length() as u64;
        match self
            .bounded_sending(what, bytes, self.store.put(&key, p))
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error(what, e)),
        }
    }

    /// Uploads the file at `path` in parts; any failure aborts the upload
    /// (best effort: a store keeps no half object under the key either way).
    async fn put_multipart(
        &self,
        what: &str,
        d: Digest,
        path: &std::path::Path,
    ) -> Result<(), BackingError> {
        let io = |source| BackingError::Io {
            address: self.address.clone(),
            digest: d,
            path: path.to_owned(),
            source,
        };
        let mut f = tokio::fs::File::open(path).await.map_err(io)?;
        let key = self.key("cas", d);
        let upload = match self.bounded(what, self.store.put_multipart(&key)).await? {
            Ok(u) => u,
            Err(e) => return Err(self.error(what, e)),
        };
        let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut sent = 0u64;
        let failed = loop {
            let mut buf = Vec::with_capacity(READ_CHUNK);
            let n = match (&mut f).take(READ_CHUNK as u64).read_to_end(&mut buf).await {
                Ok(n) => n,
                Err(e) => break io(e),
            };
            if n == 0 {
                break if sent == d.size {
                    let last = (PART_SIZE * PARTS_IN_FLIGHT) as u64;
                    match self.bounded_sending(what, last, w.finish()).await? {
                        Ok(_) => return Ok(()),
                        Err(e) => return Err(self.error(what, e)),
                    }
                } else {
                    self.refused_size(what, sent)
                };
            }
            sent += n as u64;
            match self
                .bounded_sending(
                    what,
                    (PART_SIZE * PARTS_IN_FLIGHT) as u64,
                    w.wait_for_capacity(PARTS_IN_FLIGHT),
                )
                .await
            {
                Ok(Ok(())) => w.write(&buf),
                Ok(Err(e)) => break self.error(what, e),
                Err(e) => break e,
            }
        };
        let _ = tokio::time::timeout(self.timeout, w.abort()).await;
        Err(failed)
    }

    fn refused_size(&self, what: &str, n: u64) -> BackingError {
        BackingError::Refused {
            address: self.address.clone(),
            what: what.to_owned(),
            reason: format!("{n} bytes to upload"),
        }
    }

    async fn exists(&self, d: Digest) -> Result<bool, BackingError> {
        let what = format!("HEAD of blob {d}");
        match self
            .bounded(&what, self.store.head(&self.key("cas", d)))
            .await?
        {
            Ok(meta) if meta.size == d.size => Ok(true),
            Ok(meta) => {
                // A wrong object (or a page answering every URL) is not the
                // blob; reporting it missing makes the client upload again.
                tracing::warn!(backing = %self.address, backing_op = "find_missing", digest = %d, size = meta.size,
                    "backing store holds an object of the wrong size for a blob");
                Ok(false)
            }
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(&what, e)),
        }
    }
}

/// Standard base64 with padding (RFC 4648), for a basic-auth header.
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn file_payload(
    address: &str,
    d: Digest,
    path: &std::path::Path,
) -> Result<PutPayload, BackingError> {
    let io = |source| BackingError::Io {
        address: address.to_owned(),
        digest: d,
        path: path.to_owned(),
        source,
    };
    let mut f = tokio::fs::File::open(path).await.map_err(io)?;
    let mut payload = object_store::PutPayloadMut::new();
    loop {
        let mut buf = Vec::with_capacity(READ_CHUNK);
        let n = (&mut f)
            .take(READ_CHUNK as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(io)?;
        if n == 0 {
            break;
        }
        payload.extend_from_slice(&buf);
    }
    Ok(payload.freeze())
}

#[tonic::async_trait]
impl Backing for ObjectBacking {
    fn address(&self) -> &str {
        &self.address
    }

    async fn find_missing(
        &self,
        _f: DigestFunction,
        ds: &[Digest],
    ) -> Result<Vec<Digest>, BackingError> {
        let answers: Vec<(Digest, bool)> = futures::stream::iter(ds.iter().copied())
            .map(|d| async move { self.exists(d).await.map(|e| (d, e)) })
            .buffered(HEAD_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(answers
            .into_iter()
            .filter(|(_, present)| !present)
            .map(|(d, _)| d)
            .collect())
    }

    async fn read(&self, d: Digest) -> Result<BlobChunks, BackingError> {
        let what = format!("reading blob {d}");
        let got = match self
            .bounded(&what, self.store.get(&self.key("cas", d)))
            .await?
        {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BackingError::NotFound {
                    address: self.address.clone(),
                    digest: d,
                })
            }
            Err(e) => return Err(self.error(&what, e)),
        };
        let address = self.address.clone();
        let stream = got.into_stream().map(move |r| {
            r.map(|b| b.to_vec())
                .map_err(|e| BackingError::Unavailable {
                    address: address.clone(),
                    reason: format!("reading blob {d}: {e}"),
                })
        });
        Ok(BlobChunks::new(d, &self.address, self.timeout, stream))
    }

    async fn write(&self, d: Digest, body: Body) -> Result<(), BackingError> {
        let what = format!("writing blob {d}");
        match body {
            Body::File(p) if self.multipart && d.size > MULTIPART_OVER => {
                self.put_multipart(&what, d, &p).await?
            }
            body => {
                let payload = match body {
                    Body::Bytes(b) => PutPayload::from(b),
                    // Whole in memory: WebDAV has no multipart upload.
                    Body::File(p) => file_payload(&self.address, d, &p).await?,
                };
                if payload.content_length() as u64 != d.size {
                    return Err(self.refused_size(&what, payload.content_length() as u64));
                }
                self.put(&what, self.key("cas", d), payload).await?;
            }
        }
        // A 200 is not proof: a proxy or a login page answers PUT with 200
        // and stores nothing. The blob counts as acknowledged only once the
        // store shows an object of its size under its key.
        if self.exists(d).await? {
            Ok(())
        } else {
            Err(BackingError::Refused {
                address: self.address.clone(),
                what,
                reason: "the store answered the PUT but does not hold the blob afterwards \
                         (an HTML page or a proxy instead of the store?)"
                    .to_owned(),
            })
        }
    }

    async fn get_action_result(
        &self,
        action: Digest,
    ) -> Result<Option<ActionResult>, BackingError> {
        let what = format!("reading the action result of {action}");
        let key = self.key("ac", action);
        let bytes = match self
            .bounded(&what, async { self.store.get(&key).await?.bytes().await })
            .await?
        {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error(&what, e)),
        };
        ActionResult::decode(bytes.as_ref())
            .map(Some)
            .map_err(|e| BackingError::Refused {
                address: self.address.clone(),
                what,
                reason: format!(
                    "the object is not an ActionResult ({} bytes): {e}",
                    bytes.len()
                ),
            })
    }

    async fn update_action_result(
        &self,
        action: Digest,
        result: ActionResult,
    ) -> Result<(), BackingError> {
        self.put(
            &format!("writing the action result of {action}"),
            self.key("ac", action),
            PutPayload::from(result.encode_to_vec()),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_is_rfc_4648() {
        for (plain, coded) in [
            (&b""[..], ""),
            (b"a", "YQ=="),
            (b"ab", "YWI="),
            (b"abc", "YWJj"),
            (b"rbe:right", "cmJlOnJpZ2h0"),
            (&[0xfb, 0xff], "+/8="),
        ] {
            assert_eq!(super::base64(plain), coded);
        }
    }
}
