//! A worker's `Finished` report, and the ExecuteResponse it becomes.
//!
//! The worker says how an assignment ended with a typed
//! [`Outcome`](rbe_proto::worker::Outcome); [`code`] is the one place that
//! becomes a google.rpc code. An outcome this frontend does not know (or
//! none) is INTERNAL: a worker of another version is a fault, never a
//! panic.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message;
use rbe_proto::reapi::{self, ActionResult, ExecuteResponse};
use rbe_proto::worker::{Finished, Outcome};
use tonic::Code;

use super::rpc_status;

/// The google.rpc code of `ExecuteResponse.status` for a worker's outcome.
pub fn code(outcome: i32) -> Code {
    match Outcome::try_from(outcome) {
        Ok(Outcome::Ran) => Code::Ok,
        Ok(Outcome::TimedOut) => Code::DeadlineExceeded,
        Ok(Outcome::InputsMissing) => Code::FailedPrecondition,
        Ok(Outcome::InvalidAction) => Code::InvalidArgument,
        Ok(Outcome::NoSpace) => Code::ResourceExhausted,
        Ok(Outcome::Unavailable) => Code::Unavailable,
        Ok(Outcome::Cancelled) => Code::Cancelled,
        Ok(Outcome::WorkerFault | Outcome::Unspecified) | Err(_) => Code::Internal,
    }
}

/// A `Finished` report with its ActionResult decoded (outside the owner's
/// lock: the result may be large).
pub struct Report {
    /// The report, its `action_result` taken out.
    pub finished: Finished,
    /// The decoded ActionResult, if the worker sent one that decodes.
    pub result: Option<ActionResult>,
}

impl Report {
    /// Decodes `f`'s ActionResult.
    pub fn new(mut f: Finished) -> Report {
        let bytes = std::mem::take(&mut f.action_result);
        let result = if bytes.is_empty() {
            None
        } else {
            ActionResult::decode(bytes.as_slice()).ok()
        };
        Report {
            finished: f,
            result,
        }
    }

    /// Names `node` as the host of the worker that ran it
    /// (`{node}/{worker}` in `ExecutedActionMetadata.worker`), unless it
    /// already does.
    pub fn name_host(&mut self, node: &str) {
        let md = self
            .result
            .as_mut()
            .and_then(|r| r.execution_metadata.as_mut());
        if let Some(md) = md {
            let prefix = format!("{node}/");
            if !md.worker.starts_with(&prefix) {
                md.worker = format!("{prefix}{}", md.worker);
            }
        }
    }

    /// The operation it is about.
    pub fn id(&self) -> u64 {
        self.finished.id
    }

    /// The action ran (whatever its exit code).
    pub fn ran(&self) -> bool {
        self.code() == Code::Ok
    }

    /// Its google.rpc code.
    pub fn code(&self) -> Code {
        code(self.finished.outcome)
    }

    /// The result to put in the action cache: the action ran and exited 0.
    pub fn cacheable(&self) -> Option<&ActionResult> {
        self.result
            .as_ref()
            .filter(|r| self.ran() && r.exit_code == 0)
    }

    /// The ExecuteResponse for the clients; `function` is the action's
    /// digest function (REAPI enum value), for the missing inputs.
    pub fn response(self, function: i32) -> ExecuteResponse {
        let code = self.code();
        let ran = code == Code::Ok;
        let f = self.finished;
        let missing = if code == Code::FailedPrecondition {
            missing_inputs(function, &f.missing)
        } else {
            vec![]
        };
        let status = if !missing.is_empty() {
            // Bazel re-uploads what the violations name and retries.
            rbe_proto::status::missing_blobs_rpc("input", &missing)
        } else if ran {
            rpc_status(code, "")
        } else if Outcome::try_from(f.outcome).is_err() || f.outcome == 0 {
            rpc_status(
                code,
                format!(
                    "the worker reported an unknown outcome {}: {}",
                    f.outcome, f.message
                ),
            )
        } else {
            rpc_status(code, f.message.clone())
        };
        // An action that ran may still carry the worker's note about it
        // (OOM kill, task limit): that goes to ExecuteResponse.message.
        let message = if ran && !f.message.is_empty() {
            f.message
        } else if f.oom_killed {
            "the action was killed: out of memory".to_string()
        } else {
            String::new()
        };
        ExecuteResponse {
            result: self.result,
            cached_result: false,
            status: Some(status),
            server_logs: HashMap::new(),
            message,
        }
    }
}

/// The input blobs a worker reported missing (`<hash>/<size>`); entries
/// that do not parse are logged.
fn missing_inputs(function: i32, missing: &[String]) -> Vec<rbe_proto::Digest> {
    let Ok(function) = rbe_proto::DigestFunction::from_reapi(function) else {
        return vec![];
    };
    missing
        .iter()
        .filter_map(|m| {
            let parsed = m.split_once('/').and_then(|(hash, size)| {
                let size = size.parse().ok()?;
                rbe_proto::Digest::parse(function, hash, size).ok()
            });
            if parsed.is_none() {
                tracing::warn!(digest = %m, "worker reported a malformed missing digest");
            }
            parsed
        })
        .collect()
}

fn ms(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| d.as_millis() as u64)
}

fn between(
    a: Option<&rbe_proto::wkt::Timestamp>,
    b: Option<&rbe_proto::wkt::Timestamp>,
) -> Option<Duration> {
    let us = |t: &rbe_proto::wkt::Timestamp| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000;
    let d = us(b?) - us(a?);
    u64::try_from(d).ok().map(Duration::from_micros)
}

/// Who ran an action and what it was, for [`log_completed`].
pub struct Ran<'a> {
    /// The worker (or lease) id and its name.
    pub worker: (u64, &'a str),
    /// The submitting handle's operation name.
    pub operation: &'a str,
    /// The action.
    pub digest: &'a reapi::Digest,
    /// Bazel's invocation id.
    pub invocation: &'a str,
    /// The client's RequestMetadata, as the assignment carries it.
    pub metadata: &'a reapi::RequestMetadata,
}

/// The client's RequestMetadata an assignment carries (empty if none or
/// malformed: it is only for log lines).
pub fn request_metadata(a: &rbe_proto::worker::Assignment) -> reapi::RequestMetadata {
    reapi::RequestMetadata::decode(a.request_metadata.as_slice()).unwrap_or_default()
}

/// The one INFO line per executed action an operator reads; field names as
/// in rbe-workerd's "action finished" line.
pub fn log_completed(r: &Ran<'_>, report: &Report) {
    let result = report.result.as_ref();
    let md = result.and_then(|r| r.execution_metadata.as_ref());
    let span =
        |a: fn(&reapi::ExecutedActionMetadata) -> Option<&rbe_proto::wkt::Timestamp>,
         b: fn(&reapi::ExecutedActionMetadata) -> Option<&rbe_proto::wkt::Timestamp>| {
            md.and_then(|m| between(a(m), b(m)))
        };
    let outcome = Outcome::try_from(report.finished.outcome).map_or("unknown", |o| o.as_str_name());
    tracing::info!(
        operation = %r.operation,
        action_digest = %format_args!("{}/{}", r.digest.hash, r.digest.size_bytes),
        invocation_id = %r.invocation,
        correlated_invocations_id = %r.metadata.correlated_invocations_id,
        tool_name = %r.metadata.tool_details.as_ref().map_or("", |t| t.tool_name.as_str()),
        action_mnemonic = %r.metadata.action_mnemonic,
        target_id = %r.metadata.target_id,
        configuration_id = %r.metadata.configuration_id,
        worker = r.worker.0,
        worker_name = r.worker.1,
        code = report.code() as i32,
        outcome = outcome,
        exit_code = result.map_or(-1, |r| r.exit_code),
        queued_ms = ms(span(|m| m.queued_timestamp.as_ref(), |m| m.worker_start_timestamp.as_ref())),
        execution_ms = ms(span(|m| m.execution_start_timestamp.as_ref(), |m| m.execution_completed_timestamp.as_ref())),
        worker_ms = ms(span(|m| m.worker_start_timestamp.as_ref(), |m| m.worker_completed_timestamp.as_ref())),
        "action completed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(outcome: i32, message: &str) -> Finished {
        Finished {
            id: 1,
            outcome,
            message: message.into(),
            ..Default::default()
        }
    }

    #[test]
    fn unknown_or_unspecified_outcomes_are_internal() {
        for outcome in [0, 9, 1000, -1] {
            let r = Report::new(finished(outcome, "what"));
            assert_eq!(r.code(), Code::Internal);
            assert!(r.cacheable().is_none());
            let resp = r.response(1);
            let st = resp.status.expect("status");
            assert_eq!(st.code, Code::Internal as i32);
            assert!(st.message.contains("unknown outcome"), "{st:?}");
        }
    }

    #[test]
    fn every_outcome_has_its_code() {
        let cases = [
            (Outcome::Ran, Code::Ok),
            (Outcome::TimedOut, Code::DeadlineExceeded),
            (Outcome::InputsMissing, Code::FailedPrecondition),
            (Outcome::InvalidAction, Code::InvalidArgument),
            (Outcome::WorkerFault, Code::Internal),
            (Outcome::NoSpace, Code::ResourceExhausted),
            (Outcome::Unavailable, Code::Unavailable),
            (Outcome::Cancelled, Code::Cancelled),
        ];
        for (o, c) in cases {
            assert_eq!(code(o as i32), c, "{o:?}");
        }
    }

    #[test]
    fn a_run_keeps_its_note_and_only_a_clean_run_is_cacheable() {
        // Never empty: an empty action_result is no result.
        let ar = |exit_code| ActionResult {
            exit_code,
            stdout_raw: b"out".to_vec(),
            ..Default::default()
        };
        let mut f = finished(Outcome::Ran as i32, "reached its task limit");
        f.action_result = ar(0).encode_to_vec();
        let r = Report::new(f);
        assert!(r.cacheable().is_some());
        let resp = r.response(1);
        assert_eq!(
            resp.status.map(|s| (s.code, s.message)),
            Some((0, String::new()))
        );
        assert_eq!(resp.message, "reached its task limit");

        let mut f = finished(Outcome::Ran as i32, "");
        f.action_result = ar(1).encode_to_vec();
        assert!(Report::new(f).cacheable().is_none(), "exit 1");

        let mut f = finished(Outcome::TimedOut as i32, "timed out");
        f.action_result = ar(0).encode_to_vec();
        let r = Report::new(f);
        assert!(r.cacheable().is_none(), "a partial result at timeout");
        assert!(r.response(1).result.is_some(), "is still shown");
    }

    #[test]
    fn missing_inputs_become_violations_and_bad_ones_are_skipped() {
        let mut f = finished(Outcome::InputsMissing as i32, "2 missing");
        f.missing = vec![format!("{}/3", "ab".repeat(32)), "nonsense".into()];
        let st = Report::new(f).response(1).status.expect("status");
        assert_eq!(st.code, Code::FailedPrecondition as i32);
        assert!(!st.details.is_empty(), "a MISSING violation: {st:?}");
        // None parse: the worker's message, no violations.
        let mut f = finished(Outcome::InputsMissing as i32, "casd said not found");
        f.missing = vec!["x/y".into()];
        let st = Report::new(f).response(1).status.expect("status");
        assert_eq!(
            (st.code, st.message.as_str()),
            (Code::FailedPrecondition as i32, "casd said not found")
        );
    }

    #[test]
    fn an_oom_kill_is_told_when_the_action_did_not_run() {
        let mut f = finished(Outcome::WorkerFault as i32, "boom");
        f.oom_killed = true;
        let resp = Report::new(f).response(1);
        assert_eq!(resp.message, "the action was killed: out of memory");
        assert_eq!(resp.status.map(|s| s.message), Some("boom".to_string()));
    }
}
