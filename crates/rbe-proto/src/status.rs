//! Builders for gRPC statuses with `google.rpc` details, so every daemon
//! reports missing blobs and retry hints the same way.

use prost::Message;
use tonic::{Code, Status};

use crate::rpc;
use crate::wkt::Any;
use crate::Digest;

fn any<M: Message>(type_name: &str, m: &M) -> Any {
    Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: m.encode_to_vec(),
    }
}

fn with_details(code: Code, message: String, details: Vec<Any>) -> Status {
    let st = rpc::Status {
        code: code as i32,
        message: message.clone(),
        details,
    };
    Status::with_details(code, message, st.encode_to_vec().into())
}

/// `FAILED_PRECONDITION` with one `MISSING` violation per blob, in the form
/// Bazel parses to re-upload (`blobs/<hash>/<size>`).
pub fn missing_blobs(what: &str, digests: &[Digest]) -> Status {
    let st = missing_blobs_rpc(what, digests);
    Status::with_details(
        Code::FailedPrecondition,
        st.message.clone(),
        st.encode_to_vec().into(),
    )
}

/// [`missing_blobs`] as a `google.rpc.Status` message, for replies that
/// carry their status inside (`ExecuteResponse.status`).
pub fn missing_blobs_rpc(what: &str, digests: &[Digest]) -> rpc::Status {
    let violations = digests
        .iter()
        .map(|d| rpc::precondition_failure::Violation {
            r#type: "MISSING".into(),
            subject: format!("blobs/{}/{}", d.hex(), d.size),
            description: format!("{what} {d} is not in the CAS"),
        })
        .collect();
    let pf = rpc::PreconditionFailure { violations };
    rpc::Status {
        code: Code::FailedPrecondition as i32,
        message: format!("{} blob(s) missing from the CAS ({what})", digests.len()),
        details: vec![any("google.rpc.PreconditionFailure", &pf)],
    }
}

/// `RESOURCE_EXHAUSTED` with a `RetryInfo` hint.
pub fn exhausted_retry(message: String, retry_after: std::time::Duration) -> Status {
    let ri = rpc::RetryInfo {
        retry_delay: Some(prost_types::Duration {
            seconds: retry_after.as_secs() as i64,
            nanos: retry_after.subsec_nanos() as i32,
        }),
    };
    with_details(
        Code::ResourceExhausted,
        message,
        vec![any("google.rpc.RetryInfo", &ri)],
    )
}

/// UNIMPLEMENTED for the REAPI blob split/splice (chunking) RPCs, which rbe
/// does not advertise in Capabilities, so conforming clients never call them.
pub fn chunking_not_offered(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc}: blob splitting and splicing are not offered by rbe"
    ))
}

/// Decodes the `google.rpc.Status` details of a status (for tests and clients).
pub fn decode_details(status: &Status) -> Option<rpc::Status> {
    rpc::Status::decode(status.details()).ok()
}

/// Decodes a `PreconditionFailure` from a status, if it carries one.
pub fn precondition_failure(status: &Status) -> Option<rpc::PreconditionFailure> {
    decode_details(status)?
        .details
        .iter()
        .find(|a| a.type_url.ends_with("google.rpc.PreconditionFailure"))
        .and_then(|a| rpc::PreconditionFailure::decode(a.value.as_slice()).ok())
}
