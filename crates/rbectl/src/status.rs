//! `rbectl status`: this host's casd as its local API's Stats report it,
//! and, with `[backing]`, what the backing store costs (latency and
//! failures per operation) and what the local store saves (hit rates).

use std::fmt::Write as _;
use std::process::ExitCode;

use rbe_proto::casd::casd_client::CasdClient;
use rbe_proto::casd::{BackingStats, StatsRequest, StatsResponse};

pub use crate::ask::SocketArgs as StatusArgs;

pub fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let socket = crate::ask::socket(a.socket, a.config_dirs, |dirs| {
        rbe_config::load_casd(dirs).map(|s| s.listen.socket)
    })?;
    let stats = crate::ask::ask(&socket, "rbe-casd", |ch| async move {
        CasdClient::new(ch).stats(StatsRequest {}).await
    })?;
    print!("{}", render(&socket.display().to_string(), &stats));
    Ok(ExitCode::SUCCESS)
}

/// `n` of `total` as a percentage, or `-` when there is nothing to divide.
fn percent(n: u64, total: u64) -> String {
    if total == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", n as f64 * 100.0 / total as f64)
    }
}

fn micros(v: Option<u64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(us) if us < 10_000 => format!("{us} us"),
        Some(us) if us < 10_000_000 => format!("{} ms", us / 1000),
        Some(us) => format!("{} s", us / 1_000_000),
    }
}

/// The report as text: the store, then the backing store when there is one.
pub fn render(socket: &str, s: &StatsResponse) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "casd at {socket}");
    let _ = writeln!(
        o,
        "  store: {} blobs, {} bytes (high watermark {}, low {}){}",
        s.blobs,
        s.bytes,
        s.high_watermark_bytes,
        s.low_watermark_bytes,
        if s.index_loading {
            ", index still loading"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "  since start: {} blobs read, {} evicted, {} pinned now, {} corrupt removed",
        s.blobs_read, s.evicted_blobs, s.pinned_blobs, s.corrupt_blobs_removed
    );
    if let Some(b) = &s.backing {
        render_backing(&mut o, s, b);
    }
    o
}

fn render_backing(o: &mut String, s: &StatsResponse, b: &BackingStats) {
    let _ = writeln!(o, "backing store {} (mode {})", b.address, b.mode);
    let _ = writeln!(
        o,
        "  {:<22} {:>10} {:>8} {:>10} {:>10}",
        "OPERATION", "COUNT", "ERRORS", "P50", "P99"
    );
    for op in &b.ops {
        let _ = writeln!(
            o,
            "  {:<22} {:>10} {:>8} {:>10} {:>10}",
            op.op,
            op.count,
            op.errors,
            micros(op.p50_us),
            micros(op.p99_us)
        );
    }
    let reads = b.reads_local + b.reads_fetched;
    let _ = writeln!(
        o,
        "  reads: {} local, {} from the backing store ({} local); {} blobs fetched",
        b.reads_local,
        b.reads_fetched,
        percent(b.reads_local, reads),
        s.backing_fetches
    );
    let fm = b.find_missing_local + b.find_missing_cached + b.find_missing_asked;
    let _ = writeln!(
        o,
        "  FindMissingBlobs digests: {} local, {} existence cache, {} asked ({} spared), \
         {} missing there",
        b.find_missing_local,
        b.find_missing_cached,
        b.find_missing_asked,
        percent(b.find_missing_local + b.find_missing_cached, fm),
        b.find_missing_absent
    );
    let ac = b.ac_hits_local + b.ac_hits_backing + b.ac_misses;
    let _ = writeln!(
        o,
        "  action cache: {} local hits, {} from the backing store, {} misses ({} hits)",
        b.ac_hits_local,
        b.ac_hits_backing,
        b.ac_misses,
        percent(b.ac_hits_local + b.ac_hits_backing, ac)
    );
    let _ = writeln!(
        o,
        "  existence cache: {} digests; {} errors, {} failure log lines suppressed",
        b.existence_cache_entries, s.backing_errors, b.log_lines_suppressed
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbe_proto::casd::BackingOpStats;

    #[test]
    fn the_backing_block_only_with_a_backing_store() {
        let mut s = StatsResponse {
            blobs: 3,
            ..Default::default()
        };
        let t = render("/run/rbe/casd.sock", &s);
        assert!(t.contains("casd at /run/rbe/casd.sock"), "{t}");
        assert!(!t.contains("backing store"), "{t}");
        s.backing_errors = 2;
        s.backing = Some(BackingStats {
            address: "grpc://cas:8980".into(),
            mode: "cache".into(),
            ops: vec![BackingOpStats {
                op: "find_missing".into(),
                count: 10,
                errors: 2,
                p50_us: Some(1500),
                p99_us: Some(250_000),
            }],
            reads_local: 3,
            reads_fetched: 1,
            find_missing_local: 5,
            find_missing_cached: 3,
            find_missing_asked: 2,
            ..Default::default()
        });
        let t = render("/s", &s);
        assert!(
            t.contains("backing store grpc://cas:8980 (mode cache)"),
            "{t}"
        );
        assert!(
            t.contains("  find_missing                   10        2    1500 us     250 ms"),
            "{t}"
        );
        assert!(
            t.contains("3 local, 1 from the backing store (75.0% local)"),
            "{t}"
        );
        assert!(t.contains("(80.0% spared)"), "{t}");
        assert!(t.contains("(- hits)"), "{t}");
        assert!(t.contains("2 errors"), "{t}");
    }
}
