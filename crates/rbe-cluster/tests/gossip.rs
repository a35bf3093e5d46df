//! Gossip drivers over real UDP on 127.0.0.1: formation, reports, keyless
//! and bad-input hosts, down detection, restart with a new generation.
//! Bounds are generous and only keep a broken build from hanging.

use std::net::SocketAddr;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rbe_cluster::driver::{self, ClusterHandle, ClusterView, DriverConfig, MemberState};
use rbe_cluster::wire::{ClusterKey, Keyring, Wire, VERSION};
use rbe_cluster::{Member, NodeName};
use rbe_proto::cluster::{LoadReport, Pool};
use tokio::time::Instant;

const BOUND: Duration = Duration::from_secs(40);

fn key(b: u8) -> Keyring {
    Keyring::new(ClusterKey::from_bytes([b; 32]))
}

fn config(node: &str, generation: u64, seeds: Vec<String>, keys: Keyring) -> DriverConfig {
    let me = Member {
        node: NodeName::new(node).expect("node"),
        generation,
        gossip_addr: "127.0.0.1:0".parse().expect("addr"),
        peer_addr: "127.0.0.1:1".parse().expect("addr"),
    };
    let mut c = DriverConfig::new("test", me, seeds, keys, 4);
    // Shorter than a LAN's so down detection takes seconds, not tens.
    c.foca.probe_period = Duration::from_millis(300);
    c.foca.probe_rtt = Duration::from_millis(150);
    c.foca.suspect_to_down_after = Duration::from_millis(1500);
    c.report_interval = Duration::from_millis(200);
    c
}

async fn start(c: DriverConfig) -> ClusterHandle {
    let h = driver::bind(c, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    h
}

fn seed(h: &ClusterHandle) -> String {
    h.local_addr().to_string()
}

fn report(slots: u32) -> LoadReport {
    LoadReport {
        proto: 1,
        accepting: true,
        pools: vec![Pool {
            slots,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Waits until `pred` holds for the view, or the bound passes.
async fn wait_for(h: &ClusterHandle, what: &str, pred: impl Fn(&ClusterView) -> bool) {
    let mut rx = h.view();
    let deadline = Instant::now() + BOUND;
    loop {
        if pred(&rx.borrow_and_update()) {
            return;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!("{what}: not within {BOUND:?}; view {:#?}", *rx.borrow()),
        }
    }
}

/// `node` is up in the view with a report of `slots`.
fn up_with_report(v: &ClusterView, node: &str, generation: u64, slots: u32) -> bool {
    v.get(node).is_some_and(|m| {
        m.state == MemberState::Up
            && m.member.generation == generation
            && m.report
                .as_ref()
                .is_some_and(|(r, _)| r.pools.first().is_some_and(|p| p.slots == slots))
    })
}

async fn three() -> [ClusterHandle; 3] {
    let a = start(config("a", 1, vec![], key(1))).await;
    let b = start(config("b", 1, vec![seed(&a)], key(1))).await;
    let c = start(config("c", 1, vec![seed(&a), seed(&b)], key(1))).await;
    for (h, slots) in [(&a, 1), (&b, 4), (&c, 8)] {
        h.publish_report(report(slots));
    }
    for h in [&a, &b, &c] {
        wait_for(h, "three members with reports", |v| {
            [("a", 1), ("b", 4), ("c", 8)]
                .iter()
                .filter(|(n, _)| *n != v.me.node.as_str())
                .all(|(n, s)| up_with_report(v, n, 1, *s))
        })
        .await;
    }
    [a, b, c]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_drivers_form_a_cluster_and_see_each_others_reports() {
    let [a, b, c] = three().await;
    // A newer report replaces the older one everywhere.
    b.publish_report(report(5));
    for h in [&a, &c] {
        wait_for(h, "b's newer report", |v| up_with_report(v, "b", 1, 5)).await;
    }
    let n = a.counters();
    assert!(n.packets_in > 0 && n.packets_out > 0);
    assert_eq!(
        n.auth_failures + n.replays + n.malformed + n.oversized,
        0,
        "{n:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_the_key_or_of_another_cluster_never_becomes_a_member() {
    let [a, b, c] = three().await;
    let all = vec![seed(&a), seed(&b), seed(&c)];
    let keyless = start(config("x", 1, all.clone(), key(2))).await;
    keyless.publish_report(report(64));
    let mut other = config("y", 1, all.clone(), key(1));
    other.cluster_name = "other".into();
    let other = start(other).await;
    other.publish_report(report(64));

    // Until every member has refused some of both intruders' datagrams,
    // and for a while after, neither appears anywhere.
    let deadline = Instant::now() + BOUND;
    let mut quiet_until: Option<Instant> = None;
    loop {
        for h in [&a, &b, &c] {
            let v = h.view().borrow().clone();
            assert!(v.get("x").is_none() && v.get("y").is_none(), "{v:#?}");
            assert_eq!(v.live().count(), 2);
        }
        for h in [&keyless, &other] {
            assert!(h.view().borrow().members.is_empty());
        }
        let refused = [&a, &b, &c].iter().all(|h| h.counters().auth_failures >= 2);
        match quiet_until {
            None if refused => quiet_until = Some(Instant::now() + Duration::from_secs(2)),
            Some(t) if Instant::now() >= t => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "intruders were never refused by all"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_driver_is_declared_down_and_its_restart_replaces_it() {
    let [a, b, c] = three().await;
    drop(c);
    for h in [&a, &b] {
        wait_for(h, "c declared down", |v| {
            v.get("c").is_some_and(|m| m.state == MemberState::Down)
        })
        .await;
    }
    // Restarted: same node name, new generation, new port.
    let c2 = start(config("c", 2, vec![seed(&a)], key(1))).await;
    c2.publish_report(report(16));
    for h in [&a, &b] {
        wait_for(h, "c rejoined with generation 2", |v| {
            up_with_report(v, "c", 2, 16)
        })
        .await;
        let v = h.view().borrow().clone();
        assert_eq!(
            v.members
                .iter()
                .filter(|m| m.member.node.as_str() == "c")
                .count(),
            1
        );
    }
    wait_for(&c2, "c2 sees a and b", |v| v.live().count() == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_driver_is_down_at_once() {
    let [a, b, c] = three().await;
    let left = Instant::now();
    c.leave().await;
    for h in [&a, &b] {
        wait_for(h, "c left", |v| {
            v.get("c").is_some_and(|m| m.state == MemberState::Down)
        })
        .await;
    }
    // Quicker than suspicion would take (probe + 1.5 s), with slack.
    assert!(left.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_that_do_not_resolve_are_counted_and_the_rest_still_join() {
    let a = start(config("a", 1, vec![], key(1))).await;
    let b = start(config(
        "b",
        1,
        vec![
            "no-such-host.invalid:7946".into(),
            "not-even-a-port".into(),
            seed(&a),
        ],
        key(1),
    ))
    .await;
    wait_for(&b, "b joined a", |v| v.live().count() == 1).await;
    assert!(b.counters().unresolved_seeds >= 2, "{:?}", b.counters());
    wait_for(&a, "a sees b", |v| v.live().count() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_datagrams_changes_nothing_but_counters() {
    let [a, b, c] = three().await;
    let target: SocketAddr = a.local_addr();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let key_id = ClusterKey::from_bytes([1; 32]).id();
    let mut sent = 0u64;
    for i in 0..3000 {
        let len = rng.random_range(0..2000);
        let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Half look like our envelope, so they get as far as the AEAD.
        if i % 2 == 0 && d.len() >= 2 {
            d[0] = VERSION;
            d[1] = key_id;
        }
        if sock.send_to(&d, target).is_ok() {
            sent += 1;
        }
        if i % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Authentic but not foca, then the same datagram again.
    let mut w = Wire::new("test", key(1));
    let junk = w.seal(b"\x01\x02not foca").expect("seal");
    sock.send_to(&junk, target).expect("send");
    sock.send_to(&junk, target).expect("send");
    let deadline = Instant::now() + BOUND;
    loop {
        let n = a.counters();
        if n.replays >= 1 && n.malformed >= 1 && n.auth_failures > 0 && n.oversized > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{n:?} after {sent} sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still the same cluster, and it still works.
    b.publish_report(report(7));
    wait_for(&a, "b's report after the flood", |v| {
        v.live().count() == 2 && up_with_report(v, "b", 1, 7) && up_with_report(v, "c", 1, 8)
    })
    .await;
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_through_reload_without_losing_the_cluster() {
    let [a, b, c] = three().await;
    let old = ClusterKey::from_bytes([1; 32]);
    let new = (2u8..=255)
        .map(|x| ClusterKey::from_bytes([x; 32]))
        .find(|k| k.id() != old.id())
        .expect("a key of another id");
    // Step 1: everyone accepts the new key.
    for h in [&a, &b, &c] {
        h.reload_keys(Keyring::new(old.clone()).with_old([new.clone()]))
            .await;
    }
    // Step 2: everyone sends with it.
    for h in [&a, &b, &c] {
        h.reload_keys(Keyring::new(new.clone()).with_old([old.clone()]))
            .await;
    }
    // Step 3: the old key is dropped.
    for h in [&a, &b, &c] {
        h.reload_keys(Keyring::new(new.clone())).await;
    }
    a.publish_report(report(3));
    for h in [&b, &c] {
        wait_for(h, "a's report under the new key", |v| {
            v.live().count() == 2 && up_with_report(v, "a", 1, 3)
        })
        .await;
    }
    // A host still on the old key alone is now an outsider.
    let stale = start(config("z", 1, vec![seed(&a)], Keyring::new(old))).await;
    let deadline = Instant::now() + BOUND;
    while a.counters().auth_failures == 0 {
        assert!(Instant::now() < deadline, "old-key datagrams never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.view().borrow().get("z").is_none());
    assert!(stale.view().borrow().members.is_empty());
}

#[tokio::test]
async fn a_wildcard_address_with_nothing_to_advertise_is_refused() {
    let mut c = config("w", 1, vec![], key(1));
    c.identity.gossip_addr = "0.0.0.0:0".parse().expect("addr");
    let r = driver::bind(c, "0.0.0.0:0".parse().expect("addr")).await;
    assert!(matches!(r, Err(driver::DriverError::Unadvertisable(_))));
    // Bound to a specific address, that address is advertised.
    let mut c = config("w", 1, vec![], key(1));
    c.identity.gossip_addr = "0.0.0.0:0".parse().expect("addr");
    let h = start(c).await;
    assert_eq!(h.view().borrow().me.gossip_addr, h.local_addr());
}

/// A host's direct answers (to an offer, with a finished lease) carry the
/// seq of its last gossiped report, and a peer's table takes them over
/// that report; an answer with an older seq (0, as the frontend once sent)
/// is dropped as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_answer_carries_the_last_gossiped_seq() {
    use rbe_cluster::policy::{PeerTable, ReportUse};
    let [a, b, _c] = three().await;
    b.publish_report(report(6));
    wait_for(&a, "b's report of 6 slots", |v| {
        up_with_report(v, "b", 1, 6)
    })
    .await;
    let gossiped = a
        .view()
        .borrow()
        .get("b")
        .and_then(|m| m.report.clone())
        .expect("b's report")
        .0;
    assert!(gossiped.seq > 0);
    // b re-sends its report every interval, each time with the next seq.
    assert!(b.report_seq() >= gossiped.seq);

    let mut table = PeerTable::new(NodeName::new("a").expect("node"));
    let now = Duration::from_secs(1);
    assert_eq!(table.on_report(now, &gossiped), ReportUse::Taken);
    let answer = |seq: u64| LoadReport {
        node: "b".into(),
        generation: 1,
        seq,
        ..report(6)
    };
    assert_eq!(
        table.on_direct(now, &answer(b.report_seq())),
        ReportUse::Taken
    );
    assert_eq!(table.on_direct(now, &answer(0)), ReportUse::Old);
}
