//! `systemctl reload` is SIGHUP: each daemon reads its files again, applies
//! what can change live, and keeps the running configuration when the new
//! one is broken. These tests send the signal themselves, so they need
//! neither root nor systemd (tests/tests/systemd.rs covers `ExecReload=`).

use std::path::Path;
use std::time::{Duration, Instant};

use rbe_proto::casd::{casd_client::CasdClient, StatsRequest};
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::exec::run_command;
use rbe_testkit::{client, pseudo_random, Casd, Stack};

fn hup(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
}

fn dropin(config_dir: &Path, daemon: &str, toml: &str) {
    std::fs::write(
        config_dir
            .join(format!("{daemon}.toml.d"))
            .join("60-reload.toml"),
        toml,
    )
    .expect("write drop-in");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casd_applies_a_smaller_capacity_and_instances_and_survives_a_broken_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut casd = Casd::start(tmp.path(), "1GiB", "").await;
    let ch = casd.channel().await;
    let log = casd.layout.root.join("casd.log");
    let blobs: Vec<(Digest, Vec<u8>)> = (0..8)
        .map(|i| {
            let b = pseudo_random(1 << 20, 700 + i);
            (Digest::of(DigestFunction::Sha256, &b), b)
        })
        .collect();
    for b in &blobs {
        let codes = client::batch_update(&ch, "", std::slice::from_ref(b))
            .await
            .expect("upload");
        assert_eq!(codes, vec![0]);
    }
    let digests: Vec<Digest> = blobs.iter().map(|b| b.0).collect();
    assert!(client::find_missing(&ch, "main", &digests)
        .await
        .expect("any instance is served")
        .is_empty());

    // 8 MiB stored; 4 MiB capacity evicts down to 85 % of it at once.
    dropin(
        &casd.layout.config_dir,
        "casd",
        "[storage]\nmax_size = \"4MiB\"\n[instances]\nallowed = [\"\"]\n",
    );
    hup(casd.pid());
    wait_log(&log, "configuration reloaded", 1).await;
    wait_log(&log, "evicted least recently used blobs", 1).await;
    let missing = client::find_missing(&ch, "", &digests).await.expect("find");
    assert!(missing.len() >= 5, "evicted {} of 8", missing.len());
    let stats = CasdClient::new(ch.clone())
        .stats(StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert!(stats.bytes <= 4 << 20, "{} bytes left", stats.bytes);
    assert_eq!(
        stats.high_watermark_bytes,
        ((4u64 << 20) as f64 * 0.95) as u64
    );
    let refused = client::find_missing(&ch, "main", &digests)
        .await
        .expect_err("instance main is no longer served");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    // A broken file: the running configuration stays, the log names the
    // file and key, and casd keeps serving.
    dropin(
        &casd.layout.config_dir,
        "casd",
        "[storage]\nmax_size = \"lots\"\n",
    );
    hup(casd.pid());
    let text = wait_log(&log, "reload failed", 1).await;
    let line = text
        .lines()
        .find(|l| l.contains("reload failed"))
        .unwrap_or_default();
    assert!(
        line.contains("60-reload.toml") && line.contains("storage.max_size"),
        "{line}"
    );
    assert!(casd.alive());
    let refused = client::find_missing(&ch, "main", &digests)
        .await
        .expect_err("the last good configuration still applies");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(client::find_missing(&ch, "", &digests).await.is_ok());

    // A restart-only key is named, and its running value kept.
    dropin(
        &casd.layout.config_dir,
        "casd",
        "[limits]\nmax_batch_total_size_bytes = \"1MiB\"\n",
    );
    hup(casd.pid());
    let text = wait_log(&log, "configuration reloaded", 2).await;
    assert!(
        text.contains("limits.max_batch_total_size_bytes")
            && text.contains("only applies after a restart"),
        "{text}"
    );
    assert!(client::find_missing(&ch, "main", &digests).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_applies_execution_limits_to_new_operations() {
    let stack = Stack::start().await;
    let ch = stack.channel();
    let log = stack.tmp.path().join("frontend.log");
    let config_dir = &stack.casd.layout.config_dir;
    let ok = run_command(&ch, &["true"], &[], 100, None)
        .await
        .expect("a 100 s timeout is allowed");
    assert_eq!(ok.result.map(|r| r.exit_code), Some(0));

    dropin(
        config_dir,
        "frontend",
        "[execution]\nmax_timeout_secs = 60\ndefault_timeout_secs = 30\n[log]\nlevel = \"debug\"\n",
    );
    hup(stack.frontend_pid().expect("frontend runs"));
    wait_log(&log, "configuration reloaded", 1).await;
    let refused = run_command(&ch, &["true"], &[], 100, None)
        .await
        .expect_err("100 s is now above the maximum");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("60 s"), "{refused:?}");
    // The log level applies too: debug lines appear from now on.
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    run_command(&ch, &["true"], &[], 30, None)
        .await
        .expect("within the new maximum");
    let after = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(after[before..].contains("DEBUG"), "{}", &after[before..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workerd_applies_sandbox_changes_to_later_actions() {
    use std::os::unix::fs::PermissionsExt;
    let stack = Stack::start().await;
    let ch = stack.channel();
    let log = stack.tmp.path().join("workerd.log");
    // A directory the action's user may read, with a file in it (not in
    // /tmp, which every sandbox replaces with its own).
    let shown = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    std::fs::set_permissions(shown.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let marker = shown.path().join("marker");
    std::fs::write(&marker, "x").expect("marker");
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let probe = format!("test -e {}", marker.display());
    let exit = |r: rbe_proto::reapi::ExecuteResponse| r.result.map(|r| r.exit_code);

    let before = run_command(&ch, &["sh", "-c", &probe], &[], 30, None)
        .await
        .expect("run");
    assert_eq!(
        exit(before),
        Some(0),
        "the file is visible before the reload"
    );

    dropin(
        &stack.casd.layout.config_dir,
        "workerd",
        &format!(
            "[sandbox]\nhide_paths = [\"/run\", {:?}]\n[worker]\nslots = 7\n",
            shown.path().display().to_string()
        ),
    );
    hup(stack.workerd_pid().expect("workerd runs"));
    let text = wait_log(&log, "configuration reloaded", 1).await;
    assert!(
        text.contains("key=\"worker\"") && text.contains("only applies after a restart"),
        "{text}"
    );
    let after = run_command(&ch, &["sh", "-c", &probe], &[], 30, None)
        .await
        .expect("run");
    assert_eq!(exit(after), Some(1), "the reloaded hide_paths apply");
}
