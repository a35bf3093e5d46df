//! A backing store over the network: casd in cache mode in front of a
//! real rbe-frontend serving TLS and requiring tokens (`grpcs://`, the
//! store's certificate checked against `backing.tls_ca`, the token from
//! `backing.token_file`). A wrong token or an untrusted certificate fails
//! uploads with UNAVAILABLE naming the store, and nothing is advertised.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::SystemTime;

use common::{blob, present, BOUND};
use rbe_testkit::tls::TestPki;
use rbe_testkit::{client, Casd, Stack};
use tonic::Code;

fn issue(file: &std::path::Path, name: &str) -> String {
    let (secret, _) = rbe_auth::tokens::create(
        file,
        name,
        None,
        SystemTime::now(),
        rbe_auth::tokens::NewFileOwner { gid: None },
    )
    .unwrap();
    secret.expose().to_owned()
}

#[tokio::test]
async fn a_tls_backing_store_with_a_token_is_written_and_read_through() {
    let dir = tempfile::Builder::new()
        .prefix("rbe-backing-tls-")
        .tempdir_in(rbe_testkit::disk_tmp())
        .unwrap();
    let pki = TestPki::new(dir.path());
    let tokens = dir.path().join("tokens");
    let token = issue(&tokens, "cache-host");
    let frontend = format!(
        "[tls]\ncertificate = {:?}\nkey = {:?}\n[auth]\ntokens = {:?}\n",
        pki.server_cert, pki.server_key, tokens
    );
    let b = Stack::start_configured_in(dir.path(), "", &frontend, "").await;
    let url = format!("grpcs://{}", b.addr);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let wrong_file = dir.path().join("wrong");
    std::fs::write(
        &wrong_file,
        "rbe_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
    )
    .unwrap();
    let other = tempfile::tempdir().unwrap();
    let other_pki = TestPki::new(other.path());
    let start = |name: &str, ca: &std::path::Path, token: &std::path::Path| {
        let root = dir.path().join(name);
        let dropin = format!(
            "[backing]\nmode = \"cache\"\nurl = \"{url}\"\ntls_ca = {ca:?}\ntoken_file = {token:?}\nrequest_timeout_secs = 10\n"
        );
        async move { Casd::start(&root, "1GiB", &dropin).await }
    };

    let a = start("a", &pki.ca, &token_file).await;
    let ch = a.channel().await;
    let bch = b.casd.channel().await;
    let (d, data) = blob(3 << 20, 51);
    client::write(&ch, "", &d, &data, 1 << 20).await.unwrap();
    assert!(present(&bch, &[d]).await.contains(&d), "B's casd has it");
    let (d2, data2) = blob(20_000, 52);
    client::write(&bch, "", &d2, &data2, 1 << 20).await.unwrap();
    assert_eq!(client::read(&ch, "", &d2).await.unwrap(), data2);

    for (name, ca, token) in [
        ("wrong-token", pki.ca.as_path(), wrong_file.as_path()),
        ("wrong-ca", other_pki.ca.as_path(), token_file.as_path()),
    ] {
        let a = start(name, ca, token).await;
        let ch = a.channel().await;
        let (d, data) = blob(10_000, 60);
        let e = tokio::time::timeout(BOUND, client::write(&ch, "", &d, &data, 1 << 20))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{name}: {e:?}");
        assert!(e.message().contains(&url), "{name}: {e:?}");
        if name == "wrong-token" {
            // The operator's fix is casd's configuration: said so.
            assert!(e.message().contains("credentials"), "{e:?}");
        }
        let e = tokio::time::timeout(BOUND, client::find_missing(&ch, "", &[d]))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{name}: {e:?}");
        assert!(!present(&bch, &[d]).await.contains(&d));
    }
}
