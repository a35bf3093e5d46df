//! Issue 12's benchmark on booted lab hosts: the lab cluster of `cluster.rs`
//! (a, b and c with worker slots 1, 4 and 8, the .deb packages installed),
//! 104 distinct `sleep 2` actions sent all at once to a only with
//! `rbe-bench fanout`, first with offload on (the shipped defaults), then,
//! on the same hosts, with offload off by a drop-in on a and `systemctl
//! reload`. Ideal makespan: ⌈104 / 13⌉ × 2 s = 16 s.
//!
//! A benchmark, not a timed test: it prints the figures BENCHMARKS.md
//! quotes (formation time, makespan ÷ ideal, offers / accepts / rejects by
//! reason, the offload decision time and the offer round trip from a's
//! ClusterAdmin counters, gossip bytes per second per host over each run,
//! the machine's load) and asserts only that every action ran, once, and
//! where. Run it alone:
//!
//! ```sh
//! cargo build -p rbe-bench
//! cargo test -p rbe-e2e --test cluster_bench -- --ignored --nocapture
//! ```
//!
//! `RBE_BENCH_OFFLOAD=on` skips the 208 s offload-off run. Skipped, with
//! the reason, where `cluster.rs` is.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use rbe_proto::cluster::ClusterStatus;
use rbe_testkit::skip;
use support::lab_cluster::*;
use support::{text, Instance};

const COUNT: u64 = 104;
const IDEAL_SECS: f64 = 16.0;

#[test]
#[ignore = "a benchmark (about 5 minutes): run with --ignored --nocapture"]
fn offload_fanout_104_sleep_2() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    let bench = match rbe_bench() {
        Ok(b) => b,
        Err(why) => return skip(&why),
    };
    let _one = serial();
    let f = Fixture::new("o");
    let formed_in = f.started.elapsed() + f.wait_formed(FORM_SECS);
    let hosts: Vec<&Instance> = f.hosts.iter().collect();
    wait_slots(&hosts, &[1, 4, 8]);
    println!(
        "bench: cluster of 3 formed {:.1} s after the last frontend started",
        formed_in.as_secs_f64()
    );
    let a = hosts[0];

    let on = run(&bench, &hosts, "offload on");
    assert!(
        on.per_host.len() > 1,
        "offload on, yet only one host ran the burst: {:?}",
        on.per_host
    );

    if std::env::var("RBE_BENCH_OFFLOAD").is_ok_and(|v| v == "on") {
        return;
    }
    let reloads = a
        .journal("rbe-frontend.service")
        .matches("cluster: keys reloaded")
        .count();
    a.sh(
        "printf '[offload]\\nenabled = false\\n' >/etc/rbe/frontend.toml.d/60-offload-off.toml
          systemctl reload rbe-frontend",
    );
    wait_until(&hosts, "a to apply the reload", 30, || {
        let n = a
            .journal("rbe-frontend.service")
            .matches("cluster: keys reloaded")
            .count();
        (n > reloads)
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    });
    let off = run(&bench, &hosts, "offload off");
    assert_eq!(
        off.per_host.keys().collect::<Vec<_>>(),
        [&a.name],
        "offload off, yet other hosts ran actions"
    );
    assert_eq!(off.offers_sent, 0, "offload off, yet a sent offers");
    println!(
        "bench: offload on {:.2} s = {:.3} × ideal; off {:.2} s = {:.3} × ideal",
        on.makespan,
        on.makespan / IDEAL_SECS,
        off.makespan,
        off.makespan / IDEAL_SECS
    );
}

/// Waits until each host's own report and its view of the others carry
/// the slots of `want` (in host order).
fn wait_slots(hosts: &[&Instance], want: &[u32]) {
    wait_until(hosts, "every report to carry its slots", 30, || {
        for (h, mine) in hosts.iter().zip(want) {
            let s = status(h)?;
            let own: u32 = s
                .own
                .as_ref()
                .map_or(0, |l| l.pools.iter().map(|p| p.slots).sum());
            if own != *mine {
                return Err(format!("{} reports {own} slots of its own", h.name));
            }
            for (other, n) in hosts.iter().zip(want).filter(|(o, _)| o.name != h.name) {
                let m = member(&s, &other.name).ok_or("member gone")?;
                if slots(m) != *n {
                    return Err(format!("{} sees {m:?}, not {n} slots", h.name));
                }
            }
        }
        Ok(())
    });
}

struct Run {
    makespan: f64,
    per_host: BTreeMap<String, u64>,
    offers_sent: u64,
}

/// The machine's load average, as `uptime` says it.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One burst to a (the first host), with the counters of every host
/// before and after.
fn run(bench: &std::path::Path, hosts: &[&Instance], label: &str) -> Run {
    let a = hosts[0];
    let before: Vec<ClusterStatus> = hosts.iter().map(|h| status(h).expect("status")).collect();
    let load_before = load();
    // The local socket: callers there need no credentials.
    let endpoint = format!("unix:{}", a.root().join("run/rbe/frontend.sock").display());
    let t = Instant::now();
    let out = Command::new(bench)
        .args(["fanout", "--endpoint", &endpoint, "--label", label])
        .args(["--count", &COUNT.to_string()])
        .args(["--argv", "/bin/sleep", "--argv", "2"])
        .args(["--ideal-secs", &IDEAL_SECS.to_string()])
        .output()
        .expect("run rbe-bench fanout");
    let wall = t.elapsed();
    let after: Vec<ClusterStatus> = hosts.iter().map(|h| status(h).expect("status")).collect();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rbe-bench fanout: {}\n{}",
        text(&out),
        journals(hosts)
    );
    let per_host: BTreeMap<String, u64> = shown
        .lines()
        .filter_map(|l| l.trim().strip_prefix("host "))
        .filter_map(|l| {
            let (h, n) = l.split_once(": ")?;
            Some((h.to_owned(), n.strip_suffix(" actions")?.parse().ok()?))
        })
        .collect();
    assert_eq!(
        per_host.values().sum::<u64>(),
        COUNT,
        "every action ran once: {per_host:?}\n{shown}"
    );
    let makespan = shown
        .lines()
        .find_map(|l| {
            l.split_once("makespan ")?
                .1
                .split_once(" s")?
                .0
                .parse()
                .ok()
        })
        .unwrap_or(wall.as_secs_f64());

    println!(
        "bench: == {label} (load average {load_before} before, {} after)",
        load()
    );
    print!("{shown}");
    let d = |i: usize, name: &str| counter(&after[i], name) - counter(&before[i], name);
    let sent = d(0, "offers_sent");
    let rejected = d(0, "offers_rejected");
    let reasons: Vec<String> = after[0]
        .counters
        .iter()
        .filter(|c| c.name.starts_with("offers_rejected_"))
        .map(|c| {
            let n = c.value - counter(&before[0], &c.name);
            format!("{} {n}", c.name.trim_start_matches("offers_rejected_"))
        })
        .collect();
    println!(
        "bench: a: offers sent {sent}, accepted {}, rejected {rejected} ({}), failed {}, leases lost {}; reject rate {:.1} %",
        d(0, "offers_accepted"),
        reasons.join(", "),
        d(0, "offers_failed"),
        d(0, "leases_lost"),
        100.0 * rejected as f64 / sent.max(1) as f64
    );
    for (i, h) in hosts.iter().enumerate().skip(1) {
        println!(
            "bench: {}: offers received {}, admitted {}, refused {}",
            h.name,
            d(i, "offers_received"),
            d(i, "offers_admitted"),
            d(i, "offers_refused")
        );
    }
    // Since a started; before the first run it had offered nothing.
    let q = |n: &str| counter(&after[0], n);
    println!(
        "bench: a: offload decision {} decisions, p50 {:.1} µs, p99 {:.1} µs; offer round trip {} answers, p50 {:.2} ms, p99 {:.2} ms (since start)",
        q("offload_decision_ns_count"),
        q("offload_decision_ns_p50") as f64 / 1e3,
        q("offload_decision_ns_p99") as f64 / 1e3,
        q("offer_rtt_us_count"),
        q("offer_rtt_us_p50") as f64 / 1e3,
        q("offer_rtt_us_p99") as f64 / 1e3,
    );
    let secs = wall.as_secs_f64();
    for (i, h) in hosts.iter().enumerate() {
        println!(
            "bench: {}: gossip out {:.0} B/s ({:.1} packets/s), in {:.0} B/s over {:.1} s",
            h.name,
            d(i, "gossip_bytes_out") as f64 / secs,
            d(i, "gossip_packets_out") as f64 / secs,
            d(i, "gossip_bytes_in") as f64 / secs,
            secs
        );
    }
    println!("bench: rbectl cluster status on a:\n{}", rbectl_status(a));
    Run {
        makespan,
        per_host,
        offers_sent: sent,
    }
}
