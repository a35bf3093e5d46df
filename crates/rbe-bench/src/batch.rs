//! Many small blobs through BatchUpdateBlobs.
//!
//! Blobs are random (so none is already present) and hashed before the clock
//! starts. They are packed into requests whose *encoded* size stays within
//! the server's advertised `max_batch_total_size_bytes` (as Bazel does), and
//! `--concurrency` requests are kept in flight. Every per-blob status must be
//! OK; afterwards a FindMissingBlobs (untimed) checks that all are present.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use prost::Message;
use rand::RngCore;
use rbe_proto::reapi::{
    batch_update_blobs_request, capabilities_client::CapabilitiesClient,
    content_addressable_storage_client::ContentAddressableStorageClient, BatchUpdateBlobsRequest,
    FindMissingBlobsRequest, GetCapabilitiesRequest,
};
use rbe_proto::{reapi, Digest, DigestFunction};
use tonic::transport::Channel;

use crate::report::{mibs, ms, percentile, Json};
use crate::{connect, Target, MAX_MESSAGE};

/// Batch size used when the server advertises none (0 = "no limit").
const DEFAULT_MAX_BATCH: u64 = 4 << 20;

/// `rbe-bench batch`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Number of blobs.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Size of each blob in bytes (at least 16).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Override the advertised max_batch_total_size_bytes.
    #[arg(long)]
    max_batch_bytes: Option<u64>,
}

/// A CAS client with large message limits.
pub fn cas_client(ch: Channel) -> ContentAddressableStorageClient<Channel> {
    ContentAddressableStorageClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// The server's max_batch_total_size_bytes (a default when it sets none).
pub async fn max_batch_bytes(ch: Channel, instance: &str) -> anyhow::Result<u64> {
    let caps = CapabilitiesClient::new(ch)
        .get_capabilities(GetCapabilitiesRequest {
            instance_name: instance.to_string(),
        })
        .await
        .context("GetCapabilities")?
        .into_inner();
    let adv = caps
        .cache_capabilities
        .map(|c| c.max_batch_total_size_bytes)
        .unwrap_or(0);
    Ok(if adv <= 0 {
        DEFAULT_MAX_BATCH
    } else {
        adv as u64
    })
}

/// `count` distinct random blobs of `size` bytes with their SHA-256 digests.
pub fn random_blobs(count: usize, size: usize) -> Vec<(Digest, Vec<u8>)> {
    let mut rng = rand::rng();
    (0..count)
        .map(|_| {
            let mut data = vec![0u8; size];
            rng.fill_bytes(&mut data);
            (Digest::of(DigestFunction::Sha256, &data), data)
        })
        .collect()
}

/// Packs blobs into requests of at most `max_bytes` encoded bytes each.
pub fn pack(
    instance: &str,
    blobs: &[(Digest, Vec<u8>)],
    max_bytes: u64,
) -> Vec<BatchUpdateBlobsRequest> {
    let empty = || BatchUpdateBlobsRequest {
        instance_name: instance.to_string(),
        requests: Vec::new(),
        digest_function: DigestFunction::Sha256.to_reapi(),
    };
    let base = empty().encoded_len() as u64;
    let mut out = Vec::new();
    let mut cur = empty();
    let mut cur_len = base;
    for (d, data) in blobs {
        let r = batch_update_blobs_request::Request {
            digest: Some(d.to_reapi()),
            data: data.clone(),
            compressor: 0,
        };
        // Field tag + length prefix (at most 1 + 5 bytes).
        let len = r.encoded_len() as u64 + 6;
        if !cur.requests.is_empty() && cur_len + len > max_bytes {
            out.push(std::mem::replace(&mut cur, empty()));
            cur_len = base;
        }
        cur.requests.push(r);
        cur_len += len;
    }
    if !cur.requests.is_empty() {
        out.push(cur);
    }
    out
}

/// Sends `batches` with `concurrency` in flight; returns the wall time and
/// each request's latency. Fails on any non-OK per-blob status.
pub async fn upload(
    client: &ContentAddressableStorageClient<Channel>,
    batches: Vec<BatchUpdateBlobsRequest>,
    concurrency: usize,
) -> anyhow::Result<(Duration, Vec<f64>)> {
    let t = Instant::now();
    let results: Vec<_> = futures::stream::iter(batches.into_iter().map(|b| {
        let mut c = client.clone();
        async move {
            let n = b.requests.len();
            let t = Instant::now();
            let r = c.batch_update_blobs(b).await;
            (n, t.elapsed(), r)
        }
    }))
    .buffer_unordered(concurrency.max(1))
    .collect()
    .await;
    let wall = t.elapsed();
    let mut lat = Vec::with_capacity(results.len());
    for (n, dt, r) in results {
        let resp = r.context("BatchUpdateBlobs")?.into_inner();
        if resp.responses.len() != n {
            bail!(
                "BatchUpdateBlobs answered {} of {n} blobs",
                resp.responses.len()
            );
        }
        for x in &resp.responses {
            let code = x.status.as_ref().map(|s| s.code).unwrap_or(0);
            if code != 0 {
                let msg = x.status.as_ref().map(|s| s.message.as_str()).unwrap_or("");
                bail!("BatchUpdateBlobs: blob status {code}: {msg}");
            }
        }
        lat.push(ms(dt));
    }
    Ok((wall, lat))
}

/// How many of `ds` the server reports missing (in requests of 10,000).
pub async fn count_missing(
    client: &ContentAddressableStorageClient<Channel>,
    instance: &str,
    ds: &[reapi::Digest],
) -> anyhow::Result<usize> {
    let mut missing = 0;
    for part in ds.chunks(10_000) {
        let r = client
            .clone()
            .find_missing_blobs(FindMissingBlobsRequest {
                instance_name: instance.to_string(),
                blob_digests: part.to_vec(),
                digest_function: DigestFunction::Sha256.to_reapi(),
            })
            .await
            .context("FindMissingBlobs")?
            .into_inner();
        missing += r.missing_blob_digests.len();
    }
    Ok(missing)
}

/// Runs the benchmark and prints its result line.
pub async fn run(a: Args) -> anyhow::Result<()> {
    if a.size < 16 || a.count == 0 {
        bail!("--size must be at least 16 and --count positive");
    }
    let ch = connect(&a.target.endpoint).await?;
    let max = match a.max_batch_bytes {
        Some(m) => m,
        None => max_batch_bytes(ch.clone(), &a.target.instance).await?,
    };
    let blobs = random_blobs(a.count, a.size);
    let digests: Vec<reapi::Digest> = blobs.iter().map(|(d, _)| d.to_reapi()).collect();
    let batches = pack(&a.target.instance, &blobs, max);
    drop(blobs);
    let n_batches = batches.len();
    let per_batch = a.count.div_ceil(n_batches.max(1));
    let client = cas_client(ch);
    let (wall, lat) = upload(&client, batches, a.concurrency).await?;
    let missing = count_missing(&client, &a.target.instance, &digests).await?;
    if missing != 0 {
        bail!(
            "{missing} of {} uploaded blobs are reported missing",
            a.count
        );
    }
    let rate = a.count as f64 / wall.as_secs_f64();
    let payload = mibs((a.count * a.size) as u64, wall);
    println!(
        "batch {} via {}: {} blobs of {} B in {n_batches} requests (~{per_batch} blobs, <= {max} B each), concurrency {}: {:.2} s, {rate:.0} blobs/s, {payload:.1} MiB/s; request p50 {:.1} ms, max {:.1} ms",
        a.target.label,
        a.target.endpoint,
        a.count,
        a.size,
        a.concurrency,
        wall.as_secs_f64(),
        percentile(&lat, 50.0),
        percentile(&lat, 100.0),
    );
    Json::new("batch")
        .s("label", &a.target.label)
        .s("endpoint", &a.target.endpoint)
        .i("count", a.count as u64)
        .i("size_bytes", a.size as u64)
        .i("concurrency", a.concurrency as u64)
        .i("max_batch_bytes", max)
        .i("requests", n_batches as u64)
        .n("seconds", wall.as_secs_f64())
        .n("blobs_per_s", rate)
        .n("payload_mibs", payload)
        .n("request_ms_p50", percentile(&lat, 50.0))
        .n("request_ms_max", percentile(&lat, 100.0))
        .print();
    Ok(())
}
