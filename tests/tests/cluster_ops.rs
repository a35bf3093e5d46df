//! Operations stay reachable from any host of a cluster (real frontends on
//! loopback): a name carries its holder, and WaitExecution, GetOperation,
//! CancelOperation and WaitOperation sent to another host reach the holder,
//! which applies its own rules to the client; a name from a holder that
//! restarted, or from no member, is NOT_FOUND (Bazel then executes again);
//! hostile names are refused and never forwarded.

use std::path::Path;
use std::time::{Duration, SystemTime};

use prost::Message;
use rbe_proto::longrunning::{
    operation, operations_client::OperationsClient, CancelOperationRequest, DeleteOperationRequest,
    GetOperationRequest, Operation, WaitOperationRequest,
};
use rbe_proto::reapi::{
    execution_client::ExecutionClient, execution_stage, ExecuteOperationMetadata, ExecuteResponse,
    WaitExecutionRequest,
};
use rbe_testkit::cluster::LocalCluster;
use rbe_testkit::exec::{start_command, start_command_with};
use rbe_testkit::grpc::{Grpc, WithToken};
use tonic::Code;

const UUID: &str = "6f0c1d2e-3f40-4a5b-8c6d-7e8f90123456";

fn issue(file: &Path, name: &str) -> String {
    let (secret, _) = rbe_auth::tokens::create(
        file,
        name,
        None,
        SystemTime::now(),
        rbe_auth::tokens::NewFileOwner { gid: None },
    )
    .expect("create token");
    secret.expose().to_owned()
}

fn base36(mut n: u64) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

async fn formed(nodes: &[(&str, u32)], extra: &str) -> LocalCluster {
    let c = LocalCluster::start(nodes, extra).await;
    assert!(
        c.wait_formed(Duration::from_secs(60)).await,
        "the cluster did not form; a sees {:?}",
        c.status(0).await
    );
    c
}

async fn forwarded(c: &LocalCluster, i: usize) -> u64 {
    c.status(i)
        .await
        .counters
        .iter()
        .find(|k| k.name == "operations_forwarded")
        .map_or(0, |k| k.value)
}

fn response_of(op: &Operation) -> ExecuteResponse {
    match &op.result {
        Some(operation::Result::Response(any)) => {
            ExecuteResponse::decode(any.value.as_slice()).expect("ExecuteResponse")
        }
        other => panic!("no response in {other:?}"),
    }
}

fn code_of(r: &ExecuteResponse) -> Code {
    Code::from_i32(r.status.as_ref().map_or(0, |s| s.code))
}

async fn get<C: Grpc>(ch: &C, name: &str) -> Result<Operation, tonic::Status> {
    OperationsClient::new(ch.clone())
        .get_operation(GetOperationRequest {
            name: name.to_owned(),
        })
        .await
        .map(|r| r.into_inner())
}

/// WaitExecution's answer: the last operation of its stream, or the
/// status it failed with (at the call or in the stream).
async fn wait_execution<C: Grpc>(ch: &C, name: &str) -> Result<Operation, tonic::Status> {
    let mut s = ExecutionClient::new(ch.clone())
        .wait_execution(WaitExecutionRequest {
            name: name.to_owned(),
        })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(op) = s.message().await? {
        last = Some(op);
    }
    last.ok_or_else(|| tonic::Status::unknown("an empty stream"))
}

fn assert_gone(r: Result<Operation, tonic::Status>, what: &str) {
    match r {
        Err(s) => assert_eq!(s.code(), Code::NotFound, "{what}: {s:?}"),
        Ok(op) => panic!("{what}: answered {op:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_get_and_cancel_sent_to_another_host_reach_the_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    let (alice_t, bob_t) = (issue(&tokens, "alice"), issue(&tokens, "bob"));
    let extra = format!("[auth]\ntokens = \"{}\"\n", tokens.display());
    let c = formed(&[("a", 1), ("b", 1)], &extra).await;
    let on = |i: usize, t: &str| WithToken::bearer(c.hosts[i].stack.channel(), t);
    let (alice_a, alice_b, bob_b) = (on(0, &alice_t), on(1, &alice_t), on(1, &bob_t));

    // alice executes on a and learns the name from the first update.
    let mut exec = start_command(&alice_a, &["sleep", "3"], &[], 60, Some("alice"))
        .await
        .expect("Execute on a");
    let first = exec.message().await.expect("stream").expect("an update");
    let name = first.name.clone();
    assert!(name.starts_with("operations/a."), "{name}");

    // GetOperation on b: a's answer.
    let op = get(&alice_b, &name).await.expect("GetOperation on b");
    assert_eq!(op.name, name);
    assert!(!op.done, "{op:?}");
    // bob may not read it, by a's rules.
    let denied = get(&bob_b, &name).await.expect_err("bob reads alice's");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("from holder a"), "{denied:?}");

    // WaitExecution on b waits at a; the Execute stream then leaves, and
    // the forwarded waiter keeps the action running to its result.
    let b = alice_b.clone();
    let n = name.clone();
    let waiting = tokio::spawn(async move { wait_execution(&b, &n).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(exec);
    let done = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("WaitExecution on b never ended")
        .expect("join")
        .expect("WaitExecution on b");
    assert_eq!(done.name, name);
    assert!(done.done);
    let r = response_of(&done);
    assert_eq!(code_of(&r), Code::Ok, "{r:?}");
    assert_eq!(r.result.as_ref().map(|r| r.exit_code), Some(0), "{r:?}");
    let again = get(&alice_b, &name).await.expect("GetOperation on b");
    assert_eq!(response_of(&again), r);
    assert!(forwarded(&c, 1).await >= 3);

    // CancelOperation on b cancels at a; bob may not.
    let mut slow = start_command(&alice_a, &["sleep", "60"], &[], 120, Some("alice"))
        .await
        .expect("Execute on a");
    let name = slow.message().await.expect("stream").expect("update").name;
    let bob_cancel = OperationsClient::new(bob_b.clone())
        .cancel_operation(CancelOperationRequest { name: name.clone() })
        .await
        .expect_err("bob cancels alice's");
    assert_eq!(bob_cancel.code(), Code::PermissionDenied, "{bob_cancel:?}");
    OperationsClient::new(alice_b.clone())
        .cancel_operation(CancelOperationRequest { name: name.clone() })
        .await
        .expect("CancelOperation on b");
    let op = get(&alice_a, &name).await.expect("GetOperation on a");
    assert!(op.done, "{op:?}");
    assert_eq!(code_of(&response_of(&op)), Code::Cancelled);
    // WaitOperation on b: the holder's done operation.
    let op = OperationsClient::new(alice_b.clone())
        .wait_operation(WaitOperationRequest {
            name: name.clone(),
            timeout: Some(rbe_proto::wkt::Duration {
                seconds: 30,
                nanos: 0,
            }),
        })
        .await
        .expect("WaitOperation on b")
        .into_inner();
    assert!(op.done, "{op:?}");
    drop(slow);
    // DeleteOperation on b deletes at a, under a's rules.
    let delete = |ch: WithToken, name: String| async move {
        OperationsClient::new(ch)
            .delete_operation(DeleteOperationRequest { name })
            .await
    };
    let denied = delete(bob_b.clone(), name.clone())
        .await
        .expect_err("bob deletes alice's");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("from holder a"), "{denied:?}");
    delete(alice_b.clone(), name.clone())
        .await
        .expect("DeleteOperation on b");
    assert_gone(get(&alice_a, &name).await, "GetOperation on a after Delete");
    assert_gone(get(&alice_b, &name).await, "GetOperation on b after Delete");
    for h in &c.hosts {
        let log =
            std::fs::read_to_string(h.stack.tmp.path().join("frontend.log")).unwrap_or_default();
        assert!(!log.contains("panicked"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_of_old_generations_unknown_nodes_and_garbage_are_never_forwarded() {
    let c = formed(&[("a", 1), ("b", 1)], "").await;
    let (ca, cb) = (c.hosts[0].stack.channel(), c.hosts[1].stack.channel());
    let gen_a = c.status(0).await.generation;
    let gen_b = c.status(1).await.generation;
    let old = format!("operations/a.{}.{UUID}", base36(gen_a - 1));
    let unknown = format!("operations/zz.{}.{UUID}", base36(gen_a));
    // Ours, current generation, but never given out.
    let never = format!("operations/a.{}.{UUID}", base36(gen_a));
    for (i, ch) in [&ca, &cb].into_iter().enumerate() {
        for name in [&old, &unknown, &never] {
            assert_gone(
                wait_execution(ch, name).await,
                &format!("wait {name} on {i}"),
            );
            assert_gone(get(ch, name).await, &format!("get {name} on {i}"));
        }
    }
    let r = wait_execution(&cb, &old).await.expect_err("old");
    assert!(r.message().contains("restarted"), "{r:?}");
    let r = wait_execution(&ca, &old).await.expect_err("old");
    assert!(r.message().contains("retry Execute"), "{r:?}");
    // DeleteOperation goes to the holder too, which knows no such name.
    let st = OperationsClient::new(cb.clone())
        .delete_operation(DeleteOperationRequest {
            name: never.clone(),
        })
        .await
        .expect_err("DeleteOperation of a's name on b");
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
    assert!(st.message().contains("from holder a"), "{st:?}");
    let forwarded_before = forwarded(&c, 0).await + forwarded(&c, 1).await;
    // `never` asked of b went to a (a real member and generation).
    assert!(forwarded_before >= 3);

    let hostile = [
        String::new(),
        "operations/".to_owned(),
        "operations/\u{0}\u{7f}".to_owned(),
        "garbage".to_owned(),
        format!("operations/{}", "x".repeat(10 << 10)),
        format!(
            "{}/operations/b.{}.{UUID}",
            "i".repeat(10 << 10),
            base36(gen_b)
        ),
        format!("operations/b.{}.{UUID}/../x", base36(gen_b)),
        format!("operations/ä.{}.{UUID}", base36(gen_b)),
        format!("ïn\u{1b}stance/operations/b.{}.{UUID}", base36(gen_b)),
        format!("operations/b.{}.{}", base36(gen_b), "é".repeat(18)),
        format!("operations/b.{}.{UUID}", "9".repeat(40)),
    ];
    for name in &hostile {
        for ch in [&ca, &cb] {
            for r in [wait_execution(ch, name).await, get(ch, name).await] {
                match r {
                    Err(s) => assert!(
                        matches!(s.code(), Code::NotFound | Code::InvalidArgument),
                        "{:.80}: {s:?}",
                        name
                    ),
                    Ok(op) => panic!("{name:.80}: answered {op:?}"),
                }
            }
        }
    }
    assert_eq!(
        forwarded(&c, 0).await + forwarded(&c, 1).await,
        forwarded_before,
        "a hostile name was forwarded"
    );
    assert!(c.hosts.iter().all(|h| h.stack.frontend_pid().is_some()));

    // A host answers peers only for names it holds: one hop, never on.
    let peer_a = c.peer_client(0, "c");
    let ask = |name: String| rbe_proto::cluster::OperationRequest {
        name,
        client: "local".into(),
        client_via: "local".into(),
        watch_only: false,
    };
    let b_name = format!("operations/b.{}.{UUID}", base36(gen_b));
    let plain = format!("operations/{UUID}");
    for name in [b_name, plain, old.clone(), never.clone()] {
        let st = peer_a
            .clone()
            .get_operation(ask(name.clone()))
            .await
            .expect_err("a peer asks a about a name it does not hold");
        assert_eq!(st.code(), Code::NotFound, "{name}: {st:?}");
        let st = peer_a
            .clone()
            .wait_operation(ask(name.clone()))
            .await
            .expect_err("a peer waits on a name a does not hold");
        assert_eq!(st.code(), Code::NotFound, "{name}: {st:?}");
    }
    assert_eq!(
        forwarded(&c, 0).await + forwarded(&c, 1).await,
        forwarded_before,
        "a peer's request was forwarded again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_from_before_the_holder_restarted_is_not_found_anywhere() {
    let mut c = formed(&[("a", 1), ("b", 1)], "").await;
    let ca = c.hosts[0].stack.channel();
    let mut exec = start_command(&ca, &["sleep", "30"], &[], 60, None)
        .await
        .expect("Execute on a");
    let name = exec.message().await.expect("stream").expect("update").name;
    assert!(name.starts_with("operations/a."), "{name}");
    let before = c.status(0).await.generation;

    c.hosts[0].stack.restart_frontend().await;
    drop(exec);
    let after = c.status(0).await.generation;
    assert!(after > before, "{before} then {after}");
    // b learns a's new generation by gossip.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = c.status(1).await;
        if s.members
            .iter()
            .any(|m| m.node == "a" && m.generation == after && m.state == "up")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never saw a's new generation: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ca = c.hosts[0].stack.channel();
    let cb = c.hosts[1].stack.channel();
    assert_gone(wait_execution(&ca, &name).await, "WaitExecution on a");
    assert_gone(wait_execution(&cb, &name).await, "WaitExecution on b");
    assert_gone(get(&cb, &name).await, "GetOperation on b");
    let st = OperationsClient::new(cb.clone())
        .cancel_operation(CancelOperationRequest { name: name.clone() })
        .await
        .expect_err("CancelOperation on b");
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
}

/// The stages a stream shows, each once, in order, until it ends.
async fn stages(mut s: tonic::Streaming<Operation>) -> (Vec<i32>, Operation) {
    let mut seen: Vec<i32> = Vec::new();
    loop {
        let op = s.message().await.expect("stream").expect("an update");
        let stage = op
            .metadata
            .as_ref()
            .and_then(|a| ExecuteOperationMetadata::decode(a.value.as_slice()).ok())
            .map_or(-1, |m| m.stage);
        if seen.last() != Some(&stage) {
            seen.push(stage);
        }
        if op.done {
            return (seen, op);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offloaded_action_shows_the_stages_of_a_local_one() {
    // start_command's actions are do_not_cache: offloaded here too.
    let c = formed(&[("a", 1), ("b", 2)], "[offload]\ndo_not_cache = true\n").await;
    let ca = c.hosts[0].stack.channel();
    let md = |id: &str| rbe_proto::reapi::RequestMetadata {
        tool_invocation_id: id.to_owned(),
        ..Default::default()
    };
    // a's slot: taken at once, so this one never queues and stays at a.
    let mut blocker = start_command_with(&ca, &["sleep", "6"], &[], 60, Some(&md("inv-block")))
        .await
        .expect("Execute on a");
    loop {
        let op = blocker.message().await.expect("stream").expect("update");
        let stage = op
            .metadata
            .as_ref()
            .and_then(|a| ExecuteOperationMetadata::decode(a.value.as_slice()).ok())
            .map_or(-1, |m| m.stage);
        if stage == execution_stage::Value::Executing as i32 {
            break;
        }
    }
    // This one queues at a, then runs at b.
    let s = start_command_with(&ca, &["sleep", "2"], &[], 60, Some(&md("inv-moved")))
        .await
        .expect("Execute on a");
    let (seen, op) = tokio::time::timeout(Duration::from_secs(120), stages(s))
        .await
        .expect("the offloaded action never ended");
    let r = response_of(&op);
    assert_eq!(code_of(&r), Code::Ok, "{r:?}");
    let worker = r
        .result
        .as_ref()
        .and_then(|r| r.execution_metadata.as_ref())
        .map(|m| m.worker.clone())
        .unwrap_or_default();
    assert_eq!(worker, "b/b-worker", "not offloaded: {r:?}");
    use execution_stage::Value::{Completed, Executing, Queued};
    assert_eq!(
        seen,
        vec![Queued as i32, Executing as i32, Completed as i32],
        "the stages of the offloaded action"
    );
    // The same name from b (forwarded to a): the completed operation.
    let cb = c.hosts[1].stack.channel();
    let again = get(&cb, &op.name).await.expect("GetOperation on b");
    assert!(again.done, "{again:?}");
}
