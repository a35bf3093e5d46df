//! The packages from `packaging/build`, for test files that install them
//! into booted instances (`packages.rs`, `cluster*.rs`): seen inside at
//! [`PKG`], installed with apt.
//!
//! Built once per test run: `tests/run-all.sh` builds them before the
//! tests (a plain `cargo test` leaves it to the first binary that needs
//! them), and every test binary asks `packaging/build` once, which finds
//! them up to date by a stat of its inputs, without checksumming 800 MB of
//! debug binaries each time, and holds a lock so two binaries never build
//! at once.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{on_path, repo, text, unsupported, Instance};

/// Where an instance sees `target/packages` (bind it there with
/// [`bind_args`]).
pub const PKG: &str = "/opt/rbe-packages";

/// `target/packages-debug` (or `target/packages`), built or found up to
/// date, asked once per test binary; `Err` is why packages cannot be built
/// here.
pub fn packages() -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            for tool in ["dpkg-buildpackage", "dh", "rpmbuild", "apt-get", "rpm"] {
                if !on_path(tool) {
                    return Err(format!(
                        "{tool} is not installed (apt-get install dpkg-dev debhelper rpm)"
                    ));
                }
            }
            // The debug build by default: the tests need working packages,
            // not an optimized build of their own.
            let profile = std::env::var("RBE_PACKAGE_PROFILE").unwrap_or_else(|_| "debug".into());
            let out =
                rbe_testkit::without_test_env(&mut Command::new(repo().join("packaging/build")))
                    .args(["--profile", &profile])
                    .output()
                    .expect("run packaging/build");
            assert!(out.status.success(), "packaging/build: {}", text(&out));
            Ok(repo().join(match profile.as_str() {
                "release" => "target/packages",
                _ => "target/packages-debug",
            }))
        })
        .clone()
}

/// Why the package tests cannot run here, if they cannot.
pub fn cannot_run() -> Option<String> {
    unsupported().or_else(|| packages().err())
}

/// `sysbox up` arguments that show the packages at [`PKG`].
pub fn bind_args() -> Vec<String> {
    let pk = packages().expect("packages");
    vec!["--ro-bind".into(), format!("{}:{PKG}", pk.display())]
}

/// `apt-get install` of the .debs in `dir` (inside), dependencies resolved
/// from what the root already has; nothing may need a download (the instance
/// has no network).
pub fn apt_install(inst: &Instance, dir: &str) -> String {
    inst.sh(&format!(
        "cd {dir} && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./rbe_*_all.deb ./rbe-*_amd64.deb </dev/null 2>&1"
    ))
}

/// Starts the stack the way the manuals say, and waits until the worker
/// has attached to the frontend (which the attach itself activates).
pub fn enable_workerd(inst: &Instance) {
    inst.sh("systemctl enable --now rbe-workerd");
    inst.wait_prop("rbe-workerd.service", "ActiveState", 30, |v| v == "active");
    inst.wait_prop("rbe-frontend.service", "SubState", 30, |v| v == "running");
    let t = Instant::now();
    while !inst
        .journal("rbe-workerd.service")
        .contains("attached to the frontend")
    {
        assert!(
            t.elapsed().as_secs() < 30,
            "the worker never attached:\n{}",
            inst.journal("rbe-workerd.service")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
