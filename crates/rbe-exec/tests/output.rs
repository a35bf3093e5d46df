//! Output collection and output directory preparation.

mod common;

use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use common::{is_root, never, sandbox, Env};
use rbe_exec::{collect_output, prepare_output_dirs, run, Collected, ExecError, OutputKind};

fn write(p: &Path, data: &str, mode: u32) {
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(p, data).expect("write");
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn read_all(mut f: std::fs::File) -> String {
    let mut s = String::new();
    f.read_to_string(&mut s).expect("read");
    s
}

#[test]
fn single_files_and_executable_bit() {
    let env = Env::new();
    write(&env.root.join("pkg/out/tool"), "#!/bin/sh\n", 0o755);
    write(&env.root.join("pkg/out/data"), "hello", 0o644);
    let Some(Collected::File(f)) = collect_output(&env.root, "pkg", "out/tool").expect("collect")
    else {
        panic!("not a file");
    };
    assert_eq!(f.kind, OutputKind::File { executable: true });
    assert_eq!((f.size, f.rel_path.as_str()), (10, ""));
    let Some(Collected::File(f)) = collect_output(&env.root, "pkg", "out/data").expect("collect")
    else {
        panic!("not a file");
    };
    assert_eq!(f.kind, OutputKind::File { executable: false });
    assert_eq!(read_all(f.open().expect("open")), "hello");
}

#[test]
fn missing_outputs_are_none() {
    let env = Env::new();
    write(&env.root.join("file"), "x", 0o644);
    assert!(collect_output(&env.root, "", "nope")
        .expect("collect")
        .is_none());
    assert!(collect_output(&env.root, "", "no/such/dir")
        .expect("collect")
        .is_none());
    // A parent that is a file.
    assert!(collect_output(&env.root, "", "file/x")
        .expect("collect")
        .is_none());
}

#[test]
fn directory_tree_keeps_symlinks() {
    let env = Env::new();
    let d = env.root.join("out");
    write(&d.join("a.txt"), "a", 0o644);
    write(&d.join("sub/b.sh"), "bb", 0o755);
    std::fs::create_dir_all(d.join("sub/empty")).expect("mkdir");
    symlink("../a.txt", d.join("sub/link")).expect("symlink");
    symlink("/etc/shadow", d.join("shadow")).expect("symlink");
    let Some(Collected::Directory(entries)) =
        collect_output(&env.root, "", "out").expect("collect")
    else {
        panic!("not a directory");
    };
    let summary: Vec<(String, OutputKind, u64)> = entries
        .iter()
        .map(|e| (e.rel_path.clone(), e.kind.clone(), e.size))
        .collect();
    let file = |x| OutputKind::File { executable: x };
    let link = |t: &str| OutputKind::Symlink { target: t.into() };
    assert_eq!(
        summary,
        vec![
            ("a.txt".into(), file(false), 1),
            ("shadow".into(), link("/etc/shadow"), 0),
            ("sub".into(), OutputKind::Directory, 0),
            ("sub/b.sh".into(), file(true), 2),
            ("sub/empty".into(), OutputKind::Directory, 0),
            ("sub/link".into(), link("../a.txt"), 0),
        ]
    );
    assert_eq!(read_all(entries[3].open().expect("open")), "bb");
    // Only files can be opened.
    assert!(entries[1].open().is_err());
}

#[test]
fn symlink_output_is_not_followed() {
    let env = Env::new();
    symlink("/etc/shadow", env.root.join("out")).expect("symlink");
    match collect_output(&env.root, "", "out").expect("collect") {
        Some(Collected::Symlink { target }) => assert_eq!(target, "/etc/shadow"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn special_files_rejected() {
    let env = Env::new();
    std::fs::create_dir(env.root.join("d")).expect("mkdir");
    for p in ["fifo", "d/fifo"] {
        let ok = std::process::Command::new("mkfifo")
            .arg(env.root.join(p))
            .status()
            .expect("mkfifo");
        assert!(ok.success());
    }
    let err = collect_output(&env.root, "", "fifo").expect_err("fifo");
    assert!(
        matches!(err, ExecError::SpecialFile { kind: "fifo", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("\"fifo\""), "{err}");
    let err = collect_output(&env.root, "", "d").expect_err("fifo in dir");
    assert!(err.to_string().contains("d/fifo"), "{err}");
}

#[test]
fn symlinked_parent_cannot_escape() {
    let env = Env::new();
    symlink("/etc", env.root.join("out")).expect("symlink");
    symlink("../../../../../../../etc", env.root.join("rel")).expect("symlink");
    for p in ["out/shadow", "out/passwd", "rel/passwd"] {
        let r = collect_output(&env.root, "", p);
        assert!(matches!(r, Err(ExecError::Escape { .. })), "{p}: {r:?}");
    }
    // The working directory is resolved the same way.
    let r = collect_output(&env.root, "out", "passwd");
    assert!(matches!(r, Err(ExecError::Escape { .. })), "{r:?}");
    // A symlink that stays inside the root is fine.
    write(&env.root.join("real/f"), "f", 0o644);
    symlink("real", env.root.join("inside")).expect("symlink");
    assert!(matches!(
        collect_output(&env.root, "", "inside/f").expect("collect"),
        Some(Collected::File(_))
    ));
}

#[test]
fn invalid_paths_rejected() {
    let env = Env::new();
    for p in ["../x", "/etc/passwd", "a//b"] {
        assert!(collect_output(&env.root, "", p).is_err(), "{p}");
    }
    assert!(collect_output(&env.root, "..", "x").is_err());
}

#[test]
fn prepare_creates_parents_and_refuses_symlinks() {
    let env = Env::new();
    let paths = vec![
        "a/b/c.o".to_string(),
        "top.o".to_string(),
        "a/d/".to_string(),
    ];
    assert!(
        prepare_output_dirs(&env.root, "wd", &paths).is_err(),
        "a/d/ is not a clean path"
    );
    let paths = vec![
        "a/b/c.o".to_string(),
        "top.o".to_string(),
        "a/d/e".to_string(),
    ];
    prepare_output_dirs(&env.root, "wd", &paths).expect("prepare");
    assert!(env.root.join("wd/a/b").is_dir() && env.root.join("wd/a/d").is_dir());
    assert!(!env.root.join("wd/a/b/c.o").exists() && !env.root.join("wd/top.o").exists());
    if is_root() {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(env.root.join("wd/a/b")).expect("stat");
        assert_eq!(meta.uid(), common::ACTION_ID, "owned like the root");
    }
    let escape = env.dir.path().join("escape");
    std::fs::create_dir(&escape).expect("mkdir");
    symlink(&escape, env.root.join("wd/link")).expect("symlink");
    let err = prepare_output_dirs(&env.root, "wd", &["link/x/y".to_string()]).expect_err("symlink");
    assert!(matches!(err, ExecError::Escape { .. }), "{err}");
    assert!(!escape.join("x").exists());
}

#[tokio::test]
async fn outputs_written_by_an_action() {
    let env = Env::new();
    prepare_output_dirs(&env.root, "", &["out/d/f".to_string()]).expect("prepare");
    let script = "echo hi > out/d/f; ln -s /etc/shadow out/s; mkfifo out/p 2>/dev/null; true";
    let out = run(&sandbox(), &env.sh(script), never())
        .await
        .expect("run");
    assert_eq!(out.exit_code, 0, "stderr: {}", env.stderr());
    let Some(Collected::File(f)) = collect_output(&env.root, "", "out/d/f").expect("collect")
    else {
        panic!("not a file");
    };
    assert_eq!(read_all(f.open().expect("open")), "hi\n");
    assert!(matches!(
        collect_output(&env.root, "", "out/s").expect("collect"),
        Some(Collected::Symlink { .. })
    ));
    assert!(
        collect_output(&env.root, "", "out").is_err(),
        "the fifo is inside"
    );
}
