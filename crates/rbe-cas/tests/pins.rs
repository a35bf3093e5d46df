//! Leases and reclaim together, as casd uses them in `[backing] mode =
//! "jit"`: an action's Materialize pins its inputs under one lease, and its
//! Unpin removes at once what no other lease holds. Actions that share
//! inputs must never lose one to another's Unpin, nor to a reclaim that
//! runs between finding a blob and pinning it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rbe_cas::pins::Leases;
use rbe_cas::Store;
use rbe_proto::Digest;

mod common;
use common::{open, F};

const TTL: Duration = Duration::from_secs(600);

fn put(s: &Arc<Store>, data: &[u8]) -> Digest {
    let d = Digest::of(F, data);
    s.put(d, data).expect("put");
    d
}

/// What Unpin does in jit mode: release, then reclaim what was held.
fn unpin(leases: &Leases, s: &Store, id: &str) {
    let held = leases.release(id).expect("a known lease");
    s.reclaim(&held);
}

#[test]
fn a_blob_two_leases_hold_survives_the_first_unpin() {
    let t = tempfile::tempdir().expect("tmp");
    let s = open(t.path());
    let leases = Leases::new(Arc::clone(&s), TTL);
    let shared = put(&s, b"shared");
    let (a_only, b_only) = (put(&s, b"a"), put(&s, b"b"));
    let a = leases.open(TTL);
    let b = leases.open(TTL);
    assert_eq!(leases.add(&a, &[shared, a_only]), Some(vec![]));
    assert_eq!(leases.add(&b, &[shared, b_only]), Some(vec![]));
    assert_eq!(s.stats().pinned, 3);
    unpin(&leases, &s, &b);
    assert!(s.contains(&shared), "A still holds the shared input");
    assert!(s.contains(&a_only));
    assert!(!s.contains(&b_only), "B's own input is reclaimed");
    assert_eq!(s.stats().pinned, 2);
    unpin(&leases, &s, &a);
    assert!(!s.contains(&shared) && !s.contains(&a_only));
    let st = s.stats();
    assert_eq!((st.pinned, st.blobs, st.bytes), (0, 0, 0), "{st:?}");
}

#[test]
fn a_blob_named_twice_is_held_once_and_released_whole() {
    let t = tempfile::tempdir().expect("tmp");
    let s = open(t.path());
    let leases = Leases::new(Arc::clone(&s), TTL);
    let x = put(&s, b"x");
    let absent = Digest::of(F, b"absent");
    let (id, missing) = leases.pin(vec![x, x, absent, absent], TTL);
    assert_eq!(missing, vec![absent]);
    // Added again in a later round of the same Materialize: no second pin.
    assert_eq!(leases.add(&id, &[x, Digest::empty(F)]), Some(vec![]));
    assert_eq!(s.stats().pinned, 1);
    unpin(&leases, &s, &id);
    assert_eq!(s.stats().pinned, 0);
    assert!(!s.contains(&x), "nothing else held it");
    assert_eq!(leases.add(&id, &[x]), None, "a released lease is gone");
    assert!(leases.release(&id).is_none());
}

/// C found the blob present (a walk, a finished fetch) and has not pinned
/// it yet when B's Unpin reclaims it: C's pin must report it absent, so
/// C fetches it again instead of linking a file that is gone.
#[test]
fn a_blob_reclaimed_before_it_is_pinned_is_reported_absent() {
    let t = tempfile::tempdir().expect("tmp");
    let s = open(t.path());
    let leases = Leases::new(Arc::clone(&s), TTL);
    let x = put(&s, b"x");
    let b = leases.open(TTL);
    let c = leases.open(TTL);
    assert_eq!(leases.add(&b, &[x]), Some(vec![]));
    assert!(s.contains(&x), "C sees it");
    unpin(&leases, &s, &b);
    assert_eq!(leases.add(&c, &[x]), Some(vec![x]), "then finds it gone");
    // C fetches it again; now it holds, whatever others release.
    put(&s, b"x");
    assert_eq!(leases.add(&c, &[x]), Some(vec![]));
    let d = leases.open(TTL);
    assert_eq!(leases.add(&d, &[x]), Some(vec![]));
    unpin(&leases, &s, &d);
    assert!(s.contains(&x));
    unpin(&leases, &s, &c);
    assert!(!s.contains(&x));
}

/// A held blob found corrupt is removed and fetched again, and pinned by a
/// second lease; the first lease's release must not take the second's pin
/// with it (pins are counted per lease, not per index entry, which the
/// removal reset).
#[test]
fn a_pin_survives_another_leases_release_across_a_removal() {
    let t = tempfile::tempdir().expect("tmp");
    let s = open(t.path());
    let leases = Leases::new(Arc::clone(&s), TTL);
    let x = put(&s, b"x");
    let a = leases.open(TTL);
    assert_eq!(leases.add(&a, &[x]), Some(vec![]));
    s.quarantine(&x);
    assert!(!s.contains(&x));
    put(&s, b"x");
    let c = leases.open(TTL);
    assert_eq!(leases.add(&c, &[x]), Some(vec![]));
    unpin(&leases, &s, &a);
    assert!(s.contains(&x), "C's pin holds");
    assert_eq!(s.stats().pinned, 1);
    unpin(&leases, &s, &c);
    assert!(!s.contains(&x));
    assert_eq!(s.stats().pinned, 0);
}

#[test]
fn an_expired_lease_is_swept_with_what_it_held() {
    let t = tempfile::tempdir().expect("tmp");
    let s = open(t.path());
    // The ceiling caps the asked TTL.
    let leases = Leases::new(Arc::clone(&s), Duration::ZERO);
    let x = put(&s, b"x");
    let (_, missing) = leases.pin(vec![x], TTL);
    assert!(missing.is_empty());
    let swept = leases.sweep_released();
    assert_eq!(swept, vec![vec![x]]);
    assert_eq!(s.stats().pinned, 0);
}

/// Many "actions" at once, each pinning a shared blob and one of its own
/// the way Materialize does (pin what is present, put back what is not,
/// pin again), checking its inputs are readable while pinned, then
/// unpinning with a reclaim. No action may ever find a pinned input gone.
#[test]
fn concurrent_actions_sharing_an_input_never_lose_it() {
    const THREADS: u64 = 8;
    const ROUNDS: u64 = 300;
    let t = tempfile::tempdir().expect("tmp");
    let s = open(t.path());
    let leases = Arc::new(Leases::new(Arc::clone(&s), TTL));
    let shared: Vec<u8> = b"shared input".to_vec();
    let lost = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        for n in 0..THREADS {
            let (s, leases, shared) = (Arc::clone(&s), Arc::clone(&leases), shared.clone());
            let lost = Arc::clone(&lost);
            scope.spawn(move || {
                for r in 0..ROUNDS {
                    let own = format!("own {n} {r}").into_bytes();
                    let inputs = [
                        (Digest::of(F, &shared), &shared),
                        (Digest::of(F, &own), &own),
                    ];
                    let id = leases.open(TTL);
                    let ds: Vec<Digest> = inputs.iter().map(|(d, _)| *d).collect();
                    let mut absent = leases.add(&id, &ds).expect("lease");
                    let mut tries = 0;
                    while !absent.is_empty() {
                        tries += 1;
                        assert!(tries < 1000, "never pinned");
                        for d in &absent {
                            let (_, data) = inputs.iter().find(|(x, _)| x == d).expect("input");
                            s.put(*d, data).expect("put");
                        }
                        absent = leases.add(&id, &absent).expect("lease");
                    }
                    for (d, data) in &inputs {
                        match s.read_all(*d) {
                            Ok(got) if got == **data => {}
                            _ => lost.store(true, Ordering::Relaxed),
                        }
                    }
                    unpin(&leases, &s, &id);
                }
            });
        }
    });
    assert!(!lost.load(Ordering::Relaxed), "a pinned input vanished");
    let st = s.stats();
    assert_eq!((st.pinned, st.blobs, st.bytes), (0, 0, 0), "{st:?}");
}
