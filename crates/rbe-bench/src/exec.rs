//! Per-action overhead of remote execution, no Bazel in the way.
//!
//! Every request executes a no-op action: `/bin/true` with an empty input
//! root and a Command whose environment holds `PATH` (and, in the default
//! `salt` mode, `RBE_BENCH_SALT=<run>-<n>`, so every request is a distinct
//! action and a guaranteed cache miss; identical in-flight actions would be
//! deduplicated by the scheduler). In `skip-cache` mode all requests share
//! one action and set `skip_cache_lookup` instead, which also measures the
//! in-flight dedup.
//!
//! All Command and Action blobs are uploaded with BatchUpdateBlobs before
//! any clock starts, so the timed part is Execute alone: `--warmup` untimed
//! requests, then `--sequential` requests one after another, then
//! `--concurrent` requests with `--concurrency` in flight. For each phase it
//! reports client-observed latency (Execute call to the done Operation),
//! actions/s, and the per-stage split from each result's
//! ExecutedActionMetadata:
//!
//! - queued: `worker_start - queued`
//! - input fetch, execution, output upload: their `*_completed - *_start`
//! - worker: `worker_completed - worker_start`
//! - server overhead: client latency minus execution time (what the service
//!   adds around the process itself, network and client included)
//! - outside worker: client latency minus `worker_completed - queued`
//!   (cache check, scheduling, result delivery, the gRPC hops), split into
//!   pre-queue (client send to `queued`) and post-worker (`worker_completed`
//!   to the client seeing the result); these two compare the client's clock
//!   with the server's, so they are only meaningful on one host
//! - worker other: worker total minus fetch, execution and upload (work
//!   directory setup, output collection)

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures::StreamExt;
use prost::Message;
use rbe_proto::longrunning::{operation, Operation};
use rbe_proto::reapi::{
    command::EnvironmentVariable, execution_client::ExecutionClient, Action, Command, Directory,
    ExecuteRequest, ExecuteResponse, ExecutedActionMetadata,
};
use rbe_proto::wkt::Timestamp;
use rbe_proto::{Digest, DigestFunction};
use tonic::transport::Channel;

use crate::batch::{cas_client, max_batch_bytes, pack, upload};
use crate::report::{ms, percentile, Json};
use crate::{connect, Target, MAX_MESSAGE};

/// How cache misses are forced.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A unique Command (salted env var) per request.
    Salt,
    /// One shared action, `skip_cache_lookup = true` on every request.
    SkipCache,
}

/// `rbe-bench exec`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Requests sent one after another.
    #[arg(long, default_value_t = 200)]
    sequential: usize,
    /// Requests sent with `--concurrency` in flight (0 skips the phase).
    #[arg(long, default_value_t = 5000)]
    concurrent: usize,
    /// Requests in flight in the concurrent phase.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Untimed requests before the sequential phase.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// How cache misses are forced.
    #[arg(long, value_enum, default_value_t = Mode::Salt)]
    mode: Mode,
    /// The program to run (absolute path; it must exit 0).
    #[arg(long, default_value = "/bin/true")]
    program: String,
    /// HTTP/2 connections the requests are spread over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Set `Action.do_not_cache` (diagnostic: the server then skips its
    /// action-cache write, so the difference is that write's cost).
    #[arg(long)]
    do_not_cache: bool,
}

/// What one Execute produced.
struct Sample {
    latency_ms: f64,
    /// Stage durations in ms; None when the server left timestamps out.
    queued: Option<f64>,
    fetch: Option<f64>,
    exec: Option<f64>,
    upload: Option<f64>,
    worker: Option<f64>,
    /// `worker_completed - queued`.
    in_worker_path: Option<f64>,
    /// Client send to `queued` (same host clock): cache lookup, Action and
    /// Command reads, validation, submission.
    pre_queue: Option<f64>,
    /// `worker_completed` to the client seeing the done Operation: the
    /// worker's cleanup and report, the action-cache write, delivery.
    post_worker: Option<f64>,
    cached: bool,
}

fn ts_secs(t: &Option<Timestamp>) -> Option<f64> {
    t.as_ref()
        .filter(|t| t.seconds != 0 || t.nanos != 0)
        .map(|t| t.seconds as f64 + f64::from(t.nanos) * 1e-9)
}

pub(crate) fn span_ms(start: &Option<Timestamp>, end: &Option<Timestamp>) -> Option<f64> {
    Some((ts_secs(end)? - ts_secs(start)?) * 1e3)
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn sample_of(sent: SystemTime, latency: Duration, r: &ExecuteResponse) -> Sample {
    let md = r
        .result
        .as_ref()
        .and_then(|x| x.execution_metadata.clone())
        .unwrap_or_default();
    let m: &ExecutedActionMetadata = &md;
    Sample {
        latency_ms: ms(latency),
        queued: span_ms(&m.queued_timestamp, &m.worker_start_timestamp),
        fetch: span_ms(
            &m.input_fetch_start_timestamp,
            &m.input_fetch_completed_timestamp,
        ),
        exec: span_ms(
            &m.execution_start_timestamp,
            &m.execution_completed_timestamp,
        ),
        upload: span_ms(
            &m.output_upload_start_timestamp,
            &m.output_upload_completed_timestamp,
        ),
        worker: span_ms(&m.worker_start_timestamp, &m.worker_completed_timestamp),
        in_worker_path: span_ms(&m.queued_timestamp, &m.worker_completed_timestamp),
        pre_queue: ts_secs(&m.queued_timestamp).map(|q| (q - unix_secs(sent)) * 1e3),
        post_worker: ts_secs(&m.worker_completed_timestamp)
            .map(|w| (unix_secs(sent) + latency.as_secs_f64() - w) * 1e3),
        cached: r.cached_result,
    }
}

/// The done Operation's ExecuteResponse, checked for success.
pub(crate) fn response_of(op: &Operation) -> anyhow::Result<ExecuteResponse> {
    let r = match op.result.as_ref() {
        Some(operation::Result::Response(any)) => {
            ExecuteResponse::decode(any.value.as_slice()).context("decoding ExecuteResponse")?
        }
        Some(operation::Result::Error(s)) => {
            bail!("operation {} failed: {} {}", op.name, s.code, s.message)
        }
        None => bail!("operation {} done without a result", op.name),
    };
    if let Some(s) = r.status.as_ref().filter(|s| s.code != 0) {
        bail!("Execute status {}: {}", s.code, s.message);
    }
    let exit = r.result.as_ref().map(|x| x.exit_code);
    if exit != Some(0) {
        bail!("the action exited with {exit:?}");
    }
    Ok(r)
}

/// One Execute, streamed to the done Operation.
async fn execute_one(
    mut client: ExecutionClient<Channel>,
    req: ExecuteRequest,
) -> anyhow::Result<Sample> {
    let sent = SystemTime::now();
    let t = Instant::now();
    let mut stream = client.execute(req).await.context("Execute")?.into_inner();
    while let Some(op) = stream.message().await.context("Execute stream")? {
        if op.done {
            let dt = t.elapsed();
            let r = response_of(&op)?;
            return Ok(sample_of(sent, dt, &r));
        }
    }
    bail!("the Execute stream ended without a done operation")
}

/// Statistics of one phase.
struct Phase {
    name: &'static str,
    count: usize,
    concurrency: usize,
    wall: Duration,
    samples: Vec<Sample>,
    errors: usize,
    first_error: Option<String>,
}

fn col(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Vec<f64> {
    samples.iter().filter_map(f).collect()
}

impl Phase {
    fn report(&self, a: &Args) {
        let s = &self.samples;
        let lat = col(s, |x| Some(x.latency_ms));
        let q = col(s, |x| x.queued);
        let fetch = col(s, |x| x.fetch);
        let exec = col(s, |x| x.exec);
        let up = col(s, |x| x.upload);
        let worker = col(s, |x| x.worker);
        let overhead = col(s, |x| x.exec.map(|e| x.latency_ms - e));
        let outside = col(s, |x| x.in_worker_path.map(|w| x.latency_ms - w));
        let pre = col(s, |x| x.pre_queue);
        let post = col(s, |x| x.post_worker);
        let worker_other = col(s, |x| {
            Some(x.worker? - x.fetch.unwrap_or(0.0) - x.exec? - x.upload.unwrap_or(0.0))
        });
        let cached = s.iter().filter(|x| x.cached).count();
        let rate = s.len() as f64 / self.wall.as_secs_f64();
        let p = |v: &[f64], pct: f64| percentile(v, pct);
        println!(
            "exec {} {} via {}: {} ok of {} ({} errors{}), concurrency {}: {:.2} s, {rate:.1} actions/s",
            a.target.label,
            self.name,
            a.target.endpoint,
            s.len(),
            self.count,
            self.errors,
            self.first_error
                .as_deref()
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default(),
            self.concurrency,
            self.wall.as_secs_f64(),
        );
        println!(
            "  client latency   p50 {:7.2} ms  p90 {:7.2}  p99 {:7.2}  max {:7.2}",
            p(&lat, 50.0),
            p(&lat, 90.0),
            p(&lat, 99.0),
            p(&lat, 100.0)
        );
        for (name, v) in [
            ("queued", &q),
            ("input fetch", &fetch),
            ("execution", &exec),
            ("output upload", &up),
            ("worker other", &worker_other),
            ("worker total", &worker),
            ("outside worker", &outside),
            ("  pre-queue", &pre),
            ("  post-worker", &post),
            ("server overhead", &overhead),
        ] {
            println!(
                "  {name:<16} p50 {:7.2} ms  p90 {:7.2}  p99 {:7.2}  (n={})",
                p(v, 50.0),
                p(v, 90.0),
                p(v, 99.0),
                v.len()
            );
        }
        if cached > 0 {
            println!("  note: {cached} responses had cached_result = true");
        }
        Json::new("exec")
            .s("label", &a.target.label)
            .s("endpoint", &a.target.endpoint)
            .s("phase", self.name)
            .s("mode", &format!("{:?}", a.mode))
            .b("do_not_cache", a.do_not_cache)
            .i("requests", self.count as u64)
            .i("ok", s.len() as u64)
            .i("errors", self.errors as u64)
            .i("cached_results", cached as u64)
            .i("concurrency", self.concurrency as u64)
            .n("seconds", self.wall.as_secs_f64())
            .n("actions_per_s", rate)
            .n("latency_ms_p50", p(&lat, 50.0))
            .n("latency_ms_p90", p(&lat, 90.0))
            .n("latency_ms_p99", p(&lat, 99.0))
            .n("latency_ms_max", p(&lat, 100.0))
            .n("queued_ms_p50", p(&q, 50.0))
            .n("queued_ms_p99", p(&q, 99.0))
            .n("input_fetch_ms_p50", p(&fetch, 50.0))
            .n("execution_ms_p50", p(&exec, 50.0))
            .n("execution_ms_p99", p(&exec, 99.0))
            .n("output_upload_ms_p50", p(&up, 50.0))
            .n("worker_other_ms_p50", p(&worker_other, 50.0))
            .n("worker_ms_p50", p(&worker, 50.0))
            .n("outside_worker_ms_p50", p(&outside, 50.0))
            .n("pre_queue_ms_p50", p(&pre, 50.0))
            .n("post_worker_ms_p50", p(&post, 50.0))
            .n("server_overhead_ms_p50", p(&overhead, 50.0))
            .n("server_overhead_ms_p99", p(&overhead, 99.0))
            .print();
    }
}

/// Sends `reqs` with `concurrency` in flight, round-robin over `clients`.
async fn run_phase(
    name: &'static str,
    clients: &[ExecutionClient<Channel>],
    reqs: Vec<ExecuteRequest>,
    concurrency: usize,
) -> Phase {
    let count = reqs.len();
    let t = Instant::now();
    let results: Vec<anyhow::Result<Sample>> =
        futures::stream::iter(reqs.into_iter().enumerate().map(|(i, r)| {
            let c = clients[i % clients.len()].clone();
            execute_one(c, r)
        }))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let wall = t.elapsed();
    let mut samples = Vec::with_capacity(count);
    let mut errors = 0;
    let mut first_error = None;
    for r in results {
        match r {
            Ok(s) => samples.push(s),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    Phase {
        name,
        count,
        concurrency,
        wall,
        samples,
        errors,
        first_error,
    }
}

/// Uploads `n` actions running `argv` with an empty input root, each with a
/// distinct `RBE_BENCH_SALT` when `salted` (so each is a cache miss and
/// none is merged with another), and returns their digests. Nothing here
/// is timed.
pub async fn upload_actions(
    ch: &Channel,
    target: &Target,
    n: usize,
    argv: &[String],
    salted: bool,
    do_not_cache: bool,
) -> anyhow::Result<Vec<rbe_proto::reapi::Digest>> {
    let f = DigestFunction::Sha256;
    let max = max_batch_bytes(ch.clone(), &target.instance).await?;
    let root = Directory::default().encode_to_vec();
    let root_digest = Digest::of(f, &root);
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut blobs: Vec<(Digest, Vec<u8>)> = Vec::with_capacity(2 * n + 1);
    let mut actions = Vec::with_capacity(n);
    for i in 0..n {
        let mut env = vec![EnvironmentVariable {
            name: "PATH".to_string(),
            value: "/usr/bin:/bin".to_string(),
        }];
        if salted {
            env.push(EnvironmentVariable {
                name: "RBE_BENCH_SALT".to_string(),
                value: format!("{run_id}-{i}"),
            });
        }
        let cmd = Command {
            arguments: argv.to_vec(),
            environment_variables: env,
            ..Default::default()
        }
        .encode_to_vec();
        let cmd_digest = Digest::of(f, &cmd);
        let action = Action {
            command_digest: Some(cmd_digest.to_reapi()),
            input_root_digest: Some(root_digest.to_reapi()),
            do_not_cache,
            ..Default::default()
        }
        .encode_to_vec();
        let action_digest = Digest::of(f, &action);
        actions.push(action_digest.to_reapi());
        blobs.push((cmd_digest, cmd));
        blobs.push((action_digest, action));
    }
    let cas = cas_client(ch.clone());
    upload(&cas, pack(&target.instance, &blobs, max), 2).await?;
    // The empty Directory is the empty blob; servers treat it as always
    // present, and some refuse to store it, so its upload is best effort.
    if !root_digest.is_empty_blob() {
        bail!("an empty Directory should encode to the empty blob");
    }
    let _ = upload(&cas, pack(&target.instance, &[(root_digest, root)], max), 1).await;
    Ok(actions)
}

/// Runs the benchmark and prints its result lines.
pub async fn run(a: Args) -> anyhow::Result<()> {
    if a.sequential == 0 && a.concurrent == 0 {
        bail!("nothing to do: --sequential and --concurrent are both 0");
    }
    let f = DigestFunction::Sha256;
    let mut channels = Vec::new();
    for _ in 0..a.connections.max(1) {
        channels.push(connect(&a.target.endpoint).await?);
    }
    let ch = channels[0].clone();

    // The action blobs: one empty input root, then per request a Command
    // and an Action (or one of each in skip-cache mode).
    let total = a.warmup + a.sequential + a.concurrent;
    let n_actions = match a.mode {
        Mode::Salt => total,
        Mode::SkipCache => 1,
    };
    let argv = vec![a.program.clone()];
    let salted = a.mode == Mode::Salt;
    let actions = upload_actions(&ch, &a.target, n_actions, &argv, salted, a.do_not_cache).await?;
    println!(
        "exec {}: uploaded {} actions; mode {:?}, program {}, do_not_cache {}",
        a.target.label, n_actions, a.mode, a.program, a.do_not_cache
    );

    let skip = a.mode == Mode::SkipCache;
    let mut reqs = (0..total).map(|i| ExecuteRequest {
        instance_name: a.target.instance.clone(),
        skip_cache_lookup: skip,
        action_digest: Some(actions[if skip { 0 } else { i }].clone()),
        digest_function: f.to_reapi(),
        ..Default::default()
    });
    let clients: Vec<ExecutionClient<Channel>> = channels
        .into_iter()
        .map(|c| ExecutionClient::new(c).max_decoding_message_size(MAX_MESSAGE))
        .collect();
    let mut take = |n: usize| -> Vec<ExecuteRequest> { reqs.by_ref().take(n).collect() };

    let warm = run_phase("warmup", &clients, take(a.warmup), 1).await;
    if warm.errors > 0 {
        bail!(
            "warm-up: {} of {} failed: {}",
            warm.errors,
            warm.count,
            warm.first_error.unwrap_or_default()
        );
    }
    let mut failed = false;
    if a.sequential > 0 {
        let p = run_phase("sequential", &clients, take(a.sequential), 1).await;
        p.report(&a);
        failed |= p.errors > 0;
    }
    if a.concurrent > 0 {
        let p = run_phase("concurrent", &clients, take(a.concurrent), a.concurrency).await;
        p.report(&a);
        failed |= p.errors > 0;
    }
    if failed {
        bail!("some Executes failed (see above)");
    }
    Ok(())
}
