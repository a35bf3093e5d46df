//! A backing store over a real network link that is cut or slowed: casd
//! A runs in its own network namespace, the store (a second casd, B,
//! reached over `grpc://` TCP through a forwarder listening in B's
//! namespace) in another, joined by a veth pair. Cutting the link (B's
//! end down: A's packets vanish, nothing is refused) during 100 uploads
//! ends every upload with UNAVAILABLE within the timeouts, and the
//! invariant holds once the link is back. A token bucket filter on the
//! veth makes the store slow: every answer stays right, and a blob far
//! larger than a timeout's worth of bytes still goes both ways.
//! Without root (or without `ip`, `tc`'s `tbf`) the tests print why and
//! pass.
#![allow(clippy::unwrap_used)]

mod common;
mod invariant;

use std::path::Path;

use common::netns::{Link, B_IP};
use common::proxy::{Proxy, Upstream};
use common::stores::{key, nginx};
use common::{batch, blob, get_result, present, stats, update_result, BOUND};
use rbe_testkit::{client, Casd};

/// A in `link`'s A namespace in front of B (a casd in `dir/b`) at
/// `grpc://B_IP:8980`, with `timeout` as the request (and idle) timeout.
struct Net {
    a: Casd,
    b: Casd,
    url: String,
    _proxy: Proxy,
}

async fn net(link: &Link, dir: &Path, timeout: u64) -> Net {
    let b = Casd::start(&dir.join("b"), "2GiB", "").await;
    // Ports in B's namespace are its own: any will do.
    let proxy = Proxy::start(
        link.listen_in_b(8980),
        Upstream::Unix(b.layout.casd_socket()),
    );
    let url = format!("grpc://{B_IP}:8980");
    let a = Casd::start_wrapped(
        &dir.join("a"),
        "2GiB",
        &format!(
            "[backing]\nmode = \"cache\"\nurl = \"{url}\"\nrequest_timeout_secs = {timeout}\n\
             connect_timeout_secs = 2\n"
        ),
        &link.exec_in_a(),
    )
    .await;
    Net {
        a,
        b,
        url,
        _proxy: proxy,
    }
}

/// `f`, which must end within twice the usual bound (a slow link).
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND * 2, f).await.unwrap()
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rbe-netfaults-")
        .tempdir_in(rbe_testkit::disk_tmp())
        .unwrap()
}

fn link_or_skip() -> Option<Link> {
    match Link::new() {
        Ok(l) => Some(l),
        Err(why) => {
            rbe_testkit::skip(&format!("no network namespaces here: {why}"));
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_holds_when_the_backing_link_is_cut_during_100_uploads() {
    let Some(link) = link_or_skip() else { return };
    let dir = tmp();
    let mut n = net(&link, dir.path(), 3).await;
    let a = n.a.channel().await;
    // Every upload ends (UNAVAILABLE naming the store, or acknowledged)
    // within the bound: a cut link is noticed by the timeouts, not by a
    // refusal.
    let (blobs, ok) = invariant::upload_100_and_kill(&a, &n.url, || link.down()).await;
    link.up();
    invariant::holds(&a, &n.b.channel().await, &blobs, &ok).await;
    // And the link being back is enough: the next upload goes through.
    let (d, data) = blob(300_000, 77);
    let r = tokio::time::timeout(BOUND, batch(&a, &[(d, data)]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r[0].0, 0, "{r:?}");
    assert!(present(&n.b.channel().await, &[d]).await.contains(&d));
    assert!(n.a.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backing_link_degrades_throughput_never_correctness() {
    let Some(link) = link_or_skip() else { return };
    // 2 MB/s each way and a 2 s timeout: the large blob takes several
    // timeouts' worth of time to cross, and must not be cut for it while
    // its bytes flow.
    if let Err(why) = link.rate_limit("16mbit") {
        rbe_testkit::skip(&format!("no tbf qdisc: {why}"));
        return;
    }
    let dir = tmp();
    let n = net(&link, dir.path(), 2).await;
    let (a, b) = (n.a.channel().await, n.b.channel().await);
    let large = blob(12 << 20, 81);
    let small = blob(20_000, 82);

    // Uploads through A reach B.
    let r = bounded(batch(&a, std::slice::from_ref(&small)))
        .await
        .unwrap();
    assert_eq!(r[0].0, 0, "{r:?}");
    let t = std::time::Instant::now();
    assert_eq!(
        bounded(client::write(&a, "", &large.0, &large.1, 1 << 20))
            .await
            .unwrap(),
        large.0.size as i64
    );
    // Informational: how many timeouts' worth the blob took to cross.
    eprintln!("12 MiB written through A in {:?}", t.elapsed());
    assert_eq!(present(&b, &[small.0, large.0]).await.len(), 2);

    // Reads through A of what only B has, existence, the action cache.
    let (only_b, only_b_small) = (blob(12 << 20, 83), blob(5000, 84));
    for (d, data) in [&only_b, &only_b_small] {
        client::write(&b, "", d, data, 1 << 20).await.unwrap();
    }
    let absent = blob(100, 85).0;
    assert_eq!(
        present(&a, &[only_b.0, only_b_small.0, absent]).await,
        [only_b.0, only_b_small.0].into_iter().collect()
    );
    let t = std::time::Instant::now();
    assert!(bounded(client::read(&a, "", &only_b.0)).await.unwrap() == only_b.1);
    eprintln!("12 MiB read through A in {:?}", t.elapsed());
    let action = blob(60, 86).0;
    update_result(&a, &action, &small.0).await.unwrap();
    assert_eq!(get_result(&b, &action).await.unwrap().output_files.len(), 1);
    let action_b = blob(60, 87).0;
    update_result(&b, &action_b, &only_b_small.0).await.unwrap();
    let got = bounded(get_result(&a, &action_b)).await.unwrap();
    assert_eq!(got.output_files[0].digest, Some(only_b_small.0.to_reapi()));
    assert_eq!(stats(&a).await.backing_fetches, 2);
    assert_eq!(stats(&a).await.backing_errors, 0);
}

/// The same over WebDAV: nginx behind a forwarder in B's namespace, the
/// link at 2 MB/s and a 2 s timeout. A 12 MiB PUT and GET each take
/// several timeouts and must not be cut for it while their bytes flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_webdav_link_does_not_cut_large_blobs() {
    let Some(link) = link_or_skip() else { return };
    if let Err(why) = link.rate_limit("16mbit") {
        rbe_testkit::skip(&format!("no tbf qdisc: {why}"));
        return;
    }
    let dir = tmp();
    let Some(s) = nginx(dir.path()).await else {
        rbe_testkit::skip("nginx is not installed (apt-get install nginx-light)");
        return;
    };
    let _proxy = Proxy::start(
        link.listen_in_b(8080),
        Upstream::Tcp(([127, 0, 0, 1], s.port).into()),
    );
    let a = Casd::start_wrapped(
        &dir.path().join("a"),
        "2GiB",
        &format!(
            "[backing]\nmode = \"cache\"\nurl = \"http://{B_IP}:8080/dav/s\"\n\
             request_timeout_secs = 2\nconnect_timeout_secs = 2\n"
        ),
        &link.exec_in_a(),
    )
    .await;
    let ach = a.channel().await;
    let up = blob(12 << 20, 95);
    let t = std::time::Instant::now();
    assert_eq!(
        bounded(client::write(&ach, "", &up.0, &up.1, 1 << 20))
            .await
            .unwrap(),
        up.0.size as i64
    );
    eprintln!("12 MiB PUT through A in {:?}", t.elapsed());
    let root = dir.path().join("root/dav/s");
    assert!(std::fs::read(root.join(key(&up.0))).unwrap() == up.1);
    let (d, data) = blob(12 << 20, 96);
    let f = root.join(key(&d));
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, &data).unwrap();
    let t = std::time::Instant::now();
    assert!(bounded(client::read(&ach, "", &d)).await.unwrap() == data);
    eprintln!("12 MiB GET through A in {:?}", t.elapsed());
}
