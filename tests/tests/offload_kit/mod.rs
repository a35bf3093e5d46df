//! What the offload test files share: actions with an input to hydrate
//! and an output to pull back, Execute, counters, and the processes a
//! host's worker runs (for tests that check an action was killed).
// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use rbe_proto::cluster::{origin_message, Offer, OriginMessage};
use rbe_proto::longrunning::operation;
use rbe_proto::reapi::{
    action_cache_client::ActionCacheClient, command::EnvironmentVariable,
    execution_client::ExecutionClient, execution_stage, Action, ActionResult, Command, Directory,
    ExecuteOperationMetadata, ExecuteRequest, ExecuteResponse, FileNode, GetActionResultRequest,
    RequestMetadata,
};
use rbe_proto::worker::Assignment;
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::client;
use rbe_testkit::cluster::LocalCluster;
use rbe_testkit::exec::start_command_with;
use tonic::transport::Channel;

pub const F: DigestFunction = DigestFunction::Sha256;
pub const LIMIT: Duration = Duration::from_secs(180);

/// `cat in.txt > out; sleep secs` with `in.txt` (unique contents) as its
/// input: distinct per call, with an input to hydrate and an output to
/// pull back.
pub struct Act {
    pub action: Digest,
    pub input: Vec<u8>,
    pub blobs: Vec<(Digest, Vec<u8>)>,
}

pub fn act(secs: u32) -> Act {
    act_sh(&format!("cat in.txt > out; sleep {secs}"))
}

/// An action running `script` under `/bin/sh -c` with the same input.
pub fn act_sh(script: &str) -> Act {
    act_sized(script, 0)
}

/// [`act_sh`] with an input of at least `size` bytes.
pub fn act_sized(script: &str, size: usize) -> Act {
    act_files(script, size, 1)
}

/// `cat in*.txt > out; sleep secs` with `files` input files (`in0.txt`,
/// `in1.txt`, ...).
pub fn act_with(secs: u32, files: usize) -> Act {
    act_files(&format!("cat in*.txt > out; sleep {secs}"), 0, files)
}

/// An action running `script` with `files` inputs of unique contents, the
/// first at least `size` bytes (`in.txt` when there is one).
fn act_files(script: &str, size: usize, files: usize) -> Act {
    let inputs: Vec<Vec<u8>> = (0..files)
        .map(|i| {
            let mut b = format!("input {i} {}\n", uuid::Uuid::new_v4()).into_bytes();
            if i == 0 {
                b.resize(b.len().max(size), b'.');
            }
            b
        })
        .collect();
    let command = Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), script.to_owned()],
        environment_variables: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        output_paths: vec!["out".into()],
        ..Default::default()
    }
    .encode_to_vec();
    let file_blobs: Vec<(Digest, Vec<u8>)> = inputs
        .iter()
        .map(|b| (Digest::of(F, b), b.clone()))
        .collect();
    let root = Directory {
        files: file_blobs
            .iter()
            .enumerate()
            .map(|(i, (d, _))| FileNode {
                name: match files {
                    1 => "in.txt".into(),
                    _ => format!("in{i}.txt"),
                },
                digest: Some(d.to_reapi()),
                ..Default::default()
            })
            .collect(),
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
    let mut blobs = vec![(cd, command), (rd, root), (ad, action)];
    blobs.extend(file_blobs);
    Act {
        action: ad,
        blobs,
        input: inputs.concat(),
    }
}

pub async fn upload(ch: &Channel, a: &Act) {
    let codes = client::batch_update(ch, "", &a.blobs)
        .await
        .expect("BatchUpdateBlobs");
    assert!(codes.iter().all(|&c| c == 0), "{codes:?}");
}

/// Executes `a` on `ch` and returns the final response.
pub async fn execute(ch: Channel, a: Digest) -> ExecuteResponse {
    execute_as(ch, a, None).await
}

/// [`execute`] with `md` as the client's RequestMetadata.
pub async fn execute_as(ch: Channel, a: Digest, md: Option<&RequestMetadata>) -> ExecuteResponse {
    let mut req = tonic::Request::new(ExecuteRequest {
        action_digest: Some(a.to_reapi()),
        digest_function: F.to_reapi(),
        ..Default::default()
    });
    if let Some(md) = md {
        rbe_testkit::exec::with_metadata(&mut req, md);
    }
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
pub fn host_of(r: &ExecuteResponse) -> String {
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

/// Checks that `r` ran (status OK, exit code 0) and returns its output
/// `out`, read through `ch` (the origin's, whichever host ran it).
pub async fn output_of(ch: &Channel, r: &ExecuteResponse) -> Vec<u8> {
    assert_eq!(r.status.as_ref().map_or(0, |s| s.code), 0, "{r:?}");
    let result = r.result.as_ref().expect("result");
    assert_eq!(result.exit_code, 0, "{r:?}");
    let out = result
        .output_files
        .iter()
        .find(|f| f.path == "out")
        .and_then(|f| f.digest.as_ref())
        .expect("out");
    let d = Digest::from_reapi(F, out).expect("digest");
    client::read(ch, "", &d)
        .await
        .expect("output at the origin")
}

pub fn counter(s: &rbe_proto::cluster::ClusterStatus, name: &str) -> u64 {
    s.counters
        .iter()
        .find(|c| c.name == name)
        .map_or(0, |c| c.value)
}

/// Waits until host 0 sees every other host eligible with a load report.
pub async fn formed(c: &LocalCluster) {
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
pub async fn burst(c: &LocalCluster, acts: &[Act]) -> Vec<ExecuteResponse> {
    let ch = c.hosts[0].stack.channel();
    for a in acts {
        upload(&ch, a).await;
    }
    let runs = acts.iter().map(|a| execute(ch.clone(), a.action));
    tokio::time::timeout(LIMIT, futures::future::join_all(runs))
        .await
        .expect("the burst did not finish")
}

/// Uploads every one of `acts` through `ch`, then starts an Execute of
/// each in the background; the handles give their final responses.
pub async fn start_all<'a>(
    ch: &Channel,
    acts: impl IntoIterator<Item = &'a Act>,
) -> Vec<tokio::task::JoinHandle<ExecuteResponse>> {
    let acts: Vec<&Act> = acts.into_iter().collect();
    for a in &acts {
        upload(ch, a).await;
    }
    acts.iter()
        .map(|a| tokio::spawn(execute(ch.clone(), a.action)))
        .collect()
}

/// An action that sleeps `secs` under a name no other process has
/// (`sleep <secs>.<random digits>`): [`running`] finds it.
pub fn marked_sleep(secs: u32) -> (Act, String) {
    let digits = uuid::Uuid::new_v4().as_u128() % 1_000_000_000;
    let marker = format!("{secs}.{digits:09}");
    (act_sh(&format!("cat in.txt > out; sleep {marker}")), marker)
}

/// The pids of processes descending from `ancestor` whose command line
/// holds `marker` (the actions a host's worker runs for it).
pub fn running(ancestor: u32, marker: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
                && descends_from(pid, ancestor)
        })
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..64 {
        match parent_of(pid) {
            Some(p) if p == ancestor || ancestor == 1 => return true,
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

/// Polls `check` every 200 ms until it holds; panics with `what` (and
/// the last status of host `i`) if it does not within `limit`.
pub async fn until<F, Fut>(c: &LocalCluster, i: usize, limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {:?}",
            c.status(i).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Host `i`'s own load holds nothing: no action running, queued or
/// arriving.
pub async fn idle(c: &LocalCluster, i: usize) -> bool {
    let s = c.status(i).await;
    s.own.as_ref().is_some_and(|l| {
        l.pools
            .iter()
            .all(|p| p.running == 0 && p.queued == 0 && p.incoming == 0)
    })
}

/// Records every `sleep` process whose command line holds one of
/// `markers` while it runs, in a thread of its own (a run too short to
/// be sampled every 50 ms is missed): how many times each action ran.
pub struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<std::collections::HashSet<u32>>>>,
}

impl Sampler {
    pub fn start(markers: Vec<String>) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = vec![std::collections::HashSet::new(); markers.len()];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, m) in markers.iter().enumerate() {
                    seen[i].extend(running(1, m).into_iter().filter(|pid| {
                        std::fs::read_to_string(format!("/proc/{pid}/comm"))
                            .is_ok_and(|c| c.trim() == "sleep")
                    }));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    /// How many runs of each marker were seen.
    pub fn finish(mut self) -> Vec<usize> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = self.thread.take().map(|t| t.join().expect("sampler"));
        seen.unwrap_or_default().iter().map(|s| s.len()).collect()
    }
}

/// An Offer of `a` from `origin`, as a peer would send it.
pub fn offer(origin: &str, hop: u32, a: &Act) -> OriginMessage {
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

/// Sends `sig` ("-9", "-STOP", ...) to `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill {sig} {pid}");
}

/// Keeps host `i`'s one slot busy with a `sleep secs` that stays there
/// (`do_not_cache`: never offloaded), returning its stream once it runs.
pub async fn occupy(
    c: &LocalCluster,
    i: usize,
    secs: u32,
    md: Option<&RequestMetadata>,
) -> tonic::Streaming<rbe_proto::longrunning::Operation> {
    let ch = c.hosts[i].stack.channel();
    let mut s = start_command_with(&ch, &["sleep", &secs.to_string()], &[], 120, md)
        .await
        .expect("Execute the blocker");
    loop {
        let op = s.message().await.expect("stream").expect("an update");
        let md = op
            .metadata
            .as_ref()
            .and_then(|a| ExecuteOperationMetadata::decode(a.value.as_slice()).ok())
            .expect("metadata");
        if md.stage == execution_stage::Value::Executing as i32 {
            return s;
        }
        assert!(!op.done, "the blocker ended: {op:?}");
    }
}

/// Executes `y` at host 0 after uploading only its Action, Command and
/// input root (a client that never uploaded the input files): the answer
/// is FAILED_PRECONDITION with one MISSING violation per input file,
/// exactly as for a local action.
pub async fn fails_listing_missing_inputs(c: &LocalCluster, y: Act) {
    let ch = c.hosts[0].stack.channel();
    let codes = client::batch_update(&ch, "", &y.blobs[..3])
        .await
        .expect("BatchUpdateBlobs");
    assert!(codes.iter().all(|&c| c == 0), "{codes:?}");
    let r = tokio::time::timeout(LIMIT, execute(ch, y.action))
        .await
        .expect("the action did not end");
    let st = r.status.clone().unwrap_or_default();
    assert_eq!(
        st.code,
        tonic::Code::FailedPrecondition as i32,
        "{r:?}; a: {:?}",
        c.status(0).await
    );
    let status = tonic::Status::with_details(
        tonic::Code::FailedPrecondition,
        st.message.clone(),
        st.encode_to_vec().into(),
    );
    let pf = rbe_proto::status::precondition_failure(&status).expect("a PreconditionFailure");
    let mut subjects: Vec<String> = pf.violations.iter().map(|v| v.subject.clone()).collect();
    subjects.sort();
    let mut want: Vec<String> = y.blobs[3..]
        .iter()
        .map(|(d, _)| format!("blobs/{}/{}", d.hex(), d.size))
        .collect();
    want.sort();
    assert_eq!(subjects, want, "{pf:?}");
    assert!(
        pf.violations.iter().all(|v| v.r#type == "MISSING"),
        "{pf:?}"
    );
}

/// Host 0 (one slot) starts three 8 s actions, one of which host 1 runs;
/// host 0's frontend is then killed (-9) and host 1 finishes that orphan
/// (`orphan_policy` must let it) rather than cancel it. Returns the
/// orphan's action digest, and the Execute tasks of the dead origin,
/// which the caller holds to its end.
pub async fn finish_an_orphan(
    c: &LocalCluster,
) -> (Digest, Vec<tokio::task::JoinHandle<ExecuteResponse>>) {
    let acts: Vec<(Act, String)> = (0..3).map(|_| marked_sleep(8)).collect();
    let ch = c.hosts[0].stack.channel();
    let runs = start_all(&ch, acts.iter().map(|(a, _)| a)).await;
    let b_worker = c.hosts[1].stack.workerd_pid().expect("b's worker runs");
    let on_b = || {
        acts.iter()
            .position(|(_, m)| !running(b_worker, m).is_empty())
    };
    until(c, 1, LIMIT, "nothing of a's ran on b", || {
        let found = on_b().is_some();
        async move { found }
    })
    .await;
    let i = on_b().expect("an action of a's runs on b");
    signal(c.hosts[0].stack.frontend_pid().expect("a runs"), "-9");
    until(c, 1, LIMIT, "b did not finish the orphan", || async {
        counter(&c.status(1).await, "orphans_finished") >= 1
    })
    .await;
    let s = c.status(1).await;
    assert_eq!(counter(&s, "orphans_cancelled"), 0, "{s:?}");
    (acts[i].0.action, runs)
}

/// The result the action cache behind `ch` holds for `action`, waiting
/// for it: an action-cache write is queued, so it lands shortly after the
/// action ends. None if it has not after 100 tries 200 ms apart.
pub async fn queued_action_result(ch: &Channel, action: Digest) -> Option<ActionResult> {
    let ac = ActionCacheClient::new(ch.clone());
    let req = GetActionResultRequest {
        action_digest: Some(action.to_reapi()),
        digest_function: F.to_reapi(),
        ..Default::default()
    };
    for _ in 0..100 {
        if let Ok(r) = ac.clone().get_action_result(req.clone()).await {
            return Some(r.into_inner());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}
