//! casd in `[backing] mode = "cache"` in front of object storage started
//! by the tests: Debian's nginx with WebDAV (`dav_methods PUT`) and moto's
//! S3 server (`python3 -m moto.server`). A test whose server is not
//! installed prints why and passes (tests/run-all.sh installs both).
//! Covered: write-through, read-miss fetch through a second casd, wrong
//! bytes and an HTML page refused, a dead store named in UNAVAILABLE, and
//! the invariant under kill -9 of nginx during 100 uploads.
#![allow(clippy::unwrap_used)]

mod common;
mod invariant;

use common::stores::{dav_backing, http, key, moto, nginx, nginx_with, s3_backing, tmp, Server};

use std::path::Path;

use common::{
    batch, blob, casd_in_front, find_file, get_result as get, present, stats,
    update_result as update, BOUND,
};
use rbe_proto::Digest;
use rbe_testkit::client;
use tonic::Code;

/// Write-through from A, then a fresh casd C in front of the same store
/// answers for A's blobs and fetches them on a read miss.
async fn write_through_and_read_miss(dir: &Path, dropin: &str) {
    let a = casd_in_front(&dir.join("a"), "2GiB", dropin).await;
    let ach = a.channel().await;
    let small = blob(10_000, 1);
    let large = blob(3 << 20, 2);
    let r = batch(&ach, std::slice::from_ref(&small)).await.unwrap();
    assert_eq!(r[0].0, 0, "{r:?}");
    assert_eq!(
        client::write(&ach, "", &large.0, &large.1, 1 << 20)
            .await
            .unwrap(),
        large.0.size as i64
    );
    let c = casd_in_front(&dir.join("c"), "2GiB", dropin).await;
    let cch = c.channel().await;
    let absent = blob(100, 3).0;
    assert_eq!(
        present(&cch, &[small.0, large.0, absent]).await,
        [small.0, large.0].into_iter().collect(),
        "C (empty) answers from the store"
    );
    assert_eq!(client::read(&cch, "", &large.0).await.unwrap(), large.1);
    assert_eq!(client::read(&cch, "", &small.0).await.unwrap(), small.1);
    assert_eq!(stats(&cch).await.backing_fetches, 2);
}

#[tokio::test]
async fn webdav_write_through_and_read_miss() {
    let dir = tmp();
    let Some(s) = nginx(dir.path()).await else {
        eprintln!("SKIPPED: nginx is not installed (apt-get install nginx-light)");
        return;
    };
    write_through_and_read_miss(dir.path(), &dav_backing(s.port, "dav/ci")).await;
    // The layout is the documented one.
    let small = blob(10_000, 1).0;
    assert!(dir.path().join("root/dav/ci").join(key(&small)).is_file());
}

#[tokio::test]
async fn s3_write_through_and_read_miss() {
    let dir = tmp();
    let Some(s) = moto(dir.path()).await else {
        eprintln!("SKIPPED: moto is not installed (pip install 'moto[server]')");
        return;
    };
    // The layout is checked by s3_wrong_bytes_are_refused_and_not_stored,
    // which plants objects under the documented keys.
    write_through_and_read_miss(dir.path(), &s3_backing(dir.path(), s.port)).await;
    // A blob over 16 MiB goes up in parts.
    let dropin = s3_backing(dir.path(), s.port);
    let a = casd_in_front(&dir.path().join("m"), "2GiB", &dropin).await;
    let huge = blob(21 << 20, 9);
    let ach = a.channel().await;
    client::write(&ach, "", &huge.0, &huge.1, 1 << 20)
        .await
        .unwrap();
    let c = casd_in_front(&dir.path().join("n"), "2GiB", &dropin).await;
    assert!(client::read(&c.channel().await, "", &huge.0).await.unwrap() == huge.1);
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(
        log.contains("?uploads"),
        "no multipart upload in moto's log"
    );
}

/// A result written through A is served by a fresh C, which fetches its
/// output first; a result whose output the store lacks is a miss.
async fn action_cache_through(dir: &Path, dropin: &str) {
    let a = casd_in_front(&dir.join("a"), "2GiB", dropin).await;
    let ach = a.channel().await;
    let out = blob(2 << 20, 51);
    client::write(&ach, "", &out.0, &out.1, 1 << 20)
        .await
        .unwrap();
    let action = blob(50, 52).0;
    update(&ach, &action, &out.0).await.unwrap();
    let c = casd_in_front(&dir.join("c"), "2GiB", dropin).await;
    let cch = c.channel().await;
    assert_eq!(get(&cch, &action).await.unwrap().output_files.len(), 1);
    assert_eq!(
        stats(&cch).await.backing_fetches,
        1,
        "the output came first"
    );
    assert_eq!(
        get(&cch, &blob(50, 53).0).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn webdav_action_cache_is_written_and_read_through() {
    let dir = tmp();
    let Some(s) = nginx(dir.path()).await else {
        eprintln!("SKIPPED: nginx is not installed (apt-get install nginx-light)");
        return;
    };
    action_cache_through(dir.path(), &dav_backing(s.port, "dav/ac")).await;
    // An HTML page where a result should be: refused naming the store.
    let url = format!("http://127.0.0.1:{}/html", s.port);
    let h = casd_in_front(&dir.path().join("h"), "2GiB", &dav_backing(s.port, "html")).await;
    let e = get(&h.channel().await, &blob(50, 54).0).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains(&url) && e.message().contains("not an ActionResult"),
        "{e:?}"
    );
}

#[tokio::test]
async fn s3_action_cache_is_written_and_read_through() {
    let dir = tmp();
    let Some(s) = moto(dir.path()).await else {
        eprintln!("SKIPPED: moto is not installed (pip install 'moto[server]')");
        return;
    };
    action_cache_through(dir.path(), &s3_backing(dir.path(), s.port)).await;
}

/// The store holds wrong bytes under a blob's key: a read through A is
/// NOT_FOUND naming the store and "wrong bytes", and A keeps nothing.
async fn wrong_bytes_refused(dir: &Path, dropin: &str, url: &str, plant: impl Fn(&Digest, &[u8])) {
    let a = casd_in_front(&dir.join("a"), "2GiB", dropin).await;
    let ach = a.channel().await;
    for (size, seed) in [(1000, 11), (3 << 20, 12)] {
        let (d, mut data) = blob(size, seed);
        data[size / 2] ^= 0xff;
        plant(&d, &data);
        let e = tokio::time::timeout(BOUND, client::read(&ach, "", &d))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(
            e.message().contains(url) && e.message().contains("wrong bytes"),
            "{e:?}"
        );
        assert!(
            find_file(&a.layout.cas_dir, &d.hex()).is_none(),
            "stored on A"
        );
    }
    let s = stats(&ach).await;
    assert_eq!((s.blobs, s.backing_fetches), (0, 0));
}

#[tokio::test]
async fn webdav_wrong_bytes_are_refused_and_not_stored() {
    let dir = tmp();
    let Some(s) = nginx(dir.path()).await else {
        eprintln!("SKIPPED: nginx is not installed (apt-get install nginx-light)");
        return;
    };
    let root = dir.path().join("root/dav/w");
    let url = format!("http://127.0.0.1:{}/dav/w", s.port);
    let plant = |d: &Digest, data: &[u8]| {
        let f = root.join(key(d));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, data).unwrap();
    };
    wrong_bytes_refused(dir.path(), &dav_backing(s.port, "dav/w"), &url, plant).await;
    // A truncated object: absent for FindMissingBlobs, refused on read.
    let (d, data) = blob(100_000, 13);
    plant(&d, &data[..50_000]);
    let a = casd_in_front(&dir.path().join("t"), "2GiB", &dav_backing(s.port, "dav/w")).await;
    let ach = a.channel().await;
    assert!(present(&ach, &[d]).await.is_empty());
    let e = client::read(&ach, "", &d).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().contains(&url) && e.message().contains("wrong bytes"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_bytes_are_refused_and_not_stored() {
    let dir = tmp();
    let Some(s) = moto(dir.path()).await else {
        eprintln!("SKIPPED: moto is not installed (pip install 'moto[server]')");
        return;
    };
    let port = s.port;
    let rt = tokio::runtime::Handle::current();
    wrong_bytes_refused(
        dir.path(),
        &s3_backing(dir.path(), port),
        "s3://rbe-test/ci",
        move |d, data| {
            let path = format!("/rbe-test/ci/{}", key(d));
            let code = tokio::task::block_in_place(|| rt.block_on(http(port, "PUT", &path, data)));
            assert_eq!(code, 200);
        },
    )
    .await;
}

#[tokio::test]
async fn https_webdav_needs_a_certificate_chaining_to_tls_ca() {
    let dir = tmp();
    let pki = rbe_testkit::tls::TestPki::new(dir.path());
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let other = rbe_testkit::tls::TestPki::new(&other);
    let extra = format!(
        " ssl;\n  ssl_certificate {};\n  ssl_certificate_key {}",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let Some(s) = nginx_with(dir.path(), &extra, "").await else {
        eprintln!("SKIPPED: nginx is not installed (apt-get install nginx-light)");
        return;
    };
    let url = format!("https://localhost:{}/dav/t", s.port);
    let dropin = |ca: &Path| {
        format!(
            "[backing]\nmode = \"cache\"\nurl = \"{url}\"\ntls_ca = {:?}\nrequest_timeout_secs = 5\n",
            ca.display().to_string()
        )
    };
    let good = casd_in_front(&dir.path().join("a"), "2GiB", &dropin(&pki.ca)).await;
    let (d, data) = blob(5000, 60);
    let r = batch(&good.channel().await, &[(d, data.clone())])
        .await
        .unwrap();
    assert_eq!(r[0].0, 0, "{r:?}");
    // A store whose certificate does not chain to tls_ca is not trusted.
    let bad = casd_in_front(&dir.path().join("b"), "2GiB", &dropin(&other.ca)).await;
    let bch = bad.channel().await;
    let (d2, data2) = blob(5000, 61);
    let r = batch(&bch, &[(d2, data2)]).await.unwrap();
    assert_eq!(r[0].0, Code::Unavailable as i32, "{r:?}");
    assert!(r[0].1.contains(&url), "{r:?}");
    let e = client::find_missing(&bch, "", &[d]).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&url), "{e:?}");
}

#[tokio::test]
async fn a_store_answering_200_with_an_html_page_is_refused() {
    let dir = tmp();
    let Some(s) = nginx(dir.path()).await else {
        eprintln!("SKIPPED: nginx is not installed (apt-get install nginx-light)");
        return;
    };
    let url = format!("http://127.0.0.1:{}/html", s.port);
    let a = casd_in_front(&dir.path().join("a"), "2GiB", &dav_backing(s.port, "html")).await;
    let ach = a.channel().await;
    let (d, data) = blob(5000, 30);
    // The PUT is answered 200, but nothing of the blob's size is there.
    let r = batch(&ach, &[(d, data.clone())]).await.unwrap();
    assert_eq!(r[0].0, Code::Unavailable as i32, "{r:?}");
    assert!(r[0].1.contains(&url) && r[0].1.contains("HTML"), "{r:?}");
    let e = client::write(&ach, "", &d, &data, 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // Existence: the page is not the blob.
    assert!(present(&ach, &[d]).await.is_empty());
    // A read gets the page's bytes: refused by the digest check.
    let e = client::read(&ach, "", &d).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().contains(&url) && e.message().contains("wrong bytes"),
        "{e:?}"
    );
    assert_eq!(stats(&ach).await.blobs, 0);
}

/// Kill the store: uploads, reads and FindMissingBlobs are UNAVAILABLE
/// naming it, within the bound.
async fn dead_store_is_unavailable(dir: &Path, dropin: &str, url: &str, s: &mut Server) {
    let a = casd_in_front(&dir.join("a"), "2GiB", dropin).await;
    let ach = a.channel().await;
    let kept = blob(5000, 20);
    assert_eq!(
        batch(&ach, std::slice::from_ref(&kept)).await.unwrap()[0].0,
        0
    );
    s.kill9();
    let (small, large) = (blob(5000, 21), blob(2 << 20, 22));
    let r = tokio::time::timeout(BOUND, batch(&ach, std::slice::from_ref(&small)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r[0].0, Code::Unavailable as i32, "{r:?}");
    assert!(r[0].1.contains(url), "{r:?}");
    let e = tokio::time::timeout(BOUND, client::write(&ach, "", &large.0, &large.1, 1 << 20))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(url), "{e:?}");
    let e = tokio::time::timeout(BOUND, client::read(&ach, "", &small.0))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(url), "{e:?}");
    let e = tokio::time::timeout(BOUND, client::find_missing(&ach, "", &[small.0]))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(url), "{e:?}");
    assert!(present(&ach, &[kept.0]).await.contains(&kept.0));
}

#[tokio::test]
async fn webdav_down_is_unavailable_naming_it() {
    let dir = tmp();
    let Some(mut s) = nginx(dir.path()).await else {
        eprintln!("SKIPPED: nginx is not installed (apt-get install nginx-light)");
        return;
    };
    let url = format!("http://127.0.0.1:{}/dav/d", s.port);
    let dropin = dav_backing(s.port, "dav/d");
    dead_store_is_unavailable(dir.path(), &dropin, &url, &mut s).await;
}

#[tokio::test]
async fn s3_down_is_unavailable_naming_it() {
    let dir = tmp();
    let Some(mut s) = moto(dir.path()).await else {
        eprintln!("SKIPPED: moto is not installed (pip install 'moto[server]')");
        return;
    };
    let dropin = s3_backing(dir.path(), s.port);
    dead_store_is_unavailable(dir.path(), &dropin, "s3://rbe-test/ci", &mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_invariant_holds_when_nginx_is_killed_during_100_uploads() {
    let dir = tmp();
    let Some(mut s) = nginx(dir.path()).await else {
        eprintln!("SKIPPED: nginx is not installed (apt-get install nginx-light)");
        return;
    };
    let url = format!("http://127.0.0.1:{}/dav/k", s.port);
    let a = casd_in_front(&dir.path().join("a"), "2GiB", &dav_backing(s.port, "dav/k")).await;
    let ach = a.channel().await;
    let (blobs, ok) = invariant::upload_100_and_kill(&ach, &url, || s.kill9()).await;
    s.restart().await;
    let root = dir.path().join("root/dav/k");
    let in_store = |d: &Digest| {
        let f = root.join(key(d));
        std::fs::read(f).is_ok_and(|b| Digest::of(d.function, &b) == *d)
    };
    for d in &ok {
        assert!(in_store(d), "A acknowledged {d}, the store lacks it");
    }
    let all: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    for d in &present(&ach, &all).await {
        assert!(in_store(d), "A reports {d} present, the store lacks it");
    }
}

/// moto keeps its objects in memory, so a kill -9 would empty the store
/// and leave nothing to check the invariant against: moto is frozen
/// instead (SIGSTOP: connections are accepted and never answered, the
/// worse failure), and thawed once every upload has ended. A fresh casd
/// C in front of the same bucket then answers for the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_invariant_holds_when_moto_stops_answering_during_100_uploads() {
    let dir = tmp();
    let Some(s) = moto(dir.path()).await else {
        eprintln!("SKIPPED: moto is not installed (pip install 'moto[server]')");
        return;
    };
    let dropin = s3_backing(dir.path(), s.port);
    let a = casd_in_front(&dir.path().join("a"), "2GiB", &dropin).await;
    let ach = a.channel().await;
    let (blobs, ok) =
        invariant::upload_100_and_kill(&ach, "s3://rbe-test/ci", || s.signal("STOP")).await;
    s.signal("CONT");
    let c = casd_in_front(&dir.path().join("c"), "2GiB", &dropin).await;
    invariant::holds(&ach, &c.channel().await, &blobs, &ok).await;
}
