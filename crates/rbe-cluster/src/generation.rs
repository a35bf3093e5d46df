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

use std::io::Write;
use std::path::Path;

/// The next generation: at least `now_ns`, and above the one recorded in
/// `path`, which is then replaced by it. A missing or unreadable record
/// counts as 0 (the clock alone decides); failing to write it is an error,
/// since the next start would not be protected.
pub fn next_generation(path: &Path, now_ns: u64) -> std::io::Result<u64> {
    let last = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let next = now_ns.max(last.saturating_add(1));
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("generation")
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{next}")?;
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
        assert_eq!(next_generation(&p, 1000).expect("first"), 1000);
        // The clock stepped back: still above the last one.
        assert_eq!(next_generation(&p, 10).expect("back"), 1001);
        assert_eq!(next_generation(&p, 5000).expect("forward"), 5000);
        // A damaged record: the clock decides, and the record is repaired.
        std::fs::write(&p, "garbage").expect("write");
        assert_eq!(next_generation(&p, 7).expect("garbage"), 7);
        assert_eq!(std::fs::read_to_string(&p).expect("read").trim(), "7");
        std::fs::write(&p, u64::MAX.to_string()).expect("write");
        assert_eq!(next_generation(&p, 7).expect("max"), u64::MAX);
        // An unwritable place is an error, not a silent fallback.
        assert!(next_generation(&dir.path().join("no/such/dir/gen"), 1).is_err());
        assert!(now_ns() > 1_600_000_000_000_000_000);
    }
}
