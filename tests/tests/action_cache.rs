//! Action cache: completeness checks, inlining, instance separation.

use prost::Message;
use rbe_proto::reapi::{
    action_cache_client::ActionCacheClient, ActionResult, Directory, FileNode,
    GetActionResultRequest, OutputDirectory, OutputFile, Tree, UpdateActionResultRequest,
};
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::{client, Stack};
use tonic::Code;

fn sha(b: &[u8]) -> Digest {
    Digest::of(DigestFunction::Sha256, b)
}

fn get(instance: &str, action: &Digest) -> GetActionResultRequest {
    GetActionResultRequest {
        instance_name: instance.into(),
        action_digest: Some(action.to_reapi()),
        inline_stdout: true,
        inline_stderr: false,
        inline_output_files: vec!["out/a.txt".into()],
        digest_function: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_served_only_when_complete() {
    let s = Stack::start_with("[instances]\nseparate_action_cache = [\"private\"]\n").await;
    let ch = s.channel();
    let mut ac = ActionCacheClient::new(ch.clone());
    let action = sha(b"action-1");
    let out = b"output file".to_vec();
    let stdout = b"hello from stdout".to_vec();
    let inner = b"inside a tree".to_vec();
    let tree = Tree {
        root: Some(Directory {
            files: vec![FileNode {
                name: "x".into(),
                digest: Some(sha(&inner).to_reapi()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        children: vec![],
    };
    let tree_bytes = tree.encode_to_vec();
    let ar = ActionResult {
        output_files: vec![OutputFile {
            path: "out/a.txt".into(),
            digest: Some(sha(&out).to_reapi()),
            ..Default::default()
        }],
        output_directories: vec![OutputDirectory {
            path: "out/d".into(),
            tree_digest: Some(sha(&tree_bytes).to_reapi()),
            ..Default::default()
        }],
        stdout_digest: Some(sha(&stdout).to_reapi()),
        exit_code: 0,
        ..Default::default()
    };
    ac.update_action_result(UpdateActionResultRequest {
        instance_name: String::new(),
        action_digest: Some(action.to_reapi()),
        action_result: Some(ar.clone()),
        results_cache_policy: None,
        digest_function: 1,
    })
    .await
    .expect("update");
    // Outputs not uploaded yet: a miss, so the client re-runs.
    assert_eq!(
        ac.get_action_result(get("", &action))
            .await
            .expect_err("incomplete")
            .code(),
        Code::NotFound
    );
    client::batch_update(
        &ch,
        "",
        &[
            (sha(&out), out.clone()),
            (sha(&stdout), stdout.clone()),
            (sha(&tree_bytes), tree_bytes.clone()),
        ],
    )
    .await
    .expect("upload");
    // The tree's own file is still missing.
    assert_eq!(
        ac.get_action_result(get("", &action))
            .await
            .expect_err("tree incomplete")
            .code(),
        Code::NotFound
    );
    client::batch_update(&ch, "", &[(sha(&inner), inner.clone())])
        .await
        .expect("upload");
    let got = ac
        .get_action_result(get("", &action))
        .await
        .expect("hit")
        .into_inner();
    assert_eq!(got.stdout_raw, stdout, "stdout inlined");
    assert_eq!(
        got.output_files[0].contents, out,
        "requested output inlined"
    );
    // Shared partition: another instance sees it; a separated one does not.
    assert!(ac.get_action_result(get("other", &action)).await.is_ok());
    assert_eq!(
        ac.get_action_result(get("private", &action))
            .await
            .expect_err("separate")
            .code(),
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_updates_are_refused() {
    let mut s = Stack::start().await;
    let mut ac = ActionCacheClient::new(s.channel());
    let action = sha(b"a");
    let bad = ActionResult {
        output_files: vec![OutputFile {
            path: "x".into(),
            digest: Some(rbe_proto::reapi::Digest {
                hash: "zz".into(),
                size_bytes: 1,
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = ac
        .update_action_result(UpdateActionResultRequest {
            instance_name: String::new(),
            action_digest: Some(action.to_reapi()),
            action_result: Some(bad),
            results_cache_policy: None,
            digest_function: 1,
        })
        .await
        .expect_err("bad digest");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = ac
        .update_action_result(UpdateActionResultRequest {
            instance_name: String::new(),
            action_digest: Some(action.to_reapi()),
            action_result: None,
            results_cache_policy: None,
            digest_function: 1,
        })
        .await
        .expect_err("no result");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = ac
        .get_action_result(get("bad/../instance", &action))
        .await
        .expect_err("instance");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(s.alive());
}
