//! Cluster membership between real frontends on loopback (no systemd, no
//! root): gossip forms the cluster, each host's load reaches the others,
//! and a host without the key never becomes a member. The booted-systemd,
//! lab-network version of these is `cluster.rs`.

use std::time::Duration;

use rbe_testkit::cluster::{LocalCluster, OTHER_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_form_a_cluster_and_see_each_others_load() {
    let c = LocalCluster::start(&[("a", 1), ("b", 4), ("c", 8)], "").await;
    assert!(
        c.wait_formed(Duration::from_secs(60)).await,
        "the cluster did not form; a sees {:?}",
        c.status(0).await
    );
    // b's report reaches a with b's slots, once b's worker attached.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.status(0).await;
        let b = s.members.iter().find(|m| m.node == "b").cloned();
        let slots: u32 = b
            .as_ref()
            .and_then(|m| m.load.as_ref())
            .map(|l| l.pools.iter().map(|p| p.slots).sum())
            .unwrap_or(0);
        if slots == 4 {
            let b = b.unwrap_or_default();
            assert!(b.report_age_ms.is_some_and(|a| a < 5_000), "{b:?}");
            assert!(b.load.as_ref().is_some_and(|l| l.accepting), "{b:?}");
            assert_eq!(s.node, "a");
            let own: u32 = s
                .own
                .as_ref()
                .map(|l| l.pools.iter().map(|p| p.slots).sum())
                .unwrap_or(0);
            assert_eq!(own, 1, "a's own report: {s:?}");
            let failures = s
                .counters
                .iter()
                .find(|k| k.name == "gossip_auth_failures")
                .map(|k| k.value);
            assert_eq!(failures, Some(0), "{s:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b's load never reached a: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_another_key_never_becomes_a_member() {
    let mut c = LocalCluster::start(&[("a", 1), ("b", 1)], "").await;
    assert!(c.wait_formed(Duration::from_secs(60)).await);
    let d = c.add_host("d", 1, OTHER_KEY).await;
    // Long enough for several announce and gossip rounds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for i in 0..2 {
        let s = c.status(i).await;
        assert!(
            s.members.iter().all(|m| m.node != "d"),
            "host {i} lists the keyless host: {s:?}"
        );
        let failures = s
            .counters
            .iter()
            .find(|k| k.name == "gossip_auth_failures")
            .map_or(0, |k| k.value);
        assert!(
            failures > 0,
            "host {i} counted no authentication failure: {s:?}"
        );
    }
    let s = c.status(d).await;
    assert!(s.members.is_empty(), "d sees members: {s:?}");
}
