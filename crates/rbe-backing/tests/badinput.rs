//! Bad input from a backing store: a stream cut part-way (a TCP proxy in
//! the test passes the first bytes of the store's answer, then closes
//! both sockets) in front of a gRPC store (a second casd) and a WebDAV
//! store (nginx), and a WebDAV store that refuses our credentials
//! (nginx `auth_basic`). Each is refused naming the store, nothing is
//! stored or advertised, and once the fault is gone the same request
//! succeeds.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::proxy::{Proxy, Upstream};
use common::stores::{dav_backing, key, nginx, nginx_with, tmp};
use common::{batch, blob, find_file, present, stats, BOUND};
use rbe_proto::Digest;
use rbe_testkit::{client, Casd};
use tonic::transport::Channel;
use tonic::Code;

/// Reads `d` through `a`, which must fail: UNAVAILABLE or NOT_FOUND
/// (what a short stream is) naming `url`, and nothing of it kept.
async fn read_is_refused(a: &Casd, ch: &Channel, d: &Digest, url: &str) {
    let e = tokio::time::timeout(BOUND, client::read(ch, "", d))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::Unavailable | Code::NotFound),
        "{e:?}"
    );
    assert!(e.message().contains(url), "{e:?}");
    assert!(find_file(&a.layout.cas_dir, &d.hex()).is_none(), "stored");
    assert_eq!(stats(ch).await.blobs, 0);
}

/// Reads `d` through `ch` until it succeeds (the first attempts after the
/// fault may meet the connection it left broken); its bytes.
async fn read_eventually(ch: &Channel, d: &Digest) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match client::read(ch, "", d).await {
            Ok(b) => return b,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("retrying after {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_stream_cut_part_way_is_refused_and_nothing_stored() {
    let dir = tmp();
    let b = Casd::start(&dir.path().join("b"), "2GiB", "").await;
    let proxy = Proxy::local(Upstream::Unix(b.layout.casd_socket())).await;
    proxy.cut_after(1 << 20);
    let url = format!("grpc://127.0.0.1:{}", proxy.port);
    let a = Casd::start(
        &dir.path().join("a"),
        "2GiB",
        &format!("[backing]\nmode = \"cache\"\nurl = \"{url}\"\nrequest_timeout_secs = 5\n"),
    )
    .await;
    let ach = a.channel().await;
    let (d, data) = blob(8 << 20, 91);
    client::write(&b.channel().await, "", &d, &data, 1 << 20)
        .await
        .unwrap();
    read_is_refused(&a, &ach, &d, &url).await;
    proxy.fix();
    assert!(read_eventually(&ach, &d).await == data);
    assert_eq!(stats(&ach).await.backing_fetches, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webdav_stream_cut_part_way_is_refused_and_nothing_stored() {
    let dir = tmp();
    let Some(s) = nginx(dir.path()).await else {
        rbe_testkit::skip("nginx is not installed (apt-get install nginx-light)");
        return;
    };
    let proxy = Proxy::local(Upstream::Tcp(([127, 0, 0, 1], s.port).into())).await;
    proxy.cut_after(1 << 20);
    let url = format!("http://127.0.0.1:{}/dav/t", proxy.port);
    let (d, data) = blob(8 << 20, 92);
    let f = dir.path().join("root/dav/t").join(key(&d));
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, &data).unwrap();
    let a = Casd::start(
        &dir.path().join("a"),
        "2GiB",
        &dav_backing(proxy.port, "dav/t"),
    )
    .await;
    let ach = a.channel().await;
    read_is_refused(&a, &ach, &d, &url).await;
    proxy.fix();
    assert!(read_eventually(&ach, &d).await == data);
}

/// nginx's WebDAV under `/auth/`, wanting user `rbe` with password
/// `right` (an htpasswd file in `{PLAIN}` form, which nginx reads).
async fn nginx_with_basic_auth(dir: &Path) -> Option<common::stores::Server> {
    let users = dir.join("htpasswd");
    std::fs::write(&users, "rbe:{PLAIN}right\n").unwrap();
    std::fs::create_dir_all(dir.join("root/auth")).unwrap();
    let location = format!(
        "location /auth/ {{ auth_basic \"rbe\"; auth_basic_user_file {}; \
         dav_methods PUT DELETE; create_full_put_path on; dav_access user:rw; }}",
        users.display()
    );
    nginx_with(dir, "", &location).await
}

#[tokio::test]
async fn webdav_with_wrong_credentials_is_unavailable_naming_the_store() {
    let dir = tmp();
    let Some(s) = nginx_with_basic_auth(dir.path()).await else {
        rbe_testkit::skip("nginx is not installed (apt-get install nginx-light)");
        return;
    };
    let url = format!("http://127.0.0.1:{}/auth/ci", s.port);
    let start = |name: &str, password: &str| {
        let creds = dir.path().join(format!("{name}.credentials"));
        std::fs::write(&creds, format!("username = rbe\npassword = {password}\n")).unwrap();
        let root = dir.path().join(name);
        let dropin = format!(
            "[backing]\nmode = \"cache\"\nurl = \"{url}\"\ncredentials_file = {:?}\n\
             request_timeout_secs = 5\n",
            creds.display().to_string()
        );
        async move { Casd::start(&root, "2GiB", &dropin).await }
    };
    let good = start("good", "right").await;
    let gch = good.channel().await;
    let kept = blob(5000, 93);
    let r = batch(&gch, std::slice::from_ref(&kept)).await.unwrap();
    assert_eq!(r[0].0, 0, "{r:?}");

    let bad = start("bad", "wrong").await;
    let bch = bad.channel().await;
    let (d, data) = blob(5000, 94);
    let r = batch(&bch, &[(d, data.clone())]).await.unwrap();
    assert_eq!(r[0].0, Code::Unavailable as i32, "{r:?}");
    assert!(
        r[0].1.contains(&url) && r[0].1.contains("credentials"),
        "{r:?}"
    );
    let e = client::write(&bch, "", &d, &data, 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    for ds in [vec![d], vec![kept.0]] {
        let e = client::find_missing(&bch, "", &ds).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            e.message().contains(&url) && e.message().contains("credentials"),
            "{e:?}"
        );
    }
    let e = client::read(&bch, "", &kept.0).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("credentials"), "{e:?}");
    assert_eq!(stats(&bch).await.blobs, 0);
    // Nothing of the refused upload reached the store.
    assert!(present(&gch, &[d, kept.0]).await == [kept.0].into_iter().collect());
}
