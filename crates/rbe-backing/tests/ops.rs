//! Operability of casd in front of a backing store (a second real casd):
//! the existence cache spares the store repeated FindMissingBlobs
//! questions within its bound, every operation is counted and timed in
//! Stats and shown by the real `rbectl status`, and a dead store's
//! failures are counted and logged with their fields, rate-limited.
#![allow(clippy::unwrap_used)]

mod common;

use common::{batch, blob, get_result, pair, pair_with, present, stats, update_result_in, BOUND};
use rbe_proto::casd::{BackingOpStats, BackingStats};
use rbe_proto::reapi::ActionResult;
use rbe_proto::Digest;
use rbe_testkit::client;
use tonic::transport::Channel;
use tonic::Code;

async fn backing(ch: &Channel) -> BackingStats {
    stats(ch)
        .await
        .backing
        .expect("Stats.backing with [backing]")
}

fn op<'a>(b: &'a BackingStats, name: &str) -> &'a BackingOpStats {
    b.ops.iter().find(|o| o.op == name).expect(name)
}

#[tokio::test]
async fn a_second_find_missing_of_the_same_digests_asks_the_backing_store_nothing() {
    let p = pair("").await;
    let (a, b) = (p.a.channel().await, p.b.channel().await);
    let held: Vec<(Digest, Vec<u8>)> = (0..20).map(|i| blob(1000, 100 + i)).collect();
    assert!(batch(&b, &held).await.unwrap().iter().all(|r| r.0 == 0));
    let ds: Vec<Digest> = held.iter().map(|(d, _)| *d).collect();
    let absent: Vec<Digest> = (0..5).map(|i| blob(10, 200 + i).0).collect();

    let all: Vec<Digest> = ds.iter().chain(&absent).copied().collect();
    assert_eq!(present(&a, &all).await.len(), 20);
    let s = backing(&a).await;
    assert_eq!(op(&s, "find_missing").count, 1);
    assert_eq!((s.find_missing_asked, s.find_missing_absent), (25, 5));
    assert_eq!(s.existence_cache_entries, 20, "only what B holds is kept");

    // The same digests again: answered without asking B.
    assert_eq!(present(&a, &ds).await.len(), 20);
    let s = backing(&a).await;
    assert_eq!(op(&s, "find_missing").count, 1, "no second question");
    assert_eq!((s.find_missing_cached, s.find_missing_asked), (20, 25));

    // A blob B lacked is asked about again (a client is uploading it).
    assert_eq!(present(&a, &all).await.len(), 20);
    let s = backing(&a).await;
    assert_eq!(op(&s, "find_missing").count, 2);
    assert_eq!((s.find_missing_cached, s.find_missing_asked), (40, 30));

    // An upload B acknowledged is known present too, even once it is no
    // longer local; a local hit is counted as such.
    let up = blob(3000, 300);
    assert_eq!(batch(&a, std::slice::from_ref(&up)).await.unwrap()[0].0, 0);
    assert_eq!(backing(&a).await.existence_cache_entries, 21);
    assert!(present(&a, &[up.0]).await.contains(&up.0));
    let s = backing(&a).await;
    assert_eq!((s.find_missing_local, op(&s, "find_missing").count), (1, 2));
}

#[tokio::test]
async fn the_existence_cache_holds_its_bound() {
    let p = pair_with("", "existence_cache_entries = 10\n").await;
    let (a, b) = (p.a.channel().await, p.b.channel().await);
    let held: Vec<(Digest, Vec<u8>)> = (0..30).map(|i| blob(500, 400 + i)).collect();
    assert!(batch(&b, &held).await.unwrap().iter().all(|r| r.0 == 0));
    let ds: Vec<Digest> = held.iter().map(|(d, _)| *d).collect();

    assert_eq!(present(&a, &ds).await.len(), 30);
    assert_eq!(backing(&a).await.existence_cache_entries, 10);
    // Only the 10 kept are spared; the 20 pushed out are asked again.
    assert_eq!(present(&a, &ds).await.len(), 30);
    let s = backing(&a).await;
    assert_eq!(op(&s, "find_missing").count, 2);
    assert_eq!((s.find_missing_cached, s.find_missing_asked), (10, 50));
    assert_eq!(s.existence_cache_entries, 10);
}

#[tokio::test]
async fn every_operation_is_counted_in_stats_and_shown_by_rbectl_status() {
    let p = pair("").await;
    let (a, b) = (p.a.channel().await, p.b.channel().await);
    // write_batch and write through A.
    let small = blob(2000, 500);
    assert_eq!(
        batch(&a, std::slice::from_ref(&small)).await.unwrap()[0].0,
        0
    );
    let large = blob(2 << 20, 501);
    client::write(&a, "", &large.0, &large.1, 1 << 20)
        .await
        .unwrap();
    // A read miss fetched from B, then a local read.
    let only_b = blob(5000, 502);
    client::write(&b, "", &only_b.0, &only_b.1, 1 << 20)
        .await
        .unwrap();
    assert_eq!(client::read(&a, "", &only_b.0).await.unwrap(), only_b.1);
    assert_eq!(client::read(&a, "", &only_b.0).await.unwrap(), only_b.1);
    // FindMissingBlobs of a blob nobody has.
    let nobody = blob(10, 503).0;
    assert!(present(&a, &[nobody]).await.is_empty());
    // The action cache: written through, a local hit, a miss.
    let action = blob(40, 504).0;
    let ar = ActionResult {
        stdout_raw: b"hello".to_vec(),
        ..Default::default()
    };
    update_result_in(&a, "", &action, ar).await.unwrap();
    for (d, ok) in [(action, true), (nobody, false)] {
        let r = get_result(&a, &d).await;
        assert_eq!(r.is_ok(), ok, "{r:?}");
    }

    let s = stats(&a).await;
    let bs = s.backing.clone().unwrap();
    assert_eq!(
        (bs.address.as_str(), bs.mode.as_str()),
        (p.url.as_str(), "cache")
    );
    for (name, count) in [
        ("find_missing", 1),
        ("read", 1),
        ("write", 1),
        // The batch, and the inlined stdout of the action result.
        ("write_batch", 2),
        ("get_action_result", 1),
        ("update_action_result", 1),
    ] {
        let o = op(&bs, name);
        assert_eq!((o.count, o.errors), (count, 0), "{name}: {o:?}");
        assert!(o.p50_us.is_some() && o.p99_us >= o.p50_us, "{name}: {o:?}");
    }
    assert_eq!((bs.reads_local, bs.reads_fetched), (1, 1));
    assert_eq!(
        (bs.ac_hits_local, bs.ac_hits_backing, bs.ac_misses),
        (1, 0, 1)
    );
    assert_eq!(s.backing_errors, 0);

    let out = std::process::Command::new(rbe_testkit::bin("rbectl"))
        .arg("status")
        .arg("--socket")
        .arg(p.a.layout.casd_socket())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("backing store {} (mode cache)", p.url)),
        "{text}"
    );
    for name in [
        "find_missing",
        "read",
        "write",
        "write_batch",
        "get_action_result",
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} line: {text}"));
        assert!(!line.contains(" - "), "{name} has quantiles: {line}");
    }
    assert!(
        text.contains("reads: 1 local, 1 from the backing store (50.0% local)"),
        "{text}"
    );
    assert!(
        text.contains("action cache: 1 local hits, 0 from the backing store, 1 misses"),
        "{text}"
    );

    // Without [backing] there is no backing block.
    let out = std::process::Command::new(rbe_testkit::bin("rbectl"))
        .arg("status")
        .arg("--socket")
        .arg(p.b.layout.casd_socket())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("casd at"), "{text}");
    assert!(!text.contains("backing store"), "{text}");
}

#[tokio::test]
async fn a_dead_backing_stores_failures_are_counted_and_logged_rate_limited() {
    let mut p = pair("").await;
    let a = p.a.channel().await;
    p.b.kill9();

    let storm = 200;
    for i in 0..storm {
        let d = blob(10, 600 + i).0;
        let e = tokio::time::timeout(BOUND, client::find_missing(&a, "", &[d]))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    }
    let up = blob(3000, 900);
    let e = tokio::time::timeout(BOUND, client::write(&a, "", &up.0, &up.1, 1 << 20))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let r = batch(&a, &[blob(100, 901)]).await.unwrap();
    assert_eq!(r[0].0, Code::Unavailable as i32);

    let s = stats(&a).await;
    let bs = s.backing.clone().unwrap();
    assert_eq!(op(&bs, "find_missing").errors, storm);
    assert_eq!(op(&bs, "find_missing").count, storm);
    assert_eq!(
        (op(&bs, "write").errors, op(&bs, "write_batch").errors),
        (1, 1)
    );
    assert_eq!(s.backing_errors, storm + 2);

    // Each failure is either a line or counted as left out; a storm is
    // not a line per request.
    let log = std::fs::read_to_string(p.a.layout.root.join("casd.log")).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("backing store request failed"))
        .collect();
    let fm: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("find_missing"))
        .collect();
    assert!(fm.len() < storm as usize, "{} lines", fm.len());
    assert_eq!(fm.len() as u64 + bs.log_lines_suppressed, storm, "{log}");
    for l in &lines {
        assert!(l.contains("backing=") && l.contains(&p.url), "{l}");
        assert!(l.contains("backing_op=") && l.contains("error="), "{l}");
    }
    for name in ["write", "write_batch"] {
        let l = lines
            .iter()
            .find(|l| {
                l.contains(&format!("backing_op=\"{name}\""))
                    || l.contains(&format!("backing_op={name} "))
            })
            .unwrap_or_else(|| panic!("no {name} line: {log}"));
        assert!(l.contains("digest="), "{l}");
    }
    assert!(fm[0].contains("digest="), "one digest asked: {}", fm[0]);
}
