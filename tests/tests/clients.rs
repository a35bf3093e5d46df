//! Independent real clients against the real stack: Debian's Bazel 4.2.3
//! (remote cache and remote execution) and BuildGrid's `bgd` CLI (CAS
//! upload/download, execute). Each
//! skips, saying why, when its client is not installed; `tests/run-all.sh`
//! installs both.

use std::path::{Path, PathBuf};
use std::process::Command;

use rbe_testkit::Stack;

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// Whether Bazel is installed; says SKIP and why when not.
fn have_bazel() -> bool {
    let ok = on_path("bazel");
    if !ok {
        rbe_testkit::skip(
            "bazel is not installed (apt-get install bazel-bootstrap; tests/run-all.sh does it)",
        );
    }
    ok
}

/// The venv holding BuildGrid's bgd; says SKIP and why when absent.
fn bgd_venv() -> Option<String> {
    let venv = std::env::var("BGD_VENV").unwrap_or_else(|_| "/var/tmp/bgd-venv".into());
    if Path::new(&venv).join("bin/bgd").is_file() {
        return Some(venv);
    }
    rbe_testkit::skip(&format!(
        "BuildGrid's bgd is not installed in {venv} (tests/run-all.sh installs it)"
    ));
    None
}

fn run_script(script: &str, endpoint: &str, env: &[(&str, &str)]) {
    let out = Command::new("bash")
        .arg(scripts().join(script))
        .arg(endpoint)
        .envs(env.iter().copied())
        .output()
        .expect("run script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("PASS")),
        "{script} printed no PASS line:\n{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_builds_with_remote_cache_and_rebuilds_all_from_cache() {
    if !have_bazel() {
        return;
    }
    let mut s = Stack::start().await;
    let endpoint = format!("grpc://{}", s.addr);
    let ep = endpoint.clone();
    tokio::task::spawn_blocking(move || run_script("bazel-cache-e2e.sh", &ep, &[]))
        .await
        .expect("bazel run");
    // Again under an instance name, which the shared store also serves.
    tokio::task::spawn_blocking(move || {
        run_script(
            "bazel-cache-e2e.sh",
            &endpoint,
            &[("REMOTE_INSTANCE_NAME", "ci/main")],
        )
    })
    .await
    .expect("bazel run with instance");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildgrid_bgd_uploads_and_downloads_files_and_trees() {
    let Some(venv) = bgd_venv() else { return };
    let mut s = Stack::start().await;
    let endpoint = format!("grpc://{}", s.addr);
    tokio::task::spawn_blocking(move || {
        run_script("bgd-roundtrip.sh", &endpoint, &[("BGD_VENV", &venv)])
    })
    .await
    .expect("bgd run");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_runs_every_action_remotely_and_rebuilds_all_from_cache() {
    if !have_bazel() {
        return;
    }
    let mut s = Stack::start().await;
    let endpoint = format!("grpc://{}", s.addr);
    tokio::task::spawn_blocking(move || {
        run_script("bazel-cache-e2e.sh", &endpoint, &[("MODE", "exec")])
    })
    .await
    .expect("bazel remote execution run");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildgrid_bgd_executes_a_command_with_an_input_directory() {
    let Some(venv) = bgd_venv() else { return };
    let mut s = Stack::start().await;
    let endpoint = format!("grpc://{}", s.addr);
    tokio::task::spawn_blocking(move || {
        run_script("bgd-execute.sh", &endpoint, &[("BGD_VENV", &venv)])
    })
    .await
    .expect("bgd execute run");
    assert!(s.alive());
}

/// Runs `script` expecting it to fail; returns its stdout and stderr.
fn run_script_failing(script: &str, endpoint: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new("bash")
        .arg(scripts().join(script))
        .arg(endpoint)
        .envs(env.iter().copied())
        .output()
        .expect("run script");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{script} succeeded:\n{text}");
    text
}

/// A stack with loopback callers required to authenticate
/// (`local_role = ""`), the token or certificate identity `ci-bot` granted
/// `ci`, tokens issued beforehand, and either TLS with a test CA (client
/// certificates optional) or plaintext.
struct Secure {
    stack: Stack,
    pki: rbe_testkit::tls::TestPki,
    _dir: tempfile::TempDir,
    tokens: Vec<(String, PathBuf)>,
}

impl Secure {
    async fn start(names: &[&str], extra_auth: &str, tls: bool) -> Secure {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = rbe_testkit::tls::TestPki::new(dir.path());
        let file = dir.path().join("tokens");
        let tokens = names
            .iter()
            .map(|n| {
                let (secret, _) = rbe_auth::tokens::create(
                    &file,
                    n,
                    None,
                    std::time::SystemTime::now(),
                    rbe_auth::tokens::NewFileOwner { gid: None },
                )
                .expect("token");
                // bgd reads its token from a file.
                let path = dir.path().join(format!("{n}.token"));
                std::fs::write(&path, secret.expose()).expect("token file");
                ((*n).to_owned(), path)
            })
            .collect();
        let tls_toml = format!(
            "[tls]\ncertificate = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            pki.server_cert, pki.server_key, pki.ca
        );
        let dropin = format!(
            "{}[auth]\ntokens = {:?}\nlocal_role = \"\"\n{extra_auth}\n\
             [[auth.grants]]\nclients = [\"ci-bot\"]\ninstances = [\"*\"]\nrole = \"ci\"\n",
            if tls { tls_toml.as_str() } else { "" },
            file
        );
        let stack = Stack::start_configured("", &dropin, "").await;
        Secure {
            stack,
            pki,
            _dir: dir,
            tokens,
        }
    }

    fn endpoint(&self) -> String {
        format!("grpcs://{}", self.stack.addr)
    }

    fn plaintext_endpoint(&self) -> String {
        format!("grpc://{}", self.stack.addr)
    }

    fn token_file(&self, name: &str) -> &Path {
        &self
            .tokens
            .iter()
            .find(|(n, _)| n == name)
            .expect("token")
            .1
    }

    fn token(&self, name: &str) -> String {
        std::fs::read_to_string(self.token_file(name)).expect("token")
    }
}

/// Bazel with a bearer token. Plaintext: Debian's Bazel 4.2.3 cannot speak
/// TLS at all (its netty is built without ALPN: "JDK provider does not
/// support ALPN protocol"), so TLS is exercised by bgd and the tonic tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_authenticates_by_token_and_keeps_roles() {
    if !have_bazel() {
        return;
    }
    let mut s = Secure::start(
        &["ci-bot", "dev-ro"],
        "authenticated_role = \"reader\"",
        false,
    )
    .await;
    let ep = s.plaintext_endpoint();
    let salt = format!("token-{}", std::process::id());
    // No credentials: a clear UNAUTHENTICATED, nothing built.
    let e = ep.clone();
    let text =
        tokio::task::spawn_blocking(move || run_script_failing("bazel-cache-e2e.sh", &e, &[]))
            .await
            .expect("bazel without credentials");
    assert!(
        text.contains("UNAUTHENTICATED") && text.contains("credentials required"),
        "{text}"
    );
    // The ci token: every action remote, then all from cache.
    let header = format!("authorization=Bearer {}", s.token("ci-bot"));
    let (e, sl) = (ep.clone(), salt.clone());
    tokio::task::spawn_blocking(move || {
        run_script(
            "bazel-cache-e2e.sh",
            &e,
            &[("MODE", "exec"), ("REMOTE_HEADER", &header), ("SALT", &sl)],
        )
    })
    .await
    .expect("bazel with a token");
    // A reader: Capabilities tells Bazel it may not write the action
    // cache, so Bazel itself refuses --remote_upload_local_results ...
    let header = format!("authorization=Bearer {}", s.token("dev-ro"));
    let (e, h) = (ep.clone(), header.clone());
    let text = tokio::task::spawn_blocking(move || {
        run_script_failing("bazel-cache-e2e.sh", &e, &[("REMOTE_HEADER", &h)])
    })
    .await
    .expect("bazel as a reader uploading");
    assert!(
        text.contains("not authorized to write local results"),
        "{text}"
    );
    // ... and without it, the ci build's results are all cache hits.
    tokio::task::spawn_blocking(move || {
        run_script(
            "bazel-cache-e2e.sh",
            &ep,
            &[
                ("REMOTE_HEADER", &header),
                ("SALT", &salt),
                ("EXTRA_BAZEL_FLAGS", "--noremote_upload_local_results"),
            ],
        )
    })
    .await
    .expect("bazel as a reader");
    assert!(s.stack.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildgrid_bgd_over_tls_needs_credentials() {
    let Some(venv) = bgd_venv() else { return };
    let mut s = Secure::start(&["ci-bot"], "", true).await;
    let ep = s.endpoint();
    let ca = s.pki.ca.display().to_string();
    let token = s.token_file("ci-bot").display().to_string();
    let (e, v, c) = (ep.clone(), venv.clone(), ca.clone());
    let text = tokio::task::spawn_blocking(move || {
        run_script_failing(
            "bgd-roundtrip.sh",
            &e,
            &[("BGD_VENV", &v), ("BGD_SERVER_CERT", &c)],
        )
    })
    .await
    .expect("bgd without credentials");
    assert!(
        text.contains("UNAUTHENTICATED") || text.contains("credentials required"),
        "{text}"
    );
    for script in ["bgd-roundtrip.sh", "bgd-execute.sh"] {
        let (e, v, c, t) = (ep.clone(), venv.clone(), ca.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            run_script(
                script,
                &e,
                &[
                    ("BGD_VENV", &v),
                    ("BGD_SERVER_CERT", &c),
                    ("BGD_AUTH_TOKEN", &t),
                ],
            )
        })
        .await
        .expect("bgd with a token");
    }
    // A client certificate instead of the token.
    let (cert, key) = s.pki.client("ci-bot");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    tokio::task::spawn_blocking(move || {
        run_script(
            "bgd-execute.sh",
            &ep,
            &[
                ("BGD_VENV", &venv),
                ("BGD_SERVER_CERT", &ca),
                ("BGD_CLIENT_CERT", &cert),
                ("BGD_CLIENT_KEY", &key),
            ],
        )
    })
    .await
    .expect("bgd with a client certificate");
    assert!(s.stack.alive());
}
