//! The one error type of the crate; every variant names the backing
//! store's address, so an operator reading a client's error or the journal
//! knows which store failed.

use rbe_proto::Digest;

/// What an error says when the store refused who we are: the operator
/// must fix casd's configuration, not the client its request.
pub(crate) const CREDENTIALS: &str =
    "the store refused casd's credentials (backing.token_file, backing.credentials_file, \
     backing.tls_cert)";

/// A request to the backing store failed.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    /// Not reachable, not answering within the timeout, or failing on its
    /// side: worth a retry later.
    #[error("backing store {address} is unavailable: {reason}")]
    Unavailable {
        /// The store, as configured (`backing.url`).
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// The store does not hold the blob.
    #[error("backing store {address} does not have blob {digest}")]
    NotFound {
        /// The store.
        address: String,
        /// The blob asked for.
        digest: Digest,
    },
    /// The store sent bytes that are not the blob asked for (wrong hash,
    /// too many or too few bytes). Nothing of them may be kept.
    #[error("backing store {address} sent wrong bytes for blob {digest}: {reason}")]
    DigestMismatch {
        /// The store.
        address: String,
        /// The blob asked for.
        digest: Digest,
        /// How the bytes differ.
        reason: String,
    },
    /// The store refused a request for a reason a retry will not change
    /// (permission denied, invalid argument...), or answered nonsense.
    #[error("backing store {address} refused {what}: {reason}")]
    Refused {
        /// The store.
        address: String,
        /// The request, e.g. `"FindMissingBlobs"` or `"writing blob <digest>"`.
        what: String,
        /// Its status or what was wrong with the answer.
        reason: String,
    },
    /// The client for the store could not be set up (TLS files, token).
    #[error("backing store {address}: {reason}")]
    Setup {
        /// The store.
        address: String,
        /// What is wrong.
        reason: String,
    },
    /// A local file to upload could not be read.
    #[error("uploading blob {digest} to backing store {address}: reading {path}: {source}")]
    Io {
        /// The store.
        address: String,
        /// The blob.
        digest: Digest,
        /// The local file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl BackingError {
    /// Classifies a status the store answered `what` with.
    pub(crate) fn from_status(address: &str, what: &str, s: &tonic::Status) -> BackingError {
        use tonic::Code;
        let reason = format!("{what}: {:?}: {}", s.code(), s.message());
        match s.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
            | Code::Aborted
            | Code::ResourceExhausted => BackingError::Unavailable {
                address: address.to_owned(),
                reason,
            },
            Code::Unauthenticated | Code::PermissionDenied => BackingError::Refused {
                address: address.to_owned(),
                what: what.to_owned(),
                reason: format!("{CREDENTIALS} ({:?}: {})", s.code(), s.message()),
            },
            _ => BackingError::Refused {
                address: address.to_owned(),
                what: what.to_owned(),
                reason: format!("{:?}: {}", s.code(), s.message()),
            },
        }
    }

    pub(crate) fn timeout(address: &str, what: &str, secs: u64) -> BackingError {
        BackingError::Unavailable {
            address: address.to_owned(),
            reason: format!("{what}: no answer within {secs} s"),
        }
    }

    /// Whether the store simply lacks the blob.
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackingError::NotFound { .. })
    }
}
