//! Action directories that an action made hard to remove: the worker must
//! stay up, go on running actions, and start up again over what an earlier
//! run left behind. Real daemons, real actions, real gRPC.

use std::time::{Duration, Instant};

use rbe_testkit::exec::run_command;
use rbe_testkit::Stack;
use rustix::fs::{Mode, OFlags};

/// Levels of the directory chain: deep enough that a recursive removal
/// overflows a 2 MiB thread stack.
const DEPTH: u32 = 60_000;

/// An action that leaves a `DEPTH`-level chain `d/d/d/...` in its root
/// (relative paths: absolute ones would hit PATH_MAX), and one read-only
/// directory holding a file on the way down.
fn deep_chain_script() -> String {
    format!(
        "use strict; for my $i (1..{DEPTH}) {{ mkdir 'd' or die \"mkdir $i: $!\"; \
         chdir 'd' or die \"chdir $i: $!\"; if ($i == 29999) {{ open(my $f, '>', 'f') or die; close $f }} \
         if ($i == 30000) {{ chmod 0555, '..' or die }} }} print \"deep\\n\";"
    )
}

/// Entries of the work directory other than the quarantine.
fn action_dirs(work: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(work)
        .expect("work dir")
        .flatten()
        .filter(|e| e.file_name() != ".quarantine")
        .map(|e| e.path())
        .collect()
}

/// Entries in the quarantine (none when it does not exist).
fn quarantined(work: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(work.join(".quarantine"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// Waits until the work directory holds nothing (quarantine included) or
/// the worker died; whether it is empty.
async fn wait_work_dir_clean(s: &mut Stack) -> bool {
    let work = s.casd.layout.work_dir.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if action_dirs(&work).is_empty() && quarantined(&work).is_empty() {
            return true;
        }
        if !s.alive() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Removes what is left in the work directory before the stack's temporary
/// directory goes (declare it after the stack): `TempDir`'s recursive
/// removal would overflow the test's own stack on a deep tree.
struct CleanWorkDir(std::path::PathBuf);

impl Drop for CleanWorkDir {
    fn drop(&mut self) {
        let limits = rbe_exec::remove::RemoveLimits::default();
        for p in action_dirs(&self.0).into_iter().chain(quarantined(&self.0)) {
            let _ = rbe_exec::remove::remove_tree_at(&p, &limits);
        }
    }
}

async fn assert_runs_next_action(s: &mut Stack) {
    let r = run_command(&s.channel(), &["sh", "-c", "echo next"], &[], 60, None)
        .await
        .expect("Execute of the next action");
    assert_eq!(r.status.map_or(0, |s| s.code), 0, "next action's status");
    assert_eq!(r.result.expect("a result").exit_code, 0);
    assert!(s.alive(), "a daemon died running the next action");
}

fn have_perl() -> bool {
    std::path::Path::new("/usr/bin/perl").is_file()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_leaving_a_60000_level_tree_does_not_stop_the_worker() {
    if !have_perl() {
        rbe_testkit::skip("/usr/bin/perl is not installed");
        return;
    }
    let mut s = Stack::start().await;
    let _clean = CleanWorkDir(s.casd.layout.work_dir.clone());
    let script = deep_chain_script();
    let r = run_command(
        &s.channel(),
        &["/usr/bin/perl", "-e", &script],
        &[],
        300,
        None,
    )
    .await
    .expect("Execute of the deep-tree action");
    assert_eq!(
        r.status.as_ref().map_or(0, |s| s.code),
        0,
        "status of {r:?}"
    );
    assert_eq!(r.result.as_ref().expect("result").exit_code, 0, "{r:?}");
    // The directory is removed after the report: wait for that (or for the
    // worker to die trying).
    let clean = wait_work_dir_clean(&mut s).await;
    assert!(
        s.alive(),
        "a daemon died removing the action directory (see {}/workerd.log)",
        s.tmp.path().display()
    );
    assert!(clean, "the action directory was not removed");
    assert_runs_next_action(&mut s).await;
}

/// Makes `<work>/<name>` a `depth`-level chain of `d` directories with the
/// deepest one read-only, as a crashed worker would have left it.
fn leave_deep_tree(work: &std::path::Path, name: &str, depth: u32) {
    let top = work.join(name).join("root");
    std::fs::create_dir_all(&top).expect("mkdir");
    let mut cur = rustix::fs::open(
        &top,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open");
    for _ in 0..depth {
        rustix::fs::mkdirat(&cur, "d", Mode::from_raw_mode(0o755)).expect("mkdirat");
        cur = rustix::fs::openat(
            &cur,
            "d",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("openat");
    }
    rustix::fs::openat(
        &cur,
        "file",
        OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o444),
    )
    .expect("create");
    rustix::fs::fchmod(&cur, Mode::from_raw_mode(0o555)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60000_level_tree_left_in_the_work_dir_does_not_stop_startup() {
    let mut s = Stack::start().await;
    let _clean = CleanWorkDir(s.casd.layout.work_dir.clone());
    s.kill_workerd();
    let work = s.casd.layout.work_dir.clone();
    leave_deep_tree(&work, "0123456789abcdef0123456789abcdef", DEPTH);
    s.start_workerd();
    // The worker starts, attaches and serves while the tree goes.
    assert_runs_next_action(&mut s).await;
    let clean = wait_work_dir_clean(&mut s).await;
    assert!(
        s.alive(),
        "a daemon died over the leftover tree (see {}/workerd.log)",
        s.tmp.path().display()
    );
    assert!(
        clean,
        "the leftover tree was not removed: {:?} {:?}",
        action_dirs(&work),
        quarantined(&work)
    );
    assert_runs_next_action(&mut s).await;
}

/// `chattr` on `path`; whether it worked.
fn chattr(flag: &str, path: &std::path::Path) -> bool {
    std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

/// Takes the immutable flag off again, whatever the test did.
struct Mutable(std::path::PathBuf);

impl Drop for Mutable {
    fn drop(&mut self) {
        chattr("-i", &self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_that_cannot_be_removed_is_quarantined_and_the_worker_serves() {
    if !rustix::process::geteuid().is_root() {
        rbe_testkit::skip("chattr +i needs root");
        return;
    }
    let mut s = Stack::start().await;
    let _clean = CleanWorkDir(s.casd.layout.work_dir.clone());
    s.kill_workerd();
    let work = s.casd.layout.work_dir.clone();
    let name = "fedcba9876543210fedcba9876543210";
    leave_deep_tree(&work, name, 100);
    let stuck = work.join(name).join("root/stuck");
    std::fs::write(&stuck, b"x").expect("write");
    if !chattr("+i", &stuck) {
        rbe_testkit::skip("chattr +i does not work on the test's file system");
        return;
    }
    let quarantined_file = work.join(".quarantine").join(name).join("root/stuck");
    let _mutable = [Mutable(stuck), Mutable(quarantined_file.clone())];
    // Twice: a restart meets the quarantined tree again and still serves.
    for _ in 0..2 {
        s.start_workerd();
        assert_runs_next_action(&mut s).await;
        let log = s.tmp.path().join("workerd.log");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("cannot remove a quarantined tree yet") {
                break;
            }
            assert!(Instant::now() < deadline, "no quarantine report in {text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(s.alive(), "a daemon died over the unremovable tree");
        // The action's own directory is removed after its result is
        // reported, so the client can see the result first.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !action_dirs(&work).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(action_dirs(&work).is_empty(), "{:?}", action_dirs(&work));
        assert!(
            quarantined_file.exists(),
            "the tree waits in the quarantine"
        );
        std::fs::write(&log, b"").expect("truncate the log");
        s.kill_workerd();
    }
    s.start_workerd();
    assert_runs_next_action(&mut s).await;
}
