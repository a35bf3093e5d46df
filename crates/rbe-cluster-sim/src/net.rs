//! The virtual network: one-way latency (a floor plus lognormal jitter),
//! random loss of datagrams, asymmetric partitions for a time window.
//! The peer channel (TCP) loses nothing, but a partition breaks it.

use std::time::Duration;

use rand::Rng;

/// How messages travel.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The least one-way latency.
    pub latency_floor: Duration,
    /// Median of the jitter added to it (lognormal, sigma 1).
    pub jitter_median: Duration,
    /// Chance a gossip datagram is lost.
    pub loss: f64,
    /// Directed cuts: (from, to, start, end); `None` as an end means
    /// never healed. A host index of `usize::MAX` means every host.
    pub partitions: Vec<Partition>,
}

/// A one-way cut between hosts for a while.
#[derive(Clone, Debug)]
pub struct Partition {
    /// Sender side (`usize::MAX`: any).
    pub from: usize,
    /// Receiver side (`usize::MAX`: any).
    pub to: usize,
    /// From when.
    pub start: Duration,
    /// Until when.
    pub end: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency_floor: Duration::from_micros(100),
            jitter_median: Duration::from_micros(100),
            loss: 0.0,
            partitions: Vec::new(),
        }
    }
}

/// A standard normal sample (Box–Muller), so the crate needs no
/// distribution library.
pub fn normal<G: Rng + ?Sized>(rng: &mut G) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A lognormal sample with this median and sigma.
pub fn lognormal<G: Rng + ?Sized>(rng: &mut G, median: Duration, sigma: f64) -> Duration {
    median.mul_f64((sigma * normal(rng)).exp().min(1e6))
}

impl NetConfig {
    /// Whether `from` can reach `to` at `now`.
    pub fn connected(&self, from: usize, to: usize, now: Duration) -> bool {
        !self.partitions.iter().any(|p| {
            (p.from == usize::MAX || p.from == from)
                && (p.to == usize::MAX || p.to == to)
                && now >= p.start
                && now < p.end
        })
    }

    /// One message's latency.
    pub fn latency<G: Rng + ?Sized>(&self, rng: &mut G) -> Duration {
        self.latency_floor + lognormal(rng, self.jitter_median, 1.0)
    }

    /// When a datagram sent now arrives, if it does.
    pub fn datagram<G: Rng + ?Sized>(
        &self,
        rng: &mut G,
        from: usize,
        to: usize,
        now: Duration,
    ) -> Option<Duration> {
        if !self.connected(from, to, now) || (self.loss > 0.0 && rng.random::<f64>() < self.loss) {
            return None;
        }
        Some(self.latency(rng))
    }
}
