//! The sandboxed runner: isolation, ending, limits, errors.

mod common;

use std::time::{Duration, Instant};

use common::{is_root, never, sandbox, skip, Env};
use rbe_exec::{run, ExecError};

#[tokio::test]
async fn exact_environment_and_path_lookup() {
    let env = Env::new();
    let mut spec = env.spec(&["env"]);
    spec.env = vec![
        ("PATH".into(), "/nonexistent:/usr/bin:/bin".into()),
        ("A".into(), "b c".into()),
    ];
    let out = run(&sandbox(), &spec, never()).await.expect("run");
    assert_eq!(out.exit_code, 0, "stderr: {}", env.stderr());
    // std passes the environment sorted by name (REAPI requires that order too).
    assert_eq!(env.stdout(), "A=b c\nPATH=/nonexistent:/usr/bin:/bin\n");
}

#[tokio::test]
async fn program_not_found_names_program_and_path() {
    let env = Env::new();
    let mut spec = env.spec(&["no-such-tool"]);
    spec.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    let err = run(&sandbox(), &spec, never())
        .await
        .expect_err("must fail");
    let msg = err.to_string();
    assert!(matches!(err, ExecError::NotFound { .. }), "{msg}");
    assert!(
        msg.contains("no-such-tool") && msg.contains("/usr/bin:/bin"),
        "{msg}"
    );
}

#[tokio::test]
async fn relative_program_runs_from_working_dir() {
    let env = Env::new();
    let sub = env.root.join("pkg");
    std::fs::create_dir(&sub).expect("mkdir");
    env.chown_action(&sub);
    let tool = sub.join("tool.sh");
    std::fs::write(&tool, "#!/bin/sh\necho tool ran in $(pwd)\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut spec = env.spec(&["./tool.sh"]);
    spec.working_dir = "pkg".into();
    let out = run(&sandbox(), &spec, never()).await.expect("run");
    assert_eq!(out.exit_code, 0, "stderr: {}", env.stderr());
    assert_eq!(env.stdout(), format!("tool ran in {}\n", sub.display()));
    // A PATH entry relative to the working directory.
    let mut spec = env.spec(&["tool.sh"]);
    spec.env = vec![("PATH".into(), "pkg".into())];
    let out = run(&sandbox(), &spec, never()).await.expect("run");
    assert_eq!(out.exit_code, 0, "stderr: {}", env.stderr());
}

#[tokio::test]
async fn exec_failure_is_an_error() {
    let env = Env::new();
    let f = env.root.join("notexec");
    std::fs::write(&f, "data").expect("write");
    let spec = env.spec(&["/dev/null/x"]);
    let err = run(&sandbox(), &spec, never())
        .await
        .expect_err("must fail");
    assert!(matches!(err, ExecError::Exec { .. }), "{err}");
}

#[tokio::test]
async fn working_dir_escapes_refused() {
    let env = Env::new();
    for wd in ["../..", "..", "/etc", "missing"] {
        let mut spec = env.sh("true");
        spec.working_dir = wd.into();
        let err = run(&sandbox(), &spec, never()).await.expect_err(wd);
        assert!(
            matches!(
                err,
                ExecError::InvalidPath { .. } | ExecError::BadWorkingDir { .. }
            ),
            "{wd}: {err}"
        );
    }
    // A symlink out of the root is not a working directory either.
    std::os::unix::fs::symlink("/etc", env.root.join("etc")).expect("symlink");
    let mut spec = env.sh("true");
    spec.working_dir = "etc".into();
    let err = run(&sandbox(), &spec, never()).await.expect_err("symlink");
    assert!(matches!(err, ExecError::BadWorkingDir { .. }), "{err}");
}

#[tokio::test]
async fn filesystem_is_read_only_outside_root() {
    let env = Env::new();
    let marker = format!("escape-{}", std::process::id());
    let script = format!(
        "echo x > /tmp/{marker} && echo tmp-ok; \
         echo x > ../{marker} 2>/dev/null && echo parent-written; \
         echo x > /var/tmp/{marker} 2>/dev/null && echo var-written; \
         touch /etc/{marker} 2>/dev/null && echo etc-written; \
         echo x > out && echo root-ok; \
         hostname"
    );
    let out = run(&sandbox(), &env.sh(&script), never())
        .await
        .expect("run");
    assert_eq!(out.exit_code, 0, "stderr: {}", env.stderr());
    assert_eq!(env.stdout(), "tmp-ok\nroot-ok\nrbe-action\n");
    assert!(!std::path::Path::new(&format!("/tmp/{marker}")).exists());
    assert!(!env.dir.path().join(&marker).exists());
    assert!(!std::path::Path::new(&format!("/var/tmp/{marker}")).exists());
    assert!(env.root.join("out").exists());
}

#[tokio::test]
async fn hidden_paths_are_empty_but_root_stays_visible() {
    // Outside /tmp, which is hidden anyway.
    let env = Env::new_in(std::path::Path::new("/var/tmp"));
    std::fs::write(env.dir.path().join("secret"), "s").expect("write");
    let cas = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    std::fs::write(cas.path().join("blob"), "b").expect("write");
    let mut sb = sandbox();
    sb.hide_paths = vec![env.dir.path().to_path_buf(), cas.path().to_path_buf()];
    let script = format!(
        "ls -A {}; ls -A {}; touch {}/x 2>/dev/null && echo hidden-writable; \
         echo in-root > mine; cat mine",
        env.dir.path().display(),
        cas.path().display(),
        cas.path().display()
    );
    let out = run(&sb, &env.sh(&script), never()).await.expect("run");
    assert_eq!(out.exit_code, 0, "stderr: {}", env.stderr());
    assert_eq!(env.stdout(), "root\nin-root\n");
    assert!(!cas.path().join("x").exists());
}

#[tokio::test]
async fn no_network() {
    let env = Env::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let script = format!(
        "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; \
         (echo hi > /dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo connected || echo refused"
    );
    let out = run(&sandbox(), &env.spec(&["bash", "-c", &script]), never())
        .await
        .expect("run");
    assert_eq!(out.exit_code, 0, "stderr: {}", env.stderr());
    assert_eq!(env.stdout(), "lo\nrefused\n");
}

#[tokio::test]
async fn pid_namespace_is_private() {
    let env = Env::new();
    let out = run(
        &sandbox(),
        &env.sh("echo $$; ls /proc | grep -c '^[0-9]'"),
        never(),
    )
    .await
    .expect("run");
    assert_eq!(out.exit_code, 0, "stderr: {}", env.stderr());
    // Init is 1, the command 2; ls and grep make a few more.
    let lines: Vec<u32> = env
        .stdout()
        .lines()
        .map(|l| l.parse().expect("number"))
        .collect();
    assert_eq!(lines[0], 2);
    assert!(lines[1] <= 5, "{lines:?}");
}

#[tokio::test]
async fn no_capabilities_remain() {
    let env = Env::new();
    let out = run(
        &sandbox(),
        &env.sh("grep -E '^(CapEff|CapPrm|Uid)' /proc/self/status"),
        never(),
    )
    .await
    .expect("run");
    assert_eq!(out.exit_code, 0, "stderr: {}", env.stderr());
    let status = env.stdout();
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("CapPrm:\t0000000000000000"), "{status}");
    if is_root() {
        assert!(
            status.contains("Uid:\t65534\t65534\t65534\t65534"),
            "{status}"
        );
    }
}

#[tokio::test]
async fn unprivileged_uid_cannot_write_root_owned_file() {
    if !is_root() {
        skip("needs root to run the action as another uid");
        return;
    }
    let env = Env::new();
    let f = env.root.join("cas-blob");
    std::fs::write(&f, "immutable").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let script = "echo x >> cas-blob && echo written; chmod 666 cas-blob && echo chmodded; id -u";
    let out = run(&sandbox(), &env.sh(script), never())
        .await
        .expect("run");
    assert_eq!(out.exit_code, 0);
    assert_eq!(env.stdout(), "65534\n");
    assert!(env.stderr().contains("Permission denied") || env.stderr().contains("not permitted"));
    assert_eq!(std::fs::read_to_string(&f).expect("read"), "immutable");
}

#[tokio::test]
async fn forked_daemon_does_not_block_completion() {
    let env = Env::new();
    let start = Instant::now();
    let out = run(&sandbox(), &env.sh("sleep 987654 & echo hi"), never())
        .await
        .expect("run");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(out.exit_code, 0);
    assert_eq!(env.stdout(), "hi\n");
    // The sleep was killed with the namespace.
    let sleeping = std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("cmdline")).ok())
        .any(|c| c == "sleep\0987654\0");
    assert!(!sleeping, "sleep 987654 survived the action");
}

#[tokio::test]
async fn timeout_keeps_partial_output() {
    let env = Env::new();
    let mut spec = env.sh("echo before; sleep 1000 & sleep 1000; echo after");
    spec.timeout = Duration::from_millis(500);
    let start = Instant::now();
    let out = run(&sandbox(), &spec, never()).await.expect("run");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(out.timed_out && !out.cancelled);
    assert_eq!(out.signal, Some(9));
    assert_eq!(out.exit_code, 137);
    assert_eq!(env.stdout(), "before\n");
}

#[tokio::test]
async fn cancellation_kills() {
    let env = Env::new();
    let spec = env.sh("echo started; exec sleep 1000");
    let cancel = tokio::time::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let out = run(&sandbox(), &spec, cancel).await.expect("run");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(out.cancelled && !out.timed_out);
    assert_eq!(env.stdout(), "started\n");
}

#[tokio::test]
async fn huge_stdout_is_bounded() {
    let env = Env::new();
    let mut spec = env.sh("head -c 50000000 /dev/zero; echo done >&2");
    spec.max_output_bytes = 1 << 20;
    let out = run(&sandbox(), &spec, never()).await.expect("run");
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout_bytes, 1 << 20);
    assert!(out.stdout_truncated && !out.stderr_truncated);
    assert_eq!(
        std::fs::metadata(env.dir.path().join("stdout"))
            .expect("stat")
            .len(),
        1 << 20
    );
    assert_eq!(env.stderr(), "done\n");

    // Endless output ends at the timeout, still bounded.
    let mut spec = env.spec(&["yes"]);
    spec.timeout = Duration::from_secs(1);
    spec.max_output_bytes = 1 << 20;
    let out = run(&sandbox(), &spec, never()).await.expect("run");
    assert!(out.timed_out && out.stdout_truncated);
    assert_eq!(out.stdout_bytes, 1 << 20);
}

#[tokio::test]
async fn exit_codes_and_signals() {
    let env = Env::new();
    let out = run(&sandbox(), &env.sh("exit 3"), never())
        .await
        .expect("run");
    assert_eq!((out.exit_code, out.signal), (3, None));
    let out = run(&sandbox(), &env.sh("kill -SEGV $$"), never())
        .await
        .expect("run");
    assert_eq!((out.exit_code, out.signal), (128 + 11, Some(11)));
    let out = run(&sandbox(), &env.sh("kill -9 $$"), never())
        .await
        .expect("run");
    assert_eq!((out.exit_code, out.signal), (137, Some(9)));
    assert!(!out.timed_out && !out.cancelled);
    assert!(out.finished >= out.started);
}

#[tokio::test]
async fn setup_failure_names_the_step() {
    if !is_root() {
        skip("needs root: an unreadable root is only unreadable to another uid");
        return;
    }
    let env = Env::new();
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(&env.root, Some(0), Some(0)).expect("chown");
    std::fs::set_permissions(&env.root, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let err = run(&sandbox(), &env.sh("true"), never())
        .await
        .expect_err("must fail");
    match &err {
        ExecError::Setup { step, source } => {
            assert_eq!(*step, "enter the working directory");
            assert_eq!(source.raw_os_error(), Some(13), "{err}");
        }
        other => panic!("{other}"),
    }
}
