//! The streaming output walk: balanced events, limits named, descriptors
//! bounded however deep the tree (one test: it counts this process's fds).

mod common;

use std::path::Path;

use common::Env;
use rbe_exec::{open_output, ExecError, Output, OutputKind, OutputLimits, TreeEvent, OPEN_LEVELS};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("fds").count()
}

/// `depth` levels `d0/d1/...` below `top`, each with a file and an empty
/// sibling directory, so the walk comes back to every level.
fn tree(top: &Path, depth: usize) {
    let mut p = top.to_path_buf();
    for i in 0..depth {
        std::fs::create_dir_all(p.join("sib")).expect("mkdir");
        std::fs::write(p.join("f"), format!("{i}")).expect("write");
        p = p.join(format!("d{i}"));
    }
    std::fs::create_dir_all(&p).expect("mkdir");
}

fn walk(env: &Env, limits: OutputLimits) -> Result<(u64, usize, usize), ExecError> {
    let Some(Output::Directory(mut w)) = open_output(&env.root, "", "out", limits)? else {
        panic!("not a directory");
    };
    let base = open_fds();
    let (mut depth, mut max_depth, mut max_fds, mut files) = (0usize, 0usize, 0usize, 0usize);
    while let Some(ev) = w.next_event()? {
        max_fds = max_fds.max(open_fds().saturating_sub(base));
        match ev {
            TreeEvent::Enter(_) => {
                depth += 1;
                max_depth = max_depth.max(depth);
            }
            TreeEvent::Leave => depth -= 1,
            TreeEvent::Entry(e) => {
                if matches!(e.kind, OutputKind::File { .. }) {
                    // Read through the pinned parent, as the uploader does.
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut e.open().expect("open"), &mut s)
                        .expect("read");
                    files += 1;
                }
            }
        }
    }
    assert_eq!(depth, 0, "every Enter has its Leave");
    assert_eq!(files, max_depth - 1, "one file per level");
    Ok((w.entries(), max_depth, max_fds))
}

#[test]
fn deep_trees_within_limits_and_over_them() {
    let env = Env::new();
    tree(&env.root.join("out"), 200);
    let (entries, levels, fds) = walk(&env, OutputLimits::UNLIMITED).expect("walk");
    assert_eq!(levels, 201);
    assert_eq!(entries, 200 * 3);
    assert!(fds <= OPEN_LEVELS + 2, "{fds} descriptors held at once");

    let limits = |max_depth, max_entries, max_path_bytes| OutputLimits {
        max_depth,
        max_entries,
        max_path_bytes,
    };
    // Exactly at each limit: fine.
    walk(&env, limits(200, 600, 4096)).expect("at the limits");
    for (l, key) in [
        (limits(199, 600, 4096), "outputs.max_depth"),
        (limits(200, 599, 4096), "outputs.max_entries"),
        (limits(200, 600, 400), "outputs.max_path_bytes"),
    ] {
        match walk(&env, l) {
            Err(ExecError::OutputLimit { limit, path, .. }) => {
                assert_eq!(limit, key);
                assert!(path.starts_with("out/"), "{path}");
            }
            other => panic!("{key}: {other:?}"),
        }
    }

    // A wide directory is refused while it is read, before its names
    // are all in memory.
    let wide = Env::new();
    std::fs::create_dir(wide.root.join("out")).expect("mkdir");
    for i in 0..3000 {
        std::fs::write(wide.root.join(format!("out/f{i}")), b"").expect("write");
    }
    let Err(e) = open_output(&wide.root, "", "out", limits(10, 1000, 4096)) else {
        panic!("3,000 names over a limit of 1,000");
    };
    assert!(
        matches!(&e, ExecError::OutputLimit { limit: "outputs.max_entries", path, .. } if path == "out"),
        "{e}"
    );
}
