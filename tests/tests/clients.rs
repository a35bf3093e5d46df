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
