//! casd in `[backing] mode = "cache"` in front of BuildGrid's own server
//! (`bgd server`: disk CAS, ByteStream, LRU action cache) over `grpc://`,
//! under a non-empty instance name: a third-party REAPI store, not another
//! rbe. Skips, saying why, when bgd is not installed (`tests/run-all.sh`
//! installs it).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::{
    batch, blob, get_result_in, present, result_with, stats, update_result, update_result_in,
};
use rbe_proto::Digest;
use rbe_testkit::buildgrid::Bgd;
use rbe_testkit::{client, Casd};
use tonic::transport::Channel;
use tonic::Code;

const INSTANCE: &str = "ci/main";

/// What BuildGrid itself says is missing, asked under its instance name.
async fn missing_in_bgd(bgd: &Channel, ds: &[Digest]) -> HashSet<Digest> {
    client::find_missing(bgd, INSTANCE, ds)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casd_in_cache_mode_writes_and_reads_through_buildgrid() {
    let dir = tempfile::Builder::new()
        .prefix("rbe-backing-bgd-")
        .tempdir_in(rbe_testkit::disk_tmp())
        .unwrap();
    let Some(bgd) = Bgd::start(&dir.path().join("bgd"), INSTANCE).await else {
        return;
    };
    let a = Casd::start(
        &dir.path().join("a"),
        "2GiB",
        &format!(
            "[backing]\nmode = \"cache\"\nurl = \"{}\"\ninstance_name = \"{INSTANCE}\"\n\
             request_timeout_secs = 30\n",
            bgd.url()
        ),
    )
    .await;
    let (a, b) = (a.channel().await, bgd.channel());

    // Uploads through A, batched and streamed (bigger than a batch and
    // than gRPC's 4 MiB message), reach BuildGrid.
    let small: Vec<_> = (0..40).map(|i| blob(1000 + i, 100 + i as u64)).collect();
    let r = batch(&a, &small).await.unwrap();
    assert!(r.iter().all(|(c, _)| *c == 0), "{r:?}");
    let large = blob(6 << 20, 2);
    assert_eq!(
        client::write(&a, "", &large.0, &large.1, 1 << 20)
            .await
            .unwrap(),
        large.0.size as i64
    );
    let mut all: Vec<Digest> = small.iter().map(|b| b.0).collect();
    all.push(large.0);
    assert!(
        missing_in_bgd(&b, &all).await.is_empty(),
        "BuildGrid holds every blob A acknowledged"
    );
    assert_eq!(
        client::read(&b, INSTANCE, &large.0).await.unwrap(),
        large.1,
        "and serves its bytes"
    );

    // Blobs only BuildGrid has: FindMissingBlobs on A is BuildGrid's
    // answer, and a read miss is fetched from it (batched and streamed).
    let only_b = [blob(2000, 7), blob(5 << 20, 8)];
    for (d, data) in &only_b {
        client::write(&b, INSTANCE, d, data, 1 << 20).await.unwrap();
    }
    let absent = blob(100, 9).0;
    assert_eq!(
        present(&a, &[only_b[0].0, only_b[1].0, absent]).await,
        HashSet::from([only_b[0].0, only_b[1].0]),
    );
    let fetched = stats(&a).await.backing_fetches;
    for (d, data) in &only_b {
        assert_eq!(&client::read(&a, "", d).await.unwrap(), data);
    }
    assert_eq!(stats(&a).await.backing_fetches, fetched + 2);
    let e = client::read(&a, "", &absent).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // The action cache, written through A ...
    let action = blob(50, 10).0;
    update_result(&a, &action, &small[0].0).await.unwrap();
    let got = get_result_in(&b, INSTANCE, &action).await.unwrap();
    assert_eq!(got.output_files.len(), 1, "BuildGrid has A's result");
    // ... and read through A from BuildGrid, outputs fetched first.
    let out = blob(3 << 20, 11);
    client::write(&b, INSTANCE, &out.0, &out.1, 1 << 20)
        .await
        .unwrap();
    let action2 = blob(50, 12).0;
    update_result_in(&b, INSTANCE, &action2, result_with(&out.0))
        .await
        .unwrap();
    assert_eq!(
        get_result_in(&a, "", &action2)
            .await
            .unwrap()
            .output_files
            .len(),
        1
    );
    assert!(
        present(&a, &[out.0]).await.contains(&out.0),
        "the result's output is there for the client"
    );
    assert_eq!(client::read(&a, "", &out.0).await.unwrap(), out.1);
    // A result BuildGrid holds without its output is a miss on A.
    let action3 = blob(50, 13).0;
    update_result_in(&b, INSTANCE, &action3, result_with(&blob(10, 14).0))
        .await
        .unwrap();
    assert_eq!(
        get_result_in(&a, "", &action3).await.unwrap_err().code(),
        Code::NotFound
    );
}
