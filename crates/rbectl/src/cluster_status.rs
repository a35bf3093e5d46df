//! `rbectl cluster status`: the cluster as the local frontend sees it, read
//! from its ClusterAdmin service on the local socket.

use std::fmt::Write as _;
use std::process::ExitCode;

use rbe_proto::cluster::cluster_admin_client::ClusterAdminClient;
use rbe_proto::cluster::{ClusterStatus, ClusterStatusRequest, LoadReport};

pub use crate::ask::SocketArgs as StatusArgs;

pub fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let socket = crate::ask::socket(a.socket, a.config_dirs, |dirs| {
        rbe_config::load_frontend(dirs).map(|s| s.listen.local)
    })?;
    let status = crate::ask::ask(&socket, "rbe-frontend", |ch| async move {
        ClusterAdminClient::new(ch)
            .status(ClusterStatusRequest {})
            .await
    })?;
    print!("{}", render(&status));
    Ok(ExitCode::SUCCESS)
}

fn load_line(l: &LoadReport) -> String {
    let (mut slots, mut running, mut queued, mut incoming) = (0, 0, 0, 0);
    for p in &l.pools {
        slots += p.slots;
        running += p.running;
        queued += p.queued;
        incoming += p.incoming;
    }
    // Hosts showing the same store move no blobs between each other.
    let store = match l.store_id {
        0 => String::new(),
        id => format!(", store {id:016x}"),
    };
    format!(
        "{} pools, {slots} slots, {running} running, {queued} queued, {incoming} incoming{}{store}",
        l.pools.len(),
        if l.accepting { "" } else { ", not accepting" }
    )
}

/// The report as text: one block for this host, one line per member, then
/// the counters.
pub fn render(s: &ClusterStatus) -> String {
    let mut o = String::new();
    if !s.enabled {
        o.push_str("cluster: off (see [cluster] in rbe.toml(5))\n");
        return o;
    }
    let _ = writeln!(
        o,
        "cluster {:?}, this host {} (generation {})",
        s.cluster, s.node, s.generation
    );
    if let Some(own) = &s.own {
        let _ = writeln!(o, "  own load: {}", load_line(own));
    }
    let _ = writeln!(
        o,
        "{:<20} {:<8} {:<9} {:>9}  load",
        "MEMBER", "STATE", "ELIGIBLE", "REPORT"
    );
    for m in &s.members {
        let age = m
            .report_age_ms
            .map_or_else(|| "-".to_owned(), |a| format!("{a} ms"));
        let load = m.load.as_ref().map(load_line).unwrap_or_default();
        let _ = writeln!(
            o,
            "{:<20} {:<8} {:<9} {:>9}  {}",
            m.node,
            m.state,
            if m.eligible { "yes" } else { "no" },
            age,
            load
        );
        if !m.problem.is_empty() {
            let _ = writeln!(o, "{:<20} ! {}", "", m.problem);
        }
    }
    if !s.counters.is_empty() {
        o.push_str("counters:\n");
        for c in &s.counters {
            let _ = writeln!(o, "  {:<32} {}", c.name, c.value);
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbe_proto::cluster::{Counter, MemberStatus, Pool};

    #[test]
    fn renders_members_and_counters() {
        let load = LoadReport {
            accepting: true,
            pools: vec![Pool {
                slots: 4,
                running: 2,
                queued: 1,
                ..Default::default()
            }],
            store_id: 0x00ab_cdef_0123_4567,
            ..Default::default()
        };
        let s = ClusterStatus {
            enabled: true,
            cluster: "lab".into(),
            node: "a".into(),
            generation: 7,
            own: Some(load.clone()),
            members: vec![MemberStatus {
                node: "b".into(),
                state: "up".into(),
                eligible: false,
                report_age_ms: Some(120),
                load: Some(load),
                problem: "peer certificate names node-x, not b".into(),
                ..Default::default()
            }],
            counters: vec![Counter {
                name: "gossip_auth_failures".into(),
                value: 3,
            }],
        };
        let t = render(&s);
        assert!(t.contains("this host a (generation 7)"), "{t}");
        assert!(t.contains("b                    up       no"), "{t}");
        assert!(t.contains("4 slots, 2 running, 1 queued"), "{t}");
        assert!(t.contains("store 00abcdef01234567"), "{t}");
        assert!(t.contains("! peer certificate names node-x"), "{t}");
        assert!(t.contains("gossip_auth_failures"), "{t}");
        assert!(render(&ClusterStatus::default()).contains("cluster: off"));
    }
}
