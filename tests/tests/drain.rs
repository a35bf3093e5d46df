//! Stopping rbe-workerd (SIGTERM, as `systemctl stop` does) lets the running
//! action finish and report before the worker exits: nothing acknowledged
//! is lost.

use rbe_testkit::exec::run_command;
use rbe_testkit::{client, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_action_finish_and_report() {
    let mut stack = Stack::start().await;
    let ch = stack.channel();
    let script = "sleep 2; echo finished".to_owned();
    let ch2 = ch.clone();
    let running =
        tokio::spawn(async move { run_command(&ch2, &["sh", "-c", &script], &[], 60, None).await });
    // Wait until the worker has forked the action's sandbox.
    let log = stack.tmp.path().join("workerd.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let pid = stack.workerd_pid().expect("workerd runs");
    loop {
        // Children are listed under the thread that forked them.
        let forked = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                std::fs::read_to_string(t.path().join("children"))
                    .is_ok_and(|c| !c.trim().is_empty())
            });
        if forked {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the action never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let r = running.await.expect("task").expect("execute");
    let res = r.result.as_ref().unwrap_or_else(|| {
        panic!(
            "{r:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert_eq!(res.exit_code, 0, "{r:?}");
    let d = res.stdout_digest.as_ref().expect("stdout");
    let d = rbe_proto::Digest::parse(rbe_proto::DigestFunction::Sha256, &d.hash, d.size_bytes)
        .expect("digest");
    let out = client::read(&ch, "", &d).await.expect("stdout blob");
    assert_eq!(String::from_utf8_lossy(&out), "finished\n");
    let status = stack.wait_workerd().expect("workerd exited");
    assert!(status.success(), "workerd exit: {status:?}");
}

/// Host pids whose command line has `token` (the action's processes).
fn processes_with(token: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            (pid.bytes().all(|b| b.is_ascii_digit())
                && String::from_utf8_lossy(&cmd).contains(token))
            .then_some(pid)
        })
        .collect()
}

/// A running action of two `sleep`s of about `secs` each, whose command
/// line is unique to this test (so only its processes match): its task,
/// once its processes exist, and the pattern to look for.
async fn sleeping_action(
    ch: &tonic::transport::Channel,
    secs: u32,
    seed: u32,
) -> (
    tokio::task::JoinHandle<Result<rbe_proto::reapi::ExecuteResponse, tonic::Status>>,
    String,
) {
    // The fraction makes the command line unique; it sleeps about `secs`.
    let token = format!("sleep {secs}.{}{seed}", std::process::id() % 100_000);
    let script = format!("{token}; {token}");
    let ch2 = ch.clone();
    let running =
        tokio::spawn(
            async move { run_command(&ch2, &["sh", "-c", &script], &[], 600, None).await },
        );
    wait_for("the action to start", 30, || {
        !processes_with(&token).is_empty()
    })
    .await;
    (running, token)
}

/// Polls `done` every 20 ms for up to `secs` seconds.
async fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited {secs} s for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Without a systemd scope to clean up, a worker killed outright (SIGKILL,
/// OOM killer, a crash) must still not leave its actions running: each
/// sandbox notices its worker is gone and kills itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_leaves_no_action_running() {
    let mut stack = Stack::start().await;
    let (running, token) = sleeping_action(&stack.channel(), 4000, 17).await;
    stack.kill_workerd();
    wait_for("the action to die with its worker", 10, || {
        processes_with(&token).is_empty()
    })
    .await;
    running.abort();
}

/// `worker.drain_timeout_secs` bounds the drain: an action still running
/// then is killed (the frontend queues it again), and the worker exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_ends_after_the_configured_time() {
    let mut stack = Stack::start_configured("", "", "[worker]\ndrain_timeout_secs = 1\n").await;
    let (running, token) = sleeping_action(&stack.channel(), 4000, 23).await;
    let pid = stack.workerd_pid().expect("workerd runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = stack.wait_workerd().expect("workerd exited");
    assert!(status.success(), "workerd exit: {status:?}");
    let log = std::fs::read_to_string(stack.tmp.path().join("workerd.log")).unwrap_or_default();
    assert!(
        log.contains("drain time is up") && log.contains("drain_timeout_secs=1"),
        "{log}"
    );
    // Killed as the worker leaves (its sandbox sees the worker gone).
    wait_for("the action to die after the drain", 10, || {
        processes_with(&token).is_empty()
    })
    .await;
    // No worker is left, so the action waits in the queue, not failed.
    assert!(!running.is_finished(), "{:?}", running.await);
    running.abort();
}

/// Stopping the frontend (SIGTERM, as `systemctl stop` does): an executing
/// action finishes and its client gets the result; a queued one gets
/// UNAVAILABLE at once, which clients retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_frontend_lets_executing_actions_finish() {
    let mut stack = Stack::start_configured(
        "",
        "[execution]\ndrain_timeout_secs = 60\n",
        "[worker]\nslots = 1\n",
    )
    .await;
    let ch = stack.channel();
    let (running, _) = sleeping_action(&ch, 2, 29).await;
    // The only slot is busy, so this one waits in the queue.
    let ch2 = ch.clone();
    let queued = tokio::spawn(async move {
        run_command(&ch2, &["sh", "-c", "echo queued"], &[], 60, None).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let pid = stack.frontend_pid().expect("frontend runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");

    let q = queued.await.expect("task");
    let code = match &q {
        Ok(r) => r.status.as_ref().map_or(0, |s| s.code),
        Err(s) => s.code() as i32,
    };
    assert_eq!(code, tonic::Code::Unavailable as i32, "{q:?}");
    assert!(
        !running.is_finished(),
        "the executing action is not cut short"
    );
    let r = running.await.expect("task").expect("a result");
    let res = r.result.as_ref().unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(res.exit_code, 0, "{r:?}");
    let status = stack.wait_frontend().expect("frontend exited");
    assert!(status.success(), "frontend exit: {status:?}");
}
