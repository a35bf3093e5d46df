//! Remote leases: operations placed on another host stay ours, and every
//! way a placement ends puts them back or completes them exactly once.

use std::sync::Arc;
use std::time::Duration;

use rbe_sched::scheduler::MAX_REQUEUES;
use rbe_sched::{
    ActionKey, CancelEffect, FakeClock, Outcome, Platform, SchedConfig, Scheduler, Stage, Tenant,
};

fn key(n: u32) -> ActionKey {
    ActionKey {
        instance: String::new(),
        action: format!("sha256:{n:064x}/1"),
    }
}

fn sched() -> (Scheduler<u32, &'static str>, Arc<FakeClock>) {
    let clock = Arc::new(FakeClock::default());
    (Scheduler::new(SchedConfig::default(), clock.clone()), clock)
}

fn anon() -> Tenant {
    Tenant::new("anonymous", "")
}

fn linux() -> Platform {
    Platform::from_pairs([("OSFamily", "linux")])
}

fn order(s: &Scheduler<u32, &'static str>) -> Vec<u64> {
    s.queued_in_order(&linux()).iter().map(|q| q.id).collect()
}

#[test]
fn a_rejected_offer_goes_back_to_its_place_and_is_not_a_requeue() {
    let (mut s, _) = sched();
    s.worker_connect(1, linux());
    let ids: Vec<u64> = (0..3)
        .map(|n| s.submit(key(n), linux(), 0, anon(), n).expect("submit").0)
        .collect();
    assert_eq!(order(&s), ids);
    let lease = s.remote_lease(ids[0]).expect("queued");
    assert!(s.is_remote(lease));
    assert_eq!(s.get(ids[0]).expect("op").stage, Stage::Executing);
    assert_eq!(order(&s), ids[1..]);
    let c = s.counts();
    assert_eq!(
        (c.queued, c.executing, c.offloaded, c.workers),
        (2, 1, 1, 1)
    );
    // Not queued any more: it cannot be leased twice.
    assert_eq!(s.remote_lease(ids[0]), None);

    assert_eq!(s.remote_release(lease), Some(ids[0]));
    assert_eq!(order(&s), ids, "back at the head");
    assert_eq!(s.counts().offloaded, 0);
    assert_eq!(s.queued_in_order(&linux())[0].requeues, 0);
    // The lease is gone: releasing again, or a late result, changes nothing.
    assert_eq!(s.remote_release(lease), None);
    assert!(!s.complete(ids[0], lease, "late"));
    assert_eq!(s.get(ids[0]).expect("op").stage, Stage::Queued);
}

#[test]
fn the_local_worker_never_gets_an_offloaded_operation() {
    let (mut s, _) = sched();
    let (a, _) = s.submit(key(1), linux(), 0, anon(), 1).expect("submit");
    let (b, _) = s.submit(key(2), linux(), 0, anon(), 2).expect("submit");
    let lease = s.remote_lease(a).expect("queued");
    let w = s.worker_connect(2, linux());
    let asg: Vec<_> = s
        .next_assignments()
        .iter()
        .map(|x| (x.op, x.worker))
        .collect();
    assert_eq!(asg, vec![(b, w)]);
    assert!(s.next_assignments().is_empty());
    // The result from the peer completes it once.
    assert!(s.complete(a, lease, "remote"));
    assert_eq!(
        s.get(a).expect("op").outcome,
        Some(&Outcome::Done("remote"))
    );
    assert!(!s.complete(a, lease, "again"));
    assert!(!s.is_remote(lease));
    assert_eq!(s.counts().offloaded, 0);
}

#[test]
fn a_lost_peer_requeues_in_place_and_a_late_result_is_ignored() {
    let (mut s, _) = sched();
    s.worker_connect(1, linux());
    let (a, _) = s.submit(key(1), linux(), 0, anon(), 1).expect("submit");
    let (b, _) = s.submit(key(2), linux(), 0, anon(), 2).expect("submit");
    let lease = s.remote_lease(a).expect("queued");
    assert_eq!(s.worker_disconnect(lease), vec![a]);
    assert_eq!(order(&s), vec![a, b]);
    assert_eq!(s.queued_in_order(&linux())[0].requeues, 1);
    assert!(
        !s.complete(a, lease, "late"),
        "the lease is the fencing token"
    );
    // Lost peer after lost peer: given up like a local worker's.
    for _ in 0..MAX_REQUEUES {
        let l = s.remote_lease(a).expect("queued");
        s.worker_disconnect(l);
    }
    assert!(matches!(
        s.get(a).expect("op").outcome,
        Some(Outcome::Failed(_))
    ));
}

#[test]
fn cancelling_an_offloaded_operation_asks_the_lease_to_kill_it() {
    let (mut s, _) = sched();
    s.worker_connect(1, linux());
    let (a, _) = s.submit(key(1), linux(), 0, anon(), 1).expect("submit");
    let lease = s.remote_lease(a).expect("queued");
    assert_eq!(s.cancel(a), Ok(CancelEffect::Kill(lease)));
    assert_eq!(s.remote_release(lease), None, "stays cancelled");
    assert!(!s.is_remote(lease));
    assert_eq!(s.get(a).expect("op").outcome, Some(&Outcome::Cancelled));
    assert_eq!(s.counts().executing, 0);
}

#[test]
fn remote_leases_are_not_workers_for_matching() {
    let (mut s, clock) = sched();
    s.worker_connect(1, linux());
    let gpu = Platform::from_pairs([("gpu", "1")]);
    // Nothing here offers a gpu: refused, even while a gpu op is placed on
    // a peer (the lease's platform is not an offer of this host).
    assert!(s.submit(key(1), gpu.clone(), 0, anon(), 1).is_err());
    let (a, _) = s.submit(key(2), linux(), 0, anon(), 2).expect("submit");
    s.remote_lease(a).expect("queued");
    assert!(s.submit(key(3), gpu, 0, anon(), 3).is_err());
    clock.advance(Duration::from_secs(60));
    assert!(s.tick().is_empty(), "an offloaded op is not unmatchable");
}

#[test]
fn pool_loads_count_local_workers_only() {
    let (mut s, clock) = sched();
    let w = s.worker_connect(2, linux());
    s.worker_connect(3, linux());
    s.worker_connect(
        1,
        Platform::from_pairs([("OSFamily", "linux"), ("gpu", "1")]),
    );
    let ids: Vec<u64> = (0..8)
        .map(|n| s.submit(key(n), linux(), 0, anon(), n).expect("submit").0)
        .collect();
    let started: Vec<_> = s.next_assignments();
    assert_eq!(started.len(), 6);
    clock.advance(Duration::from_secs(4));
    s.remote_lease(ids[6]).expect("queued");
    let running_on_w = started.iter().find(|a| a.worker == w).expect("on w").op;
    assert!(s.complete(running_on_w, w, "ok"));
    let loads = s.pool_loads();
    assert_eq!(loads.len(), 2);
    let plain = loads.iter().find(|p| p.platform == linux()).expect("pool");
    assert_eq!(
        (plain.slots, plain.running, plain.queued),
        (5, 4, 1),
        "the offloaded op is neither running nor queued here"
    );
    assert_eq!(plain.oldest_queued, Duration::from_secs(4));
    assert_eq!(plain.mean_exec, Duration::from_secs(4));
    let gpu = loads.iter().find(|p| p.platform != linux()).expect("pool");
    assert_eq!(
        (gpu.slots, gpu.queued, gpu.mean_exec),
        (1, 1, Duration::ZERO)
    );
}

#[test]
fn queued_in_order_is_priority_then_arrival() {
    let (mut s, _) = sched();
    let (late, _) = s.submit(key(1), linux(), 5, anon(), 1).expect("submit");
    let (urgent, _) = s
        .submit(key(2), Platform::default(), -1, Tenant::new("b", ""), 2)
        .expect("submit");
    let (first, _) = s.submit(key(3), linux(), 0, anon(), 3).expect("submit");
    let (gpu, _) = s
        .submit(key(4), Platform::from_pairs([("gpu", "1")]), 0, anon(), 4)
        .expect("submit");
    assert_eq!(order(&s), vec![urgent, first, late]);
    let all: Vec<_> = s
        .queued_in_order(&Platform::from_pairs([("OSFamily", "linux"), ("gpu", "1")]))
        .iter()
        .map(|q| q.id)
        .collect();
    assert_eq!(all, vec![urgent, first, gpu, late]);
}
