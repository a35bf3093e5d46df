//! casd in cache mode, beyond blobs: the action cache read and written
//! through, an input tree fetched through for Materialize, and bad
//! `[backing]` configurations refused at start with the key named.
#![allow(clippy::unwrap_used)]

mod common;

use common::{blob, get_result, pair, stats, update_result, BOUND};
use prost::Message;
use rbe_proto::casd::casd_client::CasdClient;
use rbe_proto::casd::MaterializeRequest;
use rbe_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use rbe_proto::reapi::{Directory, DirectoryNode, FileNode, GetTreeRequest};
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::client;
use tonic::Code;

#[tokio::test]
async fn the_action_cache_is_written_and_read_through() {
    let mut p = pair("").await;
    let (a, b) = (p.a.channel().await, p.b.channel().await);

    // Written through A: B has the result and its output.
    let out = blob(4000, 31);
    client::write(&a, "", &out.0, &out.1, 1 << 20)
        .await
        .unwrap();
    let action = blob(50, 32).0;
    update_result(&a, &action, &out.0).await.unwrap();
    assert_eq!(get_result(&b, &action).await.unwrap().output_files.len(), 1);

    // Only in B: A serves it, and its output is local before it does.
    let out2 = blob(3 << 20, 33);
    client::write(&b, "", &out2.0, &out2.1, 1 << 20)
        .await
        .unwrap();
    let action2 = blob(50, 34).0;
    update_result(&b, &action2, &out2.0).await.unwrap();
    let fetched = stats(&a).await.backing_fetches;
    assert_eq!(
        get_result(&a, &action2).await.unwrap().output_files.len(),
        1
    );
    assert_eq!(stats(&a).await.backing_fetches, fetched + 1);
    let s = stats(&b).await.blobs_read;
    assert_eq!(client::read(&a, "", &out2.0).await.unwrap(), out2.1);
    assert_eq!(stats(&b).await.blobs_read, s, "served from A's copy");

    // In B without its output: a miss on A, not a result it cannot serve.
    let action3 = blob(50, 35).0;
    update_result(&b, &action3, &blob(10, 36).0).await.unwrap();
    assert_eq!(
        get_result(&a, &action3).await.unwrap_err().code(),
        Code::NotFound
    );

    // B down: writing a result fails naming it; nothing is stored on A.
    p.b.kill9();
    let action4 = blob(50, 37).0;
    let e = tokio::time::timeout(BOUND, update_result(&a, &action4, &out.0))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&p.url), "{e:?}");
    let e = tokio::time::timeout(BOUND, get_result(&a, &action4))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

#[tokio::test]
async fn get_tree_and_materialize_fetch_a_tree_only_the_backing_store_has() {
    let p = pair("").await;
    let (a, b) = (p.a.channel().await, p.b.channel().await);
    let file = blob(2 << 20, 41);
    let sub = Directory {
        files: vec![FileNode {
            name: "f".into(),
            digest: Some(file.0.to_reapi()),
            is_executable: false,
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let sub_d = Digest::of(DigestFunction::Sha256, &sub);
    let root = Directory {
        directories: vec![DirectoryNode {
            name: "d".into(),
            digest: Some(sub_d.to_reapi()),
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let root_d = Digest::of(DigestFunction::Sha256, &root);
    for (d, data) in [(file.0, &file.1), (sub_d, &sub), (root_d, &root)] {
        client::write(&b, "", &d, data, 1 << 20).await.unwrap();
    }
    // GetTree on A walks the whole tree, its directories fetched through.
    let mut pages = ContentAddressableStorageClient::new(a.clone())
        .get_tree(GetTreeRequest {
            root_digest: Some(root_d.to_reapi()),
            digest_function: DigestFunction::Sha256.to_reapi(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut dirs = 0;
    while let Some(page) = pages.message().await.unwrap() {
        dirs += page.directories.len();
    }
    assert_eq!(dirs, 2);
    assert_eq!(stats(&a).await.backing_fetches, 2, "directories only");

    let target = p.a.layout.work_dir.join("action-1");
    std::fs::create_dir_all(&target).unwrap();
    let m = CasdClient::new(a.clone())
        .materialize(MaterializeRequest {
            instance_name: String::new(),
            digest_function: DigestFunction::Sha256.to_reapi(),
            root: Some(rbe_proto::casd::Digest {
                hash: root_d.hex(),
                size_bytes: root_d.size as i64,
            }),
            target: target.display().to_string(),
            copy: false,
            pin_ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(m.missing.is_empty(), "{:?}", m.missing);
    assert_eq!(std::fs::read(target.join("d/f")).unwrap(), file.1);
    assert_eq!(stats(&a).await.backing_fetches, 3);
}

/// Runs `rbe-casd --check-config` on a `[backing]` drop-in.
fn check_config(dropin: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let layout = rbe_config::local::LocalLayout::new(dir.path());
    layout.write_configs("127.0.0.1:1", "1GiB").unwrap();
    let d = layout.config_dir.join("casd.toml.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("50-test.toml"), dropin).unwrap();
    let out = std::process::Command::new(rbe_testkit::bin("rbe-casd"))
        .arg("--config-dir")
        .arg(&layout.config_dir)
        .arg("--check-config")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_backing_configs_are_refused_naming_the_key() {
    for mode in ["cache", "jit"] {
        let (code, err) = check_config(&format!(
            "[backing]\nmode = \"{mode}\"\nurl = \"grpc://127.0.0.1:1\"\n"
        ));
        assert_eq!(code, 0, "a good {mode} config passes: {err}");
    }
    for (dropin, key, words) in [
        (
            "[backing]\nmode = \"cache\"\nurl = \"gs://bucket/x\"\n",
            "backing.url",
            "scheme \"gs\" is not supported",
        ),
        (
            "[backing]\nmode = \"cache\"\nurl = \"s3://bucket/x\"\ncredentials_file = \"/nonexistent/creds\"\n",
            "backing.credentials_file",
            "cannot read /nonexistent/creds",
        ),
        (
            "[backing]\nmode = \"cache\"\nurl = \"http://127.0.0.1:1/dav\"\npath_style = true\n",
            "backing.path_style",
            "only used with an s3://",
        ),
        (
            "[backing]\nmode = \"cache\"\nurl = \"grpc://127.0.0.1:1\"\ntoken_file = \"/nonexistent/token\"\n",
            "backing.token_file",
            "cannot read /nonexistent/token",
        ),
        (
            "[backing]\nmode = \"jit\"\n",
            "backing.url",
            "must be set when backing.mode = \"jit\"",
        ),
    ] {
        let (code, err) = check_config(dropin);
        assert_eq!(code, 78, "{dropin}: {err}");
        assert!(
            err.contains(&format!("key {key}:")) && err.contains(words),
            "{dropin}: {err}"
        );
    }
}
