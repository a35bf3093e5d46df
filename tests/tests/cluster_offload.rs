//! Push offload between real frontends on loopback (`LocalCluster`: casd,
//! frontend and workerd per host, mutual TLS between hosts): a burst sent
//! to the one-slot host runs on its peers too, inputs travel to the
//! executing host and outputs back to the origin, whose action cache then
//! answers; with offload off everything stays local; a peer that claims
//! another origin or a second hop is refused. Tests assert behaviour,
//! never wall time.

use std::collections::HashMap;
use std::time::Duration;

use rbe_proto::cluster::host_message;
use rbe_proto::Digest;
use rbe_testkit::client;
use rbe_testkit::cluster::LocalCluster;

mod offload_kit;
use offload_kit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_at_the_one_slot_host_runs_on_its_peers_with_inputs_and_outputs_moved() {
    let c = LocalCluster::start(&[("a", 1), ("b", 4), ("c", 8)], "").await;
    formed(&c).await;
    let acts: Vec<Act> = (0..16).map(|_| act(2)).collect();
    let responses = burst(&c, &acts).await;
    let mut per_host: HashMap<String, usize> = HashMap::new();
    let ch = c.hosts[0].stack.channel();
    for (a, r) in acts.iter().zip(&responses) {
        assert_eq!(r.status.as_ref().map_or(0, |s| s.code), 0, "{r:?}");
        let result = r.result.as_ref().expect("result");
        assert_eq!(result.exit_code, 0, "{r:?}");
        *per_host.entry(host_of(r)).or_default() += 1;
        // The output is readable at the origin, whichever host ran it.
        let out = result
            .output_files
            .iter()
            .find(|f| f.path == "out")
            .and_then(|f| f.digest.as_ref())
            .expect("out");
        let d = Digest::from_reapi(F, out).expect("digest");
        let bytes = client::read(&ch, "", &d)
            .await
            .expect("output at the origin");
        assert_eq!(bytes, a.input, "the output carries the input");
    }
    let elsewhere: usize = per_host
        .iter()
        .filter(|(h, _)| h.as_str() != "a")
        .map(|(_, n)| *n)
        .sum();
    assert!(elsewhere > 0, "nothing was offloaded: {per_host:?}");
    let s = c.status(0).await;
    assert!(counter(&s, "offers_accepted") >= elsewhere as u64, "{s:?}");
    // The origin wrote the action cache: a rerun is all hits, at a.
    let again = burst(&c, &acts).await;
    assert!(again.iter().all(|r| r.cached_result), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_offload_off_everything_runs_at_the_origin() {
    let c = LocalCluster::start(&[("a", 1), ("b", 4)], "[offload]\nenabled = false\n").await;
    formed(&c).await;
    let acts: Vec<Act> = (0..4).map(|_| act(1)).collect();
    let responses = burst(&c, &acts).await;
    for r in &responses {
        assert_eq!(r.status.as_ref().map_or(0, |s| s.code), 0, "{r:?}");
        assert_eq!(host_of(r), "a", "{r:?}");
    }
    assert_eq!(counter(&c.status(0).await, "offers_sent"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_claiming_another_origin_or_a_second_hop_are_refused() {
    let c = LocalCluster::start(&[("a", 1), ("b", 4)], "").await;
    formed(&c).await;
    let a = act(1);
    // Holding a's certificate, claiming to be c.
    let mut p = c.peer_client(1, "a");
    let e = p
        .run(futures::stream::iter(vec![offer("c", 0, &a)]))
        .await
        .expect_err("another origin");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // A second hop: rejected, with b's load.
    let mut s = p
        .run(futures::stream::iter(vec![offer("a", 1, &a)]))
        .await
        .expect("run")
        .into_inner();
    let m = s.message().await.expect("answer").expect("a message");
    match m.kind {
        Some(host_message::Kind::Rejected(r)) => {
            assert_eq!(r.reason, rbe_proto::cluster::RejectReason::Hop as i32);
            assert!(r.load.is_some());
        }
        other => panic!("a second hop was not rejected: {other:?}"),
    }
    let s = c.status(1).await;
    assert!(counter(&s, "offers_refused") >= 2, "{s:?}");
    assert_eq!(counter(&s, "offers_admitted"), 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_dispatches_again_when_the_executing_frontend_is_killed() {
    let c = LocalCluster::start(&[("a", 1), ("b", 4)], "").await;
    formed(&c).await;
    let acts: Vec<Act> = (0..6).map(|_| act(4)).collect();
    let ch = c.hosts[0].stack.channel();
    for a in &acts {
        upload(&ch, a).await;
    }
    let runs: Vec<_> = acts
        .iter()
        .map(|a| tokio::spawn(execute(ch.clone(), a.action)))
        .collect();
    // Once b runs something of a's, b's frontend dies.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while counter(&c.status(0).await, "offers_accepted") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing was offloaded to b: {:?}",
            c.status(0).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = c.hosts[1].stack.frontend_pid().expect("b's frontend runs");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let responses = tokio::time::timeout(LIMIT, futures::future::join_all(runs))
        .await
        .expect("the Executes did not finish");
    for r in responses {
        let r = r.expect("task");
        assert_eq!(r.status.as_ref().map_or(0, |s| s.code), 0, "{r:?}");
        assert_eq!(r.result.as_ref().map(|r| r.exit_code), Some(0), "{r:?}");
    }
    let s = c.status(0).await;
    assert!(counter(&s, "leases_lost") >= 1, "{s:?}");
}

/// BENCHMARKS.md's fanout across three hosts (slots 1/4/8), offload on or
/// off by `RBE_BENCH_OFFLOAD` (default on): `cargo build -p rbe-bench`,
/// then run this ignored test with `--nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: minutes of sleeping actions"]
async fn bench_fanout_across_three_hosts() {
    let off = std::env::var("RBE_BENCH_OFFLOAD").is_ok_and(|v| v == "off");
    let extra = if off {
        "[offload]\nenabled = false\n"
    } else {
        ""
    };
    let c = LocalCluster::start(&[("a", 1), ("b", 4), ("c", 8)], extra).await;
    formed(&c).await;
    let out = std::process::Command::new(rbe_testkit::bin("rbe-bench"))
        .args([
            "fanout",
            "--endpoint",
            &format!("http://{}", c.hosts[0].stack.addr),
            "--count",
            "104",
            "--argv",
            "/bin/sleep",
            "--argv",
            "2",
            "--ideal-secs",
            "16",
        ])
        .output()
        .expect("rbe-bench");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let s = c.status(0).await;
    for k in &s.counters {
        if k.name.starts_with("offers") || k.name.starts_with("leases") {
            println!("a: {} = {}", k.name, k.value);
        }
    }
    assert!(out.status.success());
}
