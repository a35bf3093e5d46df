//! Scheduler behaviour, driven with a fake clock.

use std::sync::Arc;
use std::time::Duration;

use rbe_sched::{
    ActionKey, CancelEffect, FakeClock, Outcome, Platform, SchedConfig, SchedError, Scheduler,
    Stage, Tenant,
};

fn key(n: u32) -> ActionKey {
    ActionKey {
        instance: String::new(),
        action: format!("sha256:{n:064x}/1"),
    }
}

fn sched(cfg: SchedConfig) -> (Scheduler<u32, &'static str>, Arc<FakeClock>) {
    let clock = Arc::new(FakeClock::default());
    (Scheduler::new(cfg, clock.clone()), clock)
}

/// The tenant of tests that are not about fairness.
fn anon() -> Tenant {
    Tenant::new("anonymous", "")
}

fn linux() -> Platform {
    Platform::from_pairs([("OSFamily", "linux")])
}

#[test]
fn identical_actions_run_once_and_everyone_gets_the_result() {
    let (mut s, _) = sched(SchedConfig::default());
    let w = s.worker_connect(2, linux());
    let (a, new_a) = s.submit(key(1), linux(), 0, anon(), 1).expect("submit");
    let (b, new_b) = s.submit(key(1), linux(), 0, anon(), 1).expect("submit");
    assert!(new_a && !new_b);
    assert_eq!(a, b);
    assert_eq!(s.get(a).expect("op").waiters, 2);
    let asg = s.next_assignments();
    assert_eq!(asg.len(), 1);
    // A third identical request while it runs joins too.
    assert_eq!(
        s.submit(key(1), linux(), 0, anon(), 1).expect("submit").0,
        a
    );
    assert!(s.complete(a, w, "ok"));
    assert_eq!(s.get(a).expect("op").outcome, Some(&Outcome::Done("ok")));
    // Once completed, the same action runs again as a new operation.
    let (c, new_c) = s.submit(key(1), linux(), 0, anon(), 1).expect("submit");
    assert!(new_c && c != a);
}

#[test]
fn priority_then_arrival_order_and_slots() {
    let (mut s, _) = sched(SchedConfig::default());
    let (low, _) = s
        .submit(key(1), Platform::default(), 10, anon(), 1)
        .expect("submit");
    let (first, _) = s
        .submit(key(2), Platform::default(), 0, anon(), 2)
        .expect("submit");
    let (second, _) = s
        .submit(key(3), Platform::default(), 0, anon(), 3)
        .expect("submit");
    assert!(
        s.next_assignments().is_empty(),
        "no worker yet: everything waits"
    );
    let w = s.worker_connect(2, linux());
    let asg: Vec<_> = s.next_assignments().iter().map(|a| a.op).collect();
    assert_eq!(asg, vec![first, second]);
    assert_eq!(s.get(low).expect("op").stage, Stage::Queued);
    assert!(s.complete(first, w, "done"));
    let asg: Vec<_> = s.next_assignments().iter().map(|a| a.op).collect();
    assert_eq!(asg, vec![low]);
}

#[test]
fn platform_mismatch_fails_fast_with_a_clear_message() {
    let (mut s, _) = sched(SchedConfig::default());
    s.worker_connect(4, linux());
    let err = s
        .submit(
            key(1),
            Platform::from_pairs([("OSFamily", "windows")]),
            0,
            anon(),
            1,
        )
        .expect_err("unmatchable");
    match &err {
        SchedError::NoMatchingWorker {
            missing, workers, ..
        } => {
            assert_eq!(missing, "OSFamily=windows");
            assert_eq!(*workers, 1);
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(err.to_string().contains("OSFamily=windows"));
}

#[test]
fn unmatchable_queued_work_fails_after_grace_when_workers_change() {
    let (mut s, clock) = sched(SchedConfig {
        unmatchable_grace: Duration::from_secs(30),
        ..Default::default()
    });
    let (op, _) = s
        .submit(key(1), Platform::from_pairs([("gpu", "1")]), 0, anon(), 1)
        .expect("queued with no workers");
    s.worker_connect(1, linux());
    assert!(s.tick().is_empty());
    clock.advance(Duration::from_secs(31));
    assert_eq!(s.tick(), vec![op]);
    assert!(
        matches!(s.get(op).expect("op").outcome, Some(Outcome::Failed(m)) if m.contains("gpu=1"))
    );
}

#[test]
fn bounded_queue_refuses_with_retry_hint() {
    let (mut s, _) = sched(SchedConfig {
        max_queued: 2,
        retry_after: Duration::from_secs(3),
        ..Default::default()
    });
    s.submit(key(1), Platform::default(), 0, anon(), 1)
        .expect("1");
    s.submit(key(2), Platform::default(), 0, anon(), 2)
        .expect("2");
    assert_eq!(
        s.submit(key(3), Platform::default(), 0, anon(), 3)
            .expect_err("full"),
        SchedError::QueueFull {
            queued: 2,
            retry_after: Duration::from_secs(3)
        }
    );
    // Joining an identical in-flight action is not new work: allowed.
    assert!(s.submit(key(1), Platform::default(), 0, anon(), 1).is_ok());
}

#[test]
fn cancellation_and_last_waiter_leaving() {
    let (mut s, _) = sched(SchedConfig::default());
    let w = s.worker_connect(1, Platform::default());
    let (queued, _) = s
        .submit(key(1), Platform::default(), 5, anon(), 1)
        .expect("submit");
    let (running, _) = s
        .submit(key(2), Platform::default(), 0, anon(), 2)
        .expect("submit");
    assert_eq!(s.next_assignments()[0].op, running);
    assert_eq!(s.cancel(queued), Ok(CancelEffect::Dequeued));
    assert_eq!(s.counts().queued, 0);
    // Two waiters on the running one: the first leaving changes nothing.
    s.add_waiter(running).expect("waiter");
    assert_eq!(s.remove_waiter(running), CancelEffect::None);
    assert_eq!(s.remove_waiter(running), CancelEffect::Kill(w));
    assert_eq!(
        s.get(running).expect("op").outcome,
        Some(&Outcome::Cancelled)
    );
    // The slot frees when the worker reports; a late result is ignored.
    assert_eq!(s.counts().free_slots, 0);
    assert!(!s.complete(running, w, "too late"));
    assert_eq!(s.counts().free_slots, 1);
    assert_eq!(
        s.get(running).expect("op").outcome,
        Some(&Outcome::Cancelled)
    );
}

#[test]
fn worker_loss_requeues_in_place() {
    let (mut s, _) = sched(SchedConfig::default());
    let w1 = s.worker_connect(1, Platform::default());
    let (a, _) = s
        .submit(key(1), Platform::default(), 0, anon(), 1)
        .expect("a");
    let (b, _) = s
        .submit(key(2), Platform::default(), 0, anon(), 2)
        .expect("b");
    assert_eq!(s.next_assignments()[0].op, a);
    assert_eq!(s.worker_disconnect(w1), vec![a]);
    let w2 = s.worker_connect(1, Platform::default());
    let asg = s.next_assignments();
    assert_eq!(
        (asg[0].op, asg[0].worker),
        (a, w2),
        "a keeps its place ahead of b"
    );
    assert!(
        !s.complete(a, w1, "stale worker"),
        "reports from the lost worker are ignored"
    );
    assert!(s.complete(a, w2, "ok"));
    assert_eq!(s.next_assignments()[0].op, b);
}

#[test]
fn completed_operations_expire_after_retention() {
    let (mut s, clock) = sched(SchedConfig {
        retention: Duration::from_secs(60),
        ..Default::default()
    });
    let w = s.worker_connect(1, Platform::default());
    let (a, _) = s
        .submit(key(1), Platform::default(), 0, anon(), 1)
        .expect("a");
    s.next_assignments();
    s.complete(a, w, "ok");
    clock.advance(Duration::from_secs(59));
    s.tick();
    assert!(s.get(a).is_some());
    clock.advance(Duration::from_secs(2));
    s.tick();
    assert!(s.get(a).is_none());
    assert_eq!(s.cancel(a), Err(SchedError::UnknownOperation(a)));
}

#[test]
fn load_spreads_to_the_worker_with_most_free_slots() {
    let (mut s, _) = sched(SchedConfig::default());
    let small = s.worker_connect(1, Platform::default());
    let big = s.worker_connect(4, Platform::default());
    for n in 0..3 {
        s.submit(key(n), Platform::default(), 0, anon(), n)
            .expect("submit");
    }
    let workers: Vec<_> = s.next_assignments().iter().map(|a| a.worker).collect();
    assert_eq!(workers, vec![big, big, big]);
    let _ = small;
}

#[test]
fn an_action_that_keeps_losing_its_worker_is_given_up() {
    let (mut s, _) = sched(SchedConfig::default());
    let (a, _) = s
        .submit(key(1), Platform::default(), 0, anon(), 1)
        .expect("a");
    for round in 0..=rbe_sched::scheduler::MAX_REQUEUES {
        let w = s.worker_connect(1, Platform::default());
        assert_eq!(s.next_assignments()[0].op, a, "round {round}");
        let requeued = s.worker_disconnect(w);
        if round < rbe_sched::scheduler::MAX_REQUEUES {
            assert_eq!(requeued, vec![a]);
        } else {
            assert!(requeued.is_empty());
        }
    }
    assert!(
        matches!(s.get(a).expect("op").outcome, Some(Outcome::Failed(m)) if m.contains("lost its worker"))
    );
}

#[test]
fn join_finds_only_actions_in_flight() {
    let (mut s, _) = sched(SchedConfig::default());
    let w = s.worker_connect(1, linux());
    assert_eq!(s.join(&key(1)), None, "nothing in flight yet");
    let (a, _) = s.submit(key(1), linux(), 0, anon(), 1).expect("submit");
    assert_eq!(s.join(&key(1)), Some(a));
    assert_eq!(s.get(a).expect("op").waiters, 2);
    assert_eq!(s.join(&key(2)), None);
    s.next_assignments();
    assert_eq!(s.join(&key(1)), Some(a), "running actions are joined too");
    assert!(s.complete(a, w, "ok"));
    assert_eq!(s.join(&key(1)), None, "a completed action is not joined");
}

#[test]
fn forget_drops_only_completed_operations() {
    let (mut s, _) = sched(SchedConfig::default());
    let (queued, _) = s
        .submit(key(1), Platform::default(), 0, anon(), 1)
        .expect("submit");
    assert!(!s.forget(queued), "a queued operation is not forgotten");
    let hit = s.record_completed(key(2), 2);
    assert!(s.forget(hit));
    assert!(s.get(hit).is_none());
    assert!(!s.forget(hit), "already gone");
    // The retention queue skips it later.
    s.tick();
    assert!(s.get(queued).is_some());
}
