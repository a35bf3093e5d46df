//! The origin's rebalance: moves the head of a busy local queue to a peer
//! that would start it sooner (`rbe_cluster::policy`, design §3.4).
//!
//! It runs on a 100 ms tick and whenever the queue changed (a submit, a
//! result, an answer to an offer), so queued work is offered again when
//! peers become idle, not only when it arrives. Each pass looks at every
//! local pool with queued work and offers its head while the policy says
//! to: only this host's own operations (hosted ones never travel on), one
//! hop. A rejected offer puts the operation back in its place in the
//! queue; the next pass may try again with the peer's fresh load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbe_cluster::policy::{local_pressure, Decision};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::lease::{self, RemoteLink};
use super::Cluster;
use crate::exec::Exec;

/// The rebalance tick.
const TICK: Duration = Duration::from_millis(100);
/// Offers one pass may send, whatever the policy says (the peers' admission
/// bounds the rest).
const MAX_OFFERS_PER_PASS: usize = 32;

/// Runs the rebalance until `stop`.
pub fn spawn(cluster: Arc<Cluster>, exec: Arc<Exec>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
                _ = exec.queue_changed.notified() => {}
            }
            if cluster.offload.load().enabled && !exec.draining() {
                pass(&cluster, &exec);
            }
        }
    });
}

/// One rebalance pass.
fn pass(cluster: &Arc<Cluster>, exec: &Arc<Exec>) {
    let allow_dnc = cluster.offload.load().do_not_cache;
    let mut rng = rand::rng();
    let mut kept = Vec::new();
    for _ in 0..MAX_OFFERS_PER_PASS {
        let pools = exec.pool_loads();
        let head = pools
            .iter()
            .filter(|p| p.queued > 0 && !kept.contains(&p.platform))
            .find_map(|p| {
                exec.offloadable_head(&p.platform, allow_dnc)
                    .map(|h| (p, h))
            });
        let Some((pool, head)) = head else {
            return;
        };
        if cluster.is_local_only(head.op) {
            // Its input tree is too large to move: the pool's head stays.
            kept.push(pool.platform.clone());
            continue;
        }
        let started = Instant::now();
        let local = local_pressure(&pools, &head.platform);
        let decision = {
            let placement = cluster.placement.lock();
            placement.policy.pick(
                cluster.now(),
                &mut rng,
                &placement.peers,
                local,
                &head.platform,
            )
        };
        let took = started.elapsed();
        cluster.counters.decision_ns.record(took.as_nanos() as u64);
        let offload_decision_us = took.as_micros() as u64;
        let Decision::Offer { to, rounds, .. } = decision else {
            // Not this pool's head; another pool may still move.
            kept.push(pool.platform.clone());
            continue;
        };
        let Some((channel, _)) = cluster.channel(&to) else {
            kept.push(pool.platform.clone());
            continue;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let link = RemoteLink {
            tx,
            name: to.to_string(),
        };
        let Some(leased) = exec.lease(&head, Box::new(link)) else {
            continue;
        };
        cluster.placement.lock().peers.offer_sent(&to);
        tracing::info!(
            peer = %to,
            lease = leased.lease,
            operation = %leased.name,
            invocation_id = %leased.invocation_id,
            offload_decision_us,
            local_rounds = local,
            peer_rounds = rounds,
            "offload: offering the head of the queue"
        );
        tokio::spawn(lease::run(
            Arc::clone(cluster),
            Arc::clone(exec),
            to,
            channel,
            leased,
            rx,
        ));
    }
}
