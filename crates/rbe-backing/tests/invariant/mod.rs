//! The backing-store invariant when the backing store fails mid upload
//! (kill -9, a cut link), shared by the cache-mode, jit-mode, object
//! storage and network-fault tests.
// Each test binary that includes this module uses a different part of it.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{batch, blob, present, Pair, BOUND};
use rbe_proto::Digest;
use rbe_testkit::client;
use tonic::transport::Channel;
use tonic::Code;

/// During 100 concurrent uploads through A (half ByteStream, half batch)
/// B is killed: every upload A acknowledged is in B, and A reports
/// present nothing B lacks.
pub async fn holds_when_b_is_killed_during_100_uploads(mut p: Pair) {
    let a = p.a.channel().await;
    let url = p.url.clone();
    let (blobs, ok) = upload_100_and_kill(&a, &url, || p.b.kill9()).await;
    p.b.restart().await;
    holds(&a, &p.b.channel().await, &blobs, &ok).await;
    assert!(p.a.alive());
}

/// The invariant once the store `b` is reachable again: every blob of
/// `ok` (acknowledged by `a`) is in `b`, and `a` reports present none of
/// `blobs` that `b` lacks.
pub async fn holds(a: &Channel, b: &Channel, blobs: &[(Digest, Vec<u8>)], ok: &[Digest]) {
    let all: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    // The first questions after a cut may still go down the dead
    // connection until keep-alive drops it: UNAVAILABLE, asked again.
    let deadline = tokio::time::Instant::now() + BOUND;
    let in_a = loop {
        match client::find_missing(a, "", &all).await {
            Ok(missing) => {
                break all
                    .iter()
                    .filter(|d| !missing.contains(d))
                    .copied()
                    .collect::<Vec<_>>()
            }
            Err(e) if e.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("FindMissingBlobs on A: {e:?}"),
        }
    };
    // B only gains blobs (a write the cut left in flight may land
    // late), so asking it after A cannot miss one A saw there.
    let in_b = present(b, &all).await;
    for d in ok {
        assert!(in_b.contains(d), "A acknowledged {d}, B lacks it");
    }
    for d in &in_a {
        assert!(in_b.contains(d), "A reports {d} present, B lacks it");
    }
}

/// Starts 100 concurrent uploads through `a` (half ByteStream, half
/// batch), calls `kill` (the backing store at `url`) once 2 are
/// acknowledged (early: on a loaded machine the rest finish fast), and waits for all: each failure must be UNAVAILABLE
/// naming `url`, and the kill must have come part-way. Returns the blobs
/// and the digests `a` acknowledged.
pub async fn upload_100_and_kill(
    a: &Channel,
    url: &str,
    kill: impl FnOnce(),
) -> (Vec<(Digest, Vec<u8>)>, Vec<Digest>) {
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
    while acked.load(Ordering::SeqCst) < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    kill();
    let mut ok = Vec::new();
    let mut failed = 0;
    for u in uploads {
        let (d, r) = tokio::time::timeout(BOUND, u).await.unwrap().unwrap();
        match r {
            Ok(()) => ok.push(d),
            Err(e) => {
                failed += 1;
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                assert!(e.message().contains(url), "{e:?}");
            }
        }
    }
    eprintln!(
        "{} acknowledged, {failed} failed when the backing store was killed",
        ok.len()
    );
    assert!(
        !ok.is_empty() && failed > 0,
        "the kill was not part-way: {} acked",
        ok.len()
    );
    (blobs, ok)
}
