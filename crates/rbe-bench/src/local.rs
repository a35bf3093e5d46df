//! rbe-only helpers for the memory-per-blob benchmark: filling a store
//! directory directly (much faster than uploading a million blobs) and
//! reading casd's local Stats API.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rbe_proto::casd::{casd_client::CasdClient, StatsRequest};
use rbe_proto::{Digest, DigestFunction};

use crate::report::{ms, Json};

/// `rbe-bench populate`.
#[derive(clap::Args, Debug)]
pub struct PopulateArgs {
    /// The store directory (`[storage] path`, i.e. STATE/cas for `rbectl
    /// local`); blobs go to `cas.v1/sha256/<2 hex>/<64 hex>` under it.
    /// casd must not be running.
    #[arg(long)]
    store: PathBuf,
    /// Number of blobs.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Bytes per blob (at least 8: the blob number, then filler).
    #[arg(long, default_value_t = 8)]
    size: usize,
    /// Writer threads.
    #[arg(long, default_value_t = 2)]
    threads: u64,
}

/// Writes `count` distinct tiny blobs as read-only files in the store layout.
pub fn populate(a: PopulateArgs) -> anyhow::Result<()> {
    if a.size < 8 || a.threads == 0 {
        bail!("--size must be at least 8 and --threads positive");
    }
    let root = a.store.join("cas.v1");
    for f in DigestFunction::ALL {
        for shard in 0..=255u8 {
            let d = root.join(f.name()).join(hex::encode([shard]));
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
    }
    let dir = root.join("sha256");
    let t = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..a.threads)
            .map(|w| {
                let dir = dir.clone();
                let (count, size, threads) = (a.count, a.size, a.threads);
                s.spawn(move || -> anyhow::Result<()> {
                    let mut buf = vec![0xA5u8; size];
                    let mut i = w;
                    while i < count {
                        buf[..8].copy_from_slice(&i.to_le_bytes());
                        let d = Digest::of(DigestFunction::Sha256, &buf);
                        let hex = d.hex();
                        let p = dir.join(&hex[..2]).join(&hex);
                        let mut f = OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o444)
                            .open(&p)
                            .with_context(|| format!("creating {}", p.display()))?;
                        f.write_all(&buf)
                            .with_context(|| format!("writing {}", p.display()))?;
                        if w == 0 && i % 200_000 == 0 && i > 0 {
                            eprintln!("  populate: {i} / {count}");
                        }
                        i += threads;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in workers {
            match h.join() {
                Ok(r) => r?,
                Err(_) => bail!("a populate thread panicked"),
            }
        }
        Ok(())
    })?;
    let dt = t.elapsed();
    println!(
        "populate: {} blobs of {} B under {} in {:.1} s ({:.0} files/s)",
        a.count,
        a.size,
        root.display(),
        dt.as_secs_f64(),
        a.count as f64 / dt.as_secs_f64()
    );
    Json::new("populate")
        .i("count", a.count)
        .i("size_bytes", a.size as u64)
        .n("seconds", dt.as_secs_f64())
        .print();
    Ok(())
}

/// `rbe-bench casd-stats`.
#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// casd's Unix socket (STATE/run/casd.sock for `rbectl local`).
    #[arg(long)]
    socket: PathBuf,
    /// Wait until the index has finished loading and holds at least this
    /// many blobs.
    #[arg(long)]
    wait_blobs: Option<u64>,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
}

/// Prints casd's Stats, after waiting for the index if asked to.
pub async fn stats(a: StatsArgs) -> anyhow::Result<()> {
    let ch = rbe_net::unix_channel(&a.socket)
        .await
        .with_context(|| format!("casd socket {}", a.socket.display()))?;
    let mut client = CasdClient::new(ch);
    let t = Instant::now();
    let deadline = t + Duration::from_secs(a.timeout_secs);
    let s = loop {
        let r = client.stats(StatsRequest {}).await;
        match (r, a.wait_blobs) {
            (Ok(s), None) => break s.into_inner(),
            (Ok(s), Some(n)) => {
                let s = s.into_inner();
                if !s.index_loading && s.blobs >= n {
                    break s;
                }
            }
            (Err(e), None) => return Err(e).context("casd Stats"),
            (Err(_), Some(_)) => {}
        }
        if Instant::now() > deadline {
            bail!("casd index not loaded within {} s", a.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let waited = ms(t.elapsed());
    println!(
        "casd stats: {} blobs, {} bytes, loading={}, waited {waited:.0} ms",
        s.blobs, s.bytes, s.index_loading
    );
    Json::new("casd_stats")
        .i("blobs", s.blobs)
        .i("bytes", s.bytes)
        .b("index_loading", s.index_loading)
        .i("evicted_blobs", s.evicted_blobs)
        .i("pinned_blobs", s.pinned_blobs)
        .i("action_results", s.action_results)
        .i("blobs_read", s.blobs_read)
        .i("backing_fetches", s.backing_fetches)
        .i("backing_errors", s.backing_errors)
        .n("waited_ms", waited)
        .print();
    Ok(())
}
