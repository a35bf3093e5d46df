//! Issue 12's Bazel acceptance on the booted lab cluster
//! (`support/lab_cluster.rs`: a with 1 slot, b with 4, c with 8): Bazel
//! 4.2.3 inside a builds `tests/bazel-ws` against a's own frontend
//! (`tests/scripts/bazel-cache-e2e.sh` with MODE=exec), actions run on all
//! three hosts, and the rebuild after `bazel clean` is all cache hits from
//! a. Then the same build, each time with a fresh salt, while a host is
//! injured mid-build: an executing host's frontend killed, the origin's
//! frontend killed, an executing host drained, an executing host cut off.
//! Every build must complete (Bazel retries what a dying origin fails with
//! UNAVAILABLE), and no action may run more than twice across the three
//! hosts (execution is at-least-once: a lost lease runs again elsewhere).
//!
//! What ran where comes from each host's rbe-workerd journal: every
//! `action finished` entry carries the action's digest (`RBE_ACTION_DIGEST`)
//! and the Bazel invocation (`RBE_INVOCATION_ID`); the scopes systemd
//! started (`rbe action <digest>`) count the runs killed before they
//! finished. "Mid-build" is when the injured host reports actions running
//! (ClusterAdmin), not a fixed sleep.
//!
//! Printed per build, for BENCHMARKS.md and the lead: its time, actions
//! finished per host, actions run twice, a's offload counters and why a
//! lost leases.
//!
//! The product defaults are kept (`[offload] threshold = 1.0`): Bazel's
//! `--jobs=32` and the 24 independent 4 s actions of `//wide:wide` queue
//! enough on the 1-slot a. Skipped, with the reason, where `cluster.rs` is.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rbe_testkit::skip;
use support::lab_cluster::*;
use support::{harness, on_path, text, Instance};

const TARGETS: &str = "//... //net:no_network_test //wide:wide";
/// `--remote_retries=10` (the default is 5): Bazel's backoff between
/// retries then surely outlasts a frontend that systemd starts again.
const BAZEL_FLAGS: &str = "--jobs=32 --remote_retries=10";
/// Only keeps a broken build from hanging the test: a healthy one takes
/// about a minute on 2 busy cores.
const BUILD_SECS: u64 = 900;
/// How long an injured host may take to show running work before the
/// test gives up: the build's first remote actions come after Bazel's
/// start and analysis.
const MID_SECS: u64 = 300;

#[test]
fn bazel_on_three_hosts_survives_faults() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    if !on_path("bazel") {
        return skip("bazel is not installed (apt-get install bazel-bootstrap): no Bazel build");
    }
    let _one = serial();
    let f = Fixture::new("z");
    f.wait_formed(FORM_SECS);
    let [a, b, c] = [&f.hosts[0], &f.hosts[1], &f.hosts[2]];
    let hosts = [a, b, c];
    let mut ledger = Ledger::new(&hosts);

    // 1. Healthy: actions on all three, the rebuild all cache hits.
    let run = build(&hosts, "healthy", |_| {});
    let per_host = ledger.advance(&hosts);
    run.report(&per_host);
    run.assert_passed(&hosts);
    for (h, n) in hosts.iter().zip(&per_host.finished) {
        assert!(*n > 0, "no action ran on {}: {per_host:?}", h.name);
    }
    // Without faults no lease is lost, so nothing runs twice.
    assert_eq!(run.counter("leases_lost"), 0, "healthy build");
    assert_eq!(per_host.twice, 0, "healthy build");
    ledger.assert_at_most_twice();

    // 2b. The frontend of an executing host dies: its leases break (TCP
    // reset) and the origin runs them again elsewhere.
    let run = build(&hosts, "kill -9 b's frontend", |hosts| {
        wait_running(hosts, b);
        kill_frontend(b);
    });
    let per_host = ledger.advance(&hosts);
    run.report(&per_host);
    run.assert_passed(&hosts);
    ledger.assert_at_most_twice();
    assert!(run.counter("leases_lost") > 0, "a lost no lease to b");
    f.wait_formed(FORM_SECS);

    // 2c. The origin's frontend dies: Bazel's calls fail UNAVAILABLE, it
    // retries against the frontend systemd started again, and executors
    // join the new offers to the runs of the old ones still in flight.
    let restarts = a.prop("rbe-frontend.service", "NRestarts");
    let run = build(&hosts, "kill -9 a's frontend", |hosts| {
        wait_running(hosts, c);
        kill_frontend(a);
    });
    let per_host = ledger.advance(&hosts);
    run.report(&per_host);
    run.assert_passed(&hosts);
    ledger.assert_at_most_twice();
    assert_ne!(
        a.prop("rbe-frontend.service", "NRestarts"),
        restarts,
        "a's frontend was not restarted"
    );
    f.wait_formed(FORM_SECS);

    // 2d. An executing host is drained: it rejects offers, what it has
    // queued goes back to the origin at once, what it runs finishes (4 s
    // against a 20 s drain) and the origin takes it, then it leaves. Its
    // sockets stay, so its worker starts it again (as after an
    // administrator's `systemctl stop rbe-frontend`).
    let run = build(&hosts, "systemctl stop c's frontend", |hosts| {
        wait_running(hosts, c);
        let t = Instant::now();
        c.sh("systemctl stop rbe-frontend.service");
        eprintln!(
            "c's frontend drained and stopped in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    });
    let per_host = ledger.advance(&hosts);
    run.report(&per_host);
    run.assert_passed(&hosts);
    ledger.assert_at_most_twice();
    f.wait_formed(FORM_SECS);

    // 2a. Last, as the cluster may not heal (cluster.rs `partition_heals`):
    // an executing host is cut off; its leases fall silent and the origin
    // runs them again elsewhere.
    let run = build(&hosts, "lab cut b", |hosts| {
        wait_running(hosts, b);
        f.lab.cut(b);
    });
    f.lab.join(b);
    let per_host = ledger.advance(&hosts);
    run.report(&per_host);
    run.assert_passed(&hosts);
    ledger.assert_at_most_twice();
    assert!(run.counter("leases_lost") > 0, "a lost no lease to b");
    ledger.report();
}

/// One run of the e2e script inside `hosts[0]`, while `during` injures
/// the cluster; what a's ClusterAdmin counted meanwhile.
struct Run {
    what: String,
    out: Output,
    took: Duration,
    /// What a's ClusterAdmin counted during the build (since its restart,
    /// if its frontend was restarted).
    counters: Vec<(String, u64)>,
}

impl Run {
    fn passed(&self) -> bool {
        self.out.status.success()
    }

    /// How much a's ClusterAdmin counter `name` rose during the build.
    fn counter(&self, name: &str) -> u64 {
        self.counters
            .iter()
            .find(|(k, _)| k == name)
            .map_or(0, |(_, v)| *v)
    }

    fn report(&self, per_host: &Figures) {
        let counters: Vec<String> = self
            .counters
            .iter()
            .filter(|(k, v)| *v != 0 && !k.starts_with("gossip_"))
            .map(|(k, v)| format!("{k} +{v}"))
            .collect();
        eprintln!(
            "bazel build [{}]: {} in {:.1} s; actions finished on a/b/c: {:?}, \
             {} run twice; a's counters: {}; leases lost by reason: {:?}\n{}",
            self.what,
            if self.passed() { "passed" } else { "FAILED" },
            self.took.as_secs_f64(),
            per_host.finished,
            per_host.twice,
            counters.join(", "),
            per_host.lost,
            String::from_utf8_lossy(&self.out.stderr)
                .lines()
                .filter(|l| l.starts_with("[bazel-cache-e2e] first")
                    || l.starts_with("[bazel-cache-e2e] second"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }

    fn assert_passed(&self, hosts: &[&Instance]) {
        assert!(
            self.passed(),
            "Bazel [{}] through the cluster: {}\n{}",
            self.what,
            text(&self.out),
            journals(hosts)
        );
    }
}

/// Runs the e2e script inside `hosts[0]` with a fresh salt and, once it
/// started, `during`; waits for the build (at most [`BUILD_SECS`]).
fn build(hosts: &[&Instance; 3], what: &str, during: impl FnOnce(&[&Instance; 3])) -> Run {
    let before = counters(hosts[0]);
    let t = Instant::now();
    let script = format!("{SRC}/tests/scripts/bazel-cache-e2e.sh");
    let name = hosts[0].name.clone();
    let job: JoinHandle<Output> = std::thread::spawn(move || {
        Command::new(harness())
            .args(["exec", &name, "env", "MODE=exec"])
            .arg(format!("TARGETS={TARGETS}"))
            .arg(format!("EXTRA_BAZEL_FLAGS={BAZEL_FLAGS}"))
            .args(["bash", &script, "grpc://127.0.0.1:8980"])
            .output()
            .expect("run sysbox exec")
    });
    during(hosts);
    assert!(
        !job.is_finished(),
        "the build [{what}] was over before the injury: {}",
        job.join()
            .map_or_else(|_| "its thread panicked".into(), |o| text(&o))
    );
    while !job.is_finished() {
        assert!(
            t.elapsed() < Duration::from_secs(BUILD_SECS),
            "the build [{what}] hangs after {BUILD_SECS} s\n{}",
            journals(hosts)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = job.join().expect("the build's thread");
    let took = t.elapsed();
    let after = counters(hosts[0]);
    let was = |k: &str| before.iter().find(|(b, _)| b == k).map_or(0, |(_, w)| *w);
    // A restarted frontend counts from 0 again.
    let restarted = after.iter().any(|(k, v)| *v < was(k));
    let counters = after
        .iter()
        .map(|(k, v)| (k.clone(), if restarted { *v } else { v - was(k) }))
        .collect();
    Run {
        what: what.to_owned(),
        out,
        took,
        counters,
    }
}

fn counters(h: &Instance) -> Vec<(String, u64)> {
    status(h).map_or_else(
        |_| Vec::new(),
        |s| s.counters.into_iter().map(|c| (c.name, c.value)).collect(),
    )
}

/// Waits until `h` reports actions running (for a test of this file, work
/// offloaded by a), so that what comes next happens mid-build.
fn wait_running(hosts: &[&Instance; 3], h: &Instance) {
    wait_until(
        hosts,
        &format!("actions running on {}", h.name),
        MID_SECS,
        || {
            let s = status(h)?;
            let running: u32 = s
                .own
                .as_ref()
                .map_or(0, |l| l.pools.iter().map(|p| p.running).sum());
            match running {
                0 => Err(format!("{} runs nothing", h.name)),
                n => Ok(n),
            }
        },
    );
}

/// `kill -9` of `h`'s frontend's main process; systemd starts it again
/// (`Restart=on-failure`, and its sockets stay).
fn kill_frontend(h: &Instance) {
    h.sh("systemctl kill --kill-who=main --signal=SIGKILL rbe-frontend.service");
}

/// What ran during one build: actions finished per host (a, b, c), and
/// how many actions ran a second time (a lost lease, a run killed).
#[derive(Debug)]
struct Figures {
    finished: Vec<usize>,
    twice: usize,
    /// The origin's leases lost, by reason.
    lost: BTreeMap<String, usize>,
}

/// Every action run seen in the three hosts' journals, and how far each
/// host's journal was read before the current build.
struct Ledger {
    /// Per host, the action digest of every `action finished`, in
    /// journal order.
    finished: Vec<Vec<String>>,
    /// Action digests of the scopes systemd started for actions.
    started: Vec<Vec<String>>,
    /// Why the origin (a) lost its leases, in journal order.
    lost: Vec<String>,
}

impl Ledger {
    fn new(hosts: &[&Instance; 3]) -> Ledger {
        let mut l = Ledger {
            finished: vec![Vec::new(); 3],
            started: vec![Vec::new(); 3],
            lost: Vec::new(),
        };
        l.advance(hosts);
        l
    }

    /// Reads the journals again; returns what ran since the last call.
    fn advance(&mut self, hosts: &[&Instance; 3]) -> Figures {
        let twice = self.twice();
        let finished = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let was = self.finished[i].len();
                self.finished[i] = finished(h);
                self.started[i] = started(h);
                self.finished[i].len() - was
            })
            .collect();
        let was = self.lost.len();
        self.lost = lost(hosts[0]);
        let mut why: BTreeMap<String, usize> = BTreeMap::new();
        for r in &self.lost[was.min(self.lost.len())..] {
            // "the stream broke: <detail>" counts as "the stream broke".
            let head = r.split(':').next().unwrap_or(r).to_owned();
            *why.entry(head).or_default() += 1;
        }
        Figures {
            finished,
            twice: self.twice() - twice,
            lost: why,
        }
    }

    fn twice(&self) -> usize {
        self.runs().values().filter(|n| **n == 2).count()
    }

    /// Runs per action digest over all hosts: the finished ones, or the
    /// scopes started if more (a run killed before it finished).
    fn runs(&self) -> BTreeMap<&str, usize> {
        let mut runs = count(&self.finished);
        for (d, n) in count(&self.started) {
            let e = runs.entry(d).or_default();
            *e = (*e).max(n);
        }
        runs
    }

    fn assert_at_most_twice(&self) {
        let runs = self.runs();
        let over: Vec<_> = runs.iter().filter(|(_, n)| **n > 2).collect();
        assert!(over.is_empty(), "actions run more than twice: {over:?}");
    }

    fn report(&self) {
        let runs = self.runs();
        let twice = self.twice();
        eprintln!(
            "over all builds: {} distinct actions ran, {twice} of them twice; \
             finished on a/b/c: {:?}",
            runs.len(),
            self.finished.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
}

fn count(lists: &[Vec<String>]) -> BTreeMap<&str, usize> {
    let mut m: BTreeMap<&str, usize> = BTreeMap::new();
    for d in lists.iter().flatten() {
        *m.entry(d.as_str()).or_default() += 1;
    }
    m
}

/// The action digests of `h`'s worker's `action finished` entries.
fn finished(h: &Instance) -> Vec<String> {
    h.sh("journalctl --no-pager -u rbe-workerd.service -o cat \
         --output-fields=RBE_ACTION_DIGEST MESSAGE='action finished'")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Why `h`'s frontend lost leases (`offload: lease lost`), in journal
/// order.
fn lost(h: &Instance) -> Vec<String> {
    h.sh(
        "journalctl --no-pager -u rbe-frontend.service -o cat --output-fields=RBE_REASON \
         MESSAGE='offload: lease lost; the operation is dispatched again'",
    )
    .lines()
    .map(str::trim)
    .filter(|l| !l.is_empty())
    .map(str::to_owned)
    .collect()
}

/// The action digests of the scopes systemd started on `h` for actions
/// (their description is `rbe action <digest> (<operation>)`).
fn started(h: &Instance) -> Vec<String> {
    h.sh("journalctl --no-pager _PID=1 -o cat | grep -o '^Started .*rbe action [^ ]*' || true")
        .lines()
        .filter_map(|l| l.rsplit(' ').next())
        .map(str::to_owned)
        .collect()
}
