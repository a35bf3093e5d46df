//! Resource limits (`Rlimits`) on real sandboxes: they reach the command,
//! and in the non-root mode (a user namespace per action) RLIMIT_NPROC
//! stops a fork bomb at the action's own count and RLIMIT_DATA stops a
//! memory hog. Run as root, the non-root part re-runs this test binary as
//! uid 65534 through `setpriv`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{is_root, never, sandbox, skip, Env};
use rbe_exec::{run, Rlimits};

/// Forks up to 10,000 children that wait on a pipe; prints "ok failed".
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

/// Set when this binary runs itself as an unprivileged user.
const UNPRIVILEGED_RUN: &str = "RBE_EXEC_TEST_UNPRIVILEGED";

/// The soft and hard values of one `/proc/self/limits` line.
fn limit(text: &str, name: &str) -> (String, String) {
    let line = text
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} not in {text}"));
    let mut rest = line[name.len()..].split_whitespace();
    (
        rest.next().expect("soft").to_owned(),
        rest.next().expect("hard").to_owned(),
    )
}

#[tokio::test]
async fn rlimits_reach_the_command() {
    let env = Env::new();
    let mut spec = env.spec(&["cat", "/proc/self/limits"]);
    spec.rlimits = Rlimits {
        nproc: Some(50),
        data: Some(256 << 20),
        fsize: Some(1 << 20),
        nofile: Some(64),
        core: Some(0),
    };
    let out = run(&sandbox(), &spec, never()).await.expect("run");
    assert_eq!(out.exit_code, 0, "{}", env.stderr());
    let text = env.stdout();
    let both = |v: &str| (v.to_owned(), v.to_owned());
    assert_eq!(limit(&text, "Max processes"), both("50"), "{text}");
    assert_eq!(limit(&text, "Max data size"), both("268435456"), "{text}");
    assert_eq!(limit(&text, "Max file size"), both("1048576"), "{text}");
    assert_eq!(limit(&text, "Max open files"), both("64"), "{text}");
    assert_eq!(limit(&text, "Max core file size"), both("0"), "{text}");
}

#[tokio::test]
async fn file_size_limit_stops_a_big_file() {
    let env = Env::new();
    let mut spec = env.sh("head -c 3000000 /dev/zero > big");
    spec.rlimits.fsize = Some(1 << 20);
    let out = run(&sandbox(), &spec, never()).await.expect("run");
    assert_ne!(out.exit_code, 0, "a 3 MB file under a 1 MiB RLIMIT_FSIZE");
    let size = std::fs::metadata(env.root.join("big")).expect("big").len();
    assert!(size <= 1 << 20, "{size}");
}

/// The non-root worker's mode: each action has its own user namespace, so
/// RLIMIT_NPROC counts that action's processes only, and a fork bomb stops
/// at it whatever else the uid runs.
#[tokio::test]
async fn unprivileged_fork_bomb_and_memory_hog_stop_at_rlimits() {
    if is_root() {
        if std::env::var_os(UNPRIVILEGED_RUN).is_some() {
            panic!("setpriv did not drop root");
        }
        return rerun_unprivileged("unprivileged_fork_bomb_and_memory_hog_stop_at_rlimits");
    }
    let env = Env::new();
    let mut spec = env.spec(&["python3", "-c", FORK_BOMB]);
    spec.timeout = Duration::from_secs(120);
    spec.rlimits.nproc = Some(20);
    let out = run(&sandbox(), &spec, never()).await.expect("run");
    assert_eq!(out.exit_code, 0, "{}", env.stderr());
    let text = env.stdout();
    let counts: Vec<u32> = text
        .split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect();
    let [ok, failed] = counts[..] else {
        panic!("unexpected stdout {text:?}");
    };
    assert!(ok < 20, "{ok} forks succeeded under RLIMIT_NPROC 20");
    assert_eq!(ok + failed, 10_000);

    let env = Env::new();
    let mut spec = env.spec(&["python3", "-c", "x = b'y' * (200 << 20); print(len(x))"]);
    spec.rlimits.data = Some(64 << 20);
    let out = run(&sandbox(), &spec, never()).await.expect("run");
    assert_ne!(out.exit_code, 0, "200 MiB under RLIMIT_DATA 64 MiB");
    assert!(env.stderr().contains("MemoryError"), "{}", env.stderr());
}

/// Runs `test` of this binary again as uid and gid 65534, with a temp
/// directory that user owns; SKIP if that cannot be done here.
fn rerun_unprivileged(test: &str) {
    let have_setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_setpriv {
        return skip("setpriv is not installed: cannot run the non-root part as uid 65534");
    }
    let exe = std::env::current_exe().expect("current_exe");
    let tmp = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(tmp.path(), Some(65534), Some(65534)).expect("chown");
    let probe = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .arg("--list")
        .output()
        .expect("setpriv");
    if !probe.status.success() {
        return skip(&format!(
            "uid 65534 cannot run {} (a directory on the way is not searchable): {}",
            exe.display(),
            String::from_utf8_lossy(&probe.stderr)
        ));
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(UNPRIVILEGED_RUN, "1")
        .env("TMPDIR", tmp.path())
        .output()
        .expect("setpriv");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "as uid 65534:\n{text}");
    assert!(text.contains("1 passed"), "as uid 65534:\n{text}");
}
