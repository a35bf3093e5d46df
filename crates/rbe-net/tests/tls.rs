//! TLS on a real TCP listener with real clients: tonic channels with
//! rustls, raw rustls handshakes and raw TCP. Certificates come from
//! `rbe_testkit::tls::TestPki`.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbe_net::tls::{ServerTls, TlsFiles};
use rbe_net::{Bind, Listener, PeerInfo};
use rbe_testkit::tls::{cert_der, TestPki, H2_PREFACE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// What the server's log says, captured per test (the tests run on a
/// current-thread runtime, so every task logs on the test's thread).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let sub = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(sub)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn lines_with(&self, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;
    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}

/// A health server on 127.0.0.1 whose requests' `PeerInfo`s are recorded.
struct Server {
    addr: String,
    seen: Arc<Mutex<Vec<Option<PeerInfo>>>>,
    reporter: tonic_health::server::HealthReporter,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(tls: Option<Arc<ServerTls>>) -> Server {
    let listener =
        rbe_net::from_activation_or_bind(&mut Vec::new(), "grpc", Bind::Tcp("127.0.0.1:0".into()))
            .unwrap();
    start_on(listener, tls).await
}

async fn start_on(listener: Listener, tls: Option<Arc<ServerTls>>) -> Server {
    let addr = listener.local_addr_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let (reporter, health) = tonic_health::server::health_reporter();
    let svc = tonic::service::interceptor::InterceptedService::new(
        health,
        move |req: tonic::Request<()>| {
            record
                .lock()
                .unwrap()
                .push(req.extensions().get::<PeerInfo>().cloned());
            Ok(req)
        },
    );
    let router = rbe_net::tune_server(tonic::transport::Server::builder()).add_service(svc);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(rbe_net::serve(router, listener, tls, async {
        let _ = rx.await;
    }));
    Server {
        addr,
        seen,
        reporter,
        _stop: tx,
    }
}

fn files(pki: &TestPki, client_ca: bool, required: bool) -> TlsFiles {
    TlsFiles {
        certificate: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: client_ca.then(|| pki.ca.clone()),
        require_client_certificate: required,
        handshake_timeout: Duration::from_secs(10),
        keys: rbe_net::tls::TlsKeys::PUBLIC,
    }
}

async fn check(channel: Channel) -> Result<ServingStatus, tonic::Status> {
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(r.into_inner().status())
}

fn last_peer(s: &Server) -> PeerInfo {
    s.seen.lock().unwrap().last().cloned().flatten().unwrap()
}

#[tokio::test]
async fn tls_serves_grpc_and_tells_the_handler() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let tls = Arc::new(ServerTls::load(&files(&pki, false, false)).unwrap());
    // TestPki's server certificate is valid for 30 more days.
    let left = tls
        .current()
        .not_after()
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(29 * 86_400), "{left:?}");
    assert!(left <= Duration::from_secs(30 * 86_400), "{left:?}");
    let s = start(Some(tls)).await;
    let ch = pki.channel(&s.addr, None).await.unwrap();
    assert_eq!(check(ch).await.unwrap(), ServingStatus::Serving);
    let peer = last_peer(&s);
    assert!(peer.tls);
    assert_eq!(peer.certificate, None);
    match peer.addr {
        rbe_auth::PeerAddr::Tcp(a) => assert!(a.ip().is_loopback()),
        other => panic!("{other:?}"),
    }
}

/// The server's "TLS handshake failed" lines once there are `n`. The
/// server logs its verdict as its side of the handshake ends, which on a
/// loaded machine can come after the client saw the alert; the bound only
/// keeps a lost line from hanging the test.
async fn handshake_failures(log: &Log, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while log.lines_with("TLS handshake failed").len() < n && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    log.lines_with("TLS handshake failed")
}

#[tokio::test]
async fn required_client_certificate() {
    let log = Log::default();
    let _g = log.install();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let tls = Arc::new(ServerTls::load(&files(&pki, true, true)).unwrap());
    let s = start(Some(tls)).await;

    // Without a certificate: refused at the handshake.
    let err = match pki.channel(&s.addr, None).await {
        Err(e) => format!("{e:?}"),
        Ok(ch) => format!("{:?}", check(ch).await.unwrap_err()),
    };
    assert!(!err.is_empty());
    let refused = handshake_failures(&log, 1).await;
    assert_eq!(refused.len(), 1, "{}", log.text());
    assert!(refused[0].contains("peer=127.0.0.1:"), "{}", refused[0]);
    assert!(
        refused[0].contains("no certificate") || refused[0].contains("NoCertificates"),
        "{}",
        refused[0]
    );

    let (cert, key) = pki.client("alice");
    let ch = pki.channel(&s.addr, Some((&cert, &key))).await.unwrap();
    assert_eq!(check(ch).await.unwrap(), ServingStatus::Serving);
    let peer = last_peer(&s);
    assert_eq!(peer.certificate.as_deref(), Some("alice"));
    assert!(peer.tls);
}

#[tokio::test]
async fn optional_client_certificate_names_those_who_have_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let tls = Arc::new(ServerTls::load(&files(&pki, true, false)).unwrap());
    let s = start(Some(tls)).await;
    let ch = pki.channel(&s.addr, None).await.unwrap();
    assert_eq!(check(ch).await.unwrap(), ServingStatus::Serving);
    assert_eq!(last_peer(&s).certificate, None);
    let (cert, key) = pki.client("bob");
    let ch = pki.channel(&s.addr, Some((&cert, &key))).await.unwrap();
    assert_eq!(check(ch).await.unwrap(), ServingStatus::Serving);
    assert_eq!(last_peer(&s).certificate.as_deref(), Some("bob"));
    // A bad certificate is refused even when certificates are optional.
    let (cert, key) = pki.other_ca_client("mallory");
    assert!(pki.handshake(&s.addr, Some((&cert, &key))).await.is_err());
}

#[tokio::test]
async fn bad_client_certificates_are_refused_with_a_log_line() {
    let log = Log::default();
    let _g = log.install();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let tls = Arc::new(ServerTls::load(&files(&pki, true, true)).unwrap());
    let s = start(Some(tls)).await;
    let cases = [
        ("expired", pki.expired_client("eve"), "expired"),
        (
            "not yet valid",
            pki.not_yet_valid_client("eve"),
            "not valid",
        ),
        (
            "self-signed",
            pki.self_signed_client("eve"),
            "UnknownIssuer",
        ),
        ("other CA", pki.other_ca_client("eve"), "UnknownIssuer"),
    ];
    for (i, (what, (cert, key), reason)) in cases.iter().enumerate() {
        let r = pki.handshake(&s.addr, Some((cert, key))).await;
        assert!(r.is_err(), "{what}: accepted");
        let lines = handshake_failures(&log, i + 1).await;
        assert_eq!(lines.len(), i + 1, "{what}: {}", log.text());
        let line = lines.last().unwrap();
        assert!(
            line.to_lowercase().contains(&reason.to_lowercase()),
            "{what}: {line}"
        );
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
        assert!(line.contains("WARN"), "{line}");
    }
    // The server goes on serving a good client.
    let (cert, key) = pki.client("alice");
    let ch = pki.channel(&s.addr, Some((&cert, &key))).await.unwrap();
    assert_eq!(check(ch).await.unwrap(), ServingStatus::Serving);
    assert_eq!(last_peer(&s).certificate.as_deref(), Some("alice"));
}

#[tokio::test]
async fn stalled_handshakes_time_out_without_stalling_others() {
    let log = Log::default();
    let _g = log.install();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let mut f = files(&pki, false, false);
    f.handshake_timeout = Duration::from_secs(2);
    let s = start(Some(Arc::new(ServerTls::load(&f).unwrap()))).await;

    // One connects and says nothing; one sends half a ClientHello.
    let mut silent = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .unwrap();
    // Meanwhile a real client is served, well before the stalled ones'
    // timeout (a generous bound: it only has to beat the 2 s timeout
    // plus what a stall would add).
    let t = Instant::now();
    let ch = pki.channel(&s.addr, None).await.unwrap();
    assert_eq!(check(ch).await.unwrap(), ServingStatus::Serving);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a stalled handshake held up another client for {:?}",
        t.elapsed()
    );
    // Both stalled connections are closed by the server after the timeout.
    for (what, c) in [("silent", &mut silent), ("half", &mut half)] {
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(20), c.read(&mut b))
            .await
            .unwrap_or_else(|_| panic!("{what}: still open after 20 s"));
        assert!(matches!(r, Ok(0) | Err(_)), "{what}: {r:?}");
    }
    assert_eq!(
        log.lines_with("handshake not finished in time").len(),
        2,
        "{}",
        log.text()
    );
}

#[tokio::test]
async fn plaintext_http2_on_the_tls_port_is_told_to_use_tls() {
    let log = Log::default();
    let _g = log.install();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    // A handshake timeout shorter than the wait for the client's first
    // request must not cut the explanation off.
    let mut f = files(&pki, false, false);
    f.handshake_timeout = Duration::from_secs(1);
    let s = start(Some(Arc::new(ServerTls::load(&f).unwrap()))).await;

    // A tonic client speaking grpc:// gets the GOAWAY's reason, whether
    // its request waits for the connection (lazy) or not.
    for lazy in [true, false] {
        let t = Instant::now();
        let ep = Channel::from_shared(format!("http://{}", s.addr)).unwrap();
        let ch = if lazy {
            ep.connect_lazy()
        } else {
            ep.connect().await.unwrap()
        };
        let err = check(ch).await.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let shown = format!("{err:?}");
        assert!(shown.contains("grpcs://"), "lazy={lazy}: {shown}");
    }

    // On the wire: SETTINGS, then GOAWAY (type 7) with INADEQUATE_SECURITY
    // (after waiting a moment for a request that does not come).
    let mut c = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    c.write_all(H2_PREFACE).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got[3], 0x4, "{got:?}");
    assert_eq!(got[12], 0x7, "{got:?}");
    assert_eq!(&got[22..26], &[0, 0, 0, 0xc]);
    assert!(String::from_utf8_lossy(&got[26..]).contains("requires TLS"));
    assert_eq!(
        log.lines_with("plaintext HTTP/2 on a TLS port").len(),
        3,
        "{}",
        log.text()
    );

    // Plain HTTP/1 gets a readable 400.
    let mut c = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains("requires TLS"), "{got}");
}

#[tokio::test]
async fn tls_on_a_plaintext_port_fails_fast() {
    let log = Log::default();
    let _g = log.install();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let s = start(None).await;

    let t = Instant::now();
    let err = pki.handshake(&s.addr, None).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(err.to_string().contains("HandshakeFailure"), "{err}");

    let t = Instant::now();
    let r = match pki.channel(&s.addr, None).await {
        Ok(ch) => check(ch).await.map(|_| ()).map_err(|e| format!("{e:?}")),
        Err(e) => Err(format!("{e:?}")),
    };
    assert!(r.is_err());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let lines = log.lines_with("TLS client on a plaintext port");
    assert_eq!(lines.len(), 2, "{}", log.text());
    assert!(lines[0].contains("peer=127.0.0.1:"), "{}", lines[0]);

    // Plaintext gRPC still works there, and the handler sees the peer.
    let ch = Channel::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(check(ch).await.unwrap(), ServingStatus::Serving);
    let peer = last_peer(&s);
    assert!(!peer.tls);
    assert!(matches!(peer.addr, rbe_auth::PeerAddr::Tcp(_)));
}

#[tokio::test]
async fn reload_renews_the_certificate_for_new_connections_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path());
    let f = files(&pki, false, false);
    let tls = Arc::new(ServerTls::load(&f).unwrap());
    let s = start(Some(Arc::clone(&tls))).await;
    let old = cert_der(&pki.server_cert);
    let shown = |c: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        c.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    assert_eq!(shown(&pki.handshake(&s.addr, None).await.unwrap()), old);

    // An established connection with an open stream.
    let ch = pki.channel(&s.addr, None).await.unwrap();
    s.reporter
        .set_service_status("svc", tonic_health::ServingStatus::Serving)
        .await;
    let mut watch = HealthClient::new(ch.clone())
        .watch(HealthCheckRequest {
            service: "svc".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    let new = pki.renew_server();
    assert_ne!(new, old);
    // Files that do not load are refused and change nothing.
    let mut broken = f.clone();
    broken.key = dir.path().join("missing.key");
    let e = tls.reload(&broken).unwrap_err().to_string();
    assert!(e.contains("tls.key") && e.contains("missing.key"), "{e}");
    assert_eq!(shown(&pki.handshake(&s.addr, None).await.unwrap()), old);

    tls.reload(&f).unwrap();
    assert_eq!(shown(&pki.handshake(&s.addr, None).await.unwrap()), new);
    // The old connection and its stream go on.
    s.reporter
        .set_service_status("svc", tonic_health::ServingStatus::NotServing)
        .await;
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    assert_eq!(check(ch).await.unwrap(), ServingStatus::Serving);
}

#[tokio::test]
async fn unix_peers_carry_their_uid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = rbe_net::from_activation_or_bind(
        &mut Vec::new(),
        "local",
        Bind::Unix {
            path: path.clone(),
            mode: 0o600,
        },
    )
    .unwrap();
    let s = start_on(listener, None).await;
    let ch = rbe_net::unix_channel(&path).await.unwrap();
    assert_eq!(check(ch).await.unwrap(), ServingStatus::Serving);
    let peer = last_peer(&s);
    assert_eq!(
        peer.addr,
        rbe_auth::PeerAddr::Local {
            uid: rustix::process::geteuid().as_raw()
        }
    );
    assert!(!peer.tls && peer.certificate.is_none());
}

#[test]
fn load_errors_name_the_key_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let f = files(&pki, true, true);
    let err = |f: &TlsFiles| ServerTls::load(f).unwrap_err().to_string();

    let mut g = f.clone();
    g.certificate = dir.path().join("nope.crt");
    let e = err(&g);
    assert!(
        e.contains("tls.certificate") && e.contains("nope.crt"),
        "{e}"
    );

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let mut g = f.clone();
    g.key = empty.clone();
    let e = err(&g);
    assert!(e.contains("tls.key") && e.contains("no private key"), "{e}");
    let mut g = f.clone();
    g.client_ca = Some(empty);
    let e = err(&g);
    assert!(
        e.contains("tls.client_ca") && e.contains("CERTIFICATE"),
        "{e}"
    );

    // A key of another certificate.
    let (_, other_key) = pki.client("x");
    let mut g = f.clone();
    g.key = other_key;
    let e = err(&g);
    assert!(e.contains("tls.key"), "{e}");
    assert!(e.to_lowercase().contains("match"), "{e}");
}

/// PKCS#1 (RSA) and SEC1 (EC) keys load as well as PKCS#8; converted
/// with the openssl command when there is one.
#[tokio::test]
async fn pkcs1_and_sec1_keys() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        rbe_testkit::skip("no openssl command to convert keys with");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let openssl = |args: &[&str]| {
        let st = std::process::Command::new("openssl")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "openssl {args:?}");
    };
    // SEC1: the same EC key in "BEGIN EC PRIVATE KEY" form.
    let sec1 = dir.path().join("sec1.key");
    openssl(&["ec", "-in", path(&pki.server_key), "-out", path(&sec1)]);
    assert!(std::fs::read_to_string(&sec1)
        .unwrap()
        .contains("BEGIN EC PRIVATE KEY"));
    let mut f = files(&pki, false, false);
    f.key = sec1;
    let s = start(Some(Arc::new(ServerTls::load(&f).unwrap()))).await;
    let ch = pki.channel(&s.addr, None).await.unwrap();
    assert_eq!(check(ch).await.unwrap(), ServingStatus::Serving);

    // PKCS#1: an RSA key and a self-signed certificate for it.
    let rsa = dir.path().join("rsa.key");
    let crt = dir.path().join("rsa.crt");
    openssl(&["genrsa", "-traditional", "-out", path(&rsa), "2048"]);
    assert!(std::fs::read_to_string(&rsa)
        .unwrap()
        .contains("BEGIN RSA PRIVATE KEY"));
    openssl(&[
        "req",
        "-new",
        "-x509",
        "-key",
        path(&rsa),
        "-out",
        path(&crt),
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
    ]);
    let mut f = files(&pki, false, false);
    f.key = rsa;
    f.certificate = crt;
    ServerTls::load(&f).unwrap();
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The peer channel between cluster hosts: both present certificates from
/// the cluster CA, and the server must be the node it is dialled as.
#[tokio::test(flavor = "current_thread")]
async fn peer_channel_is_mutual_and_checks_the_node_name() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let (a_cert, a_key) = pki.host("node-a");
    let (b_cert, b_key) = pki.host("node-b");
    let server_files = TlsFiles {
        certificate: a_cert,
        key: a_key,
        client_ca: Some(pki.ca.clone()),
        require_client_certificate: true,
        handshake_timeout: Duration::from_secs(10),
        keys: rbe_net::tls::TlsKeys::CLUSTER,
    };
    let server = start(Some(Arc::new(ServerTls::load(&server_files).unwrap()))).await;
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let client_files = |cert: std::path::PathBuf, key: std::path::PathBuf| TlsFiles {
        certificate: cert,
        key,
        client_ca: Some(pki.ca.clone()),
        require_client_certificate: true,
        handshake_timeout: Duration::from_secs(10),
        keys: rbe_net::tls::TlsKeys::CLUSTER,
    };
    let b = rbe_net::PeerClientTls::load(&client_files(b_cert.clone(), b_key.clone())).unwrap();
    let t = Duration::from_secs(5);

    let ok = rbe_net::peer_channel(addr, "node-a", &b, t).unwrap();
    assert_eq!(check(ok).await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        last_peer(&server).certificate.as_deref(),
        Some("node-b"),
        "the server sees which host called"
    );

    // The same server dialled as another node: its certificate does not
    // name node-c.
    let wrong = rbe_net::peer_channel(addr, "node-c", &b, t).unwrap();
    let e = check(wrong).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");

    // A host whose certificate comes from another CA is refused.
    let (o_cert, o_key) = pki.other_ca_client("node-o");
    let other = rbe_net::PeerClientTls::load(&client_files(o_cert, o_key)).unwrap();
    let e = check(rbe_net::peer_channel(addr, "node-a", &other, t).unwrap())
        .await
        .unwrap_err();
    // TLS 1.3: the server's verdict arrives as an alert on the first read,
    // which tonic reports as UNKNOWN rather than UNAVAILABLE.
    assert!(e.to_string().contains("UnknownCA"), "{e}");

    // No CA: a configuration error naming the key.
    let mut no_ca = client_files(b_cert, b_key);
    no_ca.client_ca = None;
    let e = rbe_net::PeerClientTls::load(&no_ca)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cluster.tls_ca"), "{e}");
}
