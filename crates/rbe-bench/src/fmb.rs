//! FindMissingBlobs latency.
//!
//! Half of the digests (rounded down) are uploaded first with
//! BatchUpdateBlobs; the other half are random hashes no server has. The
//! same request (present and absent digests interleaved) is then sent
//! `--calls` times one after another, after `--warmup` untimed calls, and
//! each answer must list exactly the absent half.

use std::time::Instant;

use anyhow::{bail, Context};
use rand::RngCore;
use rbe_proto::reapi::FindMissingBlobsRequest;
use rbe_proto::{Digest, DigestFunction};

use crate::batch::{cas_client, max_batch_bytes, pack, random_blobs, upload};
use crate::report::{ms, percentile, Json};
use crate::{connect, Target};

/// `rbe-bench fmb`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Digests per request; half of them are present.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Timed calls.
    #[arg(long, default_value_t = 50)]
    calls: usize,
    /// Untimed calls first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Size of the present blobs (and the size claimed for absent ones).
    #[arg(long, default_value_t = 1024)]
    size: usize,
}

/// Runs the benchmark and prints its result line.
pub async fn run(a: Args) -> anyhow::Result<()> {
    if a.calls == 0 || a.count < 2 || a.size < 16 {
        bail!("--calls must be positive, --count at least 2, --size at least 16");
    }
    let ch = connect(&a.target.endpoint).await?;
    let max = max_batch_bytes(ch.clone(), &a.target.instance).await?;
    let client = cas_client(ch);

    let n_present = a.count / 2;
    let present = random_blobs(n_present, a.size);
    let batches = pack(&a.target.instance, &present, max);
    let (up, _) = upload(&client, batches, 2).await?;
    let mut digests = Vec::with_capacity(a.count);
    let mut rng = rand::rng();
    for i in 0..a.count {
        if i % 2 == 0 && i / 2 < n_present {
            digests.push(present[i / 2].0.to_reapi());
        } else {
            let mut hash = [0u8; 32];
            rng.fill_bytes(&mut hash);
            let d = Digest {
                function: DigestFunction::Sha256,
                hash,
                size: a.size as u64,
            };
            digests.push(d.to_reapi());
        }
    }
    let n_absent = a.count - n_present;
    drop(present);
    let req = FindMissingBlobsRequest {
        instance_name: a.target.instance.clone(),
        blob_digests: digests,
        digest_function: DigestFunction::Sha256.to_reapi(),
    };

    let mut lat = Vec::with_capacity(a.calls);
    for i in 0..(a.warmup + a.calls) {
        let mut c = client.clone();
        let r = req.clone();
        let t = Instant::now();
        let resp = c
            .find_missing_blobs(r)
            .await
            .context("FindMissingBlobs")?
            .into_inner();
        let dt = t.elapsed();
        if resp.missing_blob_digests.len() != n_absent {
            bail!(
                "FindMissingBlobs reported {} missing, expected {n_absent}",
                resp.missing_blob_digests.len()
            );
        }
        if i >= a.warmup {
            lat.push(ms(dt));
        }
    }
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;
    let (p50, p90, p99) = (
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
    );
    println!(
        "fmb {} via {}: {} digests ({n_present} present, uploaded in {:.2} s), {} calls: p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, min {:.2} ms, mean {mean:.2} ms",
        a.target.label,
        a.target.endpoint,
        a.count,
        up.as_secs_f64(),
        a.calls,
        percentile(&lat, 0.0),
    );
    Json::new("fmb")
        .s("label", &a.target.label)
        .s("endpoint", &a.target.endpoint)
        .i("count", a.count as u64)
        .i("present", n_present as u64)
        .i("calls", a.calls as u64)
        .n("ms_p50", p50)
        .n("ms_p90", p90)
        .n("ms_p99", p99)
        .n("ms_min", percentile(&lat, 0.0))
        .n("ms_mean", mean)
        .print();
    Ok(())
}
