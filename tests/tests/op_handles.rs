//! Merged operations stay per client: two clients sending the identical
//! Execute share one run of the action, but each gets its own operation
//! name, and one client's CancelOperation withdraws only that client.
//! Real binaries over real sockets (`Stack`), each client on its own
//! connection; nothing mocked.
//!
//! Actions that must stay busy run `exec -a <marker> sleep N`, so the test
//! sees them on the host with `pgrep -f` without confusing them with
//! anything else running here.

use std::process::Command as HostCommand;
use std::time::{Duration, Instant};

use prost::Message;
use rbe_proto::longrunning::{
    operation, operations_client::OperationsClient, CancelOperationRequest, DeleteOperationRequest,
    GetOperationRequest, Operation,
};
use rbe_proto::reapi::{
    command::EnvironmentVariable, execution_client::ExecutionClient, execution_stage, Action,
    Command, Directory, ExecuteOperationMetadata, ExecuteRequest, ExecuteResponse,
    WaitExecutionRequest,
};
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::{client, Stack};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const F: DigestFunction = DigestFunction::Sha256;
/// Generous bound to detect a hang, not a measure of speed.
const LIMIT: Duration = Duration::from_secs(120);
/// One worker slot, so a follow-up action runs only once the slot is free.
const ONE_SLOT: &str = "[worker]\nslots = 1\n";

/// A marker for `exec -a`, unique to this run.
fn marker(what: &str) -> String {
    format!("rbe-e2e-{what}-{}", uuid::Uuid::new_v4().simple())
}

/// Whether any host process has `marker` in its command line.
fn running(marker: &str) -> bool {
    HostCommand::new("pgrep")
        .arg("-f")
        .arg(marker)
        .output()
        .expect("running pgrep")
        .status
        .success()
}

/// Polls `cond` every 50 ms up to `limit`.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Uploads a cacheable action running `bash -c script` on an empty input
/// root; its digest.
async fn action(ch: &Channel, script: &str) -> Digest {
    let command = Command {
        arguments: vec!["/bin/bash".into(), "-c".into(), script.into()],
        environment_variables: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let root = Directory::default().encode_to_vec();
    let (cd, rd) = (Digest::of(F, &command), Digest::of(F, &root));
    let action = Action {
        command_digest: Some(cd.to_reapi()),
        input_root_digest: Some(rd.to_reapi()),
        ..Default::default()
    }
    .encode_to_vec();
    let ad = Digest::of(F, &action);
    let codes = client::batch_update(ch, "", &[(cd, command), (rd, root), (ad, action)])
        .await
        .expect("BatchUpdateBlobs");
    assert!(codes.iter().all(|&c| c == 0), "{codes:?}");
    ad
}

fn exec_client(ch: &Channel) -> ExecutionClient<Channel> {
    ExecutionClient::new(ch.clone()).max_decoding_message_size(64 << 20)
}

fn ops_client(ch: &Channel) -> OperationsClient<Channel> {
    OperationsClient::new(ch.clone()).max_decoding_message_size(64 << 20)
}

fn stage_of(op: &Operation) -> i32 {
    let md = op.metadata.as_ref().expect("metadata");
    ExecuteOperationMetadata::decode(md.value.as_slice())
        .expect("ExecuteOperationMetadata")
        .stage
}

fn response_of(op: &Operation) -> ExecuteResponse {
    assert!(op.done, "operation {} is not done", op.name);
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

async fn next_op(stream: &mut Streaming<Operation>) -> Operation {
    tokio::time::timeout(LIMIT, stream.message())
        .await
        .expect("an operation in time")
        .expect("stream ok")
        .expect("an operation")
}

/// Starts an Execute of `ad`; the stream and its first operation past the
/// cache check.
async fn start(ch: &Channel, ad: &Digest) -> (Streaming<Operation>, Operation) {
    let mut stream = exec_client(ch)
        .execute(ExecuteRequest {
            action_digest: Some(ad.to_reapi()),
            digest_function: F.to_reapi(),
            ..Default::default()
        })
        .await
        .expect("Execute")
        .into_inner();
    let mut first = next_op(&mut stream).await;
    if stage_of(&first) == execution_stage::Value::CacheCheck as i32 {
        first = next_op(&mut stream).await;
    }
    (stream, first)
}

/// Reads a stream to its done operation, which must carry `name`; the
/// stream must end there.
async fn finish(stream: &mut Streaming<Operation>, name: &str) -> ExecuteResponse {
    loop {
        let op = next_op(stream).await;
        assert_eq!(op.name, name, "operation name changed mid-stream");
        if op.done {
            let r = response_of(&op);
            let after = tokio::time::timeout(LIMIT, stream.message())
                .await
                .expect("stream ends in time")
                .expect("stream ok");
            assert!(after.is_none(), "the stream went on after done");
            return r;
        }
    }
}

async fn get(ch: &Channel, name: &str) -> Operation {
    ops_client(ch)
        .get_operation(GetOperationRequest { name: name.into() })
        .await
        .expect("GetOperation")
        .into_inner()
}

async fn cancel(ch: &Channel, name: &str) {
    ops_client(ch)
        .cancel_operation(CancelOperationRequest { name: name.into() })
        .await
        .expect("CancelOperation");
}

/// Two clients, one action: two operation names, one run. A cancels: its
/// stream and GetOperation say CANCELLED, while B's stream gets the
/// completed result of the run A left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_cancel_leaves_the_other_waiting() {
    let mut s = Stack::start().await;
    let (ca, cb) = (s.channel(), s.channel());
    let m = marker("handles-a");
    let ad = action(&ca, &format!("exec -a {m} sleep 4")).await;
    let (mut sa, fa) = start(&ca, &ad).await;
    assert!(
        eventually(Duration::from_secs(30), || running(&m)).await,
        "the action never started"
    );
    let (mut sb, fb) = start(&cb, &ad).await;
    assert!(!fa.done && !fb.done);
    assert_ne!(fa.name, fb.name, "each client gets its own operation");
    assert!(fb.name.starts_with("operations/"), "{}", fb.name);

    cancel(&ca, &fa.name).await;
    let ra = finish(&mut sa, &fa.name).await;
    assert_eq!(code_of(&ra), Code::Cancelled, "{ra:?}");
    assert!(running(&m), "A's cancel killed the action B waits for");
    let got = get(&ca, &fa.name).await;
    assert_eq!(got.name, fa.name);
    assert_eq!(code_of(&response_of(&got)), Code::Cancelled);

    let rb = finish(&mut sb, &fb.name).await;
    assert_eq!(code_of(&rb), Code::Ok, "{rb:?}");
    assert_eq!(rb.result.as_ref().map(|r| r.exit_code), Some(0), "{rb:?}");
    let got = get(&cb, &fb.name).await;
    assert_eq!(got.name, fb.name);
    assert_eq!(response_of(&got), rb);
    // A stays cancelled after the run it left completed.
    assert_eq!(
        code_of(&response_of(&get(&ca, &fa.name).await)),
        Code::Cancelled
    );
    assert!(s.alive());
}

/// Both clients cancel: nobody waits any more, so the action is killed
/// and the only slot frees for the next action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_action_dies_when_every_client_cancelled() {
    let mut s = Stack::start_configured("", "", ONE_SLOT).await;
    let (ca, cb) = (s.channel(), s.channel());
    let m = marker("handles-both");
    let ad = action(&ca, &format!("exec -a {m} sleep 60")).await;
    let (mut sa, fa) = start(&ca, &ad).await;
    assert!(
        eventually(Duration::from_secs(30), || running(&m)).await,
        "the action never started"
    );
    let (mut sb, fb) = start(&cb, &ad).await;
    cancel(&ca, &fa.name).await;
    assert_eq!(code_of(&finish(&mut sa, &fa.name).await), Code::Cancelled);
    assert!(running(&m), "one cancel of two killed the action");
    cancel(&cb, &fb.name).await;
    assert_eq!(code_of(&finish(&mut sb, &fb.name).await), Code::Cancelled);
    assert!(
        eventually(Duration::from_secs(20), || !running(&m)).await,
        "the action runs on with nobody waiting"
    );
    // The one slot is free: another action runs and completes.
    let next = action(&ca, "echo next").await;
    let (mut sn, fnext) = start(&ca, &next).await;
    let r = if fnext.done {
        response_of(&fnext)
    } else {
        finish(&mut sn, &fnext.name).await
    };
    assert_eq!(r.result.as_ref().map(|r| r.exit_code), Some(0), "{r:?}");
    for name in [&fa.name, &fb.name] {
        assert_eq!(
            code_of(&response_of(&get(&ca, name).await)),
            Code::Cancelled
        );
    }
    assert!(s.alive());
}

/// A's Execute stream drops while B still waits: the action runs on, and
/// WaitExecution on A's name re-attaches A and gets the result, under A's
/// name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_execution_reattaches_a_handle_whose_stream_dropped() {
    let mut s = Stack::start().await;
    let (ca, cb) = (s.channel(), s.channel());
    let m = marker("handles-wait");
    let ad = action(&ca, &format!("exec -a {m} sleep 4")).await;
    let (sa, fa) = start(&ca, &ad).await;
    assert!(
        eventually(Duration::from_secs(30), || running(&m)).await,
        "the action never started"
    );
    let (mut sb, fb) = start(&cb, &ad).await;
    drop(sa);
    // A's handle does not look done: nothing cancelled it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(running(&m), "A leaving killed the action B waits for");
    assert!(!get(&ca, &fa.name).await.done);
    let mut wa = exec_client(&ca)
        .wait_execution(WaitExecutionRequest {
            name: fa.name.clone(),
        })
        .await
        .expect("WaitExecution")
        .into_inner();
    let ra = finish(&mut wa, &fa.name).await;
    let rb = finish(&mut sb, &fb.name).await;
    assert_eq!(code_of(&ra), Code::Ok, "{ra:?}");
    assert_eq!(ra.result.as_ref().map(|r| r.exit_code), Some(0));
    assert_eq!(ra, rb, "one run, one result");
    assert!(s.alive());
}

/// Answered from the cache: each Execute still gets its own handle, which
/// GetOperation, WaitExecution and DeleteOperation find by its name;
/// deleting one leaves the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_get_a_handle_each() {
    let mut s = Stack::start().await;
    let (ca, cb) = (s.channel(), s.channel());
    let ad = action(&ca, "echo cached").await;
    let (mut s0, f0) = start(&ca, &ad).await;
    let first = if f0.done {
        response_of(&f0)
    } else {
        finish(&mut s0, &f0.name).await
    };
    assert_eq!(code_of(&first), Code::Ok);
    let (_, ha) = start(&ca, &ad).await;
    let (_, hb) = start(&cb, &ad).await;
    assert!(ha.done && hb.done);
    assert_ne!(ha.name, hb.name);
    assert_ne!(ha.name, f0.name);
    for h in [&ha, &hb] {
        assert!(response_of(h).cached_result, "{h:?}");
        let got = get(&ca, &h.name).await;
        assert_eq!(got.name, h.name);
        assert_eq!(response_of(&got), response_of(h));
        let mut w = exec_client(&ca)
            .wait_execution(WaitExecutionRequest {
                name: h.name.clone(),
            })
            .await
            .expect("WaitExecution on a cache hit")
            .into_inner();
        assert_eq!(finish(&mut w, &h.name).await, response_of(h));
    }
    // Cancelling a done handle is harmless and changes nothing.
    cancel(&ca, &ha.name).await;
    assert_eq!(code_of(&response_of(&get(&ca, &ha.name).await)), Code::Ok);
    ops_client(&ca)
        .delete_operation(DeleteOperationRequest {
            name: ha.name.clone(),
        })
        .await
        .expect("DeleteOperation");
    let gone = ops_client(&ca)
        .get_operation(GetOperationRequest {
            name: ha.name.clone(),
        })
        .await
        .expect_err("a deleted handle is gone");
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    assert!(get(&cb, &hb.name).await.done, "the other handle stays");
    assert!(s.alive());
}

/// One client keeps an action running while another makes thousands of
/// handles on it (Execute, take the name, drop the stream): the handles
/// nobody follows stay within `execution.max_retained_bytes` (the oldest
/// are forgotten and look expired), while the action runs on for the
/// client still waiting, and it is killed once that client cancels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_handles_of_one_action_stay_bounded() {
    let mut s =
        Stack::start_configured("", "[execution]\nmax_retained_bytes = \"1MiB\"\n", "").await;
    let (ca, cb) = (s.channel(), s.channel());
    let m = marker("handles-many");
    let ad = action(&ca, &format!("exec -a {m} sleep 300")).await;
    let (mut sb, fb) = start(&cb, &ad).await;
    assert!(
        eventually(Duration::from_secs(30), || running(&m)).await,
        "the action never started"
    );
    // Each detached handle counts at least 512 bytes: 4,000 are ~2 MiB.
    const N: usize = 4000;
    let mut names = Vec::with_capacity(N);
    for chunk in 0..N / 50 {
        let batch = (0..50).map(|_| async {
            let (stream, first) = start(&ca, &ad).await;
            drop(stream);
            first.name
        });
        names.extend(futures::future::join_all(batch).await);
        assert!(s.alive(), "after {} handles", (chunk + 1) * 50);
    }
    let distinct: std::collections::HashSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), N, "every Execute got its own name");
    // The streams' ends reach the frontend a moment after the drops.
    let mut forgotten = false;
    for _ in 0..600 {
        let r = ops_client(&ca)
            .get_operation(GetOperationRequest {
                name: names[0].clone(),
            })
            .await;
        if let Err(st) = r {
            assert_eq!(st.code(), Code::NotFound, "{st:?}");
            forgotten = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(forgotten, "4,000 handles nobody follows are all kept");
    let newest = get(&ca, &names[N - 1]).await;
    assert!(!newest.done, "the newest handle still follows the action");
    assert!(running(&m), "making handles disturbed the action");
    // B's handle, followed by its stream, was never forgotten.
    assert!(!get(&cb, &fb.name).await.done);
    cancel(&cb, &fb.name).await;
    assert_eq!(code_of(&finish(&mut sb, &fb.name).await), Code::Cancelled);
    assert!(
        eventually(Duration::from_secs(20), || !running(&m)).await,
        "the action runs on with nobody waiting"
    );
    // The handles left behind show the end of the run they were of.
    let r = response_of(&get(&ca, &names[N - 1]).await);
    assert_eq!(code_of(&r), Code::Cancelled, "{r:?}");
    assert!(s.alive());
}
