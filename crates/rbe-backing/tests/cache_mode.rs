//! casd in `[backing] mode = "cache"` in front of a second real casd, over
//! real gRPC on real Unix sockets: write-through, fetch-through once per
//! digest, wrong bytes refused, a dead backing store named in UNAVAILABLE,
//! and the invariant under kill -9 of the backing store mid-upload.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{batch, blob, find_file, pair, present, stats, BOUND};
use rbe_proto::Digest;
use rbe_testkit::client;
use tonic::Code;

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
    let mut p = pair("").await;
    let a = p.a.channel().await;
    let blobs: Vec<(Digest, Vec<u8>)> = (0..100)
        .map(|i| blob(64 * 1024 + (i as usize % 7) * 300 * 1024, 1000 + i))
        .collect();
    let acked = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(101));
    let uploads: Vec<_> = blobs
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, (d, data))| {
            let (a, acked, start) = (a.clone(), Arc::clone(&acked), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                let r = if i % 2 == 0 {
                    client::write(&a, "", &d, &data, 256 * 1024)
                        .await
                        .map(|_| ())
                } else {
                    match batch(&a, &[(d, data)]).await {
                        Ok(r) if r[0].0 == 0 => Ok(()),
                        Ok(r) => Err(tonic::Status::new(Code::from_i32(r[0].0), r[0].1.clone())),
                        Err(e) => Err(e),
                    }
                };
                if r.is_ok() {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                (d, r)
            })
        })
        .collect();
    start.wait().await;
    let deadline = tokio::time::Instant::now() + BOUND;
    while acked.load(Ordering::SeqCst) < 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    p.b.kill9();
    let mut ok = Vec::new();
    let mut failed = 0;
    for u in uploads {
        let (d, r) = tokio::time::timeout(BOUND, u).await.unwrap().unwrap();
        match r {
            Ok(()) => ok.push(d),
            Err(e) => {
                failed += 1;
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                assert!(e.message().contains(&p.url), "{e:?}");
            }
        }
    }
    eprintln!(
        "{} acknowledged, {failed} failed when B was killed",
        ok.len()
    );
    assert!(
        !ok.is_empty() && failed > 0,
        "the kill was not part-way: {} acked",
        ok.len()
    );

    p.b.restart().await;
    let b = p.b.channel().await;
    let all: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    let in_b = present(&b, &all).await;
    for d in &ok {
        assert!(in_b.contains(d), "A acknowledged {d}, B lacks it");
    }
    let in_a = present(&a, &all).await;
    for d in &in_a {
        assert!(in_b.contains(d), "A reports {d} present, B lacks it");
    }
    assert!(p.a.alive());
}
