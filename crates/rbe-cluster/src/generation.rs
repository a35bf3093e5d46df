//! A process generation that only goes up, even when the wall clock steps
//! back between two starts.
//!
//! A member's generation decides which of two identities with the same node
//! name wins (`Member::win_addr_conflict`), and a down identity stays known
//! for foca's `remove_down_after` (24 h). If a restarted host took a
//! generation lower than its previous one (realtime nanoseconds after the
//! clock was stepped back), the cluster would keep preferring the old, down
//! identity and refuse the host for a day. So the generation is
//! `max(now, last + 1)`, with `last` kept in a small file in the state
//! directory.
//!
//! A running process can go past the generation it started with: each
//! rejoin after the cluster declared it down takes the next one
//! (`Member::renew`). The file therefore records the start generation plus
//! [`RENEWALS`], a ceiling the process cannot reach by renewing, rather
//! than the start generation itself: a restart after the clock stepped
//! back still outranks every identity the previous process had, without
//! writing the file on each renewal.

use std::io::Write;
use std::path::Path;

/// Renewals a process is assumed never to reach (one per partition it was
/// declared down in).
pub const RENEWALS: u64 = 1 << 32;

/// The next generation: at least `now_ns`, and above the ceiling recorded
/// in `path`, which is then replaced by this generation plus [`RENEWALS`].
/// A missing or unreadable record counts as 0 (the clock alone decides);
/// failing to write it is an error, since the next start would not be
/// protected.
pub fn next_generation(path: &Path, now_ns: u64) -> std::io::Result<u64> {
    let last = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let next = now_ns.max(last.saturating_add(1));
    let ceiling = next.saturating_add(RENEWALS);
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("generation")
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{ceiling}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(next)
}

/// Realtime nanoseconds since the epoch (0 if the clock is before it).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_only_go_up_whatever_the_clock_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("generation");
        let first = next_generation(&p, 1000).expect("first");
        assert_eq!(first, 1000);
        // The clock stepped back: still above the last one.
        let back = next_generation(&p, 10).expect("back");
        assert!(back > first, "{back}");
        // The clock well ahead of the record decides.
        let ahead = back + 2 * RENEWALS;
        assert_eq!(next_generation(&p, ahead).expect("forward"), ahead);
        // A damaged record: the clock decides, and the record is repaired.
        std::fs::write(&p, "garbage").expect("write");
        assert_eq!(next_generation(&p, 7).expect("garbage"), 7);
        assert!(next_generation(&p, 7).expect("repaired") > 7);
        std::fs::write(&p, u64::MAX.to_string()).expect("write");
        assert_eq!(next_generation(&p, 7).expect("max"), u64::MAX);
        // An unwritable place is an error, not a silent fallback.
        assert!(next_generation(&dir.path().join("no/such/dir/gen"), 1).is_err());
        assert!(now_ns() > 1_600_000_000_000_000_000);
    }

    /// A process renewed its identity (declared down in partitions) and
    /// restarted after the wall clock jumped back: the new generation is
    /// still above every generation the old process had.
    #[test]
    fn a_restart_after_renewals_and_a_clock_jump_back_outranks_them_all() {
        use foca::Identity;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("generation");
        let now = 1_800_000_000_000_000_000;
        let mut old = crate::Member {
            node: crate::NodeName::new("a").expect("node"),
            generation: next_generation(&p, now).expect("start"),
            gossip_addr: "10.0.0.1:7946".parse().expect("addr"),
            peer_addr: "10.0.0.1:8981".parse().expect("addr"),
        };
        for _ in 0..1000 {
            old = old.renew().expect("renew");
        }
        // An hour back.
        let restarted = next_generation(&p, now - 3_600_000_000_000).expect("restart");
        assert!(
            restarted > old.generation,
            "{restarted} <= {}",
            old.generation
        );
        let new = crate::Member {
            generation: restarted,
            ..old.clone()
        };
        assert!(new.win_addr_conflict(&old));
    }
}
