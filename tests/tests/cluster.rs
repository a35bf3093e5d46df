//! Issue 12's acceptance: a cluster of booted systemd hosts on one lab
//! network (`tests/harness/sysbox up --net lab`), each with the .deb
//! packages installed, the cluster key and CA copied in and its own peer
//! certificate, `[cluster]` on with the other two as seeds, and workers of
//! 1, 4 and 8 slots. The hosts reach each other by name only through the
//! lab; the test reads each frontend's ClusterAdmin (what `rbectl cluster
//! status` prints) through the host's root, and cuts the network with the
//! harness. Tests: the cluster forms; a host with another key and one
//! with another CA's certificate are kept out; a stopped frontend leaves
//! and comes back with a higher generation; partitions (ignored: a bug);
//! a burst sent to the 1-slot host runs on several hosts (offload).
//!
//! Skipped, with the reason on stderr, where `packages.rs` is: not root, no
//! systemd or a cgroup2-only host, no packaging tools, or no iproute2. The tests run one
//! at a time (each boots three to five hosts); the loopback version of the
//! membership tests, without root, is `cluster_local.rs`.

mod support;

use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rbe_proto::cluster::cluster_admin_client::ClusterAdminClient;
use rbe_proto::cluster::{ClusterStatus, ClusterStatusRequest, MemberStatus};
use rbe_testkit::{bin, skip};
use support::packages::{apt_install, bind_args, PKG};
use support::{name, on_path, text, Instance, Lab};

/// Where a host sees the test side's key and certificate directories.
const SECRETS: &str = "/opt/rbe-cluster";
/// `cluster.report_max_age_ms`'s default: a report this old is stale.
const FRESH_MS: u64 = 2_000;
/// Bounds that only keep a broken cluster from hanging the test.
const FORM_SECS: u64 = 60;

/// Why these tests cannot run here, if they cannot: `packages.rs`'s
/// reasons, and lab networks need iproute2.
fn cannot_run() -> Option<String> {
    support::packages::cannot_run().or_else(|| {
        (!on_path("ip")).then(|| "ip (iproute2) is not installed: no lab networks".to_owned())
    })
}

/// One test at a time: each boots several hosts on a 2-core machine, and
/// timings printed for BENCHMARKS.md mean little with two clusters up.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keys and certificates made once per test on the test side with
/// `rbectl cluster init` and `issue`: `ours` is the cluster's, `theirs`
/// another cluster's (another key, another CA).
struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    fn new() -> Secrets {
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
    fn issue(&self, which: &str, node: &str) {
        let d = self.dir.path().join(which);
        rbectl(&["cluster", "issue", node, "--dir", &d.display().to_string()]);
    }
}

fn rbectl(args: &[&str]) -> String {
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
struct Spec {
    node: String,
    slots: u32,
    key: &'static str,
    ca: &'static str,
    seeds: Vec<String>,
}

impl Spec {
    /// A member of the cluster under test, seeded with `seeds`.
    fn member(node: &str, slots: u32, seeds: &[&String]) -> Spec {
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
fn set_up(inst: &Instance, spec: &Spec) -> Instant {
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
fn boot(lab: &Lab, secrets: &Secrets, specs: &[Spec]) -> (Vec<Instance>, Instant) {
    for s in specs {
        secrets.issue(s.ca, &s.node);
    }
    let mut args = bind_args();
    args.extend([
        "--ro-bind".into(),
        format!("{}:{SECRETS}", secrets.dir.path().display()),
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
struct Fixture {
    // Hosts before the lab: they go down first, and the last takes the
    // lab along.
    hosts: Vec<Instance>,
    lab: Lab,
    secrets: Secrets,
    /// When the last of a, b and c started its frontend.
    started: Instant,
}

impl Fixture {
    fn new(test: &str) -> Fixture {
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
    fn wait_formed(&self, secs: u64) -> Duration {
        let all: Vec<&Instance> = self.hosts.iter().collect();
        wait_until(&all, "the cluster to form", secs, || formed(&all)).1
    }
}

/// What `inst`'s frontend reports through ClusterAdmin (the service
/// `rbectl cluster status` prints), over its local socket reached through
/// the instance's root. Connecting activates the frontend if it is not
/// running (its socket units are).
fn status(inst: &Instance) -> Result<ClusterStatus, String> {
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

fn member<'a>(s: &'a ClusterStatus, node: &str) -> Option<&'a MemberStatus> {
    s.members.iter().find(|m| m.node == node)
}

fn counter(s: &ClusterStatus, name: &str) -> u64 {
    s.counters
        .iter()
        .find(|c| c.name == name)
        .map_or(0, |c| c.value)
}

fn slots(m: &MemberStatus) -> u32 {
    m.load
        .as_ref()
        .map_or(0, |l| l.pools.iter().map(|p| p.slots).sum())
}

/// `Ok` when `node` is up, eligible and reporting in `s`.
fn sees_ready(s: &ClusterStatus, node: &str) -> Result<(), String> {
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
fn formed(hosts: &[&Instance]) -> Result<(), String> {
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
fn wait_until<T>(
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
fn journals(hosts: &[&Instance]) -> String {
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

fn rbectl_status(inst: &Instance) -> String {
    inst.sh("rbectl cluster status")
}

#[test]
fn cluster_forms() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    let _one = serial();
    let f = Fixture::new("f");
    let formed_in = f.started.elapsed();
    let took = f.wait_formed(FORM_SECS);
    eprintln!(
        "cluster of 3 formed {} ms after the last frontend started (polled {} ms)",
        formed_in.as_millis() + took.as_millis(),
        took.as_millis()
    );
    let [a, b, c] = [&f.hosts[0], &f.hosts[1], &f.hosts[2]];
    let hosts = [a, b, c];

    // Each host sees the others' workers (1, 4 and 8 slots) in their
    // reports, and its own.
    let want = [(a, 1), (b, 4), (c, 8)];
    wait_until(&hosts, "every report to carry its slots", 30, || {
        for h in hosts {
            let s = status(h)?;
            let own: u32 = s
                .own
                .as_ref()
                .map_or(0, |l| l.pools.iter().map(|p| p.slots).sum());
            let mine = want.iter().find(|(i, _)| i.name == h.name).map(|w| w.1);
            if Some(own) != mine {
                return Err(format!("{} reports {own} slots of its own", h.name));
            }
            for (other, n) in want.iter().filter(|(i, _)| i.name != h.name) {
                let m = member(&s, &other.name).ok_or("member gone")?;
                if slots(m) != *n {
                    return Err(format!("{} sees {m:?}, not {n} slots", h.name));
                }
            }
            if counter(&s, "gossip_auth_failures") != 0 {
                return Err(format!("{} counts authentication failures: {s:?}", h.name));
            }
        }
        Ok(())
    });

    // What an administrator sees.
    for h in hosts {
        let out = rbectl_status(h);
        for other in hosts.iter().filter(|o| o.name != h.name) {
            let line = out
                .lines()
                .find(|l| l.starts_with(other.name.as_str()))
                .unwrap_or_else(|| panic!("{} lists no {}:\n{out}", h.name, other.name));
            let cols: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(cols.get(1..3), Some(&["up", "yes"][..]), "{out}");
        }
        // The generation record is in the unit's state directory.
        assert_eq!(
            h.sh("stat -c %U /var/lib/rbe-frontend/cluster-generation"),
            "rbe",
            "on {}",
            h.name
        );
    }
    eprintln!("rbectl cluster status on a:\n{}", rbectl_status(a));
}

/// Bad input: a host with another cluster's key (d) and one with the key
/// but a certificate from another CA (e) try to join a, b and c.
#[test]
fn keyless_host_and_certless_host() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    let _one = serial();
    let f = Fixture::new("k");
    f.wait_formed(FORM_SECS);
    let [a, b, c] = [&f.hosts[0], &f.hosts[1], &f.hosts[2]];
    let members = [a, b, c];
    let before: Vec<u64> = members
        .iter()
        .map(|h| counter(&status(h).expect("status"), "gossip_auth_failures"))
        .collect();

    let seeds = [&a.name, &b.name, &c.name];
    let (d_name, e_name) = (name("kd"), name("ke"));
    let d = Spec {
        key: "theirs",
        ca: "theirs",
        ..Spec::member(&d_name, 1, &seeds)
    };
    let e = Spec {
        ca: "theirs",
        ..Spec::member(&e_name, 1, &seeds)
    };
    let (extra, _) = boot(&f.lab, &f.secrets, &[d, e]);
    let [d, e] = [&extra[0], &extra[1]];
    let all = [a, b, c, d, e];

    // e holds the key, so gossip takes it in ...
    wait_until(
        &all,
        "e to become a member of a, b and c",
        FORM_SECS,
        || {
            for h in members {
                let s = status(h)?;
                member(&s, &e.name).ok_or(format!("{} does not list e", h.name))?;
            }
            Ok(())
        },
    );
    // ... but for several gossip and report rounds, nobody offers it work,
    // and d is never seen at all.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(8) {
        for h in members {
            let s = status(h).expect("status");
            assert!(
                member(&s, &d.name).is_none(),
                "{} lists the host with another key: {s:?}",
                h.name
            );
            let m = member(&s, &e.name).expect("e stays a member");
            assert!(!m.eligible, "{} offers work to e: {m:?}", h.name);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for (h, was) in members.iter().zip(&before) {
        let s = status(h).expect("status");
        let now = counter(&s, "gossip_auth_failures");
        assert!(
            now > *was,
            "{}: gossip_auth_failures {was} -> {now}: {s:?}",
            h.name
        );
        let m = member(&s, &e.name).expect("e");
        assert!(
            !m.problem.is_empty(),
            "{} says nothing about e: {m:?}",
            h.name
        );
        eprintln!("{} about e: {}", h.name, m.problem);
    }
    let shown = rbectl_status(a);
    assert!(
        shown.lines().any(|l| l.trim_start().starts_with('!')),
        "rbectl cluster status shows e's problem:\n{shown}"
    );
    // d sees nobody; e sees the others but trusts none of them.
    let sd = status(d).expect("d status");
    assert!(sd.members.is_empty(), "d sees members: {sd:?}");
    let se = status(e).expect("e status");
    for h in members {
        let m = member(&se, &h.name).ok_or(format!("e does not list {}", h.name));
        assert!(m.is_ok_and(|m| !m.eligible), "e about {}: {se:?}", h.name);
    }
}

/// `systemctl stop` of c's frontend: a and b see c leave; started again,
/// c comes back with a higher generation.
#[test]
fn drained_host_leaves() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    let _one = serial();
    let f = Fixture::new("d");
    f.wait_formed(FORM_SECS);
    let [a, b, c] = [&f.hosts[0], &f.hosts[1], &f.hosts[2]];
    let hosts = [a, b, c];
    let old = status(c).expect("c status").generation;

    // The sockets too: the worker reconnecting to the local socket would
    // start the frontend again at once.
    c.sh("systemctl stop rbe-frontend.socket rbe-frontend-local.socket rbe-frontend.service");
    let (_, left) = wait_until(&hosts, "a and b to see c leave", 30, || {
        for h in [a, b] {
            let s = status(h)?;
            if let Some(m) = member(&s, &c.name).filter(|m| m.state != "down") {
                return Err(format!("{} still sees c as {m:?}", h.name));
            }
        }
        Ok(())
    });
    eprintln!("a and b saw the stopped c leave in {} ms", left.as_millis());
    let journal = c.journal("rbe-frontend.service");
    assert!(
        journal.contains("cluster: left"),
        "c's frontend did not leave the cluster on stop:\n{journal}"
    );

    c.sh("systemctl start rbe-frontend.socket rbe-frontend-local.socket rbe-frontend.service");
    let (new, back) = wait_until(&hosts, "c to rejoin", FORM_SECS, || {
        formed(&hosts)?;
        let gens: Vec<u64> = [a, b]
            .iter()
            .map(|h| {
                let s = status(h)?;
                member(&s, &c.name)
                    .map(|m| m.generation)
                    .ok_or(format!("{} lost c", h.name))
            })
            .collect::<Result<_, String>>()?;
        match gens.iter().all(|g| *g > old) {
            true => Ok(gens),
            false => Err(format!("c's generation {gens:?}, before {old}")),
        }
    });
    let own = status(c).expect("c status").generation;
    assert!(own > old, "c's own generation {own} after {old}");
    assert!(
        new.iter().all(|g| *g == own),
        "a and b see {new:?}, c is {own}"
    );
    eprintln!(
        "c rejoined {} ms after its frontend started (generation {old} -> {own})",
        back.as_millis()
    );
}

/// Partitions. `lab block a b` alone is no failure for membership: SWIM
/// probes b through c when a's direct probe goes unanswered, and c still
/// relays b's reports, so a and b keep each other up (and eligible: see
/// the note in the report). Blocking a from c too isolates a: both sides
/// see the other not up; `lab heal` makes the cluster whole again.
///
/// Ignored until fixed: after the heal (the network whole again, checked
/// below) a member declared down during the isolation stays `suspect` in
/// another host's view for over 60 s, with fresh reports. Run it with
/// `cargo test -p rbe-e2e --test cluster -- --ignored partition_heals`.
#[test]
#[ignore = "bug: a host isolated and rejoined stays suspect at its peers after lab heal"]
fn partition_heals() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    let _one = serial();
    let f = Fixture::new("p");
    f.wait_formed(FORM_SECS);
    let [a, b, c] = [&f.hosts[0], &f.hosts[1], &f.hosts[2]];
    let hosts = [a, b, c];

    f.lab.block(a, b);
    // Several probe rounds: nobody is declared down through c.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(6) {
        for (h, other) in [(a, b), (b, a)] {
            let s = status(h).expect("status");
            let m = member(&s, &other.name);
            assert!(
                m.is_some_and(|m| m.state != "down"),
                "{} lost {} though c reaches both: {m:?}",
                h.name,
                other.name
            );
        }
        let s = status(c).expect("c status");
        for h in [a, b] {
            sees_ready(&s, &h.name).expect("c sees both sides");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let s = status(a).expect("a status");
    eprintln!(
        "a blocked from b only, after 6 s: a sees b as {:?}",
        member(&s, &b.name).map(|m| (&m.state, m.eligible, m.report_age_ms))
    );

    f.lab.block(a, c);
    let (_, took) = wait_until(&hosts, "a and the others to lose each other", 60, || {
        for (h, other) in [(a, b), (a, c), (b, a), (c, a)] {
            let s = status(h)?;
            if let Some(m) = member(&s, &other.name).filter(|m| m.state == "up") {
                return Err(format!("{} still sees {} up: {m:?}", h.name, other.name));
            }
        }
        // b and c still have each other.
        sees_ready(&status(b)?, &c.name)?;
        sees_ready(&status(c)?, &b.name)
    });
    eprintln!(
        "a cut off from b and c: both sides saw the other not up {} ms after the block",
        took.as_millis()
    );

    f.lab.heal();
    // The network is whole again: each host reaches the others' peer port.
    for (h, other) in [(a, b), (a, c), (b, a), (c, a)] {
        h.sh(&format!(
            "timeout 10 bash -c 'exec 3<>/dev/tcp/{}/8981' || {{ ip neigh; exit 1; }}",
            other.name
        ));
    }
    let (_, healed) = wait_until(&hosts, "the cluster to heal", FORM_SECS, || formed(&hosts));
    eprintln!("the cluster was whole {} ms after heal", healed.as_millis());
}

/// Remote execution through the cluster: 26 distinct `sleep 2` actions
/// sent all at once to a (1 slot) only, with `rbe-bench fanout`: every one
/// succeeds, and a offloads, so more than one host runs them.
#[test]
fn offload_runs_on_several_hosts() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    // Built by `cargo build --workspace --bins` (tests/run-all.sh), not by
    // the test kit's own build of the daemons.
    let bench = bin("rbectl").with_file_name("rbe-bench");
    if !bench.is_file() {
        return skip("rbe-bench is not built (cargo build -p rbe-bench)");
    }
    let _one = serial();
    let f = Fixture::new("x");
    f.wait_formed(FORM_SECS);
    let [a, b, c] = [&f.hosts[0], &f.hosts[1], &f.hosts[2]];
    // The local socket: callers there need no credentials.
    let endpoint = format!("unix:{}", a.root().join("run/rbe/frontend.sock").display());
    let out = Command::new(&bench)
        .args([
            "fanout",
            "--endpoint",
            &endpoint,
            "--label",
            "cluster-accept",
        ])
        .args(["--count", "26", "--argv", "/bin/sleep", "--argv", "2"])
        // ceil(26 / (1 + 4 + 8)) rounds of 2 s.
        .args(["--ideal-secs", "4"])
        .output()
        .expect("run rbe-bench fanout");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rbe-bench fanout: {}\n{}",
        text(&out),
        journals(&[a, b, c])
    );
    eprintln!("{shown}");
    let per_host: Vec<(String, u64)> = shown
        .lines()
        .filter_map(|l| l.trim().strip_prefix("host "))
        .filter_map(|l| {
            let (h, n) = l.split_once(": ")?;
            Some((h.to_owned(), n.strip_suffix(" actions")?.parse().ok()?))
        })
        .collect();
    assert_eq!(
        per_host.iter().map(|(_, n)| n).sum::<u64>(),
        26,
        "every action ran once: {per_host:?}"
    );
    assert!(per_host.len() > 1, "only one host ran them: {per_host:?}");
    let s = status(a).expect("a status");
    assert!(counter(&s, "offers_accepted") > 0, "{s:?}");
}
