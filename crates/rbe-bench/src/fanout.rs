//! `rbe-bench fanout`: a burst of distinct actions sent all at once to one
//! endpoint, for the cluster's offload benchmark (issue 12): how long the
//! whole burst takes against the ideal makespan, and which host and worker
//! ran each action (`ExecutedActionMetadata.worker`, `"{node}/{worker}"` in
//! a cluster).
//!
//! The ideal makespan is given by the caller (`--ideal-secs`), since only
//! they know the slots behind the endpoint: with slots 1/4/8 and 104 × 2 s,
//! it is ⌈104 / 13⌉ × 2 s = 16 s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use rbe_proto::reapi::{execution_client::ExecutionClient, ExecuteRequest};
use rbe_proto::DigestFunction;
use tonic::transport::Channel;

use crate::exec::upload_actions;
use crate::report::{percentile, Json};
use crate::{connect, Target, MAX_MESSAGE};

/// `rbe-bench fanout`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Actions in the burst, all distinct (salted), all sent at once.
    #[arg(long, default_value_t = 104)]
    count: usize,
    /// The command each action runs, e.g. `--argv /bin/sleep --argv 2`.
    #[arg(long = "argv", required = true)]
    argv: Vec<String>,
    /// The ideal makespan in seconds, for the ratio in the report.
    #[arg(long)]
    ideal_secs: Option<f64>,
    /// HTTP/2 connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

struct Done {
    worker: String,
    /// From sending the Execute to the done Operation.
    latency: Duration,
    /// From queued to worker start, by the server's clock.
    queued_ms: Option<f64>,
}

async fn one(mut client: ExecutionClient<Channel>, req: ExecuteRequest) -> anyhow::Result<Done> {
    let t = Instant::now();
    let mut stream = client.execute(req).await.context("Execute")?.into_inner();
    while let Some(op) = stream.message().await.context("Execute stream")? {
        if op.done {
            let r = crate::exec::response_of(&op)?;
            let md = r
                .result
                .and_then(|x| x.execution_metadata)
                .unwrap_or_default();
            let queued_ms = crate::exec::span_ms(&md.queued_timestamp, &md.worker_start_timestamp);
            return Ok(Done {
                worker: md.worker,
                latency: t.elapsed(),
                queued_ms,
            });
        }
    }
    bail!("the Execute stream ended without a done operation")
}

/// The host part of a worker name: `"{node}/{worker}"` in a cluster; a
/// plain worker name is its own host.
fn host_of(worker: &str) -> &str {
    worker.split_once('/').map_or(worker, |(h, _)| h)
}

/// Runs the burst and prints its result lines.
pub async fn run(a: Args) -> anyhow::Result<()> {
    if a.count == 0 {
        bail!("nothing to do: --count is 0");
    }
    let mut channels = Vec::new();
    for _ in 0..a.connections.max(1) {
        channels.push(connect(&a.target.endpoint).await?);
    }
    let actions = upload_actions(&channels[0], &a.target, a.count, &a.argv, true, false).await?;
    let clients: Vec<_> = channels
        .into_iter()
        .map(|c| ExecutionClient::new(c).max_decoding_message_size(MAX_MESSAGE))
        .collect();
    let t = Instant::now();
    let results: Vec<anyhow::Result<Done>> =
        futures::stream::iter(actions.into_iter().enumerate().map(|(i, d)| {
            let req = ExecuteRequest {
                instance_name: a.target.instance.clone(),
                action_digest: Some(d),
                digest_function: DigestFunction::Sha256.to_reapi(),
                ..Default::default()
            };
            one(clients[i % clients.len()].clone(), req)
        }))
        .buffer_unordered(a.count)
        .collect()
        .await;
    let makespan = t.elapsed().as_secs_f64();
    let (mut by_host, mut by_worker) = (BTreeMap::new(), BTreeMap::new());
    let (mut latencies, mut queued) = (Vec::new(), Vec::new());
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(d) => {
                *by_host.entry(host_of(&d.worker).to_owned()).or_insert(0u64) += 1;
                *by_worker.entry(d.worker).or_insert(0u64) += 1;
                latencies.push(d.latency.as_secs_f64() * 1e3);
                queued.extend(d.queued_ms);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    println!(
        "fanout {}: {} actions ({}), makespan {:.2} s{}, {} failed",
        a.target.label,
        a.count,
        a.argv.join(" "),
        makespan,
        a.ideal_secs
            .map(|i| format!(" = {:.3} × ideal {i} s", makespan / i))
            .unwrap_or_default(),
        errors.len()
    );
    for (h, n) in &by_host {
        println!("  host {h}: {n} actions");
    }
    for (w, n) in &by_worker {
        println!("  worker {w}: {n}");
    }
    if let Some(e) = errors.first() {
        println!("  first error: {e}");
    }
    let mut j = Json::new("fanout")
        .s("label", &a.target.label)
        .i("count", a.count as u64)
        .s("argv", &a.argv.join(" "))
        .n("makespan_s", makespan)
        .i("failed", errors.len() as u64)
        .n("latency_p50_ms", percentile(&latencies, 50.0))
        .n("latency_p99_ms", percentile(&latencies, 99.0))
        .n("queued_p50_ms", percentile(&queued, 50.0))
        .n("queued_p99_ms", percentile(&queued, 99.0));
    if let Some(i) = a.ideal_secs {
        j = j.n("ideal_s", i).n("makespan_over_ideal", makespan / i);
    }
    for (h, n) in &by_host {
        j = j.i(&format!("host_{h}"), *n);
    }
    j.print();
    if !errors.is_empty() {
        bail!("{} of {} actions failed", errors.len(), a.count);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_a_worker_name() {
        assert_eq!(super::host_of("b/b-workerd-12"), "b");
        assert_eq!(super::host_of("workerd-12"), "workerd-12");
    }
}
