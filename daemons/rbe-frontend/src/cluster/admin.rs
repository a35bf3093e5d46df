//! `rbectl cluster status`: the ClusterAdmin service on the local socket.

use std::sync::Arc;

use rbe_cluster::driver::MemberState;
use rbe_proto::cluster::cluster_admin_server::ClusterAdmin;
use rbe_proto::cluster::{ClusterStatus, ClusterStatusRequest, Counter, MemberStatus};
use tonic::{Request, Response, Status};

use super::{Cluster, Eligibility};
use crate::exec::Exec;

/// Answers for this host; `None` when `[cluster]` is off.
pub struct Admin {
    pub cluster: Option<Arc<Cluster>>,
    pub exec: Arc<Exec>,
}

#[tonic::async_trait]
impl ClusterAdmin for Admin {
    async fn status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        let Some(c) = &self.cluster else {
            return Ok(Response::new(ClusterStatus::default()));
        };
        Ok(Response::new(c.status(&self.exec)))
    }
}

impl Cluster {
    /// Members, their state and load, and the counters.
    pub fn status(&self, exec: &Exec) -> ClusterStatus {
        let view = self.view();
        let now = tokio::time::Instant::now();
        let peers = self.peers.lock();
        let members = view
            .members
            .iter()
            .map(|m| {
                let link = peers.get(&m.member.node);
                let (eligible, problem) = match link.map(|l| &l.eligibility) {
                    Some(Eligibility::Eligible) => (true, String::new()),
                    Some(Eligibility::Refused(why)) => (false, why.clone()),
                    Some(Eligibility::Unknown) => (false, "not checked yet".to_owned()),
                    None => (false, String::new()),
                };
                MemberStatus {
                    node: m.member.node.to_string(),
                    generation: m.member.generation,
                    state: match m.state {
                        MemberState::Up => "up",
                        MemberState::Suspect => "suspect",
                        MemberState::Down => "down",
                    }
                    .to_owned(),
                    eligible,
                    report_age_ms: m
                        .report
                        .as_ref()
                        .map(|(_, at)| now.saturating_duration_since(*at).as_millis() as u64),
                    load: m.report.as_ref().map(|(r, _)| r.clone()),
                    gossip_addr: m.member.gossip_addr.to_string(),
                    peer_addr: m.member.peer_addr.to_string(),
                    problem,
                }
            })
            .collect();
        drop(peers);
        ClusterStatus {
            enabled: true,
            cluster: self.name.clone(),
            node: self.node.to_string(),
            generation: view.me.generation,
            own: Some(self.own_report(exec)),
            members,
            counters: self
                .counter_list()
                .into_iter()
                .map(|(name, value)| Counter { name, value })
                .collect(),
        }
    }
}
