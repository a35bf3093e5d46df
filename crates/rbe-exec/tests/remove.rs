//! Removing trees an action may leave: deep, wide, read-only, symlinks to
//! the outside, special files; and the quarantine for what cannot go.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use common::{is_root, skip};
use rbe_exec::remove::{remove_tree_at, Disposal, Quarantine, RemoveError, RemoveLimits};
use rustix::fs::{Mode, OFlags};

/// A `depth`-level chain `d/d/...` below `top`, built with descriptors (a
/// path that long cannot be named).
fn chain(top: &Path, depth: u32) {
    std::fs::create_dir_all(top).expect("mkdir");
    let mut cur =
        rustix::fs::open(top, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).expect("open");
    for _ in 0..depth {
        rustix::fs::mkdirat(&cur, "d", Mode::from_raw_mode(0o755)).expect("mkdirat");
        cur = rustix::fs::openat(
            &cur,
            "d",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .expect("openat");
    }
    rustix::fs::openat(
        &cur,
        "leaf",
        OFlags::WRONLY | OFlags::CREATE,
        Mode::from_raw_mode(0o644),
    )
    .expect("leaf");
}

fn limits(max_open_dirs: usize) -> RemoveLimits {
    RemoveLimits {
        max_open_dirs,
        ..RemoveLimits::default()
    }
}

#[test]
fn a_60000_level_chain_on_a_small_stack() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let top = tmp.path().join("t");
    chain(&top, 60_000);
    // A 256 KiB stack: a recursive removal would overflow it long before.
    let t = top.clone();
    let started = std::time::Instant::now();
    let r = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || remove_tree_at(&t, &limits(8)))
        .expect("spawn")
        .join()
        .expect("no panic")
        .expect("removed");
    // A figure for the record, not an assertion.
    eprintln!("60,000 levels removed in {:?}: {r:?}", started.elapsed());
    assert!(!top.exists());
    assert_eq!(r.max_depth, 60_000);
    assert_eq!(r.entries, 60_002, "{r:?}");
}

#[test]
fn a_wide_directory_and_a_bushy_tree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let top = tmp.path().join("t");
    std::fs::create_dir(&top).expect("mkdir");
    for i in 0..20_000 {
        std::fs::write(top.join(format!("file-with-a-longish-name-{i}")), b"x").expect("write");
    }
    // Subtrees deeper than the window, side by side: each return to their
    // parent past the window reads it again.
    for i in 0..50 {
        chain(&top.join(format!("sub{i}")), 20);
    }
    let r = remove_tree_at(&top, &limits(4)).expect("removed");
    assert!(!top.exists());
    assert_eq!(r.entries, 20_000 + 50 * 22 + 1, "{r:?}");
}

#[test]
fn symlinks_to_the_outside_are_not_followed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("sub")).expect("mkdir");
    std::fs::write(outside.join("keep"), b"keep").expect("write");
    std::fs::write(outside.join("sub/keep"), b"keep").expect("write");
    let top = tmp.path().join("t");
    chain(&top, 40);
    symlink(&outside, top.join("to-dir")).expect("symlink");
    symlink(outside.join("keep"), top.join("to-file")).expect("symlink");
    symlink("../outside", top.join("relative")).expect("symlink");
    symlink("/", top.join("d/d/root")).expect("symlink");
    symlink("nowhere", top.join("dangling")).expect("symlink");
    remove_tree_at(&top, &limits(4)).expect("removed");
    assert!(!top.exists());
    assert_eq!(std::fs::read(outside.join("keep")).expect("kept"), b"keep");
    assert_eq!(
        std::fs::read(outside.join("sub/keep")).expect("kept"),
        b"keep"
    );
    // The top itself being a symlink: the link goes, not its target.
    symlink(&outside, tmp.path().join("link")).expect("symlink");
    remove_tree_at(&tmp.path().join("link"), &limits(4)).expect("removed");
    assert!(outside.join("sub/keep").exists());
    assert!(std::fs::symlink_metadata(tmp.path().join("link")).is_err());
}

#[test]
fn special_files_and_hard_links() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let top = tmp.path().join("t");
    std::fs::create_dir_all(top.join("a/b")).expect("mkdir");
    let ok = std::process::Command::new("mkfifo")
        .arg(top.join("a/fifo"))
        .status()
        .expect("mkfifo");
    assert!(ok.success());
    let _sock = std::os::unix::net::UnixListener::bind(top.join("a/b/sock")).expect("bind");
    std::fs::write(tmp.path().join("shared"), b"s").expect("write");
    std::fs::hard_link(tmp.path().join("shared"), top.join("a/b/link")).expect("link");
    remove_tree_at(&top, &limits(4)).expect("removed");
    assert!(!top.exists());
    assert_eq!(
        std::fs::read(tmp.path().join("shared")).expect("kept"),
        b"s"
    );
}

/// Runs `f` on a thread without the capabilities that bypass permissions,
/// so read-only directories matter even when the tests run as root.
fn without_dac_override<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        if is_root() {
            use rustix::thread::CapabilitySet as C;
            let mut caps = rustix::thread::capabilities(None).expect("capget");
            caps.effective -= C::DAC_OVERRIDE | C::DAC_READ_SEARCH | C::FOWNER;
            rustix::thread::set_capabilities(None, caps).expect("capset");
        }
        f()
    })
    .join()
    .expect("no panic")
}

#[test]
fn read_only_and_closed_directories() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let top = tmp.path().join("t");
    for (dir, mode) in [("ro", 0o555), ("none", 0o000), ("wx", 0o300), ("r", 0o400)] {
        let d = top.join(dir);
        std::fs::create_dir_all(d.join("inner")).expect("mkdir");
        std::fs::write(d.join("file"), b"x").expect("write");
        std::fs::write(d.join("inner/file"), b"x").expect("write");
        std::fs::set_permissions(d.join("inner"), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    let t = top.clone();
    let r = without_dac_override(move || remove_tree_at(&t, &limits(4)));
    r.expect("removed");
    assert!(!top.exists());
}

#[test]
fn over_budget_is_an_error_and_goes_to_quarantine() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    chain(&work.join("action"), 500);
    let small = RemoveLimits {
        max_steps: 100,
        ..RemoveLimits::default()
    };
    let q = Quarantine::open(work).expect("quarantine");
    match q.dispose("action", &small) {
        Disposal::Quarantined {
            error: RemoveError::Budget { steps },
            name,
        } => {
            assert_eq!(steps, 100);
            assert_eq!(name, "action");
        }
        other => panic!("{other:?}"),
    }
    assert!(!work.join("action").exists());
    assert_eq!(q.entries().expect("entries"), vec!["action".to_string()]);
    // A second tree of the same name gets another name there.
    chain(&work.join("action"), 500);
    match q.dispose("action", &small) {
        Disposal::Quarantined { name, .. } => assert_eq!(name, "action.1"),
        other => panic!("{other:?}"),
    }
    let (removed, left) = q.clean(&RemoveLimits::default());
    assert_eq!(removed, 2);
    assert!(left.is_empty(), "{left:?}");
    assert!(q.entries().expect("entries").is_empty());
    // Nothing to do is fine.
    assert!(matches!(
        q.dispose("never-there", &small),
        Disposal::Removed(_)
    ));
}

#[test]
fn an_immutable_file_is_quarantined_not_fatal() {
    if !is_root() {
        skip("chattr +i needs root");
        return;
    }
    let tmp = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let work = tmp.path();
    chain(&work.join("action"), 100);
    let f = work.join("action/d/d/stuck");
    std::fs::write(&f, b"x").expect("write");
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(&f)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !chattr("+i") {
        skip("chattr +i is not supported here");
        return;
    }
    let q = Quarantine::open(work).expect("quarantine");
    let d = q.dispose("action", &RemoveLimits::default());
    let f_q = work.join(".quarantine/action/d/d/stuck");
    let ok = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&f_q)
        .status()
        .is_ok_and(|s| s.success());
    match d {
        Disposal::Quarantined {
            error: RemoveError::Io { op, name, .. },
            ..
        } => {
            assert_eq!((op, name.as_str()), ("unlink", "stuck"));
        }
        other => panic!("{other:?}"),
    }
    assert!(ok, "chattr -i in the quarantine");
    // Everything else around it went already; the rest goes on a retry.
    let (removed, left) = q.clean(&RemoveLimits::default());
    assert_eq!((removed, left.len()), (1, 0), "{left:?}");
}

#[test]
fn names_with_odd_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let top = tmp.path().join("t");
    std::fs::create_dir(&top).expect("mkdir");
    let odd = std::ffi::OsStr::from_bytes(b"\xff\xfe-not-utf8\n");
    std::fs::create_dir(top.join(odd)).expect("mkdir");
    std::fs::write(top.join(odd).join(odd), b"x").expect("write");
    let long = "n".repeat(255);
    std::fs::write(top.join(&long), b"x").expect("write");
    remove_tree_at(&top, &limits(2)).expect("removed");
    assert!(!top.exists());
}
