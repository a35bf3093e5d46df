//! What a run measures, and its one-line summary.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use rbe_cluster::policy::KeepReason;
use rbe_cluster::NodeName;

/// Counters filled during a run.
pub(crate) struct Metrics {
    report_interval: Duration,
    /// (arrival, run time) of every action.
    work: Vec<(Duration, Duration)>,
    completed: HashMap<u64, Duration>,
    executions: HashMap<u64, u32>,
    pub(crate) offers: u64,
    pub(crate) rejects: u64,
    pub(crate) refused: u64,
    landing: HashMap<(usize, u64), u32>,
    staleness: Vec<Duration>,
    gossip_bytes: Vec<u64>,
    gossip_packets: Vec<u64>,
    crashes: Vec<(NodeName, Duration, usize)>,
    detected: HashMap<NodeName, Duration>,
    redispatched: Option<Duration>,
    false_downs: u64,
    kept: BTreeMap<String, u64>,
    pub(crate) end: Duration,
}

impl Metrics {
    pub(crate) fn new(hosts: usize, report_interval: Duration) -> Self {
        Metrics {
            report_interval,
            work: Vec::new(),
            completed: HashMap::new(),
            executions: HashMap::new(),
            offers: 0,
            rejects: 0,
            refused: 0,
            landing: HashMap::new(),
            staleness: Vec::new(),
            gossip_bytes: vec![0; hosts],
            gossip_packets: vec![0; hosts],
            crashes: Vec::new(),
            detected: HashMap::new(),
            redispatched: None,
            false_downs: 0,
            kept: BTreeMap::new(),
            end: Duration::ZERO,
        }
    }

    pub(crate) fn submitted(&mut self, at: Duration, service: Duration) {
        self.work.push((at, service));
    }
    pub(crate) fn executed(&mut self, action: u64) {
        *self.executions.entry(action).or_default() += 1;
    }
    pub(crate) fn completed(&mut self, action: u64, at: Duration) {
        self.completed.entry(action).or_insert(at);
    }
    pub(crate) fn all_done(&self, actions: usize) -> bool {
        self.completed.len() >= actions
    }
    pub(crate) fn offered(&mut self, to: usize, at: Duration) {
        self.offers += 1;
        let period = (at.as_nanos() / self.report_interval.as_nanos().max(1)) as u64;
        *self.landing.entry((to, period)).or_default() += 1;
    }
    pub(crate) fn staleness(&mut self, age: Duration) {
        self.staleness.push(age);
    }
    pub(crate) fn gossip_sent(&mut self, host: usize, bytes: usize) {
        self.gossip_bytes[host] += bytes as u64;
        self.gossip_packets[host] += 1;
    }
    pub(crate) fn crashed(&mut self, node: NodeName, at: Duration, held: usize) {
        self.crashes.push((node, at, held));
    }
    pub(crate) fn member_down(&mut self, node: &NodeName, at: Duration) {
        if self.crashes.iter().any(|(n, _, _)| n == node) {
            self.detected.entry(node.clone()).or_insert(at);
        } else {
            self.false_downs += 1;
        }
    }
    pub(crate) fn redispatched(&mut self, at: Duration) {
        if !self.crashes.is_empty() {
            self.redispatched = Some(at);
        }
    }
    pub(crate) fn crashes_settled(&self) -> bool {
        self.crashes
            .iter()
            .all(|(n, _, _)| self.detected.contains_key(n))
    }
    pub(crate) fn kept(&mut self, why: KeepReason) {
        *self.kept.entry(format!("{why:?}")).or_default() += 1;
    }

    /// The summary of a finished run.
    pub(crate) fn summary(&self, total_slots: u64, hosts: usize, warmup: Duration) -> Summary {
        let start = self.work.iter().map(|w| w.0).min().unwrap_or(warmup);
        let last = self.completed.values().copied().max().unwrap_or(start);
        let makespan = last.saturating_sub(start);
        // A lower bound no schedule beats: from each arrival time, the work
        // arriving then or later spread over every slot; and each action's
        // arrival plus its run time.
        let mut by_time = self.work.clone();
        by_time.sort_unstable();
        let mut ideal = by_time.iter().map(|w| w.1).max().unwrap_or_default();
        let mut rest: Duration = by_time.iter().map(|w| w.1).sum();
        for (at, service) in &by_time {
            // No action ends before its arrival plus its own run time.
            ideal = ideal.max(at.saturating_sub(start) + *service);
            let bound = at.saturating_sub(start)
                + rest / u32::try_from(total_slots.max(1)).unwrap_or(u32::MAX);
            ideal = ideal.max(bound);
            rest = rest.saturating_sub(*service);
        }
        let mut st: Vec<Duration> = self.staleness.clone();
        st.sort_unstable();
        let pct = |p: f64| {
            if st.is_empty() {
                0.0
            } else {
                let i = ((st.len() - 1) as f64 * p).round() as usize;
                st[i.min(st.len() - 1)].as_secs_f64() * 1000.0
            }
        };
        let secs = self.end.as_secs_f64().max(1e-9);
        let live: Vec<usize> = (0..hosts).collect();
        let bytes: u64 = live.iter().map(|&h| self.gossip_bytes[h]).sum();
        let packets: u64 = live.iter().map(|&h| self.gossip_packets[h]).sum();
        let crash_at = self.crashes.first().map(|c| c.1);
        let detect = crash_at.and_then(|c| {
            self.crashes
                .first()
                .and_then(|(n, _, _)| self.detected.get(n))
                .map(|d| d.saturating_sub(c).as_secs_f64())
        });
        Summary {
            hosts,
            slots: total_slots,
            actions: self.work.len(),
            makespan_s: makespan.as_secs_f64(),
            ideal_s: ideal.as_secs_f64(),
            ratio: makespan.as_secs_f64() / ideal.as_secs_f64().max(1e-9),
            offers: self.offers,
            rejects: self.rejects,
            reject_rate: self.rejects as f64 / (self.offers.max(1)) as f64,
            herding_max: self.landing.values().copied().max().unwrap_or(0),
            staleness_p50_ms: pct(0.5),
            staleness_p99_ms: pct(0.99),
            gossip_bytes_per_host_s: bytes as f64 / hosts.max(1) as f64 / secs,
            gossip_packets_per_host_s: packets as f64 / hosts.max(1) as f64 / secs,
            detect_s: detect,
            redispatch_s: crash_at
                .zip(self.redispatched)
                .map(|(c, r)| r.saturating_sub(c).as_secs_f64()),
            duplicates: self
                .executions
                .values()
                .map(|&n| u64::from(n.saturating_sub(1)))
                .sum(),
            lost: self.work.len().saturating_sub(self.completed.len()) as u64 + self.refused,
            false_downs: self.false_downs,
            kept: self.kept.clone(),
            sim_s: secs,
        }
    }
}

/// The figures of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Hosts.
    pub hosts: usize,
    /// Slots over all hosts.
    pub slots: u64,
    /// Actions sent.
    pub actions: usize,
    /// First arrival to last completion.
    pub makespan_s: f64,
    /// The lower bound of the makespan.
    pub ideal_s: f64,
    /// makespan ÷ ideal.
    pub ratio: f64,
    /// Offers sent.
    pub offers: u64,
    /// Offers rejected.
    pub rejects: u64,
    /// rejects ÷ offers.
    pub reject_rate: f64,
    /// Most offers landing on one host within one report interval.
    pub herding_max: u32,
    /// Age of the report behind an offer, median.
    pub staleness_p50_ms: f64,
    /// And 99th percentile.
    pub staleness_p99_ms: f64,
    /// foca bytes sent per host per simulated second.
    pub gossip_bytes_per_host_s: f64,
    /// foca datagrams sent per host per simulated second.
    pub gossip_packets_per_host_s: f64,
    /// Crash to the first MemberDown of the crashed host.
    pub detect_s: Option<f64>,
    /// Crash to its last lease given back to a queue.
    pub redispatch_s: Option<f64>,
    /// Executions beyond one per action.
    pub duplicates: u64,
    /// Actions never completed (or refused).
    pub lost: u64,
    /// MemberDown of hosts that were alive.
    pub false_downs: u64,
    /// Why heads of queues stayed local, by count.
    pub kept: BTreeMap<String, u64>,
    /// Simulated seconds.
    pub sim_s: f64,
}

impl Summary {
    /// One JSON object (no dependency needed for flat figures).
    pub fn to_json(&self, name: &str, extra: &[(&str, String)]) -> String {
        let opt = |v: Option<f64>| v.map_or("null".to_string(), |x| format!("{x:.3}"));
        let mut s = format!("{{\"run\":\"{name}\"");
        for (k, v) in extra {
            let _ = write!(s, ",\"{k}\":{v}");
        }
        let _ = write!(
            s,
            ",\"hosts\":{},\"slots\":{},\"actions\":{},\"makespan_s\":{:.3},\"ideal_s\":{:.3},\"ratio\":{:.4},\
             \"offers\":{},\"rejects\":{},\"reject_rate\":{:.4},\"herding_max\":{},\
             \"staleness_p50_ms\":{:.1},\"staleness_p99_ms\":{:.1},\
             \"gossip_bytes_per_host_s\":{:.0},\"gossip_packets_per_host_s\":{:.1},\
             \"detect_s\":{},\"redispatch_s\":{},\"duplicates\":{},\"lost\":{},\"false_downs\":{},\"sim_s\":{:.1}",
            self.hosts,
            self.slots,
            self.actions,
            self.makespan_s,
            self.ideal_s,
            self.ratio,
            self.offers,
            self.rejects,
            self.reject_rate,
            self.herding_max,
            self.staleness_p50_ms,
            self.staleness_p99_ms,
            self.gossip_bytes_per_host_s,
            self.gossip_packets_per_host_s,
            opt(self.detect_s),
            opt(self.redispatch_s),
            self.duplicates,
            self.lost,
            self.false_downs,
            self.sim_s,
        );
        s.push_str(",\"kept\":{");
        for (i, (k, v)) in self.kept.iter().enumerate() {
            let _ = write!(s, "{}\"{k}\":{v}", if i > 0 { "," } else { "" });
        }
        s.push_str("}}");
        s
    }
}
