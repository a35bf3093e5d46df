//! casd in `[backing] mode = "jit"` in front of a second real casd, over
//! real gRPC on real Unix sockets: existence is B's answer even for blobs
//! A holds, action results are read from B, an input tree only B has is
//! materialized (fetched once for 50 concurrent callers), the scratch is
//! reclaimed at Unpin, and the write-through invariant under kill -9.
#![allow(clippy::unwrap_used)]

mod common;
mod invariant;

use std::collections::HashSet;

use common::{batch, blob, get_result, present, stats, update_result, Pair, BOUND};
use prost::Message;
use rbe_proto::casd::casd_client::CasdClient;
use rbe_proto::casd::{MaterializeRequest, MaterializeResponse, PinRequest, UnpinRequest};
use rbe_proto::reapi::{Directory, DirectoryNode, FileNode};
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::{client, Casd};
use tonic::transport::Channel;
use tonic::Code;

/// A in jit mode in front of B.
async fn jit_pair() -> Pair {
    let dir = tempfile::Builder::new()
        .prefix("rbe-jit-")
        .tempdir_in(rbe_testkit::disk_tmp())
        .unwrap();
    let b = Casd::start(&dir.path().join("b"), "2GiB", "").await;
    let url = format!("unix:{}", b.layout.casd_socket().display());
    let a = Casd::start(
        &dir.path().join("a"),
        "2GiB",
        &format!("[backing]\nmode = \"jit\"\nurl = \"{url}\"\nrequest_timeout_secs = 10\n"),
    )
    .await;
    Pair { a, b, url, dir }
}

/// B loses everything: killed, its store deleted, started again empty.
async fn empty_b(p: &mut Pair) {
    p.b.kill9();
    std::fs::remove_dir_all(&p.b.layout.cas_dir).unwrap();
    std::fs::create_dir_all(&p.b.layout.cas_dir).unwrap();
    p.b.restart().await;
}

fn casd_digest(d: &Digest) -> rbe_proto::casd::Digest {
    rbe_proto::casd::Digest {
        hash: d.hex(),
        size_bytes: d.size as i64,
    }
}

/// A two-level tree of `files` files uploaded to `ch`; its root and every
/// digest in it.
async fn tree_in(ch: &Channel, files: u64, seed: u64) -> (Digest, Vec<Digest>) {
    let mut all = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..files {
        let (d, data) = blob(20_000 + i as usize * 1000, seed + i);
        client::write(ch, "", &d, &data, 1 << 20).await.unwrap();
        nodes.push(FileNode {
            name: format!("f{i}"),
            digest: Some(d.to_reapi()),
            ..Default::default()
        });
        all.push(d);
    }
    let sub = Directory {
        files: nodes,
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
    for (d, data) in [(sub_d, &sub), (root_d, &root)] {
        client::write(ch, "", &d, data, 1 << 20).await.unwrap();
        all.push(d);
    }
    (root_d, all)
}

async fn materialize(
    ch: &Channel,
    root: &Digest,
    target: &std::path::Path,
) -> Result<MaterializeResponse, tonic::Status> {
    materialize_pinned(ch, root, target, 0).await
}

/// Materialize asking for a lease over the tree (`pin_ttl_seconds`).
async fn materialize_pinned(
    ch: &Channel,
    root: &Digest,
    target: &std::path::Path,
    pin_ttl_seconds: u32,
) -> Result<MaterializeResponse, tonic::Status> {
    std::fs::create_dir_all(target).unwrap();
    CasdClient::new(ch.clone())
        .materialize(MaterializeRequest {
            instance_name: String::new(),
            digest_function: DigestFunction::Sha256.to_reapi(),
            root: Some(casd_digest(root)),
            target: target.display().to_string(),
            copy: false,
            pin_ttl_seconds,
        })
        .await
        .map(|r| r.into_inner())
}

async fn pin(ch: &Channel, ds: &[Digest]) -> (String, usize) {
    let r = CasdClient::new(ch.clone())
        .pin(PinRequest {
            instance_name: String::new(),
            digest_function: DigestFunction::Sha256.to_reapi(),
            digests: ds.iter().map(casd_digest).collect(),
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner();
    (r.lease, r.missing.len())
}

async fn unpin(ch: &Channel, lease: String) {
    CasdClient::new(ch.clone())
        .unpin(UnpinRequest { lease })
        .await
        .unwrap();
}

#[tokio::test]
async fn existence_is_the_backing_stores_answer_even_for_blobs_a_holds() {
    let mut p = jit_pair().await;
    let a = p.a.channel().await;
    let (small, large) = (blob(5000, 1), blob(2 << 20, 2));
    assert_eq!(
        batch(&a, std::slice::from_ref(&small)).await.unwrap()[0].0,
        0
    );
    client::write(&a, "", &large.0, &large.1, 1 << 20)
        .await
        .unwrap();
    let both = [small.0, large.0];
    assert_eq!(present(&a, &both).await.len(), 2);
    assert_eq!(stats(&a).await.blobs, 2, "A keeps what it wrote through");

    empty_b(&mut p).await;
    let b = p.b.channel().await;
    assert!(
        present(&a, &both).await.is_empty(),
        "A reports present blobs B lost"
    );
    // Uploads of blobs A holds but B lacks reach B again, and are not
    // completed from A's copy.
    assert_eq!(
        batch(&a, std::slice::from_ref(&small)).await.unwrap()[0].0,
        0
    );
    client::write(&a, "", &large.0, &large.1, 1 << 20)
        .await
        .unwrap();
    assert_eq!(present(&b, &both).await.len(), 2, "B has them again");
    assert_eq!(present(&a, &both).await.len(), 2);

    // B down: FindMissingBlobs is UNAVAILABLE, not answered from A.
    p.b.kill9();
    let e = tokio::time::timeout(BOUND, client::find_missing(&a, "", &both))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&p.url), "{e:?}");
}

#[tokio::test]
async fn action_results_are_read_from_the_backing_store() {
    let mut p = jit_pair().await;
    let a = p.a.channel().await;
    let out = blob(4000, 31);
    client::write(&a, "", &out.0, &out.1, 1 << 20)
        .await
        .unwrap();
    let action = blob(50, 32).0;
    update_result(&a, &action, &out.0).await.unwrap();
    assert_eq!(get_result(&a, &action).await.unwrap().output_files.len(), 1);
    let b = p.b.channel().await;
    assert_eq!(get_result(&b, &action).await.unwrap().output_files.len(), 1);
    // B lost it: A's own copy of the result is not served.
    empty_b(&mut p).await;
    assert_eq!(
        get_result(&a, &action).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn a_tree_only_b_has_is_materialized_and_its_scratch_reclaimed_at_unpin() {
    let p = jit_pair().await;
    let (a, b) = (p.a.channel().await, p.b.channel().await);
    let (root, all) = tree_in(&b, 5, 40).await;
    assert_eq!(stats(&a).await.blobs, 0);

    let target = p.a.layout.work_dir.join("action-1");
    let m = materialize(&a, &root, &target).await.unwrap();
    assert!(m.missing.is_empty(), "{:?}", m.missing);
    assert_eq!(m.files, 5);
    assert_eq!(
        std::fs::read(target.join("d/f3")).unwrap(),
        blob(23_000, 43).1
    );
    let s = stats(&a).await;
    assert_eq!((s.blobs, s.backing_fetches), (7, 7));

    // Two leases on the tree, as two actions would hold it: released one
    // at a time, the scratch goes only with the last.
    let (l1, missing) = pin(&a, &all).await;
    assert_eq!(missing, 0);
    let (l2, _) = pin(&a, &all[..2]).await;
    unpin(&a, l1).await;
    let s = stats(&a).await;
    assert_eq!((s.blobs, s.evicted_blobs), (2, 5), "{s:?}");
    unpin(&a, l2).await;
    let s = stats(&a).await;
    assert_eq!((s.blobs, s.bytes, s.evicted_blobs), (0, 0, 7), "{s:?}");
    // The materialized files outlive the scratch (hard links).
    assert_eq!(
        std::fs::read(target.join("d/f3")).unwrap(),
        blob(23_000, 43).1
    );

    // Still present (B's answer), and hydrated again when asked for.
    assert_eq!(present(&a, &all).await.len(), all.len());
    let again = p.a.layout.work_dir.join("action-2");
    let m = materialize(&a, &root, &again).await.unwrap();
    assert!(m.missing.is_empty(), "{:?}", m.missing);
    // The files again; the directories are still parsed in memory.
    assert_eq!(stats(&a).await.backing_fetches, 7 + 5);
}

/// Actions sharing one tree, each materializing it under a lease and
/// releasing the lease as soon as it has it: every release reclaims the
/// tree unless another lease holds it, racing the others' fetches and
/// walks (a blob found present, or just fetched, reclaimed before it is
/// linked). Every Materialize must still build the whole tree; at the end
/// nothing is pinned and the scratch is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materializes_racing_releases_of_a_shared_tree_never_miss_an_input() {
    const TASKS: usize = 8;
    const ROUNDS: usize = 15;
    let p = jit_pair().await;
    let (a, b) = (p.a.channel().await, p.b.channel().await);
    let (root, _) = tree_in(&b, 4, 80).await;
    let work = p.a.layout.work_dir.clone();
    let calls: Vec<_> = (0..TASKS)
        .map(|t| {
            let (a, work) = (a.clone(), work.clone());
            tokio::spawn(async move {
                for r in 0..ROUNDS {
                    let target = work.join(format!("action-{t}-{r}"));
                    let m = materialize_pinned(&a, &root, &target, 600).await.unwrap();
                    assert!(m.missing.is_empty(), "round {r}: {:?}", m.missing);
                    assert_eq!(m.files, 4);
                    assert!(!m.lease.is_empty(), "no lease");
                    unpin(&a, m.lease).await;
                    std::fs::remove_dir_all(&target).unwrap();
                }
            })
        })
        .collect();
    for c in calls {
        tokio::time::timeout(BOUND * 4, c).await.unwrap().unwrap();
    }
    let s = stats(&a).await;
    assert_eq!((s.pinned_blobs, s.blobs, s.bytes), (0, 0, 0), "{s:?}");
}

/// A tree with a blob B lacks too: reported missing, no lease, and what
/// was fetched of it neither pinned nor kept.
#[tokio::test]
async fn a_pinned_materialize_with_a_missing_blob_leaves_nothing_pinned() {
    let p = jit_pair().await;
    let (a, b) = (p.a.channel().await, p.b.channel().await);
    let (present, data) = blob(10_000, 90);
    client::write(&b, "", &present, &data, 1 << 20)
        .await
        .unwrap();
    let lacking = blob(10_000, 91).0;
    let root = Directory {
        files: ["p", "x"]
            .iter()
            .zip([present, lacking])
            .map(|(n, d)| FileNode {
                name: (*n).into(),
                digest: Some(d.to_reapi()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec();
    let root_d = Digest::of(DigestFunction::Sha256, &root);
    client::write(&b, "", &root_d, &root, 1 << 20)
        .await
        .unwrap();
    let target = p.a.layout.work_dir.join("action-1");
    let m = materialize_pinned(&a, &root_d, &target, 600).await.unwrap();
    assert_eq!(m.missing, vec![casd_digest(&lacking)]);
    assert!(m.lease.is_empty());
    let s = stats(&a).await;
    assert_eq!((s.pinned_blobs, s.blobs), (0, 0), "{s:?}");
}

#[tokio::test]
async fn fifty_concurrent_materializes_fetch_each_blob_from_b_once() {
    let p = jit_pair().await;
    let (a, b) = (p.a.channel().await, p.b.channel().await);
    let (root, all) = tree_in(&b, 8, 60).await;
    let before = stats(&b).await.blobs_read;
    let work = p.a.layout.work_dir.clone();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let (a, work, start) = (a.clone(), work.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                materialize(&a, &root, &work.join(format!("action-{i}"))).await
            })
        })
        .collect();
    for c in calls {
        let m = tokio::time::timeout(BOUND, c)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(m.missing.is_empty(), "{:?}", m.missing);
        assert_eq!(m.files, 8);
    }
    let n = all.len() as u64;
    assert_eq!(stats(&a).await.backing_fetches, n);
    assert_eq!(stats(&b).await.blobs_read - before, n, "B read each once");
    let files: HashSet<Vec<u8>> = (0..50)
        .map(|i| std::fs::read(work.join(format!("action-{i}/d/f7"))).unwrap())
        .collect();
    assert_eq!(files.len(), 1);
}

#[tokio::test]
async fn invariant_holds_in_jit_mode_when_the_backing_store_is_killed_during_100_uploads() {
    invariant::holds_when_b_is_killed_during_100_uploads(jit_pair().await).await;
}
