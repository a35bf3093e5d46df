//! Per-action limits without systemd scopes, through the real daemons: a
//! fork bomb and a memory hog in one action stop at that action's limits
//! (per-action cgroups as root, rlimits for a non-root worker, which the
//! root run checks too by re-running those tests as uid 65534), the worker
//! and other actions carry on, and no cgroup is left behind. Also: a
//! ceiling of 0 holds the administrator's limit against a client's
//! platform property.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rbe_testkit::exec::{resource_usage, run_command};
use rbe_testkit::{skip, Stack};
use tonic::Code;

/// Forks up to 10,000 children that each wait on a pipe; prints how many
/// forks succeeded and how many failed, then lets them all go.
const FORK_BOMB: &str = r#"
import os
r, w = os.pipe()
ok = failed = 0
pids = []
for i in range(10000):
    try:
        pid = os.fork()
    except OSError:
        failed += 1
        continue
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    pids.append(pid)
    ok += 1
os.close(w)
for p in pids:
    os.waitpid(p, 0)
print(ok, failed)
"#;

const NO_SCOPES: &str = "[scope]\nmode = \"off\"\n\n";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

async fn stdout(ch: &tonic::transport::Channel, r: &rbe_proto::reapi::ExecuteResponse) -> String {
    let Some(d) = r.result.as_ref().and_then(|r| r.stdout_digest.as_ref()) else {
        return String::new();
    };
    let d = rbe_proto::Digest::from_reapi(rbe_proto::DigestFunction::Sha256, d).expect("digest");
    String::from_utf8_lossy(
        &rbe_testkit::client::read(ch, "", &d)
            .await
            .expect("read stdout"),
    )
    .into_owned()
}

/// The worker's own cgroups in the v1 memory and pids hierarchies, where
/// it makes its actions' (`rbe-workerd-<pid>-<action id>`).
fn worker_cgroups(pid: u32) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut dirs = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next(), parts.next());
        let (Some(ctrls), Some(path)) = (ctrls, path) else {
            continue;
        };
        for c in ["memory", "pids"] {
            if ctrls.split(',').any(|x| x == c) {
                dirs.push(
                    PathBuf::from(format!("/sys/fs/cgroup/{c}")).join(path.trim_start_matches('/')),
                );
            }
        }
    }
    dirs
}

/// The action cgroups worker `pid` has in `dirs`.
fn action_cgroups(dirs: &[PathBuf], pid: u32) -> Vec<PathBuf> {
    let prefix = format!("rbe-workerd-{pid}-");
    dirs.iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

async fn stderr(ch: &tonic::transport::Channel, r: &rbe_proto::reapi::ExecuteResponse) -> String {
    let Some(d) = r.result.as_ref().and_then(|r| r.stderr_digest.as_ref()) else {
        return String::new();
    };
    let d = rbe_proto::Digest::from_reapi(rbe_proto::DigestFunction::Sha256, d).expect("digest");
    String::from_utf8_lossy(
        &rbe_testkit::client::read(ch, "", &d)
            .await
            .expect("read stderr"),
    )
    .into_owned()
}

async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Whether this host has v1 memory and pids hierarchies (the hybrid layout
/// the root tests below check directories in).
fn v1_memory_and_pids() -> bool {
    ["memory", "pids"]
        .iter()
        .all(|c| std::path::Path::new(&format!("/sys/fs/cgroup/{c}/cgroup.procs")).exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceiling_of_zero_holds_the_configured_limit() {
    let mut s = Stack::start_configured(
        "",
        "",
        &format!(
            "{NO_SCOPES}[limits]\nmemory_max = \"256MiB\"\nmax_memory = \"0\"\n\
             tasks_max = 64\nmax_tasks = 0\n"
        ),
    )
    .await;
    let ch = s.channel();
    for (prop, value, key) in [
        ("rbe.memory_max", "1GiB", "limits.max_memory"),
        ("rbe.tasks_max", "65", "limits.max_tasks"),
    ] {
        let r = run_command(&ch, &["true"], &[(prop, value)], 60, None)
            .await
            .expect("execute");
        let st = r.status.clone().unwrap_or_default();
        assert_eq!(st.code, Code::InvalidArgument as i32, "{prop}: {r:?}");
        assert!(st.message.contains(key), "{}", st.message);
        assert!(r.result.is_none(), "the action must not run: {r:?}");
    }
    // At or below the configured limit is fine.
    let r = run_command(
        &ch,
        &["true"],
        &[("rbe.memory_max", "256MiB"), ("rbe.tasks_max", "32")],
        60,
        None,
    )
    .await
    .expect("execute");
    assert_eq!(r.result.as_ref().map(|r| r.exit_code), Some(0), "{r:?}");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_without_scopes_stops_at_the_task_limit() {
    let mut s = Stack::start_configured(
        "",
        "",
        &format!("{NO_SCOPES}[worker]\nslots = 2\n\n[limits]\ntasks_max = 64\n"),
    )
    .await;
    let ch = s.channel();
    // Another action runs meanwhile, and must be fine.
    let other = {
        let ch = ch.clone();
        tokio::spawn(async move {
            run_command(
                &ch,
                &[
                    "sh",
                    "-c",
                    "sleep 1; for i in 1 2 3 4 5 6 7 8; do (true); done; echo other-ok",
                ],
                &[],
                60,
                None,
            )
            .await
        })
    };
    let r = run_command(&ch, &["python3", "-c", FORK_BOMB], &[], 120, None)
        .await
        .expect("execute");
    let res = r.result.as_ref().unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(res.exit_code, 0, "{r:?}");
    let out = stdout(&ch, &r).await;
    let (ok, failed): (u32, u32) = match out.split_whitespace().collect::<Vec<_>>()[..] {
        [a, b] => (a.parse().expect("ok"), b.parse().expect("failed")),
        _ => panic!("unexpected stdout {out:?} {r:?}"),
    };
    assert!(ok < 64, "{ok} forks succeeded with tasks_max = 64");
    assert_eq!(ok + failed, 10_000);
    if is_root() {
        // In the worker's own cgroup: pids.max counted the refusals.
        let u = resource_usage(&r).expect("resource usage");
        assert!(u.tasks_limit_hits.unwrap_or(0) > 0, "{u:?}");
        assert_eq!(u.tasks_max, 64, "{u:?}");
    }
    let o = other.await.expect("join").expect("execute");
    assert_eq!(stdout(&ch, &o).await, "other-ok\n", "{o:?}");
    // The worker runs the next action.
    let r = run_command(&ch, &["sh", "-c", "echo fine"], &[], 60, None)
        .await
        .expect("execute");
    assert_eq!(stdout(&ch, &r).await, "fine\n");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_without_scopes_is_stopped_at_the_memory_limit() {
    let mut s = Stack::start_configured(
        "",
        "",
        &format!("{NO_SCOPES}[limits]\nmemory_max = \"64MiB\"\n"),
    )
    .await;
    let ch = s.channel();
    let r = run_command(
        &ch,
        &["python3", "-c", "x = b'y' * (200 << 20); print(len(x))"],
        &[],
        60,
        None,
    )
    .await
    .expect("execute");
    let res = r.result.as_ref().unwrap_or_else(|| panic!("{r:?}"));
    if is_root() {
        // The action's own memory cgroup: the kernel kills it, and the
        // client is told as with a scope.
        assert_eq!(res.exit_code, 137, "{r:?}");
        assert!(r.message.contains("OOM"), "message: {:?}", r.message);
        let u = resource_usage(&r).expect("resource usage");
        assert!(u.oom_kills.unwrap_or(0) >= 1, "{u:?}");
        assert_eq!(u.memory_max, 64 << 20, "{u:?}");
    } else {
        // No cgroup for a non-root worker here: RLIMIT_DATA makes the
        // allocation fail instead.
        assert_eq!(res.exit_code, 1, "{r:?}");
        assert!(stderr(&ch, &r).await.contains("MemoryError"), "{r:?}");
    }
    // The daemons were not the OOM killer's choice, and the worker goes on.
    assert!(s.alive());
    let r = run_command(&ch, &["sh", "-c", "echo fine"], &[], 60, None)
        .await
        .expect("execute");
    assert_eq!(stdout(&ch, &r).await, "fine\n");
    assert!(s.alive());
}

/// Run as root, the two tests above again as uid 65534 (a non-root worker:
/// user namespaces, and rlimits instead of cgroups on this host), from
/// this test binary through `setpriv`, with binaries already built.
#[test]
fn a_non_root_worker_stops_them_with_rlimits() {
    if !is_root() {
        return skip("already not root: the tests above ran the non-root path");
    }
    let have_setpriv = std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_setpriv {
        return skip("setpriv is not installed: cannot run as uid 65534");
    }
    // Built by the other tests' first Stack, or here.
    let _ = rbe_testkit::bin("rbe-workerd");
    let tmp = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(tmp.path(), Some(65534), Some(65534)).expect("chown");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std::env::current_exe().expect("current_exe"))
        .args([
            "--exact",
            "fork_bomb_without_scopes_stops_at_the_task_limit",
            "memory_hog_without_scopes_is_stopped_at_the_memory_limit",
            "--test-threads=1",
        ])
        .current_dir(tmp.path())
        .env("RBE_TEST_NO_BUILD", "1")
        .env("TMPDIR", tmp.path())
        .env("HOME", tmp.path())
        .output()
        .expect("setpriv");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("Permission denied") && !out.status.success() {
        return skip(&format!(
            "uid 65534 cannot run this test binary here: {text}"
        ));
    }
    assert!(out.status.success(), "as uid 65534:\n{text}");
    assert!(text.contains("2 passed"), "as uid 65534:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cgroup_is_left_behind() {
    if !is_root() {
        return skip("per-action cgroups need root on this host");
    }
    if !v1_memory_and_pids() {
        return skip("this check reads v1 memory and pids hierarchies");
    }
    let mut s = Stack::start_configured(
        "",
        "",
        &format!("{NO_SCOPES}[limits]\nmemory_max = \"64MiB\"\ntasks_max = 32\n"),
    )
    .await;
    let ch = s.channel();
    let pid = s.workerd_pid().expect("workerd pid");
    let dirs = worker_cgroups(pid);
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    // The action sees itself in a cgroup of its own beside the worker's.
    let r = run_command(&ch, &["cat", "/proc/self/cgroup"], &[], 60, None)
        .await
        .expect("execute");
    let cg = stdout(&ch, &r).await;
    let own: Vec<&str> = cg
        .lines()
        .filter(|l| l.contains(":memory:") || l.contains(":pids:"))
        .collect();
    assert_eq!(own.len(), 2, "{cg}");
    assert!(
        own.iter()
            .all(|l| l.contains(&format!("/rbe-workerd-{pid}-"))),
        "{cg}"
    );
    // A memory hog, a fork bomb, a plain one: no action cgroup remains.
    for argv in [
        &["python3", "-c", "x = b'y' * (200 << 20)"][..],
        &["sh", "-c", "for i in $(seq 100); do sleep 1 & done; wait"][..],
        &["true"][..],
    ] {
        run_command(&ch, argv, &[], 60, None)
            .await
            .expect("execute");
    }
    assert!(
        eventually(Duration::from_secs(15), || action_cgroups(&dirs, pid)
            .is_empty())
        .await,
        "action cgroups left: {:?}",
        action_cgroups(&dirs, pid)
    );
    // A worker killed in the middle of an action leaves its cgroups; the
    // next worker removes them.
    let running = {
        let ch = ch.clone();
        tokio::spawn(async move { run_command(&ch, &["sleep", "10"], &[], 60, None).await })
    };
    assert!(
        eventually(Duration::from_secs(30), || action_cgroups(&dirs, pid).len()
            == 2)
        .await,
        "the running action's cgroups: {:?}",
        action_cgroups(&dirs, pid)
    );
    s.kill_workerd();
    assert_eq!(action_cgroups(&dirs, pid).len(), 2);
    s.start_workerd();
    assert!(
        eventually(Duration::from_secs(30), || action_cgroups(&dirs, pid)
            .is_empty())
        .await,
        "a dead worker's cgroups are still there: {:?}",
        action_cgroups(&dirs, pid)
    );
    // The frontend queues the action again; the new worker runs it.
    let r = running.await.expect("join").expect("execute");
    assert_eq!(r.result.as_ref().map(|r| r.exit_code), Some(0), "{r:?}");
    // A worker that stops leaves nothing either.
    let pid = s.workerd_pid().expect("workerd pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let st = s.wait_workerd().expect("workerd exited");
    assert!(st.success(), "{st}");
    assert!(action_cgroups(&dirs, pid).is_empty());
    let leaf = dirs
        .iter()
        .map(|d| d.join(format!("rbe-workerd-{pid}.self")));
    assert!(
        leaf.clone().all(|d| !d.exists()),
        "{:?}",
        leaf.collect::<Vec<_>>()
    );
}
