//! What the simulated clients send: bursts of actions to origin hosts.

use std::time::Duration;

use rand::Rng;

use crate::net::lognormal;

/// How long actions run.
#[derive(Clone, Copy, Debug)]
pub enum Service {
    /// All the same.
    Fixed(Duration),
    /// Lognormal around a median.
    LogNormal {
        /// The median.
        median: Duration,
        /// The spread (sigma of the log).
        sigma: f64,
    },
}

impl Service {
    /// One action's run time.
    pub fn sample<G: Rng + ?Sized>(&self, rng: &mut G) -> Duration {
        match *self {
            Service::Fixed(d) => d,
            Service::LogNormal { median, sigma } => lognormal(rng, median, sigma),
        }
    }
}

/// One burst: `count` actions sent to `origin` at `at` (after warm-up).
#[derive(Clone, Debug)]
pub struct Burst {
    /// The host the client talks to.
    pub origin: usize,
    /// When, after the warm-up.
    pub at: Duration,
    /// How many actions.
    pub count: u32,
    /// How long they run.
    pub service: Service,
}

/// W1: one origin receives one burst.
pub fn one_origin(origin: usize, count: u32, service: Service) -> Vec<Burst> {
    vec![Burst {
        origin,
        at: Duration::ZERO,
        count,
        service,
    }]
}

/// W2: `origins` distinct origins (spread over the hosts), each getting
/// `bursts` bursts of `count` actions, `every` apart, offset per origin.
pub fn several_origins(
    hosts: usize,
    origins: usize,
    bursts: u32,
    count: u32,
    every: Duration,
    service: Service,
) -> Vec<Burst> {
    let mut v = Vec::new();
    let step = (hosts / origins.max(1)).max(1);
    for o in 0..origins.min(hosts) {
        for b in 0..bursts {
            v.push(Burst {
                origin: o * step,
                at: every * b + every.mul_f64(o as f64 / origins.max(1) as f64),
                count,
                service,
            });
        }
    }
    v
}
