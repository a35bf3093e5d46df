//! What the test files that build actions and run them on a `Stack` share:
//! blobs, Directory and Action messages, uploading them, Execute, and
//! casd's Stats.
// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use rbe_proto::casd::{casd_client::CasdClient, StatsRequest, StatsResponse};
use rbe_proto::longrunning::{
    operation, operations_client::OperationsClient, CancelOperationRequest,
};
use rbe_proto::reapi::{
    command::EnvironmentVariable, execution_client::ExecutionClient, Action, Command, Directory,
    DirectoryNode, ExecuteRequest, ExecuteResponse, FileNode,
};
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::client;
use tonic::transport::Channel;
use tonic::Code;

pub const F: DigestFunction = DigestFunction::Sha256;

pub type Blobs = Vec<(Digest, Vec<u8>)>;

/// Adds `data` to `blobs` (once) and returns its digest.
pub fn blob(blobs: &mut Blobs, data: Vec<u8>) -> Digest {
    let d = Digest::of(F, &data);
    if !blobs.iter().any(|(x, _)| *x == d) {
        blobs.push((d, data));
    }
    d
}

/// A Directory message of `files` (name, digest, executable) and `dirs`
/// (name, digest), sorted as the REAPI requires; returns its digest.
pub fn directory(
    blobs: &mut Blobs,
    files: &[(String, Digest, bool)],
    dirs: &[(String, Digest)],
) -> Digest {
    let mut d = Directory {
        files: files
            .iter()
            .map(|(name, digest, x)| FileNode {
                name: name.clone(),
                digest: Some(digest.to_reapi()),
                is_executable: *x,
                node_properties: None,
            })
            .collect(),
        directories: dirs
            .iter()
            .map(|(name, digest)| DirectoryNode {
                name: name.clone(),
                digest: Some(digest.to_reapi()),
            })
            .collect(),
        ..Default::default()
    };
    d.files.sort_by(|a, b| a.name.cmp(&b.name));
    d.directories.sort_by(|a, b| a.name.cmp(&b.name));
    blob(blobs, d.encode_to_vec())
}

/// An action running `script` in `/bin/sh` on the input root `root`,
/// declaring `outputs`, with a timeout when one is given, unique by
/// `salt`; its blobs go into `blobs`.
pub fn action(
    blobs: &mut Blobs,
    script: &str,
    root: Digest,
    outputs: &[&str],
    timeout_secs: Option<i64>,
    salt: &str,
) -> Digest {
    let command = Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
        environment_variables: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        output_paths: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let command = blob(blobs, command.encode_to_vec());
    let action = Action {
        command_digest: Some(command.to_reapi()),
        input_root_digest: Some(root.to_reapi()),
        timeout: timeout_secs.map(|seconds| rbe_proto::wkt::Duration { seconds, nanos: 0 }),
        salt: salt.as_bytes().to_vec(),
        ..Default::default()
    };
    blob(blobs, action.encode_to_vec())
}

/// Uploads blobs: small ones in batches under 2 MiB, large ones by
/// ByteStream. Every one must be accepted.
pub async fn upload(ch: &Channel, blobs: &[(Digest, Vec<u8>)]) {
    let mut batch: Blobs = Vec::new();
    let mut bytes = 0usize;
    for (d, data) in blobs {
        if data.len() > 1 << 20 {
            client::write(ch, "", d, data, 1 << 20)
                .await
                .expect("ByteStream Write");
            continue;
        }
        if bytes + data.len() > 2 << 20 {
            flush(ch, &mut batch).await;
            bytes = 0;
        }
        bytes += data.len();
        batch.push((*d, data.clone()));
    }
    flush(ch, &mut batch).await;
}

async fn flush(ch: &Channel, batch: &mut Blobs) {
    if batch.is_empty() {
        return;
    }
    let codes = client::batch_update(ch, "", batch)
        .await
        .expect("BatchUpdateBlobs");
    assert!(codes.iter().all(|&c| c == 0), "refused: {codes:?}");
    batch.clear();
}

/// Starts an Execute of `action` (cache lookup skipped); the RPC itself
/// must succeed.
pub async fn start_execute(
    ch: &Channel,
    action: Digest,
) -> tonic::Streaming<rbe_proto::longrunning::Operation> {
    ExecutionClient::new(ch.clone())
        .max_decoding_message_size(64 << 20)
        .execute(ExecuteRequest {
            action_digest: Some(action.to_reapi()),
            skip_cache_lookup: true,
            digest_function: F.to_reapi(),
            ..Default::default()
        })
        .await
        .expect("Execute")
        .into_inner()
}

/// The final ExecuteResponse on an Execute stream.
pub async fn finish(
    mut stream: tonic::Streaming<rbe_proto::longrunning::Operation>,
) -> ExecuteResponse {
    let fut = async {
        while let Some(op) = stream.message().await.expect("operation stream") {
            match op.result {
                Some(operation::Result::Response(any)) => {
                    return ExecuteResponse::decode(any.value.as_slice()).expect("ExecuteResponse")
                }
                Some(operation::Result::Error(st)) => panic!("operation error: {st:?}"),
                None => {}
            }
        }
        panic!("the operation stream ended without a result");
    };
    tokio::time::timeout(Duration::from_secs(300), fut)
        .await
        .expect("Execute finished in time")
}

/// Executes an action (cache lookup skipped) and returns the final
/// ExecuteResponse.
pub async fn execute(ch: &Channel, action: Digest) -> ExecuteResponse {
    finish(start_execute(ch, action).await).await
}

/// Polls casd's Stats behind `casd` until `ok(stats)`, for state that
/// settles after a report (a cancelled action's release); a generous bound
/// so nothing hangs.
pub async fn wait_stats(
    casd: &Channel,
    what: &str,
    ok: impl Fn(&StatsResponse) -> bool,
) -> StatsResponse {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let s = casd_stats(casd).await;
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < until, "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `action` through `ch` and, once casd (behind `casd`) holds its
/// `pinned` inputs pinned (it runs), cancels it and waits until nothing is
/// pinned. Returns the Execute stream, for the caller to hold to its end.
pub async fn cancel_once_pinned(
    ch: &Channel,
    casd: &Channel,
    action: Digest,
    pinned: u64,
) -> tonic::Streaming<rbe_proto::longrunning::Operation> {
    let mut stream = start_execute(ch, action).await;
    let name = stream
        .message()
        .await
        .expect("operation stream")
        .expect("a first Operation")
        .name;
    wait_stats(casd, "inputs pinned while the action runs", |s| {
        s.pinned_blobs == pinned
    })
    .await;
    OperationsClient::new(ch.clone())
        .cancel_operation(CancelOperationRequest { name })
        .await
        .expect("CancelOperation");
    wait_stats(casd, "nothing pinned after the cancel", |s| {
        s.pinned_blobs == 0
    })
    .await;
    stream
}

/// Path of a blob's file in a store rooted at `cas_dir`.
pub fn store_path(cas_dir: &Path, d: &Digest) -> PathBuf {
    let hex = d.hex();
    cas_dir
        .join("cas.v1")
        .join("sha256")
        .join(&hex[..2])
        .join(hex)
}

pub fn code_of(r: &ExecuteResponse) -> Code {
    Code::from_i32(r.status.as_ref().map_or(0, |s| s.code))
}

pub async fn casd_stats(ch: &Channel) -> StatsResponse {
    CasdClient::new(ch.clone())
        .stats(StatsRequest {})
        .await
        .expect("Stats")
        .into_inner()
}
