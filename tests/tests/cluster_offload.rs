//! Push offload between real frontends on loopback (`LocalCluster`: casd,
//! frontend and workerd per host, mutual TLS between hosts): a burst sent
//! to the one-slot host runs on its peers too, inputs travel to the
//! executing host and outputs back to the origin, whose action cache then
//! answers; with offload off everything stays local; a peer that claims
//! another origin or a second hop is refused. Tests assert behaviour,
//! never wall time.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use rbe_proto::cluster::{host_message, origin_message, Offer, OriginMessage};
use rbe_proto::longrunning::operation;
use rbe_proto::reapi::{
    command::EnvironmentVariable, execution_client::ExecutionClient, Action, Command, Directory,
    ExecuteRequest, ExecuteResponse, FileNode,
};
use rbe_proto::worker::Assignment;
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::client;
use rbe_testkit::cluster::LocalCluster;
use tonic::transport::Channel;

const F: DigestFunction = DigestFunction::Sha256;
const LIMIT: Duration = Duration::from_secs(180);

/// `cat in.txt > out; sleep secs` with `in.txt` (unique contents) as its
/// input: distinct per call, with an input to hydrate and an output to
/// pull back.
struct Act {
    action: Digest,
    input: Vec<u8>,
    blobs: Vec<(Digest, Vec<u8>)>,
}

fn act(secs: u32) -> Act {
    let input = format!("input {}\n", uuid::Uuid::new_v4()).into_bytes();
    let command = Command {
        arguments: vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("cat in.txt > out; sleep {secs}"),
        ],
        environment_variables: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        output_paths: vec!["out".into()],
        ..Default::default()
    }
    .encode_to_vec();
    let fd = Digest::of(F, &input);
    let root = Directory {
        files: vec![FileNode {
            name: "in.txt".into(),
            digest: Some(fd.to_reapi()),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let (cd, rd) = (Digest::of(F, &command), Digest::of(F, &root));
    let action = Action {
        command_digest: Some(cd.to_reapi()),
        input_root_digest: Some(rd.to_reapi()),
        ..Default::default()
    }
    .encode_to_vec();
    let ad = Digest::of(F, &action);
    Act {
        action: ad,
        blobs: vec![(cd, command), (rd, root), (ad, action), (fd, input.clone())],
        input,
    }
}

async fn upload(ch: &Channel, a: &Act) {
    let codes = client::batch_update(ch, "", &a.blobs)
        .await
        .expect("BatchUpdateBlobs");
    assert!(codes.iter().all(|&c| c == 0), "{codes:?}");
}

/// Executes `a` on `ch` and returns the final response.
async fn execute(ch: Channel, a: Digest) -> ExecuteResponse {
    let req = ExecuteRequest {
        action_digest: Some(a.to_reapi()),
        digest_function: F.to_reapi(),
        ..Default::default()
    };
    let mut s = ExecutionClient::new(ch)
        .execute(req)
        .await
        .expect("Execute")
        .into_inner();
    while let Some(op) = s.next().await {
        let op = op.expect("operation");
        if let Some(operation::Result::Response(any)) = op.result {
            return ExecuteResponse::decode(any.value.as_slice()).expect("response");
        }
    }
    panic!("the Execute stream ended without a response");
}

/// The host an action ran on: "b/b-worker" (offloaded) or "a-worker".
fn host_of(r: &ExecuteResponse) -> String {
    let w = r
        .result
        .as_ref()
        .and_then(|r| r.execution_metadata.as_ref())
        .map(|m| m.worker.clone())
        .unwrap_or_default();
    match w.split_once('/') {
        Some((node, _)) => node.to_owned(),
        None => w.trim_end_matches("-worker").to_owned(),
    }
}

fn counter(s: &rbe_proto::cluster::ClusterStatus, name: &str) -> u64 {
    s.counters
        .iter()
        .find(|c| c.name == name)
        .map_or(0, |c| c.value)
}

/// Waits until host 0 sees every other host eligible with a load report.
async fn formed(c: &LocalCluster) {
    assert!(
        c.wait_formed(Duration::from_secs(60)).await,
        "the cluster did not form: {:?}",
        c.status(0).await
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = c.status(0).await;
        let loaded = s
            .members
            .iter()
            .filter(|m| m.eligible && m.load.as_ref().is_some_and(|l| !l.pools.is_empty()))
            .count();
        if loaded + 1 == c.hosts.len() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no loads: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `n` distinct actions at once on host 0; returns the responses.
async fn burst(c: &LocalCluster, acts: &[Act]) -> Vec<ExecuteResponse> {
    let ch = c.hosts[0].stack.channel();
    for a in acts {
        upload(&ch, a).await;
    }
    let runs = acts.iter().map(|a| execute(ch.clone(), a.action));
    tokio::time::timeout(LIMIT, futures::future::join_all(runs))
        .await
        .expect("the burst did not finish")
}

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

fn offer(origin: &str, hop: u32, a: &Act) -> OriginMessage {
    let assignment = Assignment {
        id: 7,
        operation: "operations/test".into(),
        digest_function: F.to_reapi(),
        action_hash: a.action.hex(),
        action_size: a.action.size as i64,
        action: a.blobs[2].1.clone(),
        command: a.blobs[0].1.clone(),
        timeout_seconds: 60,
        ..Default::default()
    };
    OriginMessage {
        kind: Some(origin_message::Kind::Offer(Offer {
            assignment: assignment.encode_to_vec(),
            origin_node: origin.into(),
            lease_epoch: 7,
            hop,
            ..Default::default()
        })),
    }
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
    for a in &acts {
        upload(&ch, a).await;
    }
    let runs: Vec<_> = acts
        .iter()
        .map(|a| tokio::spawn(execute(ch.clone(), a.action)))
        .collect();
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
