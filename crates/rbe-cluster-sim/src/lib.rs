//! A deterministic simulator of an rbe cluster.
//!
//! Each simulated host runs the real [`rbe_sched::Scheduler`], the real
//! [`rbe_cluster::policy`] and a real `foca` instance with the real member
//! codec and load-report broadcast ([`rbe_cluster::codec`],
//! [`rbe_cluster::report`]); only time, the network and the workers are
//! simulated. Time is one [`rbe_sched::FakeClock`] moved by an event heap,
//! and every random choice comes from RNGs seeded from [`SimConfig::seed`],
//! so one seed gives one trace.
//!
//! What is modelled: datagram latency, loss and asymmetric partitions
//! ([`net`]); the peer channel as a lossless stream that a partition breaks
//! (noticed after a keepalive timeout); host crashes; workers as slot
//! counts with fixed or lognormal run times ([`workload`]). What is not:
//! input transfer, CPU cost of the frontend, the AEAD envelope (its 42
//! bytes are taken off foca's packet size).
//!
//! To add a scenario, add a preset below and a line to the CLI's sweep.

mod metrics;
pub mod net;
mod sim;
pub mod workload;

use std::time::Duration;

pub use metrics::Summary;
use rbe_cluster::policy::OffloadConfig;

use crate::net::NetConfig;
use crate::workload::{Burst, Service};

/// One simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seeds every RNG of the run.
    pub seed: u64,
    /// Slots per host; host `i` is `h{i}`.
    pub slots: Vec<u32>,
    /// Whether origins offload at all.
    pub offload: bool,
    /// The policy's tunables (every host the same).
    pub policy: OffloadConfig,
    /// How often each host publishes its load report.
    pub report_interval: Duration,
    /// Whether a finished offloaded action carries the executor's load
    /// back to its origin (as accepts and rejects do).
    pub load_on_finish: bool,
    /// Whether those answers carry the seq of the executor's last report
    /// (as the frontend's do since this was found on the lab hosts); with
    /// seq 0 the origin's table drops them as older than gossip.
    pub answers_carry_seq: bool,
    /// Membership settles this long before the first burst.
    pub warmup: Duration,
    /// Simulated time after the warm-up at most.
    pub max_time: Duration,
    /// The network.
    pub net: NetConfig,
    /// What clients send.
    pub bursts: Vec<Burst>,
    /// Hosts that crash, and when (after the warm-up).
    pub crashes: Vec<(usize, Duration)>,
}

impl SimConfig {
    /// Defaults around a workload.
    pub fn new(seed: u64, slots: Vec<u32>, bursts: Vec<Burst>) -> Self {
        SimConfig {
            seed,
            slots,
            offload: true,
            policy: OffloadConfig::default(),
            report_interval: Duration::from_millis(500),
            load_on_finish: true,
            answers_carry_seq: true,
            warmup: Duration::from_secs(5),
            max_time: Duration::from_secs(900),
            net: NetConfig::default(),
            bursts,
            crashes: Vec::new(),
        }
    }
}

/// The 3-host benchmark: slots 1/4/8, 104 actions of 2 s sent to the
/// 1-slot host (ideal 16 s).
pub fn preset_three_hosts(seed: u64) -> SimConfig {
    SimConfig::new(
        seed,
        vec![1, 4, 8],
        workload::one_origin(0, 104, Service::Fixed(Duration::from_secs(2))),
    )
}

/// W1 at scale: `n` hosts with skewed slots (1, 2, 4, 8, 16 in turn), one
/// origin (a 1-slot host) receiving a burst of 4 rounds of the whole
/// cluster's slots, lognormal run times around 2 s.
pub fn preset_w1(seed: u64, n: usize) -> SimConfig {
    let slots: Vec<u32> = (0..n).map(|i| 1 << (i % 5)).collect();
    let total: u32 = slots.iter().sum();
    let mut c = SimConfig::new(
        seed,
        slots,
        workload::one_origin(
            0,
            total * 4,
            Service::LogNormal {
                median: Duration::from_secs(2),
                sigma: 0.5,
            },
        ),
    );
    c.warmup = warmup_for(n);
    c
}

/// W2: `n` hosts, several origins (one in ten hosts, at least two), each
/// sent three bursts 10 s apart; together about 3 rounds of the cluster.
pub fn preset_w2(seed: u64, n: usize) -> SimConfig {
    let slots: Vec<u32> = (0..n).map(|i| 1 << (i % 5)).collect();
    let total: u32 = slots.iter().sum();
    let origins = (n / 10).max(2);
    let per = (total / origins as u32).max(1);
    let mut c = SimConfig::new(
        seed,
        slots,
        workload::several_origins(
            n,
            origins,
            3,
            per,
            Duration::from_secs(10),
            Service::LogNormal {
                median: Duration::from_secs(2),
                sigma: 0.8,
            },
        ),
    );
    c.warmup = warmup_for(n);
    c
}

/// Membership through one seed needs a few gossip rounds to reach
/// everyone.
fn warmup_for(n: usize) -> Duration {
    Duration::from_secs(5 + (n as f64).log2().ceil() as u64 * 2)
}

/// Runs one simulation to the end.
pub fn run(cfg: SimConfig) -> anyhow::Result<Summary> {
    let warmup = cfg.warmup;
    let mut sim = sim::Sim::new(cfg)?;
    sim.run()?;
    Ok(sim.m.summary(sim.total_slots(), sim.host_count(), warmup))
}
