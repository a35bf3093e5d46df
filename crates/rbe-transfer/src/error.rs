//! The crate's one error type, and its gRPC status, decided here once.

use rbe_proto::Digest;
use tonic::{Code, Status};

/// Why a copy failed. Errors about the source name its address and, where
/// one is concerned, the digest.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The source does not have blobs the tree or result names: all it
    /// was found lacking in one round, so a client told of them re-uploads
    /// them at once.
    #[error("{} not found at {address}", list(digests))]
    NotFound {
        /// The source's address.
        address: String,
        /// The blobs (at least one).
        digests: Vec<Digest>,
    },
    /// The source sent bytes that do not hash to the digest asked for;
    /// they were refused and nothing was stored.
    #[error("{address} sent {actual_size} bytes hashing to {actual_hash} for {digest}; refused, nothing stored")]
    DigestMismatch {
        /// The source's address.
        address: String,
        /// The digest asked for.
        digest: Digest,
        /// Hash of what arrived.
        actual_hash: String,
        /// Bytes that arrived.
        actual_size: u64,
    },
    /// The source's stream of a blob ended before all its bytes arrived.
    #[error("{address} ended the stream of {digest} after {received} of {} bytes", digest.size)]
    Truncated {
        /// The source's address.
        address: String,
        /// The blob.
        digest: Digest,
        /// Bytes received.
        received: u64,
    },
    /// The source cannot be reached, or stopped answering in time.
    #[error("{address} is unavailable{}: {message}", digest.map(|d| format!(" (reading {d})")).unwrap_or_default())]
    Unavailable {
        /// The source's address.
        address: String,
        /// The blob being read, if one was.
        digest: Option<Digest>,
        /// What happened.
        message: String,
    },
    /// The source refused a request as malformed, or answered with
    /// something malformed.
    #[error("invalid argument at {address}{}: {message}", digest.map(|d| format!(" for {d}")).unwrap_or_default())]
    InvalidArgument {
        /// The source's address.
        address: String,
        /// The blob concerned, if one is.
        digest: Option<Digest>,
        /// What is wrong.
        message: String,
    },
    /// Any other refusal by the source (permission, quota, internal).
    #[error("{address} refused{}: {status}", digest.map(|d| format!(" {d}")).unwrap_or_default())]
    Source {
        /// The source's address.
        address: String,
        /// The blob concerned, if one is.
        digest: Option<Digest>,
        /// The source's answer.
        status: Status,
    },
    /// The local casd refused or failed (full disk, malformed tree, down).
    #[error("local casd{}: {status}", digest.map(|d| format!(" ({d})")).unwrap_or_default())]
    Local {
        /// The blob concerned, if one is.
        digest: Option<Digest>,
        /// casd's answer.
        status: Status,
    },
    /// The local casd kept losing a blob right after it was written
    /// (a store too small for the tree evicts it again).
    #[error("local casd lost {digest} again after it was copied {times} times; is its store too small for this tree?")]
    Lost {
        /// The blob.
        digest: Digest,
        /// How often it was copied.
        times: u32,
    },
}

/// "blob X" or "3 blobs (X, Y, Z)", at most 3 named: a message stays short.
fn list(ds: &[Digest]) -> String {
    match ds {
        [d] => format!("blob {d}"),
        _ => {
            let named: Vec<String> = ds.iter().take(3).map(ToString::to_string).collect();
            let more = if ds.len() > 3 { ", ..." } else { "" };
            format!("{} blobs ({}{more})", ds.len(), named.join(", "))
        }
    }
}

impl TransferError {
    /// Classifies a status the source answered with.
    pub(crate) fn from_source(address: &str, digest: Option<Digest>, status: Status) -> Self {
        let address = address.to_string();
        match (status.code(), digest) {
            (Code::NotFound, Some(digest)) => TransferError::NotFound {
                address,
                digests: vec![digest],
            },
            (Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled, _) => {
                TransferError::Unavailable {
                    address,
                    digest,
                    message: status.message().to_string(),
                }
            }
            (Code::InvalidArgument, _) => TransferError::InvalidArgument {
                address,
                digest,
                message: status.message().to_string(),
            },
            _ => TransferError::Source {
                address,
                digest,
                status,
            },
        }
    }

    /// Wraps a status from the local casd.
    pub(crate) fn local(digest: Option<Digest>, status: Status) -> Self {
        TransferError::Local { digest, status }
    }
}

/// The status a caller serving a client (the frontend) passes on: a blob
/// the source lacks is FAILED_PRECONDITION with a MISSING violation, the
/// form Bazel answers by uploading it again; bad or cut bytes from the
/// source and an unreachable source are UNAVAILABLE (a retry may reach
/// another host); a malformed tree is INVALID_ARGUMENT.
impl From<TransferError> for Status {
    fn from(e: TransferError) -> Status {
        let msg = e.to_string();
        match e {
            TransferError::NotFound { digests, .. } => {
                let st = rbe_proto::status::missing_blobs("blob", &digests);
                Status::with_details(st.code(), msg, st.details().to_vec().into())
            }
            TransferError::DigestMismatch { .. }
            | TransferError::Truncated { .. }
            | TransferError::Unavailable { .. } => Status::unavailable(msg),
            TransferError::InvalidArgument { .. } => Status::invalid_argument(msg),
            TransferError::Source { status, .. } => Status::new(status.code(), msg),
            TransferError::Local { status, .. } => Status::new(status.code(), msg),
            TransferError::Lost { .. } => Status::resource_exhausted(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbe_proto::DigestFunction;

    #[test]
    fn statuses_name_the_source_and_the_blob() {
        let d = Digest::of(DigestFunction::Sha256, b"x");
        let addr = "peer-b:8981".to_string();
        let cases: Vec<(TransferError, Code)> = vec![
            (
                TransferError::NotFound {
                    address: addr.clone(),
                    digests: vec![d],
                },
                Code::FailedPrecondition,
            ),
            (
                TransferError::DigestMismatch {
                    address: addr.clone(),
                    digest: d,
                    actual_hash: "00".into(),
                    actual_size: 1,
                },
                Code::Unavailable,
            ),
            (
                TransferError::Truncated {
                    address: addr.clone(),
                    digest: d,
                    received: 0,
                },
                Code::Unavailable,
            ),
            (
                TransferError::from_source(&addr, Some(d), Status::deadline_exceeded("slow")),
                Code::Unavailable,
            ),
            (
                TransferError::from_source(&addr, Some(d), Status::invalid_argument("bad")),
                Code::InvalidArgument,
            ),
            (
                TransferError::from_source(&addr, Some(d), Status::permission_denied("no")),
                Code::PermissionDenied,
            ),
        ];
        for (e, code) in cases {
            let s = Status::from(e);
            assert_eq!(s.code(), code, "{s:?}");
            assert!(s.message().contains(&addr), "{s:?}");
            assert!(s.message().contains(&d.hex()), "{s:?}");
        }
        let s = Status::from(TransferError::from_source(
            &addr,
            Some(d),
            Status::not_found("gone"),
        ));
        let pf = rbe_proto::status::precondition_failure(&s).expect("a MISSING violation");
        assert_eq!(pf.violations[0].subject, format!("blobs/{}/1", d.hex()));
    }
}
