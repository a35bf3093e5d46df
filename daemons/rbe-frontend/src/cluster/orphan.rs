//! A hosted action whose origin is gone: when it counts as an orphan, and
//! what `[offload] orphan_policy` then does with it. Pure (time is an
//! argument), so the rules are tested without a cluster.
//!
//! An origin is gone when the stream it offered on breaks (its frontend
//! died, or the connection did) or membership no longer counts it live.
//! A broken stream is final: an origin never reattaches to a lease (it has
//! lost it and dispatches the action again), so nothing could carry the
//! result back. Membership alone is not final: a member declared down
//! while its stream still works (a long pause, a partition of gossip only)
//! that comes back live within the grace time is an origin again.

use std::time::{Duration, Instant};

use rbe_config::OrphanPolicy;

/// What becomes of an orphan once `orphan_grace_secs` are over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Withdraw the origin's handle: the action is killed unless another
    /// waiter joined it here.
    Cancel,
    /// Run it to the end and write its result to the action cache here,
    /// where a retry through a shared store finds it.
    Finish,
}

/// The policy applied: `auto` finishes only what a retry can find, an
/// action that may be cached when both hosts name the same backing store
/// (`store_id`, not zero); anything else would only burn a slot for a
/// result nobody reads.
pub fn fate(policy: OrphanPolicy, shared_store: bool, do_not_cache: bool) -> Fate {
    match policy {
        OrphanPolicy::Cancel => Fate::Cancel,
        OrphanPolicy::Finish => Fate::Finish,
        OrphanPolicy::Auto if shared_store && !do_not_cache => Fate::Finish,
        OrphanPolicy::Auto => Fate::Cancel,
    }
}

/// Why an action is an orphan, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    StreamBroken,
    OriginDown,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::StreamBroken => "the origin's stream broke",
            Cause::OriginDown => "membership declared the origin down",
        }
    }
}

/// Whether the origin of one hosted action is gone, and since when.
#[derive(Debug, Default)]
pub struct Watch {
    since: Option<(Instant, Cause)>,
}

/// What a change of [`Watch`] means to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// The action just became an orphan.
    Orphaned(Cause),
    /// Its origin is back (membership only): the grace time stops.
    Adopted,
}

impl Watch {
    /// The stream broke at `now`: final.
    pub fn stream_broke(&mut self, now: Instant) -> Change {
        match self.since {
            Some((_, Cause::StreamBroken)) => Change::None,
            // The grace time counts from the first sign.
            Some((t, Cause::OriginDown)) => {
                self.since = Some((t, Cause::StreamBroken));
                Change::None
            }
            None => {
                self.since = Some((now, Cause::StreamBroken));
                Change::Orphaned(Cause::StreamBroken)
            }
        }
    }

    /// Membership counts the origin live (`true`) or not at `now`.
    pub fn membership(&mut self, now: Instant, live: bool) -> Change {
        match (self.since, live) {
            (None, false) => {
                self.since = Some((now, Cause::OriginDown));
                Change::Orphaned(Cause::OriginDown)
            }
            (Some((_, Cause::OriginDown)), true) => {
                self.since = None;
                Change::Adopted
            }
            _ => Change::None,
        }
    }

    #[cfg(test)]
    pub fn orphaned(&self) -> bool {
        self.since.is_some()
    }

    /// The grace time is over at `now`.
    pub fn expired(&self, now: Instant, grace: Duration) -> bool {
        self.since
            .is_some_and(|(t, _)| now.saturating_duration_since(t) >= grace)
    }

    /// When the grace time ends, if orphaned.
    pub fn deadline(&self, grace: Duration) -> Option<Instant> {
        self.since.map(|(t, _)| t + grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    #[test]
    fn auto_finishes_only_what_a_shared_store_lets_a_retry_find() {
        use OrphanPolicy::*;
        assert_eq!(fate(Auto, false, false), Fate::Cancel);
        assert_eq!(fate(Auto, true, true), Fate::Cancel);
        assert_eq!(fate(Auto, true, false), Fate::Finish);
        assert_eq!(fate(Cancel, true, false), Fate::Cancel);
        assert_eq!(fate(Finish, false, true), Fate::Finish);
    }

    #[test]
    fn a_broken_stream_is_final_and_the_grace_counts_from_the_first_sign() {
        let t0 = Instant::now();
        let mut w = Watch::default();
        assert_eq!(w.membership(t0, true), Change::None);
        assert!(!w.orphaned());
        assert_eq!(w.membership(t0, false), Change::Orphaned(Cause::OriginDown));
        assert_eq!(w.stream_broke(t0 + GRACE / 2), Change::None);
        // Back in membership, but its stream is gone: still an orphan.
        assert_eq!(w.membership(t0 + GRACE / 2, true), Change::None);
        assert!(!w.expired(t0 + GRACE / 2, GRACE));
        assert!(w.expired(t0 + GRACE, GRACE));
        assert_eq!(w.deadline(GRACE), Some(t0 + GRACE));
    }

    #[test]
    fn an_origin_back_in_membership_on_a_live_stream_is_adopted_again() {
        let t0 = Instant::now();
        let mut w = Watch::default();
        w.membership(t0, false);
        assert_eq!(w.membership(t0 + GRACE / 2, true), Change::Adopted);
        assert!(!w.orphaned());
        assert!(!w.expired(t0 + GRACE * 2, GRACE));
        // A second loss starts a new grace time.
        w.membership(t0 + GRACE * 2, false);
        assert!(!w.expired(t0 + GRACE * 2 + GRACE / 2, GRACE));
        assert!(w.expired(t0 + GRACE * 3, GRACE));
    }

    #[test]
    fn a_stream_that_breaks_first_orphans_at_once() {
        let t0 = Instant::now();
        let mut w = Watch::default();
        assert_eq!(w.stream_broke(t0), Change::Orphaned(Cause::StreamBroken));
        assert_eq!(w.stream_broke(t0 + GRACE), Change::None);
        assert!(w.expired(t0 + GRACE, GRACE));
        assert!(Watch::default().deadline(GRACE).is_none());
    }
}
