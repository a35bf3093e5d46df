//! The owner driven as the hub drives it, with fake workers: each is a
//! [`HubLink`] whose stream the test reads (assignments, cancels) and
//! whose reports the test makes up (`Finished`, or going away). No gRPC,
//! no casd (its channels connect lazily and are never used here, except
//! by the background action-cache writer, whose failures only log).
//! The order assignments are made in is `rbe-sched`'s and tested there.

use std::sync::Arc;

use prost::Message;
use rbe_auth::{Identity, Permission, Via};
use rbe_proto::reapi::{self, execution_stage, ActionResult, ExecuteResponse};
use rbe_proto::worker::{hub_message, Assignment, Finished, HubMessage, Outcome};
use rbe_sched::{scheduler::MAX_REQUEUES, OpId, Platform, Tenant, WorkerId};
use tokio::sync::mpsc;
use tonic::Code;

use super::handles::{Attached, Caller, HandleError, Origin};
use super::{new_operation_name, results, Exec, HubLink, Submission, Submitted};
use crate::proxy::{relay::StreamLimits, Upstream};

struct Owner {
    exec: Arc<Exec>,
    _dir: tempfile::TempDir,
}

async fn owner_with(settings: rbe_config::Execution) -> Owner {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = Upstream::connect(
        &dir.path().join("no-casd.sock"),
        4 << 20,
        StreamLimits::for_tests(),
    )
    .await
    .expect("channels");
    let exec = Exec::new(upstream, settings, crate::access::Access::builtin());
    Owner { exec, _dir: dir }
}

async fn owner() -> Owner {
    owner_with(rbe_config::Execution::default()).await
}

/// A worker as the hub sees it: its id and the other end of its link.
struct FakeWorker {
    id: WorkerId,
    rx: mpsc::UnboundedReceiver<HubMessage>,
}

impl FakeWorker {
    fn attach(exec: &Exec, slots: u32) -> FakeWorker {
        let (tx, rx) = mpsc::unbounded_channel();
        let link = HubLink {
            tx,
            name: "fake".into(),
        };
        let id = exec.worker_attach(Box::new(link), slots, Platform::default());
        FakeWorker { id, rx }
    }

    /// The next message sent to this worker, if any.
    fn next(&mut self) -> Option<hub_message::Kind> {
        self.rx.try_recv().ok().and_then(|m| m.kind)
    }

    fn assigned(&mut self) -> Assignment {
        match self.next() {
            Some(hub_message::Kind::Assign(a)) => a,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    fn finish(&self, exec: &Exec, id: OpId, outcome: i32, exit_code: i32) {
        let result = ActionResult {
            exit_code,
            stdout_raw: b"out".to_vec(),
            ..Default::default()
        };
        exec.worker_finished(
            self.id,
            Finished {
                id,
                outcome,
                message: String::new(),
                action_result: result.encode_to_vec(),
                missing: vec![],
                oom_killed: false,
            },
        );
    }
}

fn alice() -> Identity {
    Identity::new("alice", Via::Token)
}

fn digest(n: u8) -> rbe_proto::Digest {
    let hash = format!("{n:064x}");
    rbe_proto::Digest::parse(rbe_proto::DigestFunction::Sha256, &hash, 1).expect("digest")
}

fn origin(n: u8) -> Origin {
    Origin {
        owner: alice(),
        instance: "ci".into(),
        action_digest: digest(n).to_reapi(),
        digest_function: 1,
    }
}

/// Submits action `n` as Execute does once it has read the Action.
fn submit(exec: &Exec, n: u8) -> Submitted {
    let d = digest(n);
    let name = new_operation_name("ci");
    let key = results::action_key("ci", &d);
    exec.submit(Submission {
        key: key.clone(),
        shared_key: key,
        use_recent: false,
        platform: Platform::default(),
        priority: 0,
        tenant: Tenant::new("alice", ""),
        assignment: Arc::new(Assignment {
            operation: name.clone(),
            instance_name: "ci".into(),
            digest_function: 1,
            action_hash: d.hex(),
            action_size: 1,
            timeout_seconds: 60,
            ..Default::default()
        }),
        origin: origin(n),
        name,
        do_not_cache: false,
        invocation_id: String::new(),
        payload_bytes: 0,
    })
    .unwrap_or_else(|e| panic!("submit: {e}"))
}

fn new(s: Submitted) -> Attached {
    match s {
        Submitted::New(a) => a,
        _ => panic!("expected a new execution"),
    }
}

fn joined(s: Submitted) -> Attached {
    match s {
        Submitted::Joined(a) => a,
        _ => panic!("expected to join the execution in flight"),
    }
}

fn none(_: Permission) -> bool {
    false
}

fn caller(who: &Identity) -> Caller<'_> {
    Caller {
        who,
        granted: &none,
    }
}

/// The handle's state: its stage, and its status code once done.
fn state(exec: &Exec, name: &str) -> Result<(i32, Option<i32>), HandleError> {
    let who = alice();
    let op = exec.get(name, &caller(&who))?;
    let md = op
        .metadata
        .and_then(|a| reapi::ExecuteOperationMetadata::decode(a.value.as_slice()).ok())
        .map_or(-1, |m| m.stage);
    let code = match op.result {
        Some(rbe_proto::longrunning::operation::Result::Response(a)) => {
            ExecuteResponse::decode(a.value.as_slice())
                .ok()
                .and_then(|r| r.status)
                .map(|s| s.code)
        }
        _ => None,
    };
    Ok((md, code))
}

const EXECUTING: i32 = execution_stage::Value::Executing as i32;
const QUEUED: i32 = execution_stage::Value::Queued as i32;
const COMPLETED: i32 = execution_stage::Value::Completed as i32;

fn done(code: Code) -> (i32, Option<i32>) {
    (COMPLETED, Some(code as i32))
}

/// What a stream following the handle reads last.
fn streamed(a: &mut Attached) -> Option<i32> {
    a.rx.borrow_and_update()
        .response
        .as_ref()
        .and_then(|r| r.status.as_ref())
        .map(|s| s.code)
}

#[tokio::test]
async fn identical_requests_share_one_run_and_each_handle_gets_the_result() {
    let o = owner().await;
    let exec = &o.exec;
    let mut first = new(submit(exec, 1));
    assert_eq!(state(exec, &first.name), Ok((QUEUED, None)));
    let mut w = FakeWorker::attach(exec, 2);
    let a = w.assigned();
    assert_eq!(a.id, first.exec);
    assert_eq!(
        a.operation, first.name,
        "the worker logs the submitter's name"
    );
    assert_eq!(state(exec, &first.name), Ok((EXECUTING, None)));

    // Joined twice: through the in-flight check and at submission.
    let key = results::action_key("ci", &digest(1));
    let mut second = exec.join(&key, &origin(1)).expect("in flight");
    let mut third = joined(submit(exec, 1));
    assert_eq!(second.exec, first.exec);
    assert_eq!(third.exec, first.exec);
    assert_ne!(second.name, first.name, "each request has its own name");
    assert_eq!(state(exec, &third.name), Ok((EXECUTING, None)));
    assert!(w.next().is_none(), "run once");

    w.finish(exec, a.id, Outcome::Ran as i32, 1);
    for h in [&mut first, &mut second, &mut third] {
        assert_eq!(streamed(h), Some(0), "{}", h.name);
        assert_eq!(state(exec, &h.name), Ok(done(Code::Ok)));
    }
    // Completed: the next identical request is a new run.
    let fourth = new(submit(exec, 1));
    assert_ne!(fourth.exec, first.exec);
    assert_eq!(w.assigned().id, fourth.exec);
}

#[tokio::test]
async fn cancelling_one_handle_leaves_the_run_to_the_others_and_the_last_kills_it() {
    let o = owner().await;
    let exec = &o.exec;
    let mut w = FakeWorker::attach(exec, 1);
    let mut a = new(submit(exec, 1));
    let b = joined(submit(exec, 1));
    let id = w.assigned().id;
    let who = alice();

    assert_eq!(exec.cancel(&a.name, &caller(&who)), Ok(Some(false)));
    assert_eq!(streamed(&mut a), Some(Code::Cancelled as i32));
    assert_eq!(state(exec, &a.name), Ok(done(Code::Cancelled)));
    assert_eq!(state(exec, &b.name), Ok((EXECUTING, None)));
    assert!(w.next().is_none(), "the run goes on for the other handle");
    // A's stream ending now changes nothing: it stopped waiting.
    exec.stream_ended(a.id, a.exec);
    assert!(w.next().is_none());
    assert_eq!(exec.cancel(&a.name, &caller(&who)), Ok(None), "once");

    // The last waiter leaving (its stream ends) kills the action.
    exec.stream_ended(b.id, b.exec);
    match w.next() {
        Some(hub_message::Kind::Cancel(c)) => assert_eq!(c.id, id),
        other => panic!("expected a Cancel, got {other:?}"),
    }
    assert_eq!(state(exec, &b.name), Ok(done(Code::Cancelled)));
    // The worker's late report is ignored, and frees its slot.
    w.finish(exec, id, Outcome::Cancelled as i32, -1);
    assert_eq!(state(exec, &b.name), Ok(done(Code::Cancelled)));
    let c = new(submit(exec, 2));
    assert_eq!(w.assigned().id, c.exec);

    // CancelOperation on the only handle kills it too.
    assert_eq!(exec.cancel(&c.name, &caller(&who)), Ok(Some(true)));
    assert!(matches!(w.next(), Some(hub_message::Kind::Cancel(_))));
}

#[tokio::test]
async fn a_lost_worker_requeues_its_actions_up_to_the_limit_then_they_abort() {
    let o = owner().await;
    let exec = &o.exec;
    let h = new(submit(exec, 1));
    for lost in 1..=MAX_REQUEUES {
        let mut w = FakeWorker::attach(exec, 1);
        assert_eq!(w.assigned().id, h.exec);
        assert_eq!(state(exec, &h.name), Ok((EXECUTING, None)));
        assert_eq!(exec.worker_detach(w.id), 1, "loss {lost}");
        assert_eq!(state(exec, &h.name), Ok((QUEUED, None)));
    }
    let mut w = FakeWorker::attach(exec, 1);
    assert_eq!(w.assigned().id, h.exec);
    assert_eq!(exec.worker_detach(w.id), 0);
    assert_eq!(state(exec, &h.name), Ok(done(Code::Aborted)));
}

#[tokio::test]
async fn a_report_from_a_worker_that_lost_the_action_is_ignored() {
    let o = owner().await;
    let exec = &o.exec;
    let mut old = FakeWorker::attach(exec, 1);
    let h = new(submit(exec, 1));
    let id = old.assigned().id;
    exec.worker_detach(old.id);
    let mut now = FakeWorker::attach(exec, 1);
    assert_eq!(now.assigned().id, id);

    old.finish(exec, id, Outcome::Ran as i32, 0);
    assert_eq!(state(exec, &h.name), Ok((EXECUTING, None)), "stale");
    now.finish(exec, id + 1000, Outcome::Ran as i32, 0);
    assert_eq!(state(exec, &h.name), Ok((EXECUTING, None)), "unknown id");
    now.finish(exec, id, Outcome::TimedOut as i32, 0);
    assert_eq!(state(exec, &h.name), Ok(done(Code::DeadlineExceeded)));
    now.finish(exec, id, Outcome::Ran as i32, 0);
    assert_eq!(
        state(exec, &h.name),
        Ok(done(Code::DeadlineExceeded)),
        "a second report changes nothing"
    );
}

#[tokio::test]
async fn an_outcome_this_frontend_does_not_know_ends_the_operation_internal() {
    let o = owner().await;
    let exec = &o.exec;
    let mut w = FakeWorker::attach(exec, 1);
    let mut h = new(submit(exec, 1));
    let id = w.assigned().id;
    w.finish(exec, id, 77, 0);
    assert_eq!(streamed(&mut h), Some(Code::Internal as i32));
    let h2 = new(submit(exec, 2));
    let id = w.assigned().id;
    w.finish(exec, id, Outcome::Unspecified as i32, 0);
    assert_eq!(state(exec, &h2.name), Ok(done(Code::Internal)));
}

#[tokio::test]
async fn a_drain_ends_queued_work_lets_running_work_finish_and_assigns_nothing() {
    let o = owner().await;
    let exec = &o.exec;
    let mut w = FakeWorker::attach(exec, 1);
    let running = new(submit(exec, 1));
    let queued = new(submit(exec, 2));
    let id = w.assigned().id;
    assert!(!exec.draining());

    exec.begin_drain();
    assert!(exec.draining());
    assert_eq!(state(exec, &queued.name), Ok(done(Code::Unavailable)));
    assert_eq!(state(exec, &running.name), Ok((EXECUTING, None)));
    assert_eq!(exec.executing(), 1);
    let mut idle = FakeWorker::attach(exec, 4);
    w.finish(exec, id, Outcome::Ran as i32, 0);
    assert_eq!(state(exec, &running.name), Ok(done(Code::Ok)));
    assert!(w.next().is_none() && idle.next().is_none(), "nothing new");

    // Shutdown: the links go (the hub streams end) and nothing stays open.
    let left = new(submit(exec, 3));
    exec.shutdown();
    assert_eq!(state(exec, &left.name), Ok(done(Code::Unavailable)));
    assert!(matches!(
        w.rx.try_recv(),
        Err(mpsc::error::TryRecvError::Disconnected)
    ));
}

#[tokio::test]
async fn handles_nobody_follows_stay_under_the_byte_bound_oldest_forgotten_first() {
    let max = 16 << 10;
    let o = owner_with(rbe_config::Execution {
        max_retained_bytes: max,
        ..Default::default()
    })
    .await;
    let exec = &o.exec;
    let mut w = FakeWorker::attach(exec, 1);
    let mut names = Vec::new();
    for n in 0..100u8 {
        let h = new(submit(exec, n));
        let id = w.assigned().id;
        w.finish(exec, id, Outcome::Ran as i32, 1);
        // Its Execute stream read the result and ended.
        exec.stream_ended(h.id, h.exec);
        names.push(h.name);
        let (_, bytes) = exec.retained();
        assert!(bytes as u64 <= max, "{bytes} bytes after {n}");
    }
    let (count, _) = exec.retained();
    assert!(count > 0 && count < 100, "{count}");
    assert!(matches!(
        state(exec, &names[0]),
        Err(HandleError::Unknown(_))
    ));
    assert_eq!(state(exec, &names[99]), Ok(done(Code::Ok)));
}

// ---------------------------------------------------------------------------
// Remote leases (the cluster's offload), with a fake link for the peer
// ---------------------------------------------------------------------------

fn lease(exec: &Exec) -> super::remote::Leased {
    let head = exec
        .offloadable_head(&Platform::default(), false)
        .expect("an offloadable head");
    let (tx, _rx) = mpsc::unbounded_channel();
    let link = HubLink {
        tx,
        name: "peer".into(),
    };
    exec.lease(&head, Box::new(link)).expect("leased")
}

fn finished(id: OpId) -> Finished {
    Finished {
        id,
        outcome: Outcome::Ran as i32,
        action_result: ActionResult::default().encode_to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_report_from_a_lost_lease_is_ignored_and_the_new_lease_completes() {
    let o = owner().await;
    let a = new(submit(&o.exec, 1));
    let first = lease(&o.exec);
    assert_eq!(first.op, a.exec);
    o.exec.set_stage(first.lease, first.op, EXECUTING);
    assert_eq!(state(&o.exec, &a.name).expect("handle").0, EXECUTING);
    // The peer is lost: back to the queue, for the client too.
    assert_eq!(o.exec.worker_detach(first.lease), 1);
    assert_eq!(state(&o.exec, &a.name).expect("handle").0, QUEUED);
    // Its late report, and a stage it sends, change nothing.
    assert!(!o.exec.worker_finished(first.lease, finished(first.op)));
    o.exec.set_stage(first.lease, first.op, EXECUTING);
    assert_eq!(state(&o.exec, &a.name).expect("handle").0, QUEUED);
    // A second lease holds it now and its report completes it.
    let second = lease(&o.exec);
    assert_ne!(second.lease, first.lease);
    assert!(o.exec.worker_finished(second.lease, finished(second.op)));
    o.exec.release(second.lease);
    assert_eq!(state(&o.exec, &a.name).expect("handle"), done(Code::Ok));
    // The lease goes with its result: no link is left behind.
    assert_eq!(o.exec.state.lock().links.len(), 0);
}

#[tokio::test]
async fn a_rejected_offer_goes_back_to_its_place_and_hosted_work_is_never_offered() {
    let o = owner().await;
    let a = new(submit(&o.exec, 1));
    let _b = new(submit(&o.exec, 2));
    let l = lease(&o.exec);
    o.exec.release(l.lease);
    assert_eq!(state(&o.exec, &a.name).expect("handle").0, QUEUED);
    // Still the head: a rejection is not a re-queue to the back.
    let head = o.exec.offloadable_head(&Platform::default(), false);
    assert_eq!(head.map(|h| h.op), Some(a.exec));
    // A release of a lease no longer held changes nothing.
    o.exec.release(l.lease);

    let o = owner().await;
    let d = digest(3);
    let key = results::action_key("ci", &d);
    let hosted = o
        .exec
        .submit_hosted(Submission {
            key: key.clone(),
            shared_key: key,
            use_recent: false,
            platform: Platform::default(),
            priority: 0,
            tenant: Tenant::new("peer:a", ""),
            assignment: Arc::new(Assignment::default()),
            origin: origin(3),
            name: new_operation_name("ci"),
            do_not_cache: false,
            invocation_id: String::new(),
            payload_bytes: 0,
        })
        .unwrap_or_else(|e| panic!("submit: {e}"));
    let _h = new(hosted);
    assert!(o
        .exec
        .offloadable_head(&Platform::default(), false)
        .is_none());
}
