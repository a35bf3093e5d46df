//! Where a scope's cost goes (BENCHMARKS.md, "Scope benchmarks"): run
//! inside a systemd instance (e.g. `tests/harness/sysbox`) with the rbe
//! slices installed, `scope_probe [N]` puts a child process into N fresh
//! scopes one after another, printing the library's "scope started" debug
//! lines (the `StartTransientUnit` call, then the start job) and the p50 and
//! p90 of the whole start.
#![allow(clippy::unwrap_used)]

use rbe_systemd::scope::{Limits, Scopes};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .init();
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100)
        .max(1);
    let scopes = Scopes::connect("rbe-actions.slice").await.unwrap();
    let limits = Limits {
        memory_max: Some(1 << 30),
        tasks_max: Some(100),
        ..Default::default()
    };
    let mut total = Vec::new();
    for i in 0..n {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        let unit = format!("probe-{}-{i}.scope", std::process::id());
        scopes
            .start(&unit, child.id(), "scope_probe", &limits)
            .await
            .unwrap();
        total.push(t.elapsed().as_micros());
        child.kill().unwrap();
        child.wait().unwrap();
    }
    total.sort_unstable();
    println!(
        "start p50 {} us, p90 {} us (n={n})",
        total[n / 2],
        total[n * 9 / 10]
    );
}
