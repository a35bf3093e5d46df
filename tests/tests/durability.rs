//! Crash safety and corruption: casd killed with SIGKILL mid-upload, and a
//! corrupted file on disk.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::{client, pseudo_random, Casd, Stack};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_file_on_disk_is_never_served() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let data = pseudo_random(200_000, 1);
    let d = Digest::of(DigestFunction::Sha256, &data);
    client::write(&ch, "", &d, &data, 65536)
        .await
        .expect("write");
    let hex = d.hex();
    let path = s
        .casd
        .layout
        .cas_dir
        .join("cas.v1/sha256")
        .join(&hex[..2])
        .join(&hex);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut bad = data.clone();
    bad[100_000] ^= 0xff;
    std::fs::write(&path, &bad).expect("corrupt");
    let e = client::read(&ch, "", &d)
        .await
        .expect_err("corrupt must not be served");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("corrupt"), "{}", e.message());
    assert_eq!(
        client::find_missing(&ch, "", &[d]).await.expect("fmb"),
        vec![d],
        "reported missing so clients re-upload"
    );
    // Re-upload heals it.
    client::write(&ch, "", &d, &data, 65536)
        .await
        .expect("rewrite");
    assert_eq!(client::read(&ch, "", &d).await.expect("read"), data);
    // A truncated file is caught too.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(&path, &data[..1000]).expect("truncate");
    assert_eq!(
        client::read(&ch, "", &d)
            .await
            .expect_err("truncated")
            .code(),
        Code::NotFound
    );
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_100_uploads_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut casd = Casd::start(tmp.path(), "4GiB", "").await;
    let ch = casd.channel().await;
    let blobs: Arc<Vec<(Digest, Vec<u8>)>> = Arc::new(
        (0..100u64)
            .map(|i| {
                let b = pseudo_random(256 * 1024 + i as usize * 1000, i + 1);
                (Digest::of(DigestFunction::Sha256, &b), b)
            })
            .collect(),
    );
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..100usize {
        let (ch, blobs, acked) = (ch.clone(), Arc::clone(&blobs), Arc::clone(&acked));
        tasks.push(tokio::spawn(async move {
            let (d, data) = &blobs[i];
            // Small chunks so that uploads are in flight when the kill lands.
            if client::write(&ch, "", d, data, 4096).await.is_ok() {
                acked.lock().expect("lock").push(i);
            }
        }));
    }
    // Kill once some, but not all, uploads have been acknowledged.
    for _ in 0..2000 {
        if acked.lock().expect("lock").len() >= 10 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    casd.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked: Vec<usize> = acked.lock().expect("lock").clone();
    assert!(
        !acked.is_empty() && acked.len() < 100,
        "kill landed mid-run: {} acknowledged",
        acked.len()
    );

    casd.restart().await;
    let ch = casd.channel().await;
    // Every acknowledged blob is present and intact.
    for &i in &acked {
        let (d, data) = &blobs[i];
        let got = client::read(&ch, "", d)
            .await
            .unwrap_or_else(|e| panic!("acknowledged blob {i} lost: {e:?}"));
        assert_eq!(&got, data, "acknowledged blob {i} intact");
    }
    // Nothing that is served is corrupt: whatever FindMissingBlobs says is
    // present reads back exactly.
    let all: Vec<Digest> = blobs.iter().map(|b| b.0).collect();
    let missing = client::find_missing(&ch, "", &all).await.expect("fmb");
    for (d, data) in blobs.iter() {
        if !missing.contains(d) {
            assert_eq!(
                &client::read(&ch, "", d).await.expect("present blob reads"),
                data
            );
        }
    }
    // No temp files survive a restart.
    let tmpdir = casd.layout.cas_dir.join("tmp");
    assert_eq!(
        std::fs::read_dir(&tmpdir).expect("tmp dir").count(),
        0,
        "temp files cleaned at startup"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_survives_casd_restart() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let d = Digest::of(DigestFunction::Sha256, b"before");
    client::write(&ch, "", &d, b"before", 3)
        .await
        .expect("write");
    s.casd.kill9();
    let e = client::read(&ch, "", &d).await.expect_err("casd is down");
    // A connection that breaks under a request in flight shows as UNKNOWN
    // (stream reset); a refused reconnect, or a request cancelled by the
    // dying connection, as UNAVAILABLE (never CANCELLED: the client did
    // not cancel it).
    assert!(
        matches!(e.code(), Code::Unavailable | Code::Unknown),
        "{e:?}"
    );
    s.casd.restart().await;
    // The frontend reconnects on its own.
    let mut last = None;
    for _ in 0..100 {
        match client::read(&ch, "", &d).await {
            Ok(b) => {
                assert_eq!(b, b"before");
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(last.is_none(), "frontend did not recover: {last:?}");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_blobs_survive_eviction() {
    use rbe_proto::casd::{casd_client::CasdClient, PinRequest, StatsRequest, UnpinRequest};
    let tmp = tempfile::tempdir().expect("tmp");
    // 1 MiB store: eviction above 950 KiB down to 850 KiB.
    let casd = Casd::start(tmp.path(), "1MiB", "").await;
    let ch = casd.channel().await;
    let blobs: Vec<(Digest, Vec<u8>)> = (0..12u64)
        .map(|i| {
            let b = pseudo_random(100 * 1024, i + 500);
            (Digest::of(DigestFunction::Sha256, &b), b)
        })
        .collect();
    for (d, b) in &blobs[..4] {
        client::write(&ch, "", d, b, 65536).await.expect("write");
    }
    let mut local = CasdClient::new(ch.clone());
    let absent = Digest::of(DigestFunction::Sha256, b"absent");
    let pin = local
        .pin(PinRequest {
            instance_name: String::new(),
            digest_function: 1,
            digests: [blobs[0].0, absent]
                .iter()
                .map(|d| rbe_proto::casd::Digest {
                    hash: d.hex(),
                    size_bytes: d.size as i64,
                })
                .collect(),
            ttl_seconds: 60,
        })
        .await
        .expect("pin")
        .into_inner();
    assert_eq!(
        pin.missing.len(),
        1,
        "absent blobs are reported, not pinned"
    );
    for (d, b) in &blobs[4..] {
        client::write(&ch, "", d, b, 65536).await.expect("write");
    }
    let stats = local
        .stats(StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert!(stats.evicted_blobs > 0, "{stats:?}");
    assert!(stats.bytes <= 1 << 20, "{stats:?}");
    let missing = client::find_missing(&ch, "", &[blobs[0].0, blobs[1].0])
        .await
        .expect("fmb");
    assert_eq!(
        missing,
        vec![blobs[1].0],
        "the pinned oldest blob stays, the unpinned one goes"
    );
    local
        .unpin(UnpinRequest {
            lease: pin.lease.clone(),
        })
        .await
        .expect("unpin");
    let e = local
        .unpin(UnpinRequest { lease: pin.lease })
        .await
        .expect_err("twice");
    assert_eq!(e.code(), Code::NotFound);
}
