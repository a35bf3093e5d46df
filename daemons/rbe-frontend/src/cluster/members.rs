//! Keeping up with the membership: this host's load goes out every report
//! interval; each member's newest report goes into the policy's peer table
//! once the member is eligible; new members (and new generations of old
//! ones) get a peer channel and a Describe round trip over it.

use std::sync::Arc;
use std::time::Duration;

use rbe_cluster::driver::{ClusterView, MemberState};
use rbe_cluster::NodeName;
use rbe_proto::cluster::peer_client::PeerClient;
use rbe_proto::cluster::{DescribeRequest, LoadReport};
use tokio_util::sync::CancellationToken;

use super::{Cluster, Counters, Eligibility, PeerLink};
use crate::exec::Exec;

/// How long a Describe may take before the member counts as unreachable.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon a member whose Describe failed is asked again.
const DESCRIBE_RETRY: Duration = Duration::from_secs(10);
/// How long dialling a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Cluster {
    /// This host's load now, with the seq of the last report gossip sent:
    /// peers take it in answers to offers and with finished leases (with
    /// seq 0 they dropped it as older than what gossip had brought, and
    /// kept offering to a host that had just said it was busy).
    pub fn own_report(&self, exec: &Exec) -> LoadReport {
        let mut r = rbe_cluster::policy::load_report(
            &self.node,
            self.generation(),
            self.handle.report_seq(),
            // Offers are taken only with offload on, and not while stopping.
            !exec.draining() && self.offload.load().enabled,
            self.store_id(),
            &exec.pool_loads(),
            self.incoming.load(std::sync::atomic::Ordering::Relaxed),
        );
        r.peer_addr = self.peer_addr.to_string();
        r
    }

    /// Runs until `stop`: publishes the load, follows the membership.
    pub fn spawn(self: &Arc<Self>, exec: Arc<Exec>, stop: CancellationToken) {
        let me = Arc::clone(self);
        let stop2 = stop.clone();
        tokio::spawn(async move {
            loop {
                me.handle.publish_report(me.own_report(&exec));
                // Read each round: a reload may change it.
                let ms = me
                    .report_interval_ms
                    .load(std::sync::atomic::Ordering::Relaxed);
                tokio::select! {
                    _ = stop2.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(ms.max(50))) => {}
                }
            }
        });
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut view = me.handle.view();
            let mut retry = tokio::time::interval(DESCRIBE_RETRY);
            retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let current = view.borrow_and_update().clone();
                me.follow(&current);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = view.changed() => if r.is_err() { break },
                    _ = retry.tick() => {}
                }
            }
        });
    }

    /// Brings the peer links and the peer table in line with `view`.
    fn follow(self: &Arc<Self>, view: &ClusterView) {
        self.remember_generation(view);
        let mut to_check = Vec::new();
        {
            let mut peers = self.peers.lock();
            let mut placement = self.placement.lock();
            for m in &view.members {
                let node = &m.member.node;
                if m.state == MemberState::Down {
                    if peers.remove(node).is_some() {
                        tracing::info!(peer = %node, "cluster: member down; no more offers to it");
                    }
                    placement.peers.remove(node);
                    continue;
                }
                let fresh = peers.get(node).is_none_or(|p| {
                    p.generation != m.member.generation || p.addr != m.member.peer_addr
                });
                if fresh {
                    match rbe_net::peer_channel(
                        m.member.peer_addr,
                        node.as_str(),
                        &self.peer_tls,
                        CONNECT_TIMEOUT,
                    ) {
                        Ok(channel) => {
                            peers.insert(
                                node.clone(),
                                PeerLink {
                                    generation: m.member.generation,
                                    addr: m.member.peer_addr,
                                    channel,
                                    eligibility: Eligibility::Unknown,
                                },
                            );
                        }
                        Err(e) => {
                            tracing::warn!(peer = %node, error = %e, "cluster: no peer channel");
                            continue;
                        }
                    }
                    placement.peers.remove(node);
                }
                let Some(link) = peers.get(node) else {
                    continue;
                };
                match &link.eligibility {
                    Eligibility::Eligible => {
                        if let Some((report, at)) = &m.report {
                            let now = at.saturating_duration_since(self.epoch);
                            placement.peers.on_report(now, report);
                        }
                    }
                    Eligibility::Unknown | Eligibility::Refused(_) => {
                        to_check.push((node.clone(), link.generation, link.channel.clone()));
                    }
                }
            }
            // Members foca no longer lists at all.
            peers.retain(|n, _| view.members.iter().any(|m| &m.member.node == n));
        }
        for (node, generation, channel) in to_check {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.describe(node, generation, channel).await });
        }
    }

    /// One Describe round trip to `node`: eligible if the host answering
    /// (whose certificate the channel checked names `node`) agrees on
    /// cluster and generation.
    async fn describe(&self, node: NodeName, generation: u64, channel: tonic::transport::Channel) {
        let req = DescribeRequest {
            node: self.node.to_string(),
            generation: self.generation(),
            cluster: self.name.clone(),
        };
        let answer =
            tokio::time::timeout(DESCRIBE_TIMEOUT, PeerClient::new(channel).describe(req)).await;
        let verdict = match answer {
            Err(_) => Err(format!(
                "Describe timed out after {} s",
                DESCRIBE_TIMEOUT.as_secs()
            )),
            Ok(Err(s)) => Err(format!("Describe failed: {}: {}", s.code(), s.message())),
            Ok(Ok(r)) => {
                let r = r.into_inner();
                if r.cluster != self.name {
                    Err(format!(
                        "it is in cluster {:?}, not {:?}",
                        r.cluster, self.name
                    ))
                } else if r.node != node.as_str() {
                    Err(format!("it says it is {:?}", r.node))
                } else if r.generation != generation {
                    Err(format!(
                        "it answers as generation {}, gossip says {generation}",
                        r.generation
                    ))
                } else {
                    Ok(())
                }
            }
        };
        let mut peers = self.peers.lock();
        let Some(link) = peers.get_mut(&node).filter(|l| l.generation == generation) else {
            return; // replaced meanwhile
        };
        match verdict {
            Ok(()) => {
                if link.eligibility != Eligibility::Eligible {
                    tracing::info!(peer = %node, generation, addr = %link.addr, "cluster: peer eligible for offers");
                }
                link.eligibility = Eligibility::Eligible;
            }
            Err(why) => {
                Counters::bump(&self.counters.describe_failures);
                if link.eligibility != Eligibility::Refused(why.clone()) {
                    tracing::warn!(peer = %node, generation, addr = %link.addr, error = %why, "cluster: peer not eligible for offers");
                }
                link.eligibility = Eligibility::Refused(why);
            }
        }
    }
}
