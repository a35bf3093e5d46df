//! `rbe-cluster-sim`: runs presets and sweeps, one JSON line per run.
//!
//! ```text
//! rbe-cluster-sim three [SEED]      the 3-host 1/4/8 benchmark: offload on, off, answers with seq 0
//! rbe-cluster-sim sweep [SEED]      all of the below
//! rbe-cluster-sim core [SEED]       d, optimism, report interval, N up to 100
//! rbe-cluster-sim thousand [SEED]   N = 1000, one round
//! rbe-cluster-sim w1|w2 [SEED] [N]  one workload preset
//! rbe-cluster-sim accept [SEED]     accept_max_rounds against N
//! rbe-cluster-sim herd [SEED]       d and optimism, 20 origins bursting at once
//! rbe-cluster-sim faults [SEED]     datagram loss; an executor crashing mid-burst
//! ```

use std::time::Duration;

use anyhow::Context;
use rbe_cluster::policy::Choices;
use rbe_cluster_sim::workload::{one_origin, Burst, Service};
use rbe_cluster_sim::{preset_three_hosts, preset_w1, preset_w2, run, SimConfig};

fn line(name: &str, cfg: SimConfig, extra: &[(&str, String)]) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let seed = cfg.seed;
    let s = run(cfg).with_context(|| format!("run {name}"))?;
    let mut ex = vec![
        ("seed", seed.to_string()),
        ("cpu_s", format!("{:.2}", started.elapsed().as_secs_f64())),
    ];
    ex.extend(extra.iter().cloned());
    println!("{}", s.to_json(name, &ex));
    Ok(())
}

fn choices(c: Choices) -> String {
    match c {
        Choices::Sample(d) => d.to_string(),
        Choices::All => "\"all\"".into(),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map_or("three", String::as_str);
    let seed: u64 = match args.get(1) {
        Some(s) => s.parse().context("SEED is a number")?,
        None => 1,
    };
    match what {
        "three" => {
            line("three", preset_three_hosts(seed), &[])?;
            let mut off = preset_three_hosts(seed);
            off.offload = false;
            line("three-off", off, &[])?;
            // Answers with seq 0, as the frontend sent them until the lab
            // benchmark showed it (BENCHMARKS.md, issue 12 on booted hosts).
            let mut seq0 = preset_three_hosts(seed);
            seq0.answers_carry_seq = false;
            line("three-seq0", seq0, &[])?;
        }
        "sweep" => sweep(seed)?,
        "accept" => accept(seed)?,
        "herd" => herd(seed)?,
        "faults" => faults(seed)?,
        "core" => core(seed)?,
        "thousand" => thousand(seed)?,
        "w1" | "w2" => {
            let n: usize = match args.get(2) {
                Some(s) => s.parse().context("N is a number")?,
                None => 100,
            };
            let cfg = if what == "w1" {
                preset_w1(seed, n)
            } else {
                preset_w2(seed, n)
            };
            line(what, cfg, &[("n", n.to_string())])?;
        }
        other => anyhow::bail!("unknown command {other:?}; try `three` or `sweep`"),
    }
    Ok(())
}

/// accept_max_rounds against N, on W1 (3 rounds of fixed 2 s actions:
/// the harshest case, every late offer costs a whole round) and W2.
fn accept(seed: u64) -> anyhow::Result<()> {
    for rounds in [0.5, 1.0, 1.5] {
        for n in [3usize, 10, 100] {
            let mut w1 = preset_w1(seed, n);
            let total: u32 = w1.slots.iter().sum();
            w1.bursts = one_origin(0, 3 * total, Service::Fixed(Duration::from_secs(2)));
            w1.policy.accept_max_rounds = rounds;
            let mut w2 = preset_w2(seed, n);
            w2.policy.accept_max_rounds = rounds;
            let ex = [
                ("accept_max_rounds", rounds.to_string()),
                ("n", n.to_string()),
            ];
            line("w1-fixed-accept", w1, &ex)?;
            line("w2-accept", w2, &ex)?;
        }
    }
    Ok(())
}

/// Where herding shows: 20 of 100 hosts get a burst at the same instant,
/// two rounds of the cluster together, so every origin sees the same
/// idle peers in reports of the same age.
fn herd(seed: u64) -> anyhow::Result<()> {
    for c in [Choices::Sample(1), Choices::Sample(2), Choices::All] {
        for optimistic in [true, false] {
            let mut cfg = preset_w2(seed, 100);
            let total: u32 = cfg.slots.iter().sum();
            cfg.bursts = (0..20)
                .map(|o| Burst {
                    origin: o * 5,
                    at: Duration::ZERO,
                    count: total / 10,
                    service: Service::Fixed(Duration::from_secs(2)),
                })
                .collect();
            cfg.policy.choices = c;
            cfg.policy.optimistic = optimistic;
            line(
                "herd",
                cfg,
                &[("d", choices(c)), ("optimistic", optimistic.to_string())],
            )?;
        }
    }
    Ok(())
}

fn sweep(seed: u64) -> anyhow::Result<()> {
    core(seed)?;
    herd(seed)?;
    accept(seed)?;
    faults(seed)?;
    thousand(seed)
}

/// d and optimism, report interval, N up to 100.
fn core(seed: u64) -> anyhow::Result<()> {
    line("three", preset_three_hosts(seed), &[])?;
    // d and optimism, W2 at N = 100 (several origins: where herding shows).
    for c in [Choices::Sample(1), Choices::Sample(2), Choices::All] {
        for optimistic in [true, false] {
            let mut cfg = preset_w2(seed, 100);
            cfg.policy.choices = c;
            cfg.policy.optimistic = optimistic;
            line(
                "w2-d",
                cfg,
                &[("d", choices(c)), ("optimistic", optimistic.to_string())],
            )?;
        }
    }
    // Report interval, W2 at N = 100.
    for ms in [100u64, 250, 500, 1000, 2000] {
        let mut cfg = preset_w2(seed, 100);
        cfg.report_interval = Duration::from_millis(ms);
        line("w2-report", cfg, &[("report_ms", ms.to_string())])?;
    }
    // N, W1 and W2; the largest cluster W1 only, one round, shorter.
    for n in [3usize, 10, 100] {
        line("w1-n", preset_w1(seed, n), &[("n", n.to_string())])?;
        line("w2-n", preset_w2(seed, n), &[("n", n.to_string())])?;
    }
    Ok(())
}

/// The largest cluster: W1 only, one round, a shorter run.
fn thousand(seed: u64) -> anyhow::Result<()> {
    let mut w1 = preset_w1(seed, 1000);
    let total: u32 = w1.slots.iter().sum();
    w1.warmup = Duration::from_secs(10);
    w1.max_time = Duration::from_secs(30);
    w1.bursts = one_origin(0, total, Service::Fixed(Duration::from_secs(2)));
    line("w1-n", w1, &[("n", "1000".into())])
}

/// Datagram loss, and a crashed executor mid-burst.
fn faults(seed: u64) -> anyhow::Result<()> {
    for loss in [0.0, 0.01, 0.05] {
        let mut cfg = preset_w2(seed, 100);
        cfg.net.loss = loss;
        line("w2-loss", cfg, &[("loss", loss.to_string())])?;
    }
    for n in [3usize, 10, 100] {
        let mut cfg = preset_w1(seed, n);
        // Host 2 has 4 slots in every preset; it dies 3 s into the burst.
        cfg.crashes = vec![(2, Duration::from_secs(3))];
        line("w1-crash", cfg, &[("n", n.to_string())])?;
    }
    Ok(())
}
