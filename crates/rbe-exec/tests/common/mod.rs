//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rbe_exec::{ActionSpec, Sandbox};

/// The uid/gid actions run as when the tests run as root.
pub const ACTION_ID: u32 = 65534;

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP: {why}");
}

pub fn sandbox() -> Sandbox {
    Sandbox {
        uid: is_root().then_some(ACTION_ID),
        gid: is_root().then_some(ACTION_ID),
        network: false,
        hide_paths: Vec::new(),
        ..Sandbox::default()
    }
}

/// A test directory: `root/` (the action root, owned by the action uid when
/// we are root) and the stdout/stderr files beside it.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        Env::new_in(&std::env::temp_dir())
    }

    pub fn new_in(base: &Path) -> Env {
        let dir = tempfile::tempdir_in(base).expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("mkdir root");
        let env = Env { dir, root };
        env.chown_action(&env.root);
        // The action uid must be able to reach its root.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        env
    }

    /// Makes `p` owned by the action uid (no-op unless root).
    pub fn chown_action(&self, p: &Path) {
        if is_root() {
            std::os::unix::fs::lchown(p, Some(ACTION_ID), Some(ACTION_ID)).expect("chown");
        }
    }

    pub fn spec(&self, argv: &[&str]) -> ActionSpec {
        ActionSpec {
            root: self.root.clone(),
            working_dir: String::new(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            timeout: Duration::from_secs(30),
            stdout: self.dir.path().join("stdout"),
            stderr: self.dir.path().join("stderr"),
            max_output_bytes: 1 << 20,
            rlimits: Default::default(),
        }
    }

    pub fn sh(&self, script: &str) -> ActionSpec {
        self.spec(&["sh", "-c", script])
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).expect("read stdout")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).expect("read stderr")
    }
}

/// A cancel future that never resolves.
pub fn never() -> std::future::Pending<()> {
    std::future::pending()
}
