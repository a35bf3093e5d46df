//! The crate's one error type. The service edge maps it to gRPC codes once.

use rbe_proto::Digest;

/// Errors from the store and the action cache.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// The blob is not in the store.
    #[error("blob {0} not found")]
    NotFound(Digest),
    /// Bytes received do not hash to the digest they claim.
    #[error("data does not match digest {expected}: got {actual_hash} with {actual_size} bytes")]
    DigestMismatch {
        /// The digest the client named.
        expected: Digest,
        /// Hash of what was received.
        actual_hash: String,
        /// Bytes received.
        actual_size: u64,
    },
    /// More bytes arrived than the digest's size.
    #[error("upload of {digest} exceeds its size: {received} bytes received")]
    TooLarge {
        /// The digest.
        digest: Digest,
        /// Bytes received so far.
        received: u64,
    },
    /// A file in the store no longer matches its name; it was removed.
    #[error("blob {0} was corrupt on disk and has been removed")]
    Corrupt(Digest),
    /// The disk is full or the blob cannot fit in the configured size.
    #[error("no space for {digest}: {reason}")]
    NoSpace {
        /// The blob that did not fit.
        digest: Digest,
        /// Why.
        reason: String,
    },
    /// Any other I/O failure, with what was being done.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path involved.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A stored action result could not be decoded.
    #[error("action result for {0} is unreadable and has been removed")]
    BadActionResult(Digest),
    /// A message the caller named is malformed: a digest that does not
    /// parse, or a blob that does not decode as the message it should be.
    #[error("{0}")]
    Invalid(String),
    /// The work a request asks for is beyond a walk's bounds.
    #[error("{0}")]
    OverLimit(String),
}

impl CasError {
    /// Wraps an I/O error, mapping a full disk to [`CasError::NoSpace`].
    pub fn io(
        op: &'static str,
        path: &std::path::Path,
        source: std::io::Error,
        digest: Option<&Digest>,
    ) -> Self {
        if let (Some(28), Some(d)) = (source.raw_os_error(), digest) {
            // ENOSPC
            return CasError::NoSpace {
                digest: *d,
                reason: format!("{op} {}: disk full", path.display()),
            };
        }
        CasError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}
