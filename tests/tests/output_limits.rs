//! Output collection is bounded (`[outputs]` in workerd.toml): an output
//! directory over a limit fails the action with INVALID_ARGUMENT naming the
//! limit, its stdout still returned, and the worker stays up; one within
//! the limits comes back as a complete Tree. Real daemons, real gRPC.

use prost::Message;
use rbe_proto::reapi::{
    command::EnvironmentVariable, Action, Command, Directory, ExecuteResponse, Tree,
};
use rbe_proto::Digest;
use rbe_testkit::{client, Stack};
use tonic::transport::Channel;
use tonic::Code;

mod exec_kit;
use exec_kit::*;

/// Runs `sh -c script` with `out` declared as an output; the final response.
async fn run_with_output(ch: &Channel, script: &str) -> ExecuteResponse {
    let command = Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
        environment_variables: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        output_paths: vec!["out".into()],
        ..Default::default()
    }
    .encode_to_vec();
    let root = Directory::default().encode_to_vec();
    let (cd, rd) = (Digest::of(F, &command), Digest::of(F, &root));
    let action = Action {
        command_digest: Some(cd.to_reapi()),
        input_root_digest: Some(rd.to_reapi()),
        do_not_cache: true,
        timeout: Some(rbe_proto::wkt::Duration {
            seconds: 300,
            nanos: 0,
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let ad = Digest::of(F, &action);
    client::batch_update(ch, "", &[(cd, command), (rd, root), (ad, action)])
        .await
        .expect("upload");
    execute(ch, ad).await
}

fn code(r: &ExecuteResponse) -> Code {
    Code::from_i32(r.status.as_ref().map_or(0, |s| s.code))
}

fn message(r: &ExecuteResponse) -> String {
    r.status
        .as_ref()
        .map(|s| s.message.clone())
        .unwrap_or_default()
}

/// A script making `out/d/d/.../d` (`depth` levels of `d` below `out`) with
/// `files` files at the bottom, and printing "made".
fn deep(depth: usize, files: usize) -> String {
    let path = vec!["d"; depth].join("/");
    format!(
        "set -e; mkdir -p out/{path}; cd out/{path}; i=0; \
         while [ $i -lt {files} ]; do : > file-$i; i=$((i+1)); done; echo made"
    )
}

async fn tree_of(ch: &Channel, r: &ExecuteResponse) -> Tree {
    let result = r.result.as_ref().expect("result");
    let od = result
        .output_directories
        .first()
        .expect("an output directory");
    let d = Digest::from_reapi(F, od.tree_digest.as_ref().expect("tree")).expect("digest");
    Tree::decode(
        client::read(ch, "", &d)
            .await
            .expect("tree blob")
            .as_slice(),
    )
    .expect("Tree")
}

async fn stdout(ch: &Channel, r: &ExecuteResponse) -> String {
    let d = r
        .result
        .as_ref()
        .and_then(|r| r.stdout_digest.as_ref())
        .expect("stdout digest");
    let d = Digest::from_reapi(F, d).expect("digest");
    String::from_utf8(client::read(ch, "", &d).await.expect("stdout blob")).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_depth_over_the_default_limit_is_refused_and_under_it_works() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    // The case: 300 levels, 4,000 files.
    let r = run_with_output(&ch, &deep(300, 4000)).await;
    assert_eq!(code(&r), Code::InvalidArgument, "{:?}", r.status);
    let m = message(&r);
    assert!(m.contains("outputs.max_depth = 256"), "{m}");
    assert!(m.contains("out/d/d/d"), "the path is named: {m}");
    assert_eq!(r.result.as_ref().map(|r| r.exit_code), Some(0));
    assert_eq!(stdout(&ch, &r).await, "made\n", "stdout still returned");
    assert!(s.alive(), "a daemon died collecting the outputs");

    // Just under the limit: the whole Tree, one Directory per level.
    let r = run_with_output(&ch, &deep(256, 100)).await;
    assert_eq!(code(&r), Code::Ok, "{:?}", r.status);
    let tree = tree_of(&ch, &r).await;
    assert_eq!(tree.children.len(), 256);
    let bottom = tree
        .children
        .iter()
        .find(|d| d.directories.is_empty())
        .expect("the deepest directory");
    assert_eq!(bottom.files.len(), 100);
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_and_path_limits_name_their_key() {
    let mut s = Stack::start_configured(
        "",
        "",
        "[outputs]\nmax_entries = 1000\nmax_path_bytes = 300\n",
    )
    .await;
    let ch = s.channel();
    // 1,000 entries: the directory d and 999 files.
    let r = run_with_output(&ch, &deep(1, 999)).await;
    assert_eq!(code(&r), Code::Ok, "{:?}", r.status);
    let r = run_with_output(&ch, &deep(1, 1000)).await;
    assert_eq!(code(&r), Code::InvalidArgument, "{:?}", r.status);
    assert!(message(&r).contains("outputs.max_entries = 1000"), "{r:?}");

    // "out/" + 58 × "d/" + "file-0" = 126 bytes; 150 levels are 310.
    let r = run_with_output(&ch, &deep(58, 1)).await;
    assert_eq!(code(&r), Code::Ok, "{:?}", r.status);
    let r = run_with_output(&ch, &deep(150, 1)).await;
    assert_eq!(code(&r), Code::InvalidArgument, "{:?}", r.status);
    assert!(
        message(&r).contains("outputs.max_path_bytes = 300"),
        "{r:?}"
    );
    assert!(s.alive());
}
