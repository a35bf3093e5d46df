//! Daemon behaviour a sysadmin meets: config errors name file, key and
//! reason; socket activation by name; clean stop on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rbe_testkit::{bin, client};

fn write(p: &std::path::Path, s: &str) {
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, s).expect("write");
}

#[test]
fn broken_configs_stop_the_daemon_naming_file_key_and_reason() {
    let t = tempfile::tempdir().expect("tmp");
    let cases = [
        (
            "casd.toml",
            "[storage]\nmax_size = \"lots\"\n",
            "storage.max_size",
        ),
        ("casd.toml", "[storage]\nno_such_key = 1\n", "no_such_key"),
        ("casd.toml", "[storage\n", "casd.toml:1"),
        (
            "casd.toml",
            "[storage]\nlow_watermark = 0.99\nhigh_watermark = 0.9\n",
            "low_watermark",
        ),
        (
            "casd.toml.d/10-x.toml",
            "[limits]\nmax_batch_total_size_bytes = -1\n",
            "10-x.toml",
        ),
    ];
    for (file, content, needle) in cases {
        let dir = t.path().join(format!("c{}", needle.len()));
        let _ = std::fs::remove_dir_all(&dir);
        write(&dir.join(file), content);
        let out = Command::new(bin("rbe-casd"))
            .arg("--config-dir")
            .arg(&dir)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "EX_CONFIG for {file}: {err}");
        assert!(
            err.contains(needle),
            "error for {content:?} should name {needle:?}: {err}"
        );
        assert!(
            err.contains(&dir.display().to_string()),
            "error names the file: {err}"
        );
    }
    // rbectl config check reports the same without starting anything.
    let dir = t.path().join("check");
    write(
        &dir.join("frontend.toml"),
        "[listen]\ngrpc = [\"not an address\"]\n",
    );
    let out = Command::new(bin("rbectl"))
        .args(["config", "check", "--config-dir"])
        .arg(&dir)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains("casd: ok") && text.contains("listen.grpc"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casd_takes_its_socket_from_systemd_by_name() {
    let Ok(sa) = which("systemd-socket-activate") else {
        rbe_testkit::skip("systemd-socket-activate not installed (package systemd)");
        return;
    };
    let t = tempfile::tempdir().expect("tmp");
    let layout = rbe_config::local::LocalLayout::new(t.path());
    layout.write_configs("127.0.0.1:1", "1GiB").expect("config");
    // The configured path is NOT where systemd listens: the daemon must use
    // the fd named "casd" and not bind its own. A decoy fd comes first.
    let activated = t.path().join("activated.sock");
    let decoy = t.path().join("decoy.sock");
    let mut child = Command::new(sa)
        .arg("-l")
        .arg(&decoy)
        .arg("-l")
        .arg(&activated)
        .arg("--fdname=decoy:casd")
        .arg(bin("rbe-casd"))
        .arg("--config-dir")
        .arg(&layout.config_dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let ch = rbe_net::unix_channel(&activated).await.expect("channel");
    let d = rbe_proto::Digest::of(rbe_proto::DigestFunction::Sha256, b"activated");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The first connection starts the daemon; retry until it answers.
        match client::write(&ch, "", &d, b"activated", 4).await {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no answer on the activated socket: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client::read(&ch, "", &d).await.expect("read"), b"activated");
    assert!(
        !layout.casd_socket().exists(),
        "must not bind the configured path when activated"
    );
    // SIGTERM stops it cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let st = child.wait().expect("wait");
    assert!(st.success(), "clean exit on SIGTERM: {st}");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .ok_or(())
}

/// As root, rbe-workerd keeps only the capabilities its sandbox needs, in
/// every set, whether or not a unit's `CapabilityBoundingSet=` applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_worker_keeps_only_the_capabilities_it_needs() {
    if !rustix::process::geteuid().is_root() {
        return rbe_testkit::skip("needs root: a worker that is not root has no capabilities");
    }
    let stack = rbe_testkit::Stack::start().await;
    // An action first: it runs once the worker is up and attached (the
    // spawn returns before the worker's `main` has run), and proves the
    // kept set is enough.
    let r = rbe_testkit::exec::run_command(&stack.channel(), &["true"], &[], 30, None)
        .await
        .expect("execute");
    assert_eq!(r.result.map(|r| r.exit_code), Some(0));
    let pid = stack.workerd_pid().expect("workerd runs");
    // CAP_CHOWN 0, DAC_OVERRIDE 1, DAC_READ_SEARCH 2, FOWNER 3, KILL 5,
    // SETGID 6, SETUID 7, NET_ADMIN 12, SYS_CHROOT 18, SYS_ADMIN 21.
    let expected: u64 = [0, 1, 2, 3, 5, 6, 7, 12, 18, 21]
        .iter()
        .map(|n| 1u64 << n)
        .sum();
    // Every thread, not only the first: capabilities are per thread.
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    let mut seen = 0;
    for t in tasks.flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).expect("status");
        let set = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or_else(|| panic!("{name} in {status}"))
        };
        assert_eq!(set("CapEff:"), expected, "effective");
        assert_eq!(set("CapPrm:"), expected, "permitted");
        assert_eq!(set("CapBnd:"), expected, "bounding");
        assert_eq!(set("CapInh:"), 0, "inheritable");
        assert_eq!(set("CapAmb:"), 0, "ambient");
        seen += 1;
    }
    assert!(seen > 1, "the runtime's threads too");
}
