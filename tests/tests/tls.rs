//! `[tls]` in frontend.toml, end to end: the real rbe-frontend (with casd
//! and a worker) serves REAPI over TLS with client certificates, refuses
//! bad clients, and renews its certificate on SIGHUP (`systemctl reload`)
//! without dropping an established stream.

use std::path::Path;
use std::time::{Duration, Instant};

use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::tls::{cert_der, TestPki};
use rbe_testkit::{bin, client, pseudo_random, Stack};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn hup(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
}

/// Waits until `log` has `n` lines containing `needle`.
async fn wait_log(log: &Path, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(needle).count() >= n {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged {n} times in {}:\n{text}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tls_dropin(pki: &TestPki, extra: &str) -> String {
    format!(
        "[tls]\ncertificate = {:?}\nkey = {:?}\nclient_ca = {:?}\n{extra}",
        pki.server_cert, pki.server_key, pki.ca
    )
}

/// The certificate a new connection is shown.
async fn shown(pki: &TestPki, addr: &str, client: (&Path, &Path)) -> Vec<u8> {
    let c = pki.handshake(addr, Some(client)).await.expect("handshake");
    c.get_ref().1.peer_certificates().expect("certificate")[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_serves_mtls_refuses_others_and_renews_on_sighup() {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let mut pki = TestPki::new(pki_dir.path());
    let stack = Stack::start_configured(
        "",
        &tls_dropin(&pki, "client_certificates = \"required\"\n"),
        "",
    )
    .await;
    let log = stack.tmp.path().join("frontend.log");
    wait_log(&log, "server certificate valid", 1).await;
    let text = wait_log(&log, "TLS on the public listeners", 1).await;
    assert!(text.contains("client_certificates=\"required\""), "{text}");
    let (cert, key) = pki.client("ci");
    let me = (cert.as_path(), key.as_path());

    // A CAS round trip over mTLS.
    let ch = pki.channel(&stack.addr, Some(me)).await.expect("mTLS");
    let blob = pseudo_random(10_000, 1);
    let d = Digest::of(DigestFunction::Sha256, &blob);
    let codes = client::batch_update(&ch, "", &[(d, blob.clone())])
        .await
        .expect("upload over TLS");
    assert_eq!(codes, vec![0]);
    assert_eq!(client::read(&ch, "", &d).await.expect("read"), blob);

    // No certificate, a bad one, plaintext: refused, each logged.
    assert!(pki.handshake(&stack.addr, None).await.is_err());
    let (bad, bad_key) = pki.expired_client("ci");
    assert!(pki
        .handshake(&stack.addr, Some((&bad, &bad_key)))
        .await
        .is_err());
    wait_log(&log, "TLS handshake failed", 2).await;
    let text = wait_log(&log, "certificate expired", 1).await;
    assert!(text.contains("peer sent no certificates"), "{text}");
    let err = client::find_missing(&stack.channel(), "", &[d])
        .await
        .expect_err("plaintext to a TLS port");
    assert!(format!("{err:?}").contains("grpcs://"), "{err:?}");
    wait_log(&log, "plaintext HTTP/2 on a TLS port", 1).await;

    // An established stream, open across the reloads below.
    let mut watch = HealthClient::new(ch.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert!(watch.message().await.expect("first").is_some());

    let old = cert_der(&pki.server_cert);
    assert_eq!(shown(&pki, &stack.addr, me).await, old);
    let pid = stack.frontend_pid().expect("running");

    // A broken key: the reload fails and the running certificate stays.
    let renewed_key = std::fs::read(&pki.server_key).expect("key");
    std::fs::write(&pki.server_key, "not a key\n").expect("write");
    hup(pid);
    let text = wait_log(&log, "reload failed", 1).await;
    assert!(text.contains("tls.key"), "{text}");
    assert_eq!(shown(&pki, &stack.addr, me).await, old);
    std::fs::write(&pki.server_key, renewed_key).expect("write");

    // A renewed certificate: new connections get it.
    let new = pki.renew_server();
    assert_ne!(new, old);
    hup(pid);
    wait_log(&log, "new TLS configuration for new connections", 1).await;
    assert_eq!(shown(&pki, &stack.addr, me).await, new);

    // The old connection and its stream are still there.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), watch.message())
            .await
            .is_err(),
        "the established Watch stream ended at the reload"
    );
    let codes = client::find_missing(&ch, "", &[d])
        .await
        .expect("the established channel still works");
    assert!(codes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_that_do_not_load_are_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf).expect("mkdir");
    let base = format!(
        "[listen]\ngrpc = [\"127.0.0.1:1\"]\nlocal = {:?}\n[casd]\nsocket = {:?}\n",
        dir.path().join("f.sock"),
        dir.path().join("c.sock")
    );
    let run = |tls: &str, creds: Option<&Path>, check_only: bool| {
        std::fs::write(conf.join("frontend.toml"), format!("{base}{tls}")).expect("write");
        let mut cmd = std::process::Command::new(bin("rbe-frontend"));
        cmd.arg("--config-dir").arg(&conf);
        if check_only {
            cmd.arg("--check-config");
        }
        cmd.env_remove("CREDENTIALS_DIRECTORY");
        if let Some(c) = creds {
            cmd.env("CREDENTIALS_DIRECTORY", c);
        }
        cmd.output().expect("run rbe-frontend")
    };

    // A missing key: exit 78 at startup and with --check-config, naming
    // the key, the file and the reason.
    let missing = format!(
        "[tls]\ncertificate = {:?}\nkey = {:?}\n",
        pki.server_cert,
        dir.path().join("nope.key")
    );
    for check_only in [true, false] {
        let out = run(&missing, None, check_only);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert!(
            err.contains("tls.key") && err.contains("nope.key") && err.contains("No such file"),
            "{err}"
        );
    }
    // rbectl config check loads them too.
    let out = std::process::Command::new(bin("rbectl"))
        .args(["config", "check", "--daemon", "frontend", "--config-dir"])
        .arg(&conf)
        .output()
        .expect("rbectl");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(78), "{said}");
    assert!(
        said.contains("tls.key") && said.contains("nope.key"),
        "{said}"
    );

    // Relative paths are systemd credentials.
    let relative = "[tls]\ncertificate = \"server.crt\"\nkey = \"server.key\"\n";
    let out = run(relative, None, true);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CREDENTIALS_DIRECTORY"));
    let out = run(relative, Some(dir.path()), true);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.contains(&pki.server_key.display().to_string()),
        "{shown}"
    );
}

/// `rbectl tls init` and `rbectl tls client` make files the frontend and a
/// TLS client accept as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbectl_made_certificates_work_with_the_frontend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = dir.path().join("tls");
    let rbectl = |args: &[&str]| {
        std::process::Command::new(bin("rbectl"))
            .arg("tls")
            .args(args)
            .arg("--dir")
            .arg(&tls)
            .output()
            .expect("run rbectl")
    };
    let out = rbectl(&["init", "--name", "localhost", "--name", "127.0.0.1"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("[tls]") && said.contains("client_ca"),
        "{said}"
    );
    let out = rbectl(&["client", "ci"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("--tls_client_certificate="), "{said}");
    // Keys are private, PKCS#8; existing files are not replaced.
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca.key", "ci.key"] {
        let p = tls.join(key);
        let mode = std::fs::metadata(&p).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
        let pem = std::fs::read_to_string(&p).expect("read");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    }
    let out = rbectl(&["client", "ci"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert!(rbectl(&["client", "ci", "--force"]).status.success());
    assert!(!rbectl(&["client", "../evil"]).status.success());
    // --renew replaces the server pair and keeps the CA.
    let before = |f: &str| std::fs::read(tls.join(f)).expect("read");
    let (ca, server) = (before("ca.crt"), before("server.crt"));
    let out = rbectl(&["init", "--renew", "--name", "localhost"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(before("ca.crt"), ca);
    assert_ne!(before("server.crt"), server);

    let stack = Stack::start_configured(
        "",
        &format!(
            "[tls]\ncertificate = {:?}\nkey = {:?}\nclient_ca = {:?}\n\
             client_certificates = \"required\"\n",
            tls.join("server.crt"),
            tls.join("server.key"),
            tls.join("ca.crt")
        ),
        "",
    )
    .await;
    let connect = |client: bool| {
        let ca = std::fs::read(tls.join("ca.crt")).expect("ca");
        let mut c = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name("localhost");
        if client {
            c = c.identity(tonic::transport::Identity::from_pem(
                std::fs::read(tls.join("ci.crt")).expect("crt"),
                std::fs::read(tls.join("ci.key")).expect("key"),
            ));
        }
        tonic::transport::Endpoint::from_shared(format!("https://{}", stack.addr))
            .expect("uri")
            .tls_config(c)
            .expect("tls config")
            .connect_lazy()
    };
    let blob = pseudo_random(1000, 2);
    let d = Digest::of(DigestFunction::Sha256, &blob);
    assert!(client::find_missing(&connect(false), "", &[d])
        .await
        .is_err());
    assert_eq!(
        client::find_missing(&connect(true), "", &[d])
            .await
            .expect("mTLS with rbectl's certificates"),
        vec![d]
    );
}

/// Bazel 4.2.3 (grpc-java, netty) builds through the remote cache over
/// grpcs:// with a client certificate: ALPN h2, the PKCS#8 key and the CA
/// as `TestPki` makes them (the lead's acceptance tests use the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_uses_the_cache_over_mtls() {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("bazel").is_file()));
    if !on_path {
        rbe_testkit::skip("bazel is not installed (tests/run-all.sh installs it)");
        return;
    }
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(pki_dir.path());
    let stack = Stack::start_configured(
        "",
        &tls_dropin(&pki, "client_certificates = \"required\"\n"),
        "",
    )
    .await;
    let (cert, key) = pki.client("bazel");
    let port = stack.addr.rsplit(':').next().expect("port").to_owned();
    let endpoint = format!("grpcs://localhost:{port}");
    let flags = format!(
        "--tls_certificate={} --tls_client_certificate={} --tls_client_key={}",
        pki.ca.display(),
        cert.display(),
        key.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bazel-cache-e2e.sh");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg(script)
            .arg(endpoint)
            .env("EXTRA_BAZEL_FLAGS", flags)
            .env("KEEP", "1")
            .output()
            .expect("run script")
    })
    .await
    .expect("bazel run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // KEEP=1 leaves the output root, to read the Bazel server's java.log.
    let kept = stderr
        .lines()
        .find_map(|l| l.strip_prefix("[bazel-cache-e2e] kept "))
        .map(|p| Path::new(p.trim()).to_owned());
    let java_log = kept
        .as_ref()
        .and_then(|root| {
            let out = std::fs::read_dir(root.join("out")).ok()?;
            let base = out.flatten().find(|e| e.path().join("java.log").exists())?;
            std::fs::read_to_string(base.path().join("java.log")).ok()
        })
        .unwrap_or_default();
    if let Some(root) = &kept {
        let _ = std::process::Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(root)
            .status();
        let _ = std::fs::remove_dir_all(root);
    }
    if java_log.contains("JDK provider does not support ALPN protocol") {
        // Debian's bazel-bootstrap (netty without tcnative) on this JDK
        // cannot make any TLS channel: it fails before connecting.
        rbe_testkit::skip(
            "this Bazel cannot make TLS channels (netty: \"JDK provider does not support \
             ALPN protocol\", before any connection); needs a Bazel with netty-tcnative",
        );
        return;
    }
    assert!(
        out.status.success() && stdout.lines().any(|l| l.starts_with("PASS")),
        "bazel over mTLS failed:\n{stdout}\n{stderr}"
    );
}
