//! What the backing-store tests share: a casd (A) in cache mode in front
//! of a second real casd (B), and small client helpers.
#![allow(dead_code, clippy::unwrap_used)]

pub mod netns;
pub mod proxy;
pub mod stores;

use std::collections::HashSet;
use std::time::Duration;

use rbe_proto::casd::casd_client::CasdClient;
use rbe_proto::casd::{StatsRequest, StatsResponse};
use rbe_proto::reapi::action_cache_client::ActionCacheClient;
use rbe_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use rbe_proto::reapi::{
    batch_update_blobs_request, ActionResult, BatchUpdateBlobsRequest, GetActionResultRequest,
    OutputFile, UpdateActionResultRequest,
};
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::{client, pseudo_random, Casd};
use tonic::transport::Channel;

/// Nothing here may take longer; a hang fails instead of blocking CI.
pub const BOUND: Duration = Duration::from_secs(60);

pub struct Pair {
    pub a: Casd,
    pub b: Casd,
    pub url: String,
    pub dir: tempfile::TempDir,
}

pub async fn pair(b_dropin: &str) -> Pair {
    pair_with(b_dropin, "").await
}

/// A and B; `a_dropin` is added to A's `[backing]` section.
pub async fn pair_with(b_dropin: &str, a_dropin: &str) -> Pair {
    let dir = tempfile::Builder::new()
        .prefix("rbe-backing-")
        .tempdir_in(rbe_testkit::disk_tmp())
        .unwrap();
    let b = Casd::start(&dir.path().join("b"), "2GiB", b_dropin).await;
    let url = format!("unix:{}", b.layout.casd_socket().display());
    let a = Casd::start(
        &dir.path().join("a"),
        "2GiB",
        &format!(
            "[backing]\nmode = \"cache\"\nurl = \"{url}\"\nrequest_timeout_secs = 10\n{a_dropin}"
        ),
    )
    .await;
    until_adopted(&a).await;
    Pair { a, b, url, dir }
}

/// A casd with `dropin`, once it answers for its backing store from local
/// copies.
pub async fn casd_in_front(root: &std::path::Path, max_size: &str, dropin: &str) -> Casd {
    let c = Casd::start(root, max_size, dropin).await;
    until_adopted(&c).await;
    c
}

/// Waits until `c` answers for its backing store from local copies (at
/// once for an empty store, once its index has loaded).
pub async fn until_adopted(c: &Casd) {
    let ch = c.channel().await;
    tokio::time::timeout(BOUND, async {
        while !stats(&ch).await.backing_adopted {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("casd adopts its store");
}

pub fn blob(n: usize, seed: u64) -> (Digest, Vec<u8>) {
    let data = pseudo_random(n, seed);
    (Digest::of(DigestFunction::Sha256, &data), data)
}

pub async fn stats(ch: &Channel) -> StatsResponse {
    CasdClient::new(ch.clone())
        .stats(StatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// BatchUpdateBlobs; per blob its code and message.
pub async fn batch(
    ch: &Channel,
    blobs: &[(Digest, Vec<u8>)],
) -> Result<Vec<(i32, String)>, tonic::Status> {
    let req = BatchUpdateBlobsRequest {
        instance_name: String::new(),
        requests: blobs
            .iter()
            .map(|(d, data)| batch_update_blobs_request::Request {
                digest: Some(d.to_reapi()),
                data: data.clone(),
                compressor: 0,
            })
            .collect(),
        digest_function: DigestFunction::Sha256.to_reapi(),
    };
    let r = ContentAddressableStorageClient::new(ch.clone())
        .max_encoding_message_size(64 << 20)
        .batch_update_blobs(req)
        .await?
        .into_inner();
    Ok(r.responses
        .into_iter()
        .map(|r| {
            let s = r.status.unwrap_or_default();
            (s.code, s.message)
        })
        .collect())
}

pub async fn present(ch: &Channel, ds: &[Digest]) -> HashSet<Digest> {
    let missing: HashSet<Digest> = client::find_missing(ch, "", ds)
        .await
        .unwrap()
        .into_iter()
        .collect();
    ds.iter()
        .filter(|d| !missing.contains(d))
        .copied()
        .collect()
}

/// Every file under `dir` whose name is `name`.
pub fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

/// A result with one output file, `out/a`, of `out`.
pub fn result_with(out: &Digest) -> ActionResult {
    ActionResult {
        output_files: vec![OutputFile {
            path: "out/a".into(),
            digest: Some(out.to_reapi()),
            ..Default::default()
        }],
        exit_code: 0,
        ..Default::default()
    }
}

/// GetActionResult.
pub async fn get_result(ch: &Channel, action: &Digest) -> Result<ActionResult, tonic::Status> {
    get_result_in(ch, "", action).await
}

/// GetActionResult under `instance`.
pub async fn get_result_in(
    ch: &Channel,
    instance: &str,
    action: &Digest,
) -> Result<ActionResult, tonic::Status> {
    ActionCacheClient::new(ch.clone())
        .get_action_result(GetActionResultRequest {
            instance_name: instance.into(),
            action_digest: Some(action.to_reapi()),
            digest_function: DigestFunction::Sha256.to_reapi(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// UpdateActionResult of a result with one output file, `out`.
pub async fn update_result(
    ch: &Channel,
    action: &Digest,
    out: &Digest,
) -> Result<(), tonic::Status> {
    update_result_in(ch, "", action, result_with(out)).await
}

/// UpdateActionResult of `ar` under `instance`.
pub async fn update_result_in(
    ch: &Channel,
    instance: &str,
    action: &Digest,
    ar: ActionResult,
) -> Result<(), tonic::Status> {
    ActionCacheClient::new(ch.clone())
        .update_action_result(UpdateActionResultRequest {
            instance_name: instance.into(),
            action_digest: Some(action.to_reapi()),
            action_result: Some(ar),
            digest_function: DigestFunction::Sha256.to_reapi(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}
