//! Issue 12's lab cluster, shared by the test files that boot one
//! (`cluster.rs`, `cluster_bazel.rs`, `cluster_bench.rs`): booted systemd
//! hosts on one lab network, each with the .deb packages installed, the
//! cluster key and CA copied in and its own peer certificate, `[cluster]`
//! on with the others as seeds; and the helpers that read each frontend's
//! ClusterAdmin (what `rbectl cluster status` prints) through the host's
//! root.

use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::packages::{apt_install, bind_args, PKG};
use super::{name, on_path, text, Instance, Lab};
use rbe_proto::cluster::cluster_admin_client::ClusterAdminClient;
use rbe_proto::cluster::{ClusterStatus, ClusterStatusRequest, MemberStatus};
use rbe_testkit::bin;

/// Where a host sees the test side's key and certificate directories.
pub const SECRETS: &str = "/opt/rbe-cluster";
/// Where a host sees this checkout (read-only), for `tests/scripts` and
/// `tests/bazel-ws`.
pub const SRC: &str = "/srv/rbe-src";
/// `cluster.report_max_age_ms`'s default: a report this old is stale.
pub const FRESH_MS: u64 = 2_000;
/// Bounds that only keep a broken cluster from hanging the test.
pub const FORM_SECS: u64 = 60;

/// Why these tests cannot run here, if they cannot: `packages.rs`'s
/// reasons, and lab networks need iproute2.
pub fn cannot_run() -> Option<String> {
    super::packages::cannot_run().or_else(|| {
        (!on_path("ip")).then(|| "ip (iproute2) is not installed: no lab networks".to_owned())
    })
}

/// One test at a time: each boots several hosts on a 2-core machine, and
/// timings printed for BENCHMARKS.md mean little with two clusters up.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keys and certificates made once per test on the test side with
/// `rbectl cluster init` and `issue`: `ours` is the cluster's, `theirs`
/// another cluster's (another key, another CA).
pub struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    pub fn new() -> Secrets {
        let dir = tempfile::Builder::new()
            .prefix("rbe-cluster-secrets-")
            .tempdir_in(rbe_testkit::disk_tmp())
            .expect("secrets dir");
        let s = Secrets { dir };
        for which in ["ours", "theirs"] {
            let d = s.dir.path().join(which);
            rbectl(&["cluster", "init", "--dir", &d.display().to_string()]);
        }
        s
    }

    /// `rbectl cluster issue NODE` with `which`'s CA.
    pub fn issue(&self, which: &str, node: &str) {
        let d = self.dir.path().join(which);
        rbectl(&["cluster", "issue", node, "--dir", &d.display().to_string()]);
    }
}

pub fn rbectl(args: &[&str]) -> String {
    let out = Command::new(bin("rbectl"))
        .args(args)
        .output()
        .expect("run rbectl");
    assert!(out.status.success(), "rbectl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One host of a test: its instance name (also its node name and host
/// name on the lab), its worker's slots, whose key it holds and whose CA
/// signed its certificate.
pub struct Spec {
    pub node: String,
    pub slots: u32,
    pub key: &'static str,
    pub ca: &'static str,
    pub seeds: Vec<String>,
}

impl Spec {
    /// A member of the cluster under test, seeded with `seeds`.
    pub fn member(node: &str, slots: u32, seeds: &[&String]) -> Spec {
        Spec {
            node: node.to_owned(),
            slots,
            key: "ours",
            ca: "ours",
            seeds: seeds.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Installs the packages on `inst`, copies its secrets in, writes the
/// drop-ins and starts the worker and the frontend; returns when the
/// frontend was started.
pub fn set_up(inst: &Instance, spec: &Spec) -> Instant {
    apt_install(inst, PKG);
    let seeds: Vec<String> = spec.seeds.iter().map(|s| format!("\"{s}:7946\"")).collect();
    inst.sh(&format!(
        "set -e
         install -d -m 0750 -o root -g rbe /etc/rbe/cluster
         install -m 0640 -o root -g rbe {SECRETS}/{key}/cluster.key /etc/rbe/cluster.key
         install -m 0644 {SECRETS}/{ca}/cluster/ca.crt /etc/rbe/cluster/ca.crt
         install -m 0644 {SECRETS}/{ca}/cluster/{node}.crt /etc/rbe/cluster/host.crt
         install -m 0640 -o root -g rbe {SECRETS}/{ca}/cluster/{node}.key /etc/rbe/cluster/host.key
         mkdir -p /etc/rbe/frontend.toml.d /etc/rbe/workerd.toml.d
         printf '[cluster]\\nenabled = true\\nnode = \"{node}\"\\nseeds = [{seeds}]\\n' \
           >/etc/rbe/frontend.toml.d/50-cluster.toml
         printf '[worker]\\nslots = {slots}\\n' >/etc/rbe/workerd.toml.d/50-slots.toml
         rbectl config check >/dev/null
         systemctl enable --now rbe-workerd 2>&1
         systemctl start rbe-frontend",
        key = spec.key,
        ca = spec.ca,
        node = spec.node,
        seeds = seeds.join(", "),
        slots = spec.slots,
    ));
    Instant::now()
}

/// Boots every host of `specs` on `lab` in parallel and sets it up;
/// returns the hosts in `specs` order and when the last frontend started.
pub fn boot(lab: &Lab, secrets: &Secrets, specs: &[Spec]) -> (Vec<Instance>, Instant) {
    for s in specs {
        secrets.issue(s.ca, &s.node);
    }
    let mut args = bind_args();
    args.extend([
        "--ro-bind".into(),
        format!("{}:{SECRETS}", secrets.dir.path().display()),
        "--ro-bind".into(),
        format!("{}:{SRC}", super::repo().display()),
    ]);
    let t = Instant::now();
    let booted: Vec<(Instance, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .iter()
            .map(|spec| {
                let args = &args;
                s.spawn(move || {
                    let inst = Instance::up_lab(&spec.node, lab, args);
                    let started = set_up(&inst, spec);
                    (inst, started)
                })
            })
            .collect();
        // A failed host panics here; the scope still joins the others and
        // their instances go down as they are dropped.
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let last = booted.iter().map(|(_, s)| *s).max().unwrap_or(t);
    eprintln!(
        "{} hosts booted, installed and started in {:.1} s",
        specs.len(),
        t.elapsed().as_secs_f64()
    );
    (booted.into_iter().map(|(i, _)| i).collect(), last)
}

/// A lab and the three members a (1 slot), b (4) and c (8), each seeded
/// with the other two.
pub struct Fixture {
    // Hosts before the lab: they go down first, and the last takes the
    // lab along.
    pub hosts: Vec<Instance>,
    pub lab: Lab,
    pub secrets: Secrets,
    /// When the last of a, b and c started its frontend.
    pub started: Instant,
}

impl Fixture {
    pub fn new(test: &str) -> Fixture {
        let lab = Lab::new(&name(test));
        let secrets = Secrets::new();
        let [a, b, c] = ["a", "b", "c"].map(|r| name(&format!("{test}{r}")));
        let specs = [
            Spec::member(&a, 1, &[&b, &c]),
            Spec::member(&b, 4, &[&a, &c]),
            Spec::member(&c, 8, &[&a, &b]),
        ];
        let (hosts, started) = boot(&lab, &secrets, &specs);
        Fixture {
            hosts,
            lab,
            secrets,
            started,
        }
    }

    /// Waits until every host sees every other up, eligible and with a
    /// fresh report; returns how long that took.
    pub fn wait_formed(&self, secs: u64) -> Duration {
        let all: Vec<&Instance> = self.hosts.iter().collect();
        wait_until(&all, "the cluster to form", secs, || formed(&all)).1
    }
}

/// What `inst`'s frontend reports through ClusterAdmin (the service
/// `rbectl cluster status` prints), over its local socket reached through
/// the instance's root. Connecting activates the frontend if it is not
/// running (its socket units are).
pub fn status(inst: &Instance) -> Result<ClusterStatus, String> {
    let socket = inst.root().join("run/rbe/frontend.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let ch = rbe_net::unix_channel(&socket)
            .await
            .map_err(|e| format!("{}: {e}", socket.display()))?;
        let r = ClusterAdminClient::new(ch)
            .status(ClusterStatusRequest {})
            .await
            .map_err(|e| format!("ClusterAdmin.Status on {}: {e}", inst.name))?;
        Ok(r.into_inner())
    })
}

pub fn member<'a>(s: &'a ClusterStatus, node: &str) -> Option<&'a MemberStatus> {
    s.members.iter().find(|m| m.node == node)
}

pub fn counter(s: &ClusterStatus, name: &str) -> u64 {
    s.counters
        .iter()
        .find(|c| c.name == name)
        .map_or(0, |c| c.value)
}

pub fn slots(m: &MemberStatus) -> u32 {
    m.load
        .as_ref()
        .map_or(0, |l| l.pools.iter().map(|p| p.slots).sum())
}

/// `Ok` when `node` is up, eligible and reporting in `s`.
pub fn sees_ready(s: &ClusterStatus, node: &str) -> Result<(), String> {
    match member(s, node) {
        Some(m)
            if m.state == "up" && m.eligible && m.report_age_ms.is_some_and(|a| a < FRESH_MS) =>
        {
            Ok(())
        }
        Some(m) => Err(format!("{} sees {node} as {m:?}", s.node)),
        None => Err(format!("{} does not list {node}", s.node)),
    }
}

/// `Ok` when each of `hosts` sees every other one ready.
pub fn formed(hosts: &[&Instance]) -> Result<(), String> {
    for h in hosts {
        let s = status(h)?;
        for other in hosts.iter().filter(|o| o.name != h.name) {
            sees_ready(&s, &other.name)?;
        }
    }
    Ok(())
}

/// Polls `check` until it returns `Ok`, for at most `secs`; panics with
/// its last complaint and the hosts' frontend journals.
pub fn wait_until<T>(
    hosts: &[&Instance],
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let t = Instant::now();
    loop {
        match check() {
            Ok(v) => return (v, t.elapsed()),
            Err(why) if t.elapsed() > Duration::from_secs(secs) => {
                panic!("waited {secs} s for {what}: {why}\n{}", journals(hosts))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The last lines of each host's frontend journal, for failure messages.
pub fn journals(hosts: &[&Instance]) -> String {
    hosts
        .iter()
        .map(|h| {
            let j = h.journal("rbe-frontend.service");
            let lines: Vec<&str> = j.lines().collect();
            format!(
                "--- {} rbe-frontend:\n{}",
                h.name,
                lines[lines.len().saturating_sub(25)..].join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn rbectl_status(inst: &Instance) -> String {
    inst.sh("rbectl cluster status")
}

/// `rbe-bench`, built by `cargo build --workspace --bins`
/// (tests/run-all.sh), not by the test kit's own build of the daemons;
/// `Err` says how to build it.
pub fn rbe_bench() -> Result<std::path::PathBuf, String> {
    let bench = bin("rbectl").with_file_name("rbe-bench");
    match bench.is_file() {
        true => Ok(bench),
        false => Err("rbe-bench is not built (cargo build -p rbe-bench)".to_owned()),
    }
}
