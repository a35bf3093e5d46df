//! What an action can reach: its session and terminal, keyrings, `/dev`,
//! `/sys`, the system calls the seccomp filter denies, and tmpfs sizes.
//! A small C program (`probe.c`, built with the host's `cc`) runs inside
//! the sandbox and prints the errno of each call it tries.
//!
//! Run as root and as another user (the user-namespace mode), e.g.
//! `setpriv --reuid=nobody --regid=nogroup --clear-groups <test binary>`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{never, sandbox, skip, Env};
use rbe_exec::run;

/// Builds `probe.c` into the action root. `None` (after a SKIP line) when
/// the host has no C compiler.
fn probe(env: &Env) -> Option<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe.c");
    let out = env.root.join("probe");
    match Command::new("cc")
        .args(["-O0", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
    {
        Ok(s) if s.success() => {
            env.chown_action(&out);
            Some(())
        }
        _ => {
            skip("no working C compiler (cc) to build the probe");
            None
        }
    }
}

/// Runs the probe with `args` in `sb`; returns its `name=value` lines.
async fn run_probe(env: &Env, sb: &rbe_exec::Sandbox, args: &[&str]) -> BTreeMap<String, String> {
    let mut argv = vec!["./probe"];
    argv.extend_from_slice(args);
    let out = run(sb, &env.spec(&argv), never()).await.expect("run");
    assert_eq!(out.exit_code, 0, "stderr: {}", env.stderr());
    env.stdout()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The variable that makes the test binary, started again with a pty as its
/// controlling terminal, play the part of a worker started from a terminal.
const CTTY_CHILD: &str = "RBE_EXEC_TEST_CTTY_CHILD";

#[tokio::test]
async fn new_session_without_the_workers_terminal() {
    if std::env::var_os(CTTY_CHILD).is_some() {
        // The precondition: this process does have a controlling terminal.
        std::fs::File::open("/dev/tty").expect("the test's own /dev/tty");
        let env = Env::new();
        if probe(&env).is_none() {
            return;
        }
        let r = run_probe(&env, &sandbox(), &["session", "tty"]).await;
        // Init (pid 1 in the action's pid namespace) leads the session.
        assert_eq!(r["session"], "1", "{r:?}");
        assert_eq!(r["tty"], "ENXIO", "{r:?}");
        return;
    }
    let (master, slave) = open_pty();
    let out = spawn_with_ctty(&slave, "new_session_without_the_workers_terminal");
    drop(master);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

/// A pty pair: (master, slave), neither the caller's controlling terminal.
#[allow(unsafe_code)]
fn open_pty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc calls on descriptors this function owns; the
    // returned descriptors are fresh and owned by the caller.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(m), 0, "grantpt");
        assert_eq!(libc::unlockpt(m), 0, "unlockpt");
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        assert!(s >= 0, "open the pty slave");
        (
            std::os::fd::OwnedFd::from_raw_fd(m),
            std::os::fd::OwnedFd::from_raw_fd(s),
        )
    }
}

/// Runs this test binary's `test` in a new session whose controlling
/// terminal is `slave`.
#[allow(unsafe_code)]
fn spawn_with_ctty(slave: &std::os::fd::OwnedFd, test: &str) -> std::process::Output {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = slave.as_raw_fd();
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CTTY_CHILD, "1");
    // SAFETY: setsid and ioctl are async-signal-safe and touch only this
    // child; `fd` stays open in the parent until the child has exited.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("run the test binary with a terminal")
}

#[tokio::test]
async fn no_keyring_is_shared_between_actions() {
    let env = Env::new();
    if probe(&env).is_none() {
        return;
    }
    let desc = format!("rbe-test-{}", std::process::id());
    let a = run_probe(&env, &sandbox(), &[&format!("keyadd:{desc}")]).await;
    let b = run_probe(&env, &sandbox(), &[&format!("keyread:{desc}")]).await;
    for (k, v) in &b {
        assert!(!v.starts_with("found"), "action B read A's key: {k}={v}");
    }
    assert_eq!(a["keyadd-user"], "EPERM", "{a:?}");
    assert_eq!(a["keyadd-session"], "EPERM", "{a:?}");
    assert_eq!(b["keyread-user"], "EPERM", "{b:?}");
}

#[tokio::test]
async fn private_minimal_dev_and_no_host_sysfs() {
    let env = Env::new();
    if probe(&env).is_none() {
        return;
    }
    let script = "ls -A /dev | tr '\\n' ' '; echo; ls -A /dev/pts | tr '\\n' ' '; echo; \
                  ls -A /sys | tr '\\n' ' '; echo; \
                  ls /sys/class/net /sys/block /sys/devices/virtual 2>/dev/null | wc -l; \
                  getconf _NPROCESSORS_ONLN; \
                  echo x > /dev/null && head -c 4 /dev/zero | wc -c; \
                  echo x > /dev/full 2>/dev/null || echo full-is-full; \
                  head -c 8 /dev/urandom | wc -c; \
                  touch /dev/new 2>/dev/null || echo dev-read-only; \
                  echo x > /dev/shm/f && echo shm-ok; \
                  readlink /dev/fd /dev/stdin /dev/ptmx | tr '\\n' ' '; echo; \
                  ./probe pty";
    let out = run(&sandbox(), &env.sh(script), never())
        .await
        .expect("run");
    assert_eq!(out.exit_code, 0, "stderr: {}", env.stderr());
    let host_cpus = Command::new("getconf")
        .arg("_NPROCESSORS_ONLN")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .expect("getconf");
    let cgroup = if Path::new("/sys/fs/cgroup").is_dir() {
        "fs "
    } else {
        ""
    };
    let want = format!(
        "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero \n\
         ptmx \n\
         devices {cgroup}\n\
         0\n\
         {host_cpus}\n\
         4\n\
         full-is-full\n\
         8\n\
         dev-read-only\n\
         shm-ok\n\
         /proc/self/fd /proc/self/fd/0 pts/ptmx \n\
         pty=ok\n"
    );
    assert_eq!(env.stdout(), want);
}

/// Each class of denied system call, tried with arguments for which the
/// kernel itself would answer something else than EPERM where it can.
#[tokio::test]
async fn seccomp_denies_what_builds_never_need() {
    let env = Env::new();
    if probe(&env).is_none() {
        return;
    }
    let mut probes = vec![
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "setns",
        "unshare_user",
        "clone_user",
        "clone3",
        "tiocsti",
        // Denied by the kernel already (no capabilities); the filter makes
        // sure of it.
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "reboot",
        "swapon",
        "mount",
        "umount2",
        "pivot_root",
        "open_by_handle_at",
        "acct",
        "quotactl",
        // Still allowed: threads (glibc falls back from clone3 to clone),
        // fork, and tracing one's own children (sanitizers, debuggers).
        "thread",
        "fork",
        "traceme",
        "ptrace_init",
    ];
    if cfg!(target_arch = "x86_64") {
        probes.extend(["iopl", "ioperm", "x32_getpid"]);
    }
    let r = run_probe(&env, &sandbox(), &probes).await;
    for p in &probes {
        let want = match *p {
            "clone3" | "x32_getpid" => "ENOSYS",
            "thread" | "fork" | "traceme" => "ok",
            _ => "EPERM",
        };
        assert_eq!(r.get(*p).map(String::as_str), Some(want), "{p}: {r:?}");
    }
    let status = run(
        &sandbox(),
        &env.sh("grep -E '^Seccomp:' /proc/self/status"),
        never(),
    )
    .await
    .expect("run");
    assert_eq!(status.exit_code, 0);
    assert_eq!(env.stdout(), "Seccomp:\t2\n");
}

#[tokio::test]
async fn every_tmpfs_has_a_size_and_writing_past_it_fails_enospc() {
    // Not below /tmp: the host's /tmp may be a tmpfs of its own.
    let env = Env::new_in(Path::new("/var/tmp"));
    let mut sb = sandbox();
    sb.tmpfs_size = 8 << 20;
    let script = "for d in /tmp /dev/shm; do \
                    head -c 12m /dev/zero > $d/big 2>/dev/null && echo $d-unbounded; \
                    echo $d $(stat -c %s $d/big); rm -f $d/big; \
                  done; \
                  grep ' - tmpfs ' /proc/self/mountinfo | awk '$6 ~ /^rw/' > /tmp/rw; \
                  grep -c . /tmp/rw; grep -vc 'size=' /tmp/rw; cat /tmp/rw >&2; true";
    let out = run(&sb, &env.sh(script), never()).await.expect("run");
    assert_eq!(out.exit_code, 0, "stderr: {}", env.stderr());
    let lines: Vec<String> = env.stdout().lines().map(str::to_owned).collect();
    assert_eq!(lines[0], format!("/tmp {}", 8 << 20), "{lines:?}");
    assert_eq!(lines[1], format!("/dev/shm {}", 8 << 20), "{lines:?}");
    // /tmp and /dev/shm are the only writable tmpfs mounts (the host's,
    // covered or not, are read-only copies).
    assert_eq!(
        lines[2],
        "2",
        "writable tmpfs mounts: {lines:?} {}",
        env.stderr()
    );
    assert_eq!(lines[3], "0", "a writable tmpfs without size=: {lines:?}");
    // The runner is fine and runs the next action.
    let out = run(&sb, &env.sh("echo next"), never()).await.expect("run");
    assert_eq!(out.exit_code, 0);
    assert_eq!(env.stdout(), "next\n");
}

/// The host's OOM killer takes an action before any daemon: every action
/// process has the highest `oom_score_adj`, inherited by its children.
#[tokio::test]
async fn actions_are_the_oom_killers_first_choice() {
    let env = Env::new_in(Path::new("/var/tmp"));
    let sb = sandbox();
    let out = run(
        &sb,
        &env.sh("cat /proc/self/oom_score_adj; sh -c 'cat /proc/self/oom_score_adj'"),
        never(),
    )
    .await
    .expect("run");
    assert_eq!(out.exit_code, 0, "stderr: {}", env.stderr());
    assert_eq!(env.stdout(), "1000\n1000\n");
}
