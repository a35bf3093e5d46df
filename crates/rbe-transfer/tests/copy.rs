//! Copies between two real rbe-casd processes over their real sockets.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use prost::Message;
use rbe_proto::casd::casd_client::CasdClient;
use rbe_proto::casd::{MissingForResultRequest, MissingTreeRequest};
use rbe_proto::reapi::{ActionResult, Directory, FileNode, OutputDirectory, OutputFile, Tree};
use rbe_proto::Digest;
use rbe_testkit::{free_port, pseudo_random};
use rbe_transfer::{fetch_input_closure, fetch_result_outputs, Source, Timeouts, TransferError};
use support::*;
use tonic::Code;

/// Nested directories, a subtree named twice, a file named in several
/// places, and files larger than a batch blob.
fn sample_tree(b: &mut Blobs) -> Digest {
    let a = b.add(b"a".to_vec());
    let bb = b.add(b"bb".to_vec());
    let c = b.add(b"ccc".to_vec());
    let big = b.add(pseudo_random(1_500_000, 1));
    let big2 = b.add(pseudo_random(3 << 20, 2));
    let leaf = b.dir(&[("a", a), ("b", bb), ("big2", big2)], &[]);
    let mid = b.dir(&[("c", c)], &[("x", leaf), ("y", leaf)]);
    b.dir(
        &[("a", a), ("big", big), ("dup", a)],
        &[("l", leaf), ("m", mid)],
    )
}

#[tokio::test]
async fn an_input_tree_is_copied_whole_into_an_empty_casd() {
    let (t1, t2) = (tempdir(), tempdir());
    let (src, dst) = (casd(t1.path()).await, casd(t2.path()).await);
    let mut blobs = Blobs::default();
    let root = sample_tree(&mut blobs);
    upload(&src.channel().await, &blobs.0).await;
    let (source, local) = (source_of(&src).await, local_of(&dst).await);

    let stats = fetch_input_closure(&source, &local, F, root).await.unwrap();
    assert_eq!(stats.blobs, blobs.0.len() as u64);
    assert_eq!(stats.bytes, blobs.bytes());
    // Three levels: at most one round per level, one for the files of the
    // last, and one to confirm.
    assert!(stats.rounds <= 5, "{stats:?}");
    let ch = dst.channel().await;
    assert!(missing_tree(&ch, root).await.is_empty());
    assert_eq!(check_stored(&ch, &blobs).await, blobs.0.len());

    // A second copy finds nothing to do.
    let again = fetch_input_closure(&source, &local, F, root).await.unwrap();
    assert_eq!((again.blobs, again.bytes, again.rounds), (0, 0, 1));
}

#[tokio::test]
async fn result_outputs_are_copied_whole() {
    let (t1, t2) = (tempdir(), tempdir());
    let (src, dst) = (casd(t1.path()).await, casd(t2.path()).await);
    let mut blobs = Blobs::default();
    let big = blobs.add(pseudo_random(2 << 20, 3));
    let small = blobs.add(b"small output".to_vec());
    let in_tree = blobs.add(pseudo_random(5000, 4));
    let log = blobs.add(b"compiling...\n".to_vec());
    let tree = blobs.add(
        Tree {
            root: Some(Directory {
                files: vec![
                    FileNode {
                        name: "big".into(),
                        digest: Some(big.to_reapi()),
                        ..Default::default()
                    },
                    FileNode {
                        name: "t".into(),
                        digest: Some(in_tree.to_reapi()),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            children: vec![],
        }
        .encode_to_vec(),
    );
    let ar = ActionResult {
        output_files: vec![
            OutputFile {
                path: "out/big".into(),
                digest: Some(big.to_reapi()),
                ..Default::default()
            },
            OutputFile {
                path: "out/small".into(),
                digest: Some(small.to_reapi()),
                ..Default::default()
            },
        ],
        output_directories: vec![OutputDirectory {
            path: "out/dir".into(),
            tree_digest: Some(tree.to_reapi()),
            ..Default::default()
        }],
        stdout_digest: Some(log.to_reapi()),
        stderr_digest: Some(log.to_reapi()),
        ..Default::default()
    };
    upload(&src.channel().await, &blobs.0).await;
    let (source, local) = (source_of(&src).await, local_of(&dst).await);

    let stats = fetch_result_outputs(&source, &local, F, &ar).await.unwrap();
    assert_eq!(stats.blobs, blobs.0.len() as u64);
    assert_eq!(stats.bytes, blobs.bytes());
    let ch = dst.channel().await;
    let left = CasdClient::new(ch.clone())
        .missing_for_result(MissingForResultRequest {
            instance_name: String::new(),
            digest_function: F.to_reapi(),
            action_result: ar.encode_to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(left.missing.is_empty() && !left.truncated);
    assert_eq!(check_stored(&ch, &blobs).await, blobs.0.len());
}

#[tokio::test]
async fn blobs_missing_at_the_source_are_not_found_naming_them_all_and_the_source() {
    let (t1, t2) = (tempdir(), tempdir());
    let (src, dst) = (casd(t1.path()).await, casd(t2.path()).await);
    let mut blobs = Blobs::default();
    let root = sample_tree(&mut blobs);
    let gone = blobs.add(b"never uploaded".to_vec());
    let gone_too = blobs.add(b"never uploaded either".to_vec());
    let top = blobs.dir(&[("gone", gone), ("gone-too", gone_too)], &[("t", root)]);
    let uploaded: Vec<_> = blobs
        .0
        .iter()
        .filter(|(d, _)| *d != gone && *d != gone_too)
        .cloned()
        .collect();
    upload(&src.channel().await, &uploaded).await;
    let (source, local) = (source_of(&src).await, local_of(&dst).await);

    let err = fetch_input_closure(&source, &local, F, top)
        .await
        .unwrap_err();
    match &err {
        TransferError::NotFound { address, digests } => {
            // Every blob the source lacks, not only the first: the client
            // re-uploads them all at once.
            let mut got = digests.clone();
            got.sort_by_key(|d| d.hex());
            let mut want = vec![gone, gone_too];
            want.sort_by_key(|d| d.hex());
            assert_eq!(got, want);
            assert_eq!(address, source.address());
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&gone.hex()) && msg.contains(source.address()),
        "{msg}"
    );
    // Passed on to a client, it is a MISSING violation naming the blob.
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), Code::FailedPrecondition);
    let pf = rbe_proto::status::precondition_failure(&status).unwrap();
    assert_eq!(pf.violations.len(), 2, "{pf:?}");
    assert!(pf
        .violations
        .iter()
        .any(|v| v.subject.contains(&gone.hex())));
    // Nothing wrong was stored, and the lost blob is not there.
    let ch = dst.channel().await;
    assert!(rbe_testkit::client::find_missing(&ch, "", &[gone])
        .await
        .unwrap()
        .contains(&gone));
    check_stored(&ch, &blobs).await;
}

/// One round per level (a directory is found only once its parent is
/// here); 2,000 levels show the loop ends and nothing recurses. The walk
/// itself is tested at 60,000 levels in rbe-cas.
#[tokio::test]
async fn a_2000_level_tree_is_copied() {
    let (t1, t2) = (shm_tempdir(), shm_tempdir());
    let (src, dst) = (casd(t1.path()).await, casd(t2.path()).await);
    let mut blobs = Blobs::default();
    let bottom = blobs.add(b"bottom".to_vec());
    let mut level = blobs.dir(&[("f", bottom)], &[]);
    for _ in 1..2_000 {
        level = blobs.dir(&[], &[("d", level)]);
    }
    upload(&src.channel().await, &blobs.0).await;
    let (source, local) = (source_of(&src).await, local_of(&dst).await);

    let stats = fetch_input_closure(&source, &local, F, level)
        .await
        .unwrap();
    assert_eq!(stats.blobs, 2_001);
    assert!(stats.rounds <= 2_002, "{stats:?}");
    assert!(missing_tree(&dst.channel().await, level).await.is_empty());
}

/// A temp dir on tmpfs where there is one: tests that store thousands of
/// blobs one round at a time would otherwise measure the disk's fsyncs.
fn shm_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rbe-transfer-test-")
        .tempdir_in("/dev/shm")
        .unwrap_or_else(|_| tempdir())
}

#[tokio::test]
async fn more_missing_blobs_than_one_answer_lists_are_copied_over_rounds() {
    let (t1, t2) = (shm_tempdir(), shm_tempdir());
    let (src, dst) = (casd(t1.path()).await, casd(t2.path()).await);
    let mut blobs = Blobs::default();
    // casd lists at most 50,000 digests per answer.
    let mut halves = Vec::new();
    for half in 0..2u32 {
        let names: Vec<String> = (0..30_000).map(|i| format!("f{i:05}")).collect();
        let files: Vec<(&str, Digest)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let d = blobs.add(format!("blob {half} {i}").into_bytes());
                (n.as_str(), d)
            })
            .collect();
        halves.push(blobs.dir(&files, &[]));
    }
    let root = blobs.dir(&[], &[("a", halves[0]), ("b", halves[1])]);
    upload(&src.channel().await, &blobs.0).await;
    let (source, local) = (source_of(&src).await, local_of(&dst).await);

    let stats = fetch_input_closure(&source, &local, F, root).await.unwrap();
    assert_eq!(stats.blobs, blobs.0.len() as u64);
    assert_eq!(stats.bytes, blobs.bytes());
    assert!(stats.rounds >= 4, "{stats:?}");
    assert!(missing_tree(&dst.channel().await, root).await.is_empty());
}

async fn expect_unavailable(source: &Source) {
    let (t1, root) = (tempdir(), Digest::of(F, b"any directory"));
    let dst = casd(t1.path()).await;
    let local = local_of(&dst).await;
    // A bound on the test only; the copy's own timeouts end it long before.
    let r = tokio::time::timeout(
        Duration::from_secs(120),
        fetch_input_closure(source, &local, F, root),
    )
    .await
    .expect("the copy hung");
    // casd lacks the root, so the source is asked for it.
    match r {
        Err(TransferError::Unavailable { address, .. }) => assert_eq!(address, source.address()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_source_that_refuses_connections_is_unavailable() {
    let port = free_port();
    let uri = format!("http://127.0.0.1:{port}");
    let source = Source::connect(&uri, "", Timeouts::default()).unwrap();
    assert_eq!(source.address(), uri);
    expect_unavailable(&source).await;
}

#[tokio::test]
async fn a_source_that_never_answers_is_unavailable_not_waited_on() {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", free_port()))
        .await
        .unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    // Accepts connections and says nothing on them.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        idle: Duration::from_secs(2),
    };
    let source = Source::connect(&uri, "", timeouts).unwrap();
    expect_unavailable(&source).await;
}

#[tokio::test]
async fn casd_refuses_malformed_questions_naming_what_is_wrong() {
    let t = tempdir();
    let c = casd(t.path()).await;
    let ch = c.channel().await;
    let mut blobs = Blobs::default();
    let junk = blobs.add(vec![0xff, 0xff, 0xff, 0xff, 0x0f]);
    upload(&ch, &blobs.0).await;
    let mut client = CasdClient::new(ch.clone());
    let tree_req = |hash: &str, size: i64| MissingTreeRequest {
        instance_name: String::new(),
        digest_function: F.to_reapi(),
        roots: vec![rbe_proto::casd::Digest {
            hash: hash.into(),
            size_bytes: size,
        }],
    };
    let e = client
        .missing_tree(tree_req("nothex", 3))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = client
        .missing_tree(tree_req(&junk.hex(), junk.size as i64))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(&junk.hex()), "{e:?}");
    let e = client
        .missing_tree(MissingTreeRequest {
            roots: vec![],
            ..tree_req("", 0)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let result_req = |ar: Vec<u8>| MissingForResultRequest {
        instance_name: String::new(),
        digest_function: F.to_reapi(),
        action_result: ar,
    };
    let e = client
        .missing_for_result(result_req(vec![0xff, 0xff, 0xff]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let with_tree = ActionResult {
        output_directories: vec![OutputDirectory {
            path: "d".into(),
            tree_digest: Some(junk.to_reapi()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = client
        .missing_for_result(result_req(with_tree.encode_to_vec()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(&junk.hex()), "{e:?}");
    let no_digest = ActionResult {
        output_files: vec![OutputFile {
            path: "o".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = client
        .missing_for_result(result_req(no_digest.encode_to_vec()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}
