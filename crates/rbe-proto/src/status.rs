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

/// The blobs a status's `MISSING` violations name, as `<hash>/<size>`
/// (the inverse of [`missing_blobs_rpc`]); subjects of another form are
/// left out.
pub fn missing_of(st: &rpc::Status) -> Vec<String> {
    st.details
        .iter()
        .filter(|a| a.type_url.ends_with("google.rpc.PreconditionFailure"))
        .filter_map(|a| rpc::PreconditionFailure::decode(a.value.as_slice()).ok())
        .flat_map(|pf| pf.violations)
        .filter(|v| v.r#type == "MISSING")
        .filter_map(|v| v.subject.strip_prefix("blobs/").map(str::to_owned))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DigestFunction;

    #[test]
    fn missing_of_reads_back_the_blobs_missing_blobs_names() {
        let ds = [
            Digest::of(DigestFunction::Sha256, b"a"),
            Digest::of(DigestFunction::Sha256, b"bc"),
        ];
        let st = missing_blobs_rpc("input", &ds);
        let want: Vec<String> = ds
            .iter()
            .map(|d| format!("{}/{}", d.hex(), d.size))
            .collect();
        assert_eq!(missing_of(&st), want);
        assert!(missing_of(&rpc::Status::default()).is_empty());
    }
}
