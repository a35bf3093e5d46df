//! Offload when a host fails on real frontends on loopback
//! (`LocalCluster`), with real signals: an origin killed with -9 leaves
//! orphans that its executor cancels after the grace time; an executor
//! stopped with SIGSTOP loses its lease and its late result is ignored; a
//! stopping executor rejects offers (DRAINING); an input tree above
//! `max_transfer_bytes` does not travel; with `orphan_policy = "finish"`
//! an orphan runs to its end into the executor's action cache. Tests
//! assert behaviour, never wall time (limits only bound a hang).

use rbe_proto::cluster::{host_message, RejectReason};
use rbe_testkit::cluster::LocalCluster;

mod offload_kit;
use offload_kit::*;

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
    let _runs = start_all(&ch, acts.iter().map(|(a, _)| a)).await;
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

/// a (1 slot) offloads one of two actions to b, and b's frontend is
/// stopped (SIGSTOP) while b runs it: b accepted and never reports. a
/// loses the lease after `lease_secs` of silence and dispatches the
/// action again; both Executes succeed; b, continued (SIGCONT), reports
/// the old lease's result, which a counts and ignores. Each action ran at
/// most twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_executor_loses_its_lease_and_its_late_result_is_ignored() {
    let c = LocalCluster::start(&[("a", 1), ("b", 4)], "[offload]\nlease_secs = 3\n").await;
    formed(&c).await;
    let acts: Vec<(Act, String)> = (0..2).map(|_| marked_sleep(10)).collect();
    let sampler = Sampler::start(acts.iter().map(|(_, m)| m.clone()).collect());
    let ch = c.hosts[0].stack.channel();
    let runs = start_all(&ch, acts.iter().map(|(a, _)| a)).await;
    let b_worker = c.hosts[1].stack.workerd_pid().expect("b's worker runs");
    let on_b = || {
        let found = acts.iter().any(|(_, m)| !running(b_worker, m).is_empty());
        async move { found }
    };
    until(&c, 0, LIMIT, "nothing of a's ran on b", on_b).await;
    let b = c.hosts[1].stack.frontend_pid().expect("b runs");
    signal(b, "-STOP");
    // Only a is asked while b is stopped: b would not answer.
    until(
        &c,
        0,
        LIMIT,
        "a kept the lease of a silent peer",
        || async { counter(&c.status(0).await, "leases_lost") >= 1 },
    )
    .await;
    signal(b, "-CONT");
    let responses = tokio::time::timeout(LIMIT, futures::future::join_all(runs))
        .await
        .expect("the Executes did not finish");
    for r in responses {
        let r = r.expect("task");
        assert_eq!(r.status.as_ref().map_or(0, |s| s.code), 0, "{r:?}");
        assert_eq!(r.result.as_ref().map(|r| r.exit_code), Some(0), "{r:?}");
    }
    until(&c, 0, LIMIT, "the late result never reached a", || async {
        counter(&c.status(0).await, "late_results_ignored") >= 1
    })
    .await;
    until(&c, 1, LIMIT, "b still holds work", || idle(&c, 1)).await;
    let ran = sampler.finish();
    assert!(ran.iter().all(|&n| (1..=2).contains(&n)), "runs: {ran:?}");
}

/// b is stopping (SIGTERM) while an action of its own client runs, so
/// its drain lasts: a sees that b no longer takes offers, and an offer
/// that still reaches b's peer listener is rejected DRAINING with a load
/// that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_executor_rejects_offers_as_draining() {
    let c = LocalCluster::start(
        &[("a", 1), ("b", 4)],
        "[execution]\ndrain_timeout_secs = 300\n",
    )
    .await;
    formed(&c).await;
    let (long, marker) = marked_sleep(600);
    let bch = c.hosts[1].stack.channel();
    upload(&bch, &long).await;
    let _run = tokio::spawn(execute(bch, long.action));
    let b_worker = c.hosts[1].stack.workerd_pid().expect("b's worker runs");
    until(&c, 1, LIMIT, "b's own action does not run", || {
        let found = !running(b_worker, &marker).is_empty();
        async move { found }
    })
    .await;
    let mut p = c.peer_client(1, "a");
    signal(c.hosts[1].stack.frontend_pid().expect("b runs"), "-TERM");
    until(&c, 0, LIMIT, "a still sees b accepting", || async {
        let s = c.status(0).await;
        !s.members.iter().any(|m| {
            m.node == "b" && m.state == "up" && m.load.as_ref().is_some_and(|l| l.accepting)
        })
    })
    .await;
    let a = act(1);
    let mut s = p
        .run(futures::stream::iter(vec![offer("a", 0, &a)]))
        .await
        .expect("b's peer listener serves while it drains")
        .into_inner();
    let m = s.message().await.expect("answer").expect("a message");
    match m.kind {
        Some(host_message::Kind::Rejected(r)) => {
            assert_eq!(r.reason, RejectReason::Draining as i32, "{r:?}");
            assert!(
                r.load.is_some_and(|l| !l.accepting),
                "the load says accepting"
            );
        }
        other => panic!("a draining host did not reject: {other:?}"),
    }
    // The drain goes on: b's own action still runs.
    assert!(!running(b_worker, &marker).is_empty());
}

/// With `max_transfer_bytes = 1KiB` everywhere, actions with 4 KiB
/// inputs stay at the origin (measured there, never offered); an Offer
/// claiming more than b's limit is rejected TOO_LARGE, and one claiming
/// less than its real tree is accepted but given up before any input
/// moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_trees_over_max_transfer_bytes_do_not_move() {
    let c = LocalCluster::start(
        &[("a", 1), ("b", 4)],
        "[offload]\nmax_transfer_bytes = \"1KiB\"\n",
    )
    .await;
    formed(&c).await;
    let acts: Vec<Act> = (0..3)
        .map(|_| act_sized("cat in.txt > out; sleep 1", 4096))
        .collect();
    for r in burst(&c, &acts).await {
        assert_eq!(r.status.as_ref().map_or(0, |s| s.code), 0, "{r:?}");
        assert_eq!(host_of(&r), "a", "{r:?}");
    }
    let s = c.status(0).await;
    assert!(counter(&s, "offers_too_large") >= 1, "{s:?}");
    assert_eq!(counter(&s, "offers_sent"), 0, "{s:?}");

    // As origin a, to b: the claim over b's limit.
    let big = act_sized("cat in.txt > out", 4096);
    upload(&c.hosts[0].stack.channel(), &big).await;
    let with_claim = |bytes: u64| {
        let mut m = offer("a", 0, &big);
        if let Some(rbe_proto::cluster::origin_message::Kind::Offer(o)) = &mut m.kind {
            o.input_bytes = bytes;
        }
        m
    };
    let mut p = c.peer_client(1, "a");
    let mut s = p
        .run(futures::stream::iter(vec![with_claim(1 << 20)]))
        .await
        .expect("run")
        .into_inner();
    match s.message().await.expect("answer").map(|m| m.kind) {
        Some(Some(host_message::Kind::Rejected(r))) => {
            assert_eq!(r.reason, RejectReason::TooLarge as i32, "{r:?}")
        }
        other => panic!("an offer over the limit was not rejected: {other:?}"),
    }
    // A claim under the real size: b measures the tree at a and gives up.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(with_claim(100)).await.expect("send");
    let mut s = p
        .run(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("run")
        .into_inner();
    let finished = loop {
        match s.message().await.expect("message").map(|m| m.kind) {
            Some(Some(host_message::Kind::Finished(f))) => break f,
            Some(_) => {}
            None => panic!("b ended the stream without a result"),
        }
    };
    let f = <rbe_proto::worker::Finished as prost::Message>::decode(finished.as_slice())
        .expect("Finished");
    assert_eq!(
        f.outcome,
        rbe_proto::worker::Outcome::Unavailable as i32,
        "{f:?}"
    );
    assert!(f.message.contains("claimed 100"), "{f:?}");
    let s = c.status(1).await;
    assert_eq!(counter(&s, "hosted_too_large"), 2, "{s:?}");
    drop(tx);
}

/// With `orphan_policy = "finish"`, b runs the orphan of a killed origin
/// to its end and writes its result to its own action cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_orphan_lands_in_the_executors_action_cache() {
    let c = LocalCluster::start(
        &[("a", 1), ("b", 4)],
        "[offload]\norphan_policy = \"finish\"\norphan_grace_secs = 1\n",
    )
    .await;
    formed(&c).await;
    let (orphan, _runs) = finish_an_orphan(&c).await;
    let found = queued_action_result(&c.hosts[1].stack.channel(), orphan).await;
    let r = found.expect("b's action cache has the orphan's result");
    assert_eq!(r.exit_code, 0, "{r:?}");
}
