//! Offload when a host fails on real frontends on loopback
//! (`LocalCluster`), with real signals: an origin killed with -9 leaves
//! orphans that its executor cancels after the grace time; an executor
//! stopped with SIGSTOP loses its lease and its late result is ignored; a
//! stopping executor rejects offers (DRAINING); an input tree above
//! `max_transfer_bytes` does not travel. Tests assert behaviour, never
//! wall time (limits only bound a hang).

use std::time::Duration;

use rbe_testkit::cluster::LocalCluster;

mod offload_kit;
use offload_kit::*;

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill {sig} {pid}");
}

/// a (1 slot) offloads a long action to b; a's frontend is killed (-9).
/// b withdraws the orphan after `orphan_grace_secs` (`auto` without a
/// shared store cancels): the action's process is gone, the orphan
/// counted, and b holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_of_a_killed_origin_is_cancelled_after_the_grace_time() {
    let c = LocalCluster::start(&[("a", 1), ("b", 4)], "[offload]\norphan_grace_secs = 2\n").await;
    formed(&c).await;
    let acts: Vec<(Act, String)> = (0..3).map(|_| marked_sleep(600)).collect();
    let ch = c.hosts[0].stack.channel();
    for (a, _) in &acts {
        upload(&ch, a).await;
    }
    let _runs: Vec<_> = acts
        .iter()
        .map(|(a, _)| tokio::spawn(execute(ch.clone(), a.action)))
        .collect();
    let b_worker = c.hosts[1].stack.workerd_pid().expect("b's worker runs");
    let on_b = || {
        acts.iter()
            .map(|(_, m)| m.clone())
            .find(|m| !running(b_worker, m).is_empty())
    };
    until(&c, 1, LIMIT, "nothing of a's ran on b", || {
        let found = on_b().is_some();
        async move { found }
    })
    .await;
    let marker = on_b().expect("an action of a's runs on b");
    assert_eq!(counter(&c.status(1).await, "orphans_cancelled"), 0);
    signal(c.hosts[0].stack.frontend_pid().expect("a runs"), "-9");
    until(&c, 1, LIMIT, "b did not cancel the orphan", || async {
        counter(&c.status(1).await, "orphans_cancelled") >= 1
    })
    .await;
    until(&c, 1, LIMIT, "the orphan's process lives on", || {
        let gone = running(b_worker, &marker).is_empty();
        async move { gone }
    })
    .await;
    until(&c, 1, LIMIT, "b still holds work", || idle(&c, 1)).await;
    let s = c.status(1).await;
    assert_eq!(counter(&s, "orphans_finished"), 0, "{s:?}");
}
