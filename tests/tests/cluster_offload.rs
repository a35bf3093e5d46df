//! Push offload between real frontends on loopback (`LocalCluster`: casd,
//! frontend and workerd per host, mutual TLS between hosts): a burst sent
//! to the one-slot host runs on its peers too, inputs travel to the
//! executing host and outputs back to the origin, whose action cache then
//! answers; with offload off everything stays local; a peer that claims
//! another origin or a second hop is refused. Tests assert behaviour,
//! never wall time.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message;
use rbe_proto::cluster::host_message;
use rbe_proto::longrunning::operation;
use rbe_proto::reapi::{ExecuteResponse, RequestMetadata, ToolDetails};
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
        // The output is readable at the origin, whichever host ran it.
        let bytes = output_of(&ch, r).await;
        *per_host.entry(host_of(r)).or_default() += 1;
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
    let runs = start_all(&ch, &acts).await;
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

/// The final response on a stream.
async fn response_on(
    mut s: tonic::Streaming<rbe_proto::longrunning::Operation>,
) -> ExecuteResponse {
    while let Some(op) = s.message().await.expect("stream") {
        if let Some(operation::Result::Response(any)) = op.result {
            return ExecuteResponse::decode(any.value.as_slice()).expect("response");
        }
    }
    panic!("the stream ended without a response");
}

fn worker_of(r: &ExecuteResponse) -> String {
    r.result
        .as_ref()
        .and_then(|r| r.execution_metadata.as_ref())
        .map(|m| m.worker.clone())
        .unwrap_or_default()
}

/// The lines of a daemon's log (`frontend`, `workerd`) of host `i` holding
/// `message`.
fn log_lines(c: &LocalCluster, i: usize, daemon: &str, message: &str) -> Vec<String> {
    let path = c.hosts[i].stack.tmp.path().join(format!("{daemon}.log"));
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(message))
        .map(str::to_owned)
        .collect()
}

fn metadata(invocation: &str, mnemonic: &str) -> RequestMetadata {
    RequestMetadata {
        tool_details: Some(ToolDetails {
            tool_name: "bazel".into(),
            tool_version: "7.4.0".into(),
        }),
        action_id: "action-1".into(),
        tool_invocation_id: invocation.into(),
        correlated_invocations_id: format!("corr-{invocation}"),
        action_mnemonic: mnemonic.into(),
        target_id: "//meta:t".into(),
        configuration_id: "cfg-7".into(),
    }
}

/// The journal fields (log fields here) a line about the action of `md`
/// must carry.
fn fields(md: &RequestMetadata) -> Vec<String> {
    vec![
        format!("invocation_id={}", md.tool_invocation_id),
        format!("correlated_invocations_id={}", md.correlated_invocations_id),
        format!("action_mnemonic={}", md.action_mnemonic),
        format!("target_id={}", md.target_id),
        format!("configuration_id={}", md.configuration_id),
        "tool_name=bazel".to_owned(),
    ]
}

fn assert_carries(lines: &[String], md: &RequestMetadata, what: &str) {
    let has = |l: &str, f: &str| l.split_whitespace().any(|w| w == f);
    let id = format!("invocation_id={}", md.tool_invocation_id);
    let line = lines
        .iter()
        .find(|l| has(l, &id))
        .unwrap_or_else(|| panic!("{what}: no line of {}: {lines:#?}", md.tool_invocation_id));
    for f in fields(md) {
        assert!(has(line, &f), "{what}: {f} missing in {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offloaded_action_carries_its_request_metadata_and_names_its_host() {
    let c = LocalCluster::start(&[("a", 1), ("b", 4)], "").await;
    formed(&c).await;
    let local = metadata("inv-local", "Block");
    let blocker = occupy(&c, 0, 6, Some(&local)).await;
    // a's slot is busy: this one waits at a and goes to b.
    let y = act(1);
    let ch = c.hosts[0].stack.channel();
    upload(&ch, &y).await;
    let remote = metadata("inv-meta-1", "Genrule");
    let r = tokio::time::timeout(LIMIT, execute_as(ch, y.action, Some(&remote)))
        .await
        .expect("the offloaded action did not finish");
    assert_eq!(r.status.as_ref().map_or(0, |s| s.code), 0, "{r:?}");
    assert_eq!(worker_of(&r), "b/b-worker", "{r:?}");
    // The local action of a cluster host names its host too.
    let r = tokio::time::timeout(LIMIT, response_on(blocker))
        .await
        .expect("the blocker did not finish");
    assert_eq!(worker_of(&r), "a/a-worker", "{r:?}");

    // b's lines about the action it ran for a carry the client's
    // RequestMetadata, as a's lines about its own action do.
    assert_carries(
        &log_lines(&c, 1, "frontend", "action completed"),
        &remote,
        "b's frontend",
    );
    assert_carries(
        &log_lines(&c, 1, "workerd", "action finished"),
        &remote,
        "b's worker",
    );
    assert_carries(
        &log_lines(&c, 1, "frontend", "offload: offer accepted"),
        &remote,
        "b's offer line",
    );
    assert_carries(
        &log_lines(&c, 0, "frontend", "action completed"),
        &local,
        "a's frontend",
    );
    assert_carries(
        &log_lines(&c, 0, "workerd", "action finished"),
        &local,
        "a's worker",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_the_origin_lacks_fail_precondition_listing_them_and_are_not_retried() {
    let c = LocalCluster::start(&[("a", 1), ("b", 4)], "").await;
    formed(&c).await;
    let blocker = occupy(&c, 0, 30, Some(&metadata("inv-block", "Block"))).await;
    // A client that never uploaded the two input files; exactly as for a
    // local action.
    fails_listing_missing_inputs(&c, act_with(1, 2)).await;
    // It went to b once, and was not dispatched again.
    let s = c.status(0).await;
    assert_eq!(counter(&s, "offers_accepted"), 1, "{s:?}");
    assert_eq!(counter(&s, "leases_lost"), 0, "{s:?}");
    drop(blocker);
}

/// A stopping executor finishes the offloaded actions it runs within its
/// drain (`execution.drain_timeout_secs`, 20 s, against 6 s actions), and
/// the origin takes their results: no lease is lost, and each action ran
/// where it was first placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_executor_finishes_what_it_runs_for_the_origin() {
    let c = LocalCluster::start(&[("a", 1), ("b", 4)], "").await;
    formed(&c).await;
    // a runs one, keeps one queued and offers the rest to b, which has
    // room to run them at once.
    let acts: Vec<Act> = (0..4).map(|_| act(6)).collect();
    let ch = c.hosts[0].stack.channel();
    let runs = start_all(&ch, &acts).await;
    // Once b runs what it took, and holds nothing queued or arriving
    // (that would end UNAVAILABLE at its drain's start, a lost lease).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let load = |s: rbe_proto::cluster::ClusterStatus| {
            s.own.map_or((0, 0), |l| {
                let sum = |f: fn(&rbe_proto::cluster::Pool) -> u32| l.pools.iter().map(f).sum();
                (sum(|p| p.running), sum(|p| p.queued + p.incoming))
            })
        };
        let (running, waiting) = load(c.status(1).await);
        let (_, origin_waiting) = load(c.status(0).await);
        if running > 0 && waiting == 0 && origin_waiting <= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never ran anything of a's: {:?}",
            c.status(0).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `systemctl stop`: SIGTERM, and b drains.
    let pid = c.hosts[1].stack.frontend_pid().expect("b's frontend runs");
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let responses = tokio::time::timeout(LIMIT, futures::future::join_all(runs))
        .await
        .expect("the Executes did not finish");
    let mut on_b = 0;
    for r in responses {
        let r = r.expect("task");
        assert_eq!(r.status.as_ref().map_or(0, |s| s.code), 0, "{r:?}");
        assert_eq!(r.result.as_ref().map(|r| r.exit_code), Some(0), "{r:?}");
        on_b += usize::from(host_of(&r) == "b");
    }
    let s = c.status(0).await;
    assert_eq!(counter(&s, "leases_lost"), 0, "{s:?}");
    assert!(on_b > 0, "b's results were not used: {s:?}");
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
