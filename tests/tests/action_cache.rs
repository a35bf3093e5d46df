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

/// A Tree of `files` file nodes, all naming `blob`, marked by `tag`.
fn big_tree(files: usize, blob: &Digest, tag: &str) -> Vec<u8> {
    Tree {
        root: Some(Directory {
            files: (0..files)
                .map(|i| FileNode {
                    name: format!("{tag}-{i:06}"),
                    digest: Some(blob.to_reapi()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        children: vec![],
    }
    .encode_to_vec()
}

async fn trees_read(ch: &tonic::transport::Channel) -> u64 {
    rbe_proto::casd::casd_client::CasdClient::new(ch.clone())
        .stats(rbe_proto::casd::StatsRequest {})
        .await
        .expect("Stats")
        .into_inner()
        .ac_trees_read
}

/// Issue 10: a 123 KiB ActionResult naming one ~4 MiB Tree 1,500 times
/// made every lookup read and hash the Tree 1,500 times. Each distinct
/// Tree is read once per check, and Trees beyond the check's bound
/// (64 MiB in all) make the result a cache miss without being read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completeness_check_reads_each_tree_once_and_is_bounded() {
    let tmp = tempfile::Builder::new()
        .prefix("rbe-test-")
        .tempdir()
        .expect("tempdir");
    let casd = rbe_testkit::Casd::start(tmp.path(), "1GiB", "").await;
    let ch = casd.channel().await;
    let mut ac = ActionCacheClient::new(ch.clone())
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let inner = b"one file".to_vec();
    client::batch_update(&ch, "", &[(sha(&inner), inner.clone())])
        .await
        .expect("upload");
    let tree = big_tree(40_000, &sha(&inner), "f");
    assert!(tree.len() > 3 << 20, "a Tree of {} bytes", tree.len());
    client::write(&ch, "", &sha(&tree), &tree, 1 << 20)
        .await
        .expect("upload tree");
    let store = |ar: ActionResult, action: Digest| UpdateActionResultRequest {
        instance_name: String::new(),
        action_digest: Some(action.to_reapi()),
        action_result: Some(ar),
        results_cache_policy: None,
        digest_function: 1,
    };
    let ar = ActionResult {
        output_directories: (0..1_500)
            .map(|i| OutputDirectory {
                path: format!("out/d{i:04}"),
                tree_digest: Some(sha(&tree).to_reapi()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    assert!(ar.encoded_len() > 100 << 10, "{} bytes", ar.encoded_len());
    let action = sha(b"names one tree 1,500 times");
    ac.update_action_result(store(ar, action))
        .await
        .expect("update");
    for _ in 0..3 {
        let before = trees_read(&ch).await;
        let got = ac
            .get_action_result(get("", &action))
            .await
            .expect("complete: a hit")
            .into_inner();
        assert_eq!(got.output_directories.len(), 1_500);
        assert_eq!(trees_read(&ch).await - before, 1, "the one Tree read once");
    }

    // Distinct Trees holding more than the bound: a miss, none read.
    let mut ar = ActionResult::default();
    let mut total = 0;
    for t in 0..18 {
        let tree = big_tree(46_000, &sha(&inner), &format!("t{t}"));
        total += tree.len();
        client::write(&ch, "", &sha(&tree), &tree, 1 << 20)
            .await
            .expect("upload tree");
        ar.output_directories.push(OutputDirectory {
            path: format!("out/t{t}"),
            tree_digest: Some(sha(&tree).to_reapi()),
            ..Default::default()
        });
    }
    assert!(total > 64 << 20, "{total} bytes of Trees");
    let action = sha(b"more tree bytes than a check reads");
    ac.update_action_result(store(ar, action))
        .await
        .expect("update");
    let before = trees_read(&ch).await;
    let e = ac
        .get_action_result(get("", &action))
        .await
        .expect_err("too large to check: a miss");
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(trees_read(&ch).await, before, "no Tree read");
}
