//! A booted systemd instance from `tests/harness/sysbox` (see its README),
//! for test files that need one. `Drop` takes the instance down, also when
//! the test fails.
// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

pub mod lab_cluster;
pub mod packages;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn harness() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/sysbox")
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

pub fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why an instance cannot be booted here, if it cannot.
pub fn unsupported() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    if euid != "0" {
        return Some("systemd tests need root (namespaces, cgroups, mounts)".into());
    }
    if !Path::new("/lib/systemd/systemd").is_file() {
        return Some("systemd is not installed (/lib/systemd/systemd)".into());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if !mounts.lines().any(|l| l.contains(" - cgroup cgroup ")) {
        return Some("cgroup2-only host: tests/harness/sysbox needs a v1 or hybrid layout".into());
    }
    for tool in ["script", "nsenter", "unshare"] {
        if !on_path(tool) {
            return Some(format!("{tool} is not installed (util-linux, bsdutils)"));
        }
    }
    None
}

/// A unique instance name (12 characters at most) per test and process;
/// `RBE_TEST_SYSBOX_PREFIX` (2 characters at most, default `p`) tells apart
/// the instances of suites sharing a machine.
pub fn name(suffix: &str) -> String {
    let prefix = std::env::var("RBE_TEST_SYSBOX_PREFIX").unwrap_or_else(|_| "p".into());
    let prefix: String = prefix.chars().take(2).collect();
    format!("{prefix}{}{suffix}", std::process::id() % 1_000_000)
}

pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A running instance; `Drop` takes it down.
pub struct Instance {
    pub name: String,
    pub pid: u32,
}

impl Instance {
    /// Boots `name`; extra harness arguments such as `--ro-bind SRC:DST`.
    pub fn up(name: &str, args: &[String]) -> Instance {
        let out = Command::new(harness())
            .arg("up")
            .arg(name)
            .args(args)
            .output()
            .expect("run sysbox up");
        assert!(out.status.success(), "sysbox up {name}: {}", text(&out));
        let pid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("sysbox up printed no pid: {}", text(&out)));
        Instance {
            name: name.to_owned(),
            pid,
        }
    }

    /// Boots `name` on `lab` (`sysbox up NAME --net lab=LAB`): its own
    /// netns, `eth0` on the lab's bridge with the next free address, and the
    /// lab's hosts file as `/etc/hosts`, so members reach each other by name.
    pub fn up_lab(name: &str, lab: &Lab, args: &[String]) -> Instance {
        let mut all = vec!["--net".to_owned(), format!("lab={}", lab.name)];
        all.extend_from_slice(args);
        Instance::up(name, &all)
    }

    /// This instance's address on its lab (`sysbox ip NAME`).
    pub fn lab_ip(&self) -> String {
        let out = Command::new(harness())
            .args(["ip", &self.name])
            .output()
            .expect("run sysbox ip");
        assert!(
            out.status.success(),
            "sysbox ip {}: {}",
            self.name,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The instance's root, as seen from the host.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid))
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new(harness())
            .arg("exec")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run sysbox exec")
    }

    /// Runs a shell script inside, whatever its status.
    pub fn try_sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    /// Runs a shell script inside; panics with its output if it fails.
    pub fn sh(&self, script: &str) -> String {
        let out = self.try_sh(script);
        assert!(
            out.status.success(),
            "in {}: {script}\n{}",
            self.name,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn prop(&self, unit: &str, prop: &str) -> String {
        self.sh(&format!("systemctl show -p {prop} --value {unit}"))
    }

    pub fn journal(&self, unit: &str) -> String {
        let out = Command::new(harness())
            .args(["journal", &self.name, "-o", "cat", "-u", unit])
            .output()
            .expect("run sysbox journal");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl show` properties of a unit, as (key, value) pairs (see
    /// [`value`]).
    pub fn show(&self, unit: &str, props: &str) -> Vec<(String, String)> {
        self.sh(&format!("systemctl show -p {props} {unit}"))
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Waits until `prop` of `unit` satisfies `ok`, for at most `secs`;
    /// returns the value and the time it took.
    pub fn wait_prop(
        &self,
        unit: &str,
        prop: &str,
        secs: u64,
        ok: impl Fn(&str) -> bool,
    ) -> (String, Duration) {
        let t = Instant::now();
        loop {
            let v = self.prop(unit, prop);
            if ok(&v) {
                return (v, t.elapsed());
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "{unit} {prop} is still {v:?} after {secs} s; journal:\n{}",
                self.journal(unit)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn down(mut self) -> Output {
        let out = self.down_inner();
        self.name.clear();
        out
    }

    fn down_inner(&mut self) -> Output {
        Command::new(harness())
            .arg("down")
            .arg(&self.name)
            .output()
            .expect("run sysbox down")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let out = self.down_inner();
            if !out.status.success() {
                eprintln!("sysbox down {} failed: {}", self.name, text(&out));
            }
        }
    }
}

/// A lab network of `tests/harness/sysbox` (`--net lab=NAME`): a bridge in
/// its own netns, created by the first [`Instance::up_lab`] on it and
/// removed when its last member goes down. Name it with [`name`] so that
/// parallel suites get different labs.
pub struct Lab {
    pub name: String,
}

impl Lab {
    pub fn new(name: &str) -> Lab {
        Lab {
            name: name.to_owned(),
        }
    }

    /// The netns holding the lab's bridge, as `ip netns list` shows it.
    pub fn netns(&self) -> String {
        format!("sysbox-lab-{}", self.name)
    }

    /// `sysbox lab --lab NAME ARGS...`, whatever its status.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(harness())
            .args(["lab", "--lab", &self.name])
            .args(args)
            .output()
            .expect("run sysbox lab")
    }

    fn ok(&self, args: &[&str]) {
        let out = self.run(args);
        assert!(out.status.success(), "sysbox lab {args:?}: {}", text(&out));
    }

    /// Unplugs `i`'s cable: nothing reaches it or leaves it, silently.
    pub fn cut(&self, i: &Instance) {
        self.ok(&["cut", &i.name]);
    }

    /// Plugs `i`'s cable back in.
    pub fn join(&self, i: &Instance) {
        self.ok(&["join", &i.name]);
    }

    /// Drops all traffic between `a` and `b` (both ways, silently).
    pub fn block(&self, a: &Instance, b: &Instance) {
        self.ok(&["block", &a.name, &b.name]);
    }

    pub fn unblock(&self, a: &Instance, b: &Instance) {
        self.ok(&["unblock", &a.name, &b.name]);
    }

    /// Undoes every cut and block of the lab.
    pub fn heal(&self) {
        self.ok(&["heal"]);
    }

    /// Runs `args` on the host side inside the lab's netns (it has
    /// `10.88.0.254` on the bridge), so a test driver reaches instances by
    /// [`Instance::lab_ip`].
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// The lab's hosts file (every member's `/etc/hosts`).
    pub fn hosts(&self) -> String {
        let out = self.run(&["hosts"]);
        assert!(out.status.success(), "sysbox lab hosts: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Names in `ip netns list` on the host.
pub fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The value of `key` among [`Instance::show`]'s pairs, `""` if absent.
pub fn value<'a>(props: &'a [(String, String)], key: &str) -> &'a str {
    props
        .iter()
        .find(|(p, _)| p == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}
