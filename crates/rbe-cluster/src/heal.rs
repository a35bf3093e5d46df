//! What the driver adds to foca so that a cluster heals after a partition
//! (issue 12, `partition_heals`). The simulator and the deterministic
//! tests (`tests/heal.rs`) call the same functions.
//!
//! **Suspicions raised by a dead identity.** foca drops every pending timer
//! when its identity changes (the timer token goes up), including the
//! suspect-to-down timers of the suspicions it raised. The host cut off by
//! a partition suspects everyone on the other side; when the heal brings
//! it a TurnUndead it rejoins under the next generation, and those
//! suspicions stay, with no timer to end them. The suspects never hear of
//! them (the updates were spent on datagrams the partition dropped), so
//! they never refute; they answer every probe, their reports flow, and
//! they stay `suspect` here for as long as the process lives. Those
//! suspicions were raised by the side that was cut off, the one the
//! cluster declared down, so on a rejoin they are dropped
//! ([`clear_suspicions`]): each suspect is marked alive here, one
//! incarnation above the suspicion, not broadcast. A member really gone is
//! suspected again by the next failed probe, with a timer.
//!
//! **Suspicions without a timer at all** ([`SuspectWatch`]). foca arms the
//! timer only on the host whose own probe failed; a host that learns a
//! suspicion through gossip arms nothing, and the prober may lose its
//! timer as above. So each host keeps its own clock on every suspicion it
//! holds, as SWIM's other implementations do (memberlist starts a timer on
//! a gossiped suspicion): one still standing at the same incarnation after
//! twice foca's timeout is declared down, the verdict foca's timer would
//! have reached. The margin leaves foca's own timer, and a refutation in
//! flight, to act first in the ordinary case.
//!
//! **A renewed identity nobody has heard of** ([`announce_targets`]). After
//! a rejoin foca is disconnected until a datagram addressed to its new
//! identity arrives; until then it neither probes nor gossips on a timer.
//! If every member it lists is a previous identity of its host (the
//! others renewed too), datagrams to them are dropped by their receivers,
//! and nothing reaches it until some host's periodic announce to down
//! members, 65 s later. So while foca is not connected the driver
//! announces to the address of every member it lists, which every
//! receiver accepts whatever its generation.
//!
//! Measured on `tests/heal.rs`'s 100 traces of the booted test's partition
//! (2026-12-03): bare foca left 3 with a member suspect for good and a
//! tenth took over a minute; dropping suspicions on rejoin alone ends the
//! stuck ones (worst 9.5 s), the announces bring the worst to 3.8 s, and
//! the watch alone ends them only slowly (up to 2 min): it is the backstop
//! for suspicions that lose their timer some other way.
//!
//! Time is a `Duration` since any fixed start (monotonic), injected.

use std::collections::HashMap;
use std::time::Duration;

use std::net::SocketAddr;

use foca::{Incarnation, State};

use crate::identity::Member;

/// The updates that drop the suspicions this host holds, to apply with
/// `Foca::apply_many(.., false, ..)` right after a `Rejoin`.
pub fn clear_suspicions<'a>(
    members: impl Iterator<Item = &'a foca::Member<Member>>,
) -> Vec<foca::Member<Member>> {
    members
        .filter(|m| m.state() == State::Suspect && m.incarnation() < Incarnation::MAX)
        .map(|m| foca::Member::new(m.id().clone(), m.incarnation() + 1, State::Alive))
        .collect()
}

/// Where to announce while foca is not connected: every member's gossip
/// address, once each, whatever its state.
pub fn announce_targets<'a>(
    members: impl Iterator<Item = &'a foca::Member<Member>>,
) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = members
        .filter(|m| !m.id().is_seed())
        .map(|m| m.id().gossip_addr)
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// Suspicions seen, with when each was first seen at its incarnation.
#[derive(Debug)]
pub struct SuspectWatch {
    timeout: Duration,
    seen: HashMap<Member, (Incarnation, Duration)>,
}

impl SuspectWatch {
    /// A suspicion is ended `2 × suspect_to_down_after` after it is first
    /// seen here.
    pub fn new(suspect_to_down_after: Duration) -> Self {
        Self {
            timeout: suspect_to_down_after.saturating_mul(2),
            seen: HashMap::new(),
        }
    }

    /// Looks at foca's member list at `now`; returns the suspects whose
    /// time is up, as the Down updates to apply (`Foca::apply_many`).
    /// Members no longer suspect are forgotten, so a later suspicion of
    /// the same member starts a new clock.
    pub fn check<'a>(
        &mut self,
        members: impl Iterator<Item = &'a foca::Member<Member>>,
        now: Duration,
    ) -> Vec<foca::Member<Member>> {
        let mut still = HashMap::new();
        let mut due = Vec::new();
        for m in members.filter(|m| m.state() == State::Suspect) {
            let since = match self.seen.get(m.id()) {
                Some((inc, t)) if *inc == m.incarnation() => *t,
                _ => now,
            };
            if now.saturating_sub(since) >= self.timeout {
                due.push(foca::Member::new(
                    m.id().clone(),
                    m.incarnation(),
                    State::Down,
                ));
            } else {
                still.insert(m.id().clone(), (m.incarnation(), since));
            }
        }
        self.seen = still;
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeName;

    fn m(node: &str, generation: u64) -> Member {
        Member {
            node: NodeName::new(node).expect("node"),
            generation,
            gossip_addr: "10.0.0.1:7946".parse().expect("addr"),
            peer_addr: "10.0.0.1:8981".parse().expect("addr"),
        }
    }

    fn s(id: &Member, inc: Incarnation) -> foca::Member<Member> {
        foca::Member::new(id.clone(), inc, State::Suspect)
    }

    #[test]
    fn a_suspicion_standing_twice_the_timeout_is_declared_down() {
        let mut w = SuspectWatch::new(Duration::from_secs(4));
        let (a, b) = (m("a", 1), m("b", 1));
        let alive = foca::Member::new(b.clone(), 0, State::Alive);
        let sec = Duration::from_secs;
        assert!(w
            .check([s(&a, 0), alive.clone()].iter(), sec(10))
            .is_empty());
        assert!(w.check([s(&a, 0)].iter(), sec(17)).is_empty());
        let due = w.check([s(&a, 0)].iter(), sec(18));
        assert_eq!(due, vec![foca::Member::new(a.clone(), 0, State::Down)]);
        // Another incarnation is another suspicion: a new clock.
        assert!(w.check([s(&a, 1)].iter(), sec(19)).is_empty());
        assert!(w.check([s(&a, 2)].iter(), sec(30)).is_empty());
        assert!(w.check([s(&a, 2)].iter(), sec(37)).is_empty());
        // Refuted (alive) in between: the clock starts again.
        assert!(w
            .check(
                [foca::Member::new(a.clone(), 3, State::Alive)].iter(),
                sec(38)
            )
            .is_empty());
        assert!(w.check([s(&a, 3)].iter(), sec(39)).is_empty());
        assert!(w.check([s(&a, 3)].iter(), sec(46)).is_empty());
        assert_eq!(w.check([s(&a, 3)].iter(), sec(47)).len(), 1);
        // A renewed identity is another member.
        assert!(w.check([s(&m("a", 2), 0)].iter(), sec(48)).is_empty());
    }

    #[test]
    fn a_rejoin_drops_the_suspicions_held_and_nothing_else() {
        let (a, b, c) = (m("a", 1), m("b", 1), m("c", 1));
        let list = [
            s(&a, 3),
            foca::Member::new(b.clone(), 0, State::Alive),
            foca::Member::new(c.clone(), 0, State::Down),
            s(&m("d", 1), Incarnation::MAX),
        ];
        assert_eq!(
            clear_suspicions(list.iter()),
            vec![foca::Member::new(a, 4, State::Alive)]
        );
    }

    #[test]
    fn a_disconnected_host_announces_to_every_address_it_knows_once() {
        let mut b = m("b", 1);
        b.gossip_addr = "10.0.0.2:7946".parse().expect("addr");
        let list = [
            s(&m("a", 1), 0),
            foca::Member::new(m("a", 2), 0, State::Down),
            foca::Member::new(b.clone(), 0, State::Down),
            foca::Member::new(
                Member::seed("10.0.0.9:7946".parse().expect("addr")),
                0,
                State::Alive,
            ),
        ];
        assert_eq!(
            announce_targets(list.iter()),
            vec![m("a", 1).gossip_addr, b.gossip_addr]
        );
    }
}
