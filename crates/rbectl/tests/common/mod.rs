//! Running the real rbectl binary, shared by the integration tests.

use std::process::{Command, Output};

pub fn rbectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rbectl"))
        .args(args)
        .output()
        .expect("run rbectl")
}

/// Runs rbectl, which must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = rbectl(args);
    assert!(
        out.status.success(),
        "rbectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}
