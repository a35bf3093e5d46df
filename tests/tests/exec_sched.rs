//! Scheduling end to end: the queue bound, priorities, losing a worker,
//! deduplication around completion, the CACHE_CHECK stage and instance
//! isolation of Operations. Real binaries over real sockets (`Stack`);
//! tests assert behaviour and order, never wall time.
//!
//! Actions that must stay busy run `exec -a <marker> sleep N`, so the test
//! can see them on the host with `pgrep -f` without confusing them with
//! anything else running here.

use std::process::Command as HostCommand;
use std::time::{Duration, Instant};

use prost::Message;
use rbe_proto::longrunning::{
    operation, operations_client::OperationsClient, CancelOperationRequest, GetOperationRequest,
    ListOperationsRequest, Operation,
};
use rbe_proto::reapi::{
    self, action_cache_client::ActionCacheClient, command::EnvironmentVariable,
    execution_client::ExecutionClient, execution_stage, Action, ActionResult, Command, Directory,
    ExecuteOperationMetadata, ExecuteRequest, ExecuteResponse, GetActionResultRequest,
    WaitExecutionRequest,
};
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::{client, Stack};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const F: DigestFunction = DigestFunction::Sha256;
const LIMIT: Duration = Duration::from_secs(120);
use execution_stage::Value as S;

/// One worker slot, so the order of queued actions is observable.
const ONE_SLOT: &str = "[worker]\nslots = 1\n";

// ---------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------

/// `bash -c script` with an empty input root, `stamp` as its output, and
/// `salt` making it a distinct action.
struct Act {
    action: Digest,
    blobs: Vec<(Digest, Vec<u8>)>,
}

fn act(script: &str, salt: &str) -> Act {
    let command = Command {
        arguments: vec!["/bin/bash".into(), "-c".into(), script.into()],
        environment_variables: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        output_paths: vec!["stamp".into()],
        ..Default::default()
    }
    .encode_to_vec();
    let root = Directory::default().encode_to_vec();
    let (cd, rd) = (Digest::of(F, &command), Digest::of(F, &root));
    let action = Action {
        command_digest: Some(cd.to_reapi()),
        input_root_digest: Some(rd.to_reapi()),
        salt: salt.as_bytes().to_vec(),
        ..Default::default()
    }
    .encode_to_vec();
    let ad = Digest::of(F, &action);
    Act {
        action: ad,
        blobs: vec![(cd, command), (rd, root), (ad, action)],
    }
}

/// A unique action that records when it ran in `stamp` and on stdout.
fn stamped(script: &str) -> Act {
    act(
        &format!("{script}; date +%s%N | tee stamp"),
        &uuid::Uuid::new_v4().to_string(),
    )
}

async fn upload(ch: &Channel, a: &Act) {
    let codes = client::batch_update(ch, "", &a.blobs)
        .await
        .expect("BatchUpdateBlobs");
    assert!(codes.iter().all(|&c| c == 0), "{codes:?}");
}

fn request(instance: &str, a: &Act) -> ExecuteRequest {
    ExecuteRequest {
        instance_name: instance.into(),
        action_digest: Some(a.action.to_reapi()),
        digest_function: F.to_reapi(),
        ..Default::default()
    }
}

fn with_priority(mut r: ExecuteRequest, priority: i32) -> ExecuteRequest {
    r.execution_policy = Some(reapi::ExecutionPolicy { priority });
    r
}

fn exec_client(ch: &Channel) -> ExecutionClient<Channel> {
    ExecutionClient::new(ch.clone())
}

fn ops(ch: &Channel) -> OperationsClient<Channel> {
    OperationsClient::new(ch.clone())
}

/// A unique marker for `exec -a`.
fn marker(what: &str) -> String {
    format!("rbe-e2e-sched-{what}-{}", uuid::Uuid::new_v4().simple())
}

fn running(marker: &str) -> bool {
    HostCommand::new("pgrep")
        .arg("-f")
        .arg(marker)
        .output()
        .expect("pgrep")
        .status
        .success()
}

/// A busy action: `sleep secs` under `marker`.
fn busy(marker: &str, secs: u32) -> Act {
    act(
        &format!("exec -a {marker} sleep {secs}"),
        &uuid::Uuid::new_v4().to_string(),
    )
}

async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

// ---------------------------------------------------------------------------
// Operations and streams
// ---------------------------------------------------------------------------

fn stage_of(op: &Operation) -> i32 {
    let md = op.metadata.as_ref().expect("metadata");
    ExecuteOperationMetadata::decode(md.value.as_slice())
        .expect("ExecuteOperationMetadata")
        .stage
}

fn response_of(op: &Operation) -> ExecuteResponse {
    match op.result.as_ref() {
        Some(operation::Result::Response(any)) => {
            ExecuteResponse::decode(any.value.as_slice()).expect("ExecuteResponse")
        }
        other => panic!("operation {} done without a response: {other:?}", op.name),
    }
}

fn code_of(r: &ExecuteResponse) -> Code {
    Code::from_i32(r.status.as_ref().map_or(0, |s| s.code))
}

/// What a stream delivered: the name, every stage, the final response.
#[derive(Debug)]
struct Done {
    name: String,
    stages: Vec<i32>,
    response: ExecuteResponse,
}

impl Done {
    fn ran(&self) -> &ActionResult {
        assert_eq!(
            code_of(&self.response),
            Code::Ok,
            "{:?}",
            self.response.status
        );
        let r = self.response.result.as_ref().expect("a result");
        assert_eq!(r.exit_code, 0, "{r:?}");
        r
    }
}

async fn next(stream: &mut Streaming<Operation>) -> Option<Operation> {
    tokio::time::timeout(LIMIT, stream.message())
        .await
        .expect("an operation in time")
        .expect("stream ok")
}

/// Reads the stream to its done operation.
async fn finish(stream: &mut Streaming<Operation>, mut stages: Vec<i32>) -> Done {
    let mut name = None;
    while let Some(op) = next(stream).await {
        name.get_or_insert_with(|| op.name.clone());
        stages.push(stage_of(&op));
        if op.done {
            return Done {
                name: op.name.clone(),
                stages,
                response: response_of(&op),
            };
        }
    }
    panic!("the stream ended before a done operation ({stages:?}, {name:?})");
}

async fn execute(ch: &Channel, req: ExecuteRequest) -> Done {
    let mut s = exec_client(ch)
        .execute(req)
        .await
        .expect("Execute")
        .into_inner();
    finish(&mut s, vec![]).await
}

/// Starts an Execute; returns the stream and the first operation past the
/// cache check.
async fn start(ch: &Channel, req: ExecuteRequest) -> (Streaming<Operation>, Operation) {
    let mut s = exec_client(ch)
        .execute(req)
        .await
        .expect("Execute")
        .into_inner();
    let mut first = next(&mut s).await.expect("a first operation");
    if stage_of(&first) == S::CacheCheck as i32 {
        first = next(&mut s).await.expect("an operation after CACHE_CHECK");
    }
    assert!(!first.done, "finished at once: {first:?}");
    (s, first)
}

async fn stage_now(ch: &Channel, name: &str) -> i32 {
    let op = ops(ch)
        .get_operation(GetOperationRequest { name: name.into() })
        .await
        .expect("GetOperation")
        .into_inner();
    stage_of(&op)
}

/// Polls GetOperation until the operation reaches `stage`.
async fn wait_stage(ch: &Channel, name: &str, stage: S) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if stage_now(ch, name).await == stage as i32 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {stage:?} (at {})",
            stage_now(ch, name).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cancel(ch: &Channel, name: &str) {
    ops(ch)
        .cancel_operation(CancelOperationRequest { name: name.into() })
        .await
        .expect("CancelOperation");
}

async fn blob(ch: &Channel, d: Option<&reapi::Digest>) -> Vec<u8> {
    let d = Digest::from_reapi(F, d.expect("a digest")).expect("digest");
    client::read(ch, "", &d).await.expect("blob")
}

async fn stdout_of(ch: &Channel, r: &ActionResult) -> String {
    String::from_utf8(blob(ch, r.stdout_digest.as_ref()).await).expect("utf-8")
}

fn stamp_of(r: &ActionResult) -> reapi::Digest {
    r.output_files
        .iter()
        .find(|f| f.path == "stamp")
        .and_then(|f| f.digest.clone())
        .unwrap_or_else(|| panic!("no stamp in {r:?}"))
}

async fn get_action_result(ch: &Channel, a: &Act) -> Result<ActionResult, tonic::Status> {
    ActionCacheClient::new(ch.clone())
        .get_action_result(GetActionResultRequest {
            action_digest: Some(a.action.to_reapi()),
            digest_function: F.to_reapi(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

fn list_request(name: &str) -> ListOperationsRequest {
    ListOperationsRequest {
        name: name.into(),
        ..Default::default()
    }
}

async fn listed(ch: &Channel, parent: &str) -> Vec<String> {
    ops(ch)
        .list_operations(list_request(parent))
        .await
        .expect("ListOperations")
        .into_inner()
        .operations
        .into_iter()
        .map(|o| o.name)
        .collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_resource_exhausted_with_retry_info() {
    let mut s = Stack::start_configured("", "[execution]\nmax_queued = 1\n", ONE_SLOT).await;
    let ch = s.channel();
    let m = marker("full");
    let a = busy(&m, 30);
    upload(&ch, &a).await;
    let (_sa, running_op) = start(&ch, request("", &a)).await;
    wait_stage(&ch, &running_op.name, S::Executing).await;
    let b = busy(&marker("queued"), 30);
    upload(&ch, &b).await;
    let (_sb, queued_op) = start(&ch, request("", &b)).await;
    assert_eq!(stage_of(&queued_op), S::Queued as i32);

    let c = stamped("true");
    upload(&ch, &c).await;
    let st = exec_client(&ch)
        .execute(request("", &c))
        .await
        .expect_err("a full queue refuses");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    let details = rbe_proto::status::decode_details(&st).expect("google.rpc.Status details");
    let ri = details
        .details
        .iter()
        .find(|d| d.type_url == "type.googleapis.com/google.rpc.RetryInfo")
        .unwrap_or_else(|| panic!("no RetryInfo in {details:?}"));
    let ri = rbe_proto::rpc::RetryInfo::decode(ri.value.as_slice()).expect("RetryInfo");
    let delay = ri.retry_delay.expect("retry_delay");
    assert!(delay.seconds > 0 || delay.nanos > 0, "{delay:?}");

    // Once there is room, the same request is accepted and runs.
    cancel(&ch, &queued_op.name).await;
    cancel(&ch, &running_op.name).await;
    execute(&ch, request("", &c)).await.ran();
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_queued_action_runs_first() {
    let mut s = Stack::start_configured("", "", ONE_SLOT).await;
    let ch = s.channel();
    let m = marker("prio");
    let a = busy(&m, 60);
    upload(&ch, &a).await;
    let (_sa, blocker) = start(&ch, request("", &a)).await;
    wait_stage(&ch, &blocker.name, S::Executing).await;

    // REAPI: a lower value means sooner. Queued in the "wrong" order.
    let (low, mid, high) = (stamped("true"), stamped("true"), stamped("true"));
    for x in [&low, &mid, &high] {
        upload(&ch, x).await;
    }
    let (mut sl, l0) = start(&ch, with_priority(request("", &low), 10)).await;
    let (mut sm, m0) = start(&ch, with_priority(request("", &mid), 0)).await;
    let (mut sh, h0) = start(&ch, with_priority(request("", &high), -10)).await;
    for op in [&l0, &m0, &h0] {
        assert_eq!(stage_of(op), S::Queued as i32, "the slot is busy");
    }
    cancel(&ch, &blocker.name).await;
    let (l, md, h) = tokio::join!(
        finish(&mut sl, vec![]),
        finish(&mut sm, vec![]),
        finish(&mut sh, vec![])
    );
    // One slot: each started after the previous one ended.
    let started = |d: &Done| {
        let t = d
            .ran()
            .execution_metadata
            .as_ref()
            .and_then(|m| m.worker_start_timestamp)
            .expect("worker_start_timestamp");
        (t.seconds, t.nanos)
    };
    assert!(
        started(&h) < started(&md) && started(&md) < started(&l),
        "not run in priority order: high {:?}, default {:?}, low {:?}",
        started(&h),
        started(&md),
        started(&l)
    );
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_losing_its_worker_is_requeued_and_completes() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let m = marker("loss");
    let a = act(
        &format!("(exec -a {m} sleep 3); echo survived > stamp; echo survived"),
        &uuid::Uuid::new_v4().to_string(),
    );
    upload(&ch, &a).await;
    let (mut stream, first) = start(&ch, request("", &a)).await;
    assert!(
        eventually(Duration::from_secs(30), || running(&m)).await,
        "the action never started"
    );
    s.kill_workerd();
    // Back in the queue, waiting for a worker; the client's stream stays open.
    wait_stage(&ch, &first.name, S::Queued).await;
    s.start_workerd();
    let done = finish(&mut stream, vec![stage_of(&first)]).await;
    assert_eq!(done.name, first.name);
    assert_eq!(stdout_of(&ch, done.ran()).await, "survived\n");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_losing_its_worker_too_often_is_aborted() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let m = marker("lossy");
    let a = busy(&m, 20);
    upload(&ch, &a).await;
    let (mut stream, first) = start(&ch, request("", &a)).await;
    // The scheduler re-queues an action 3 times; the 4th loss ends it.
    for round in 0..4 {
        wait_stage(&ch, &first.name, S::Executing).await;
        s.kill_workerd();
        if round < 3 {
            wait_stage(&ch, &first.name, S::Queued).await;
            s.start_workerd();
        }
    }
    let done = finish(&mut stream, vec![]).await;
    assert_eq!(
        code_of(&done.response),
        Code::Aborted,
        "{:?}",
        done.response
    );
    let msg = done
        .response
        .status
        .as_ref()
        .map_or("", |s| s.message.as_str());
    assert!(
        msg.contains("lost its worker 4 times"),
        "unclear message {msg:?}"
    );
    s.start_workerd();
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_executes_around_completion_run_the_action_once() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let a = stamped("sleep 1");
    upload(&ch, &a).await;
    let first = tokio::spawn({
        let ch = ch.clone();
        let req = request("", &a);
        async move { execute(&ch, req).await }
    });
    // Identical requests keep arriving before, during and after the
    // completion and the action-cache write that follows it: each must
    // join the run, or get its result; none may run the action again.
    // (Whether one lands inside the few milliseconds of the write is luck;
    // the next test makes that window as wide as needed.)
    let stop = Instant::now() + Duration::from_secs(30);
    let mut clients = Vec::new();
    for _ in 0..6 {
        let ch = ch.clone();
        let req = request("", &a);
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut done_since: Option<Instant> = None;
            while Instant::now() < stop {
                let d = execute(&ch, req.clone()).await;
                let r = d.ran();
                seen.push((stamp_of(r), d.response.cached_result));
                if d.response.cached_result {
                    let t = *done_since.get_or_insert_with(Instant::now);
                    if t.elapsed() > Duration::from_millis(500) {
                        break;
                    }
                }
            }
            seen
        }));
    }
    let first = first.await.expect("first client");
    let want = stamp_of(first.ran());
    // As soon as a client has the result, the action cache has it too.
    let ac = get_action_result(&ch, &a)
        .await
        .expect("in the action cache");
    assert_eq!(stamp_of(&ac), want);
    let mut hits = 0;
    for c in clients {
        for (stamp, cached) in c.await.expect("client") {
            assert_eq!(stamp, want, "the action ran more than once");
            hits += usize::from(cached);
        }
    }
    assert!(hits > 0, "no request came after the completion");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn just_completed_result_is_served_without_the_action_cache() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let a = stamped("true");
    upload(&ch, &a).await;
    let first = execute(&ch, request("", &a)).await;
    let want = stamp_of(first.ran());
    // Freeze casd (this stack's own, by pid): an action-cache write or
    // lookup could not complete now. An identical Execute right after the
    // completion is answered from the result kept while its write lands,
    // never by running the action again or by missing it.
    let casd = nix::unistd::Pid::from_raw(s.casd.pid() as i32);
    nix::sys::signal::kill(casd, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP casd");
    let again = tokio::time::timeout(Duration::from_secs(5), execute(&ch, request("", &a))).await;
    nix::sys::signal::kill(casd, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT casd");
    let again = again.expect("answered while casd was stopped");
    assert!(again.response.cached_result, "{:?}", again.response);
    assert_eq!(stamp_of(again.ran()), want, "the action ran again");
    assert_eq!(again.stages, vec![S::Completed as i32]);
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_check_stage_comes_before_queued() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let a = stamped("true");
    upload(&ch, &a).await;
    let d = execute(&ch, request("", &a)).await;
    d.ran();
    assert_eq!(
        d.stages.first(),
        Some(&(S::CacheCheck as i32)),
        "{:?}",
        d.stages
    );
    assert!(d.stages.windows(2).all(|w| w[0] <= w[1]), "{:?}", d.stages);
    assert_eq!(d.stages.last(), Some(&(S::Completed as i32)));
    // Without a cache lookup there is no cache check to report.
    let mut req = request("", &a);
    req.skip_cache_lookup = true;
    let d = execute(&ch, req).await;
    d.ran();
    assert!(
        !d.stages.contains(&(S::CacheCheck as i32)),
        "{:?}",
        d.stages
    );
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_are_seen_only_through_their_instance() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let m = marker("inst");
    let a = busy(&m, 30);
    upload(&ch, &a).await;
    let (mut stream, first) = start(&ch, request("team-a", &a)).await;
    let name = first.name.clone();
    wait_stage(&ch, &name, S::Executing).await;
    assert!(eventually(Duration::from_secs(30), || running(&m)).await);
    let uuid = name
        .strip_prefix("team-a/operations/")
        .unwrap_or_else(|| panic!("the name does not carry its instance: {name}"))
        .to_string();

    // Listed under its own instance only.
    assert!(listed(&ch, "team-a/operations").await.contains(&name));
    assert!(listed(&ch, "team-a").await.contains(&name));
    assert!(!listed(&ch, "team-b/operations").await.contains(&name));
    assert!(!listed(&ch, "").await.contains(&name));
    let st = ops(&ch)
        .list_operations(list_request("../x/operations"))
        .await
        .expect_err("a bad instance name");
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");

    // Other instances' names do not reach it.
    for other in [
        format!("team-b/operations/{uuid}"),
        format!("operations/{uuid}"),
    ] {
        let st = ops(&ch)
            .get_operation(GetOperationRequest {
                name: other.clone(),
            })
            .await
            .expect_err("another instance");
        assert_eq!(st.code(), Code::NotFound, "{other}: {st:?}");
        let st = ops(&ch)
            .cancel_operation(CancelOperationRequest {
                name: other.clone(),
            })
            .await
            .expect_err("another instance");
        assert_eq!(st.code(), Code::NotFound, "{other}: {st:?}");
        let st = exec_client(&ch)
            .wait_execution(WaitExecutionRequest {
                name: other.clone(),
            })
            .await
            .expect_err("another instance");
        assert_eq!(st.code(), Code::NotFound, "{other}: {st:?}");
    }
    assert!(running(&m), "a refused cancel stopped the action");

    // Its own name works for everything (what Bazel does after a break).
    let mut waiting = exec_client(&ch)
        .wait_execution(WaitExecutionRequest { name: name.clone() })
        .await
        .expect("WaitExecution")
        .into_inner();
    cancel(&ch, &name).await;
    let w = finish(&mut waiting, vec![]).await;
    assert_eq!(w.name, name);
    assert_eq!(code_of(&w.response), Code::Cancelled);
    let e = finish(&mut stream, vec![]).await;
    assert_eq!(code_of(&e.response), Code::Cancelled);
    assert!(s.alive());
}
