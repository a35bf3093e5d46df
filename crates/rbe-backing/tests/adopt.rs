//! A store filled while casd ran without a backing store (it was then the
//! authoritative one) is put in front of one: until every local blob is
//! known to be in the backing store, no local copy answers for it, and
//! none is lost: casd sends the store what it lacks.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{batch, blob, present, stats, until_adopted, BOUND};
use rbe_proto::Digest;
use rbe_testkit::{client, Casd};
use tonic::Code;

fn set_dropin(c: &Casd, dropin: &str) {
    let d = c.layout.config_dir.join("casd.toml.d").join("50-test.toml");
    std::fs::write(d, dropin).unwrap();
}

#[tokio::test]
async fn a_store_filled_alone_answers_for_a_backing_store_only_once_it_holds_every_blob() {
    let dir = tempfile::tempdir_in(rbe_testkit::disk_tmp()).unwrap();
    let mut a = Casd::start(&dir.path().join("a"), "2GiB", "").await;
    let ch = a.channel().await;
    let small: Vec<(Digest, Vec<u8>)> = (0..40).map(|i| blob(1000 + i, 100 + i as u64)).collect();
    for (code, msg) in batch(&ch, &small).await.unwrap() {
        assert_eq!(code, 0, "{msg}");
    }
    let large = blob(3 << 20, 99);
    client::write(&ch, "", &large.0, &large.1, 1 << 20)
        .await
        .unwrap();
    let all: Vec<Digest> = small.iter().map(|b| b.0).chain([large.0]).collect();
    a.kill9();

    // A in front of B, which is not up yet: nothing held here is "present".
    let b_root = dir.path().join("b");
    let url = format!(
        "unix:{}",
        rbe_config::local::LocalLayout::new(&b_root)
            .casd_socket()
            .display()
    );
    let cache = format!("[backing]\nmode = \"cache\"\nurl = \"{url}\"\nrequest_timeout_secs = 5\n");
    set_dropin(&a, &cache);
    a.restart().await;
    let ch = a.channel().await;
    let e = client::find_missing(&ch, "", &all).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(!stats(&ch).await.backing_adopted);

    // B comes up empty: A answers from B, then sends B what it lacks.
    let b = Casd::start(&b_root, "2GiB", "").await;
    let bch = b.channel().await;
    tokio::time::timeout(BOUND, async {
        loop {
            let adopted = stats(&ch).await.backing_adopted;
            let (on_a, on_b) = (present(&ch, &all).await, present(&bch, &all).await);
            assert!(on_a.is_subset(&on_b), "A reports present what B lacks");
            if adopted {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    let everything: HashSet<Digest> = all.iter().copied().collect();
    assert_eq!(present(&bch, &all).await, everything, "nothing was lost");
    assert_eq!(present(&ch, &all).await, everything);
    assert_eq!(client::read(&bch, "", &large.0).await.unwrap(), large.1);

    // Restarted in front of the same store: trusted again without a walk.
    a.kill9();
    a.restart().await;
    until_adopted(&a).await;
    let log = std::fs::read_to_string(a.layout.root.join("casd.log")).unwrap();
    assert_eq!(
        log.matches("answers for nothing until checked").count(),
        1,
        "only the first start in front of B walks the store"
    );

    // A blob stored while A runs alone again must reach B later too.
    a.kill9();
    set_dropin(&a, "");
    a.restart().await;
    let late = blob(5000, 98);
    let ch = a.channel().await;
    client::write(&ch, "", &late.0, &late.1, 1 << 20)
        .await
        .unwrap();
    a.kill9();
    set_dropin(&a, &cache);
    a.restart().await;
    until_adopted(&a).await;
    assert_eq!(client::read(&bch, "", &late.0).await.unwrap(), late.1);
}
