//! The policy's rules, one at a time, with a fixed clock and seeded RNG.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rbe_proto::cluster::{LoadReport, Pool, Property, RejectReason};
use rbe_sched::{Platform, PoolLoad};

use super::*;

fn node(s: &str) -> NodeName {
    NodeName::new(s).expect("valid name")
}

fn linux() -> Platform {
    Platform::from_pairs([("OSFamily", "linux")])
}

fn pool(slots: u32, running: u32, queued: u32) -> Pool {
    Pool {
        platform: vec![Property {
            name: "OSFamily".into(),
            value: "linux".into(),
        }],
        slots,
        running,
        queued,
        incoming: 0,
        oldest_queued_ms: 0,
        mean_exec_ms: 0,
    }
}

fn report(name: &str, seq: u64, pools: Vec<Pool>) -> LoadReport {
    LoadReport {
        node: name.into(),
        generation: 1,
        seq,
        proto: PROTO,
        accepting: true,
        store_id: 0,
        pools,
        peer_addr: String::new(),
    }
}

fn table(peers: &[(&str, Pool)]) -> PeerTable {
    let mut t = PeerTable::new(node("me"));
    for (n, p) in peers {
        assert_eq!(
            t.on_report(Duration::ZERO, &report(n, 1, vec![p.clone()])),
            ReportUse::Taken
        );
    }
    t
}

/// The tests' figures assume admission within half a round.
fn cfg() -> OffloadConfig {
    OffloadConfig {
        accept_max_rounds: 0.5,
        ..OffloadConfig::default()
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

fn pick(p: &OffloadPolicy, t: &PeerTable, now: Duration, local: f64) -> Decision {
    p.pick(now, &mut rng(), t, local, &linux())
}

fn target(d: &Decision) -> Option<&str> {
    match d {
        Decision::Offer { to, .. } => Some(to.as_str()),
        Decision::Keep(_) => None,
    }
}

#[test]
fn below_the_threshold_nothing_moves() {
    let p = OffloadPolicy::new(cfg());
    let t = table(&[("b", pool(8, 0, 0))]);
    assert_eq!(
        pick(&p, &t, Duration::ZERO, 0.99),
        Decision::Keep(KeepReason::BelowThreshold)
    );
    assert_eq!(target(&pick(&p, &t, Duration::ZERO, 1.0)), Some("b"));
}

#[test]
fn a_move_must_improve_by_the_hysteresis() {
    // Admission out of the way: this is about hysteresis alone.
    let p = OffloadPolicy::new(OffloadConfig {
        accept_max_rounds: 10.0,
        ..cfg()
    });
    // b: 4 slots all busy, 3 queued: an action would wait (4+3+1-4)/4 = 1 round.
    let t = table(&[("b", pool(4, 4, 3))]);
    assert_eq!(
        pick(&p, &t, Duration::ZERO, 1.4),
        Decision::Keep(KeepReason::NoImprovement)
    );
    assert_eq!(target(&pick(&p, &t, Duration::ZERO, 1.5)), Some("b"));
}

#[test]
fn peers_that_would_reject_get_no_offer() {
    let p = OffloadPolicy::new(cfg());
    // However long the local queue, a peer with a round of work waiting
    // would say busy.
    let t = table(&[("b", pool(4, 4, 4))]);
    assert_eq!(
        pick(&p, &t, Duration::ZERO, 100.0),
        Decision::Keep(KeepReason::PeersFull)
    );
}

#[test]
fn stale_reports_are_no_candidates() {
    let p = OffloadPolicy::new(cfg());
    let mut t = table(&[("b", pool(8, 0, 0))]);
    let max = p.config().report_max_age;
    assert_eq!(target(&pick(&p, &t, max, 5.0)), Some("b"));
    assert_eq!(
        pick(&p, &t, max + Duration::from_millis(1), 5.0),
        Decision::Keep(KeepReason::NoFreshCandidate)
    );
    // An old seq arriving late does not refresh it; a newer one does.
    let later = max * 2;
    assert_eq!(
        t.on_report(later, &report("b", 1, vec![pool(8, 0, 0)])),
        ReportUse::Old
    );
    assert_eq!(
        pick(&p, &t, later, 5.0),
        Decision::Keep(KeepReason::NoFreshCandidate)
    );
    assert_eq!(
        t.on_report(later, &report("b", 2, vec![pool(8, 0, 0)])),
        ReportUse::Taken
    );
    match pick(&p, &t, later + Duration::from_millis(300), 5.0) {
        Decision::Offer { report_age, .. } => assert_eq!(report_age, Duration::from_millis(300)),
        d => panic!("{d:?}"),
    }
}

#[test]
fn platform_must_match_and_draining_or_other_protocol_peers_are_skipped() {
    let p = OffloadPolicy::new(cfg());
    let mut t = table(&[("b", pool(8, 0, 0))]);
    let gpu = Platform::from_pairs([("OSFamily", "linux"), ("gpu", "1")]);
    assert_eq!(
        p.pick(Duration::ZERO, &mut rng(), &t, 5.0, &gpu),
        Decision::Keep(KeepReason::NoPlatformMatch)
    );
    let mut r = report("b", 2, vec![pool(8, 0, 0)]);
    r.accepting = false;
    t.on_report(Duration::ZERO, &r);
    assert_eq!(
        pick(&p, &t, Duration::ZERO, 5.0),
        Decision::Keep(KeepReason::NoFreshCandidate)
    );
    let mut r = report("b", 3, vec![pool(8, 0, 0)]);
    r.proto = PROTO + 1;
    t.on_report(Duration::ZERO, &r);
    assert_eq!(
        pick(&p, &t, Duration::ZERO, 5.0),
        Decision::Keep(KeepReason::NoFreshCandidate)
    );
}

#[test]
fn own_reports_and_bad_names_are_ignored() {
    let mut t = PeerTable::new(node("me"));
    assert_eq!(
        t.on_report(Duration::ZERO, &report("me", 1, vec![])),
        ReportUse::Ignored
    );
    assert_eq!(
        t.on_report(Duration::ZERO, &report("Not/A-Name", 1, vec![])),
        ReportUse::Ignored
    );
    assert_eq!(
        t.on_report(Duration::ZERO, &report("", 1, vec![])),
        ReportUse::Ignored
    );
    assert!(t.is_empty());
}

#[test]
fn optimistic_accounting_spreads_a_burst_and_the_cap_stops_it() {
    // One origin, 64 queued, three idle 4-slot peers with reports that
    // will not change during the burst.
    let spread = |cfg: OffloadConfig| {
        let p = OffloadPolicy::new(cfg);
        let mut t = table(&[
            ("b", pool(4, 0, 0)),
            ("c", pool(4, 0, 0)),
            ("d", pool(4, 0, 0)),
        ]);
        let mut got: BTreeMap<String, u32> = BTreeMap::new();
        let mut r = rng();
        loop {
            match p.pick(Duration::ZERO, &mut r, &t, 64.0, &linux()) {
                Decision::Offer { to, .. } => {
                    t.offer_sent(&to);
                    *got.entry(to.to_string()).or_default() += 1;
                }
                Decision::Keep(why) => return (got.values().copied().collect::<Vec<_>>(), why),
            }
        }
    };
    // Each peer gets what it would admit: 4 slots and 2 waiting
    // ((4+1+1-4)/4 = 0.5 rounds), never more.
    assert_eq!(spread(cfg()), (vec![6, 6, 6], KeepReason::PeersFull));
    // And never more than the cap.
    assert_eq!(
        spread(OffloadConfig {
            max_offers_per_peer: 3,
            ..cfg()
        }),
        (vec![3, 3, 3], KeepReason::PeerCap)
    );
    let mut r = rng();

    // Without optimism every offer lands on whichever looks best: the
    // first pick wins every time until the cap.
    let blind = OffloadPolicy::new(OffloadConfig {
        optimistic: false,
        choices: Choices::All,
        max_offers_per_peer: u32::MAX,
        ..cfg()
    });
    let mut t = table(&[
        ("b", pool(4, 0, 0)),
        ("c", pool(8, 0, 0)),
        ("d", pool(4, 0, 0)),
    ]);
    for _ in 0..20 {
        let d = blind.pick(Duration::ZERO, &mut r, &t, 64.0, &linux());
        assert_eq!(target(&d), Some("c"), "herds on the biggest idle peer");
        if let Decision::Offer { to, .. } = d {
            t.offer_sent(&to);
        }
    }
}

#[test]
fn optimism_raises_the_score_until_a_reply_or_report_shows_the_truth() {
    let p = OffloadPolicy::new(OffloadConfig {
        accept_max_rounds: 10.0,
        ..cfg()
    });
    let mut t = table(&[("b", pool(2, 2, 0))]);
    let b = node("b");
    // Full but with no queue: waits (2+0+1-2)/2 = 0.5 rounds.
    let first = pick(&p, &t, Duration::ZERO, 2.0);
    assert!(matches!(first, Decision::Offer { rounds, .. } if rounds == 0.5));
    t.offer_sent(&b);
    t.offer_sent(&b);
    // Two pending: (2+2+1-2)/2 = 1.5 > 2.0 - 0.5? No: 1.5 <= 1.5.
    assert!(
        matches!(pick(&p, &t, Duration::ZERO, 2.0), Decision::Offer { rounds, .. } if rounds == 1.5)
    );
    t.offer_sent(&b);
    assert_eq!(
        pick(&p, &t, Duration::ZERO, 2.0),
        Decision::Keep(KeepReason::NoImprovement)
    );
    // A reject with fresh load (same seq, now idle) replaces the entry.
    t.offer_answered(
        Duration::ZERO,
        &b,
        false,
        Some(&report("b", 1, vec![pool(2, 0, 0)])),
    );
    assert_eq!(t.get(&b).map(|x| x.in_flight), Some(2));
    assert!(
        matches!(pick(&p, &t, Duration::ZERO, 2.0), Decision::Offer { rounds, .. } if rounds == 0.5)
    );
    // Accepts without load stay counted until the next report.
    t.offer_answered(Duration::ZERO, &b, true, None);
    t.offer_answered(Duration::ZERO, &b, true, None);
    assert_eq!(t.get(&b).map(Peer::pending), Some(2));
    t.on_report(Duration::ZERO, &report("b", 2, vec![pool(2, 2, 0)]));
    assert_eq!(t.get(&b).map(Peer::pending), Some(0));
}

#[test]
fn best_of_two_samples_two_and_takes_the_better() {
    // Ten peers, one much better than the rest: best-of-2 finds it about
    // 2/10 of the time, "all" always, 1 about 1/10.
    let mut peers: Vec<(String, Pool)> = (0..9).map(|i| (format!("p{i}"), pool(4, 4, 1))).collect();
    peers.push(("best".into(), pool(4, 0, 0)));
    let refs: Vec<(&str, Pool)> = peers.iter().map(|(n, p)| (n.as_str(), p.clone())).collect();
    let t = table(&refs);
    let share = |choices: Choices| {
        let p = OffloadPolicy::new(OffloadConfig { choices, ..cfg() });
        let mut r = rng();
        let n = 2000;
        let mut best = 0;
        for _ in 0..n {
            let d = p.pick(Duration::ZERO, &mut r, &t, 10.0, &linux());
            assert!(matches!(d, Decision::Offer { .. }));
            if target(&d) == Some("best") {
                best += 1;
            }
        }
        f64::from(best) / f64::from(n)
    };
    let one = share(Choices::Sample(1));
    let two = share(Choices::Sample(2));
    assert!((0.07..0.13).contains(&one), "{one}");
    assert!((0.16..0.24).contains(&two), "{two}");
    assert_eq!(share(Choices::All), 1.0);
}

#[test]
fn the_runner_up_is_offered_as_fallback_only_if_it_would_take_it() {
    let p = OffloadPolicy::new(cfg());
    // c would wait (4+2+1-4)/4 = 0.75 rounds: more than it admits.
    let t = table(&[("b", pool(4, 0, 0)), ("c", pool(4, 4, 2))]);
    match pick(&p, &t, Duration::ZERO, 10.0) {
        Decision::Offer { to, fallback, .. } => {
            assert_eq!((to.as_str(), fallback), ("b", None));
        }
        d => panic!("{d:?}"),
    }
    let t = table(&[("b", pool(4, 0, 0)), ("c", pool(4, 4, 1))]);
    match pick(&p, &t, Duration::ZERO, 10.0) {
        Decision::Offer { to, fallback, .. } => {
            assert_eq!(
                (to.as_str(), fallback.as_ref().map(NodeName::as_str)),
                ("b", Some("c"))
            );
        }
        d => panic!("{d:?}"),
    }
}

fn own(slots: u32, running: u32, queued: u32) -> Vec<PoolLoad> {
    vec![PoolLoad {
        platform: linux(),
        slots,
        running,
        queued,
        ..PoolLoad::default()
    }]
}

#[test]
fn admission() {
    let mut p = OffloadPolicy::new(cfg());
    let a = node("a");
    let l = linux();
    let offer = OfferInfo {
        origin: &a,
        platform: &l,
        hop: 0,
        proto: PROTO,
    };
    let host = |pools: &'static [PoolLoad], incoming: u32| HostLoad {
        accepting: true,
        pools,
        incoming,
    };
    let now = Duration::ZERO;
    let idle: &'static [PoolLoad] = Box::leak(own(1, 0, 0).into_boxed_slice());
    assert_eq!(p.admit(now, &host(idle, 0), &offer), Ok(()));
    // A one-slot host that is busy would start it a whole round later.
    let busy1: &'static [PoolLoad] = Box::leak(own(1, 1, 0).into_boxed_slice());
    assert_eq!(
        p.admit(now, &host(busy1, 0), &offer),
        Err(RejectReason::Busy)
    );
    // 8 busy slots: accepts while at most 3 are ahead ((8+3+1-8)/8 = 0.5).
    let eight: &'static [PoolLoad] = Box::leak(own(8, 8, 3).into_boxed_slice());
    assert_eq!(p.admit(now, &host(eight, 0), &offer), Ok(()));
    assert_eq!(
        p.admit(now, &host(eight, 1), &offer),
        Err(RejectReason::Busy),
        "incoming counts"
    );
    assert_eq!(
        p.admit(
            now,
            &HostLoad {
                accepting: false,
                ..host(idle, 0)
            },
            &offer
        ),
        Err(RejectReason::Draining)
    );
    assert_eq!(
        p.admit(now, &host(idle, 0), &OfferInfo { hop: 1, ..offer }),
        Err(RejectReason::Hop)
    );
    assert_eq!(
        p.admit(
            now,
            &host(idle, 0),
            &OfferInfo {
                proto: PROTO + 1,
                ..offer
            }
        ),
        Err(RejectReason::Version)
    );
    let gpu = Platform::from_pairs([("gpu", "1")]);
    assert_eq!(
        p.admit(
            now,
            &host(idle, 0),
            &OfferInfo {
                platform: &gpu,
                ..offer
            }
        ),
        Err(RejectReason::NoPlatform)
    );
}

#[test]
fn one_origin_cannot_flood_an_executor() {
    let mut p = OffloadPolicy::new(OffloadConfig {
        admit_per_origin_per_sec: 10.0,
        admit_per_origin_burst: 5.0,
        ..cfg()
    });
    let (a, b) = (node("a"), node("b"));
    let l = linux();
    let pools = own(1000, 0, 0);
    let host = HostLoad {
        accepting: true,
        pools: &pools,
        incoming: 0,
    };
    let from = |o| OfferInfo {
        origin: o,
        platform: &l,
        hop: 0,
        proto: PROTO,
    };
    for _ in 0..5 {
        assert_eq!(p.admit(Duration::ZERO, &host, &from(&a)), Ok(()));
    }
    assert_eq!(
        p.admit(Duration::ZERO, &host, &from(&a)),
        Err(RejectReason::Rate)
    );
    assert_eq!(
        p.admit(Duration::ZERO, &host, &from(&b)),
        Ok(()),
        "per origin"
    );
    assert_eq!(
        p.admit(Duration::from_millis(100), &host, &from(&a)),
        Ok(())
    );
}

#[test]
fn a_restarted_peer_replaces_its_old_self_and_forgets_our_offers() {
    let mut t = table(&[("b", pool(4, 0, 0))]);
    let b = node("b");
    t.offer_sent(&b);
    let mut r = report("b", 1, vec![pool(4, 0, 0)]);
    r.generation = 2;
    assert_eq!(t.on_report(Duration::ZERO, &r), ReportUse::Taken);
    assert_eq!(t.get(&b).map(Peer::pending), Some(0));
    let mut old = report("b", 9, vec![]);
    old.generation = 1;
    assert_eq!(t.on_report(Duration::ZERO, &old), ReportUse::Old);
}

#[test]
fn the_report_carries_the_pools() {
    let pools = own(8, 3, 2);
    let r = load_report(&node("c"), 5, 9, true, 0, &pools, 1);
    assert_eq!(
        (r.node.as_str(), r.generation, r.seq, r.proto),
        ("c", 5, 9, PROTO)
    );
    let back = PeerPool::from_report(&r.pools[0]);
    assert_eq!(back.platform, linux());
    assert_eq!(
        (back.slots, back.running, back.queued, back.incoming),
        (8, 3, 2, 1)
    );
}

const MS: Duration = Duration::from_millis(1);

fn backoff() -> Backoff {
    OffloadConfig::default().busy_backoff
}

#[test]
fn the_busy_backoff_doubles_and_is_capped() {
    let b = Backoff {
        base: 250 * MS,
        max: Duration::from_secs(8),
    };
    let waits: Vec<u64> = (1..=8).map(|n| b.after(n).as_millis() as u64).collect();
    assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
    assert_eq!(b.after(u32::MAX), b.max, "no overflow");
}

/// b rejects as BUSY though its report showed room (the report was
/// stale): b gets no offer until its backoff ends, while c still does.
#[test]
fn a_peer_that_rejected_as_busy_gets_no_offer_until_its_backoff_ends() {
    let p = OffloadPolicy::new(cfg());
    let mut t = table(&[("b", pool(4, 2, 0))]);
    let t1 = 100 * MS;
    assert_eq!(target(&pick(&p, &t, t1, 5.0)), Some("b"));
    t.offer_sent(&node("b"));
    // The reject's load still shows a free slot.
    let load = report("b", 2, vec![pool(4, 3, 0)]);
    t.offer_answered(t1, &node("b"), false, Some(&load));
    assert_eq!(t.rejected_busy(t1, &node("b"), backoff()), 250 * MS);
    assert_eq!(
        pick(&p, &t, t1 + 249 * MS, 5.0),
        Decision::Keep(KeepReason::PeerCap)
    );
    // Another peer is not held back by b's rejects.
    let mut both = t.clone();
    both.on_report(t1, &report("c", 1, vec![pool(4, 2, 0)]));
    assert_eq!(target(&pick(&p, &both, t1, 5.0)), Some("c"));
    // The wait is over (the report is still fresh).
    assert_eq!(target(&pick(&p, &t, t1 + 250 * MS, 5.0)), Some("b"));
    // A second BUSY in a row waits twice as long.
    let t2 = t1 + 300 * MS;
    assert_eq!(t.rejected_busy(t2, &node("b"), backoff()), 500 * MS);
    assert!(t
        .get(&node("b"))
        .is_some_and(|b| b.backing_off(t2 + 499 * MS)));
    assert!(!t
        .get(&node("b"))
        .is_some_and(|b| b.backing_off(t2 + 500 * MS)));
}

#[test]
fn an_accept_or_a_newer_report_with_room_ends_the_backoff() {
    let p = OffloadPolicy::new(cfg());
    let b = node("b");
    let mut t = table(&[("b", pool(4, 2, 0))]);
    let t1 = 100 * MS;
    for _ in 0..3 {
        t.rejected_busy(t1, &b, backoff());
    }
    // A newer report of a full pool: still backing off.
    t.on_report(t1 + 10 * MS, &report("b", 2, vec![pool(4, 4, 1)]));
    assert!(t.get(&b).is_some_and(|p| p.backing_off(t1 + 10 * MS)));
    // The same seq again is old news, and changes nothing.
    t.on_report(t1 + 20 * MS, &report("b", 2, vec![pool(4, 0, 0)]));
    assert!(t.get(&b).is_some_and(|p| p.backing_off(t1 + 20 * MS)));
    // A newer one with a free slot: offers go to b again at once.
    t.on_report(t1 + 30 * MS, &report("b", 3, vec![pool(4, 2, 0)]));
    assert_eq!(target(&pick(&p, &t, t1 + 30 * MS, 5.0)), Some("b"));
    // Three rejects, then an accept: the next reject starts from the base.
    for _ in 0..3 {
        t.rejected_busy(t1, &b, backoff());
    }
    t.offer_sent(&b);
    t.offer_answered(t1 + 40 * MS, &b, true, None);
    assert!(!t.get(&b).is_some_and(|p| p.backing_off(t1 + 40 * MS)));
    assert_eq!(t.rejected_busy(t1 + 50 * MS, &b, backoff()), 250 * MS);
}
