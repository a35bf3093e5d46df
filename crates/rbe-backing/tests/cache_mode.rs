//! casd in `[backing] mode = "cache"` in front of a second real casd, over
//! real gRPC on real Unix sockets: write-through, fetch-through once per
//! digest, wrong bytes refused, a dead backing store named in UNAVAILABLE,
//! and the invariant under kill -9 of the backing store mid-upload.
#![allow(clippy::unwrap_used)]

mod common;
mod invariant;

use std::collections::HashSet;
use std::sync::Arc;

use common::{batch, blob, find_file, pair, pair_with, present, stats, BOUND};
use rbe_testkit::client;
use tonic::Code;

/// Stats names the store and its id, the one the cluster compares; a
/// casd without `[backing]` reports none.
#[tokio::test]
async fn stats_report_the_backing_store_and_its_id() {
    let p = pair_with("", "store_id = \"team-cas\"\n").await;
    let s = stats(&p.a.channel().await).await;
    assert_eq!(s.backing_address, p.url);
    assert_eq!(s.backing_mode, "cache");
    let named = rbe_config::Backing {
        mode: rbe_config::BackingMode::Cache,
        url: "grpc://elsewhere:1".into(),
        store_id: "team-cas".into(),
        ..Default::default()
    };
    assert_eq!(s.backing_store_id, named.store_id());
    let b = stats(&p.b.channel().await).await;
    assert_eq!(
        (
            b.backing_store_id,
            b.backing_address.as_str(),
            b.backing_mode.as_str()
        ),
        (0, "", "none")
    );
}

#[tokio::test]
async fn uploads_through_a_reach_b_and_b_answers_for_a() {
    let p = pair("").await;
    let (a, b) = (p.a.channel().await, p.b.channel().await);
    let small = blob(10_000, 1);
    let large = blob(3 << 20, 2);
    assert_eq!(
        batch(&a, std::slice::from_ref(&small)).await.unwrap()[0].0,
        0
    );
    assert_eq!(
        client::write(&a, "", &large.0, &large.1, 1 << 20)
            .await
            .unwrap(),
        large.0.size as i64
    );
    // A blob named twice in one batch is acknowledged twice.
    let twice = blob(3000, 5);
    let r = batch(&a, &[twice.clone(), twice.clone()]).await.unwrap();
    assert_eq!((r[0].0, r[1].0), (0, 0), "{r:?}");
    assert!(present(&b, &[twice.0]).await.contains(&twice.0));
    let both = [small.0, large.0];
    assert_eq!(
        present(&b, &both).await.len(),
        2,
        "B holds what A acknowledged"
    );
    assert_eq!(present(&a, &both).await.len(), 2);

    // A blob only B has is present for A's clients and readable through A.
    let only_b = blob(2 << 20, 3);
    client::write(&b, "", &only_b.0, &only_b.1, 1 << 20)
        .await
        .unwrap();
    let absent = blob(100, 4).0;
    assert_eq!(
        present(&a, &[only_b.0, absent]).await,
        HashSet::from([only_b.0]),
        "FindMissingBlobs on A: B's blob present, a blob nobody has missing"
    );
    assert_eq!(client::read(&a, "", &only_b.0).await.unwrap(), only_b.1);
    assert_eq!(stats(&a).await.backing_fetches, 1);
    // Now local: read again without asking B.
    let before = stats(&b).await.blobs_read;
    assert_eq!(client::read(&a, "", &only_b.0).await.unwrap(), only_b.1);
    assert_eq!(stats(&b).await.blobs_read, before);
}

#[tokio::test]
async fn a_read_miss_is_fetched_from_the_backing_store_once_for_50_readers() {
    let p = pair("").await;
    let (a, b) = (p.a.channel().await, p.b.channel().await);
    let (d, data) = blob(5 << 20, 7);
    client::write(&b, "", &d, &data, 1 << 20).await.unwrap();
    let before = stats(&b).await.blobs_read;
    let data = Arc::new(data);
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let (a, data) = (a.clone(), Arc::clone(&data));
            tokio::spawn(async move {
                let got = client::read(&a, "", &d).await.unwrap();
                assert!(got == *data, "a reader got other bytes");
            })
        })
        .collect();
    for r in readers {
        tokio::time::timeout(BOUND, r).await.unwrap().unwrap();
    }
    assert_eq!(stats(&b).await.blobs_read - before, 1, "B read once");
    assert_eq!(stats(&a).await.backing_fetches, 1);
}

#[tokio::test]
async fn wrong_bytes_from_the_backing_store_are_refused_and_not_stored() {
    // B serves what its disk holds without checking it: a lying store.
    let p = pair("[storage]\nverify_reads = false\n").await;
    let (a, b) = (p.a.channel().await, p.b.channel().await);
    for (size, seed) in [(1000, 11), (3 << 20, 12)] {
        let (d, data) = blob(size, seed);
        client::write(&b, "", &d, &data, 1 << 20).await.unwrap();
        let file = find_file(&p.b.layout.cas_dir, &d.hex()).unwrap();
        let mut bad = data.clone();
        bad[size / 2] ^= 0xff;
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::fs::write(&file, &bad).unwrap();

        let e = tokio::time::timeout(BOUND, client::read(&a, "", &d))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(
            e.message().contains(&p.url) && e.message().contains("wrong bytes"),
            "{e:?}"
        );
        assert!(
            find_file(&p.a.layout.cas_dir, &d.hex()).is_none(),
            "stored on A"
        );
    }
    let s = stats(&a).await;
    assert_eq!((s.blobs, s.backing_fetches), (0, 0));
}

#[tokio::test]
async fn a_dead_backing_store_is_unavailable_naming_it_and_nothing_hangs() {
    let mut p = pair("").await;
    let a = p.a.channel().await;
    let kept = blob(5000, 20);
    assert_eq!(
        batch(&a, std::slice::from_ref(&kept)).await.unwrap()[0].0,
        0
    );
    p.b.kill9();

    let (small, large) = (blob(5000, 21), blob(2 << 20, 22));
    let r = tokio::time::timeout(BOUND, batch(&a, std::slice::from_ref(&small)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r[0].0, Code::Unavailable as i32, "{r:?}");
    assert!(r[0].1.contains(&p.url), "{r:?}");
    let e = tokio::time::timeout(BOUND, client::write(&a, "", &large.0, &large.1, 1 << 20))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&p.url), "{e:?}");
    let e = tokio::time::timeout(BOUND, client::read(&a, "", &small.0))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&p.url), "{e:?}");
    let e = tokio::time::timeout(BOUND, client::find_missing(&a, "", &[small.0, kept.0]))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // What B acknowledged before it died is still answered locally.
    assert!(client::find_missing(&a, "", &[kept.0])
        .await
        .unwrap()
        .is_empty());
    // Nothing of the failed uploads is advertised once B is back.
    p.b.restart().await;
    assert!(present(&a, &[small.0, large.0]).await.is_empty());
    assert!(p.a.alive());
}

#[tokio::test]
async fn invariant_holds_when_the_backing_store_is_killed_during_100_uploads() {
    invariant::holds_when_b_is_killed_during_100_uploads(pair("").await).await;
}
