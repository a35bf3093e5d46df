//! rbe-bench: CAS and remote-execution benchmarks against any REAPI endpoint.
//!
//! Each subcommand prints human-readable lines and exactly one JSON line
//! (starting with `{"bench":`) that `bench/cas.sh` collects. The benchmarks
//! only use the public REAPI surface, so the same binary measures rbe and
//! BuildGrid side by side; `populate` and `casd-stats` are rbe-only helpers
//! for the memory-per-blob measurement.
//!
//! Wall-clock figures depend on the machine and on whatever else runs on it;
//! nothing here asserts a time. Compare ratios measured in one run.

mod batch;
mod bytestream;
mod exec;
mod fanout;
mod fmb;
mod local;
mod report;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(
    version,
    about = "CAS and execution benchmarks for rbe (and any REAPI server)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// ByteStream Write then Read of one large random blob, several runs.
    Bytestream(bytestream::Args),
    /// Many small blobs through BatchUpdateBlobs.
    Batch(batch::Args),
    /// FindMissingBlobs latency with a large digest list, half present.
    Fmb(fmb::Args),
    /// Remote-execution overhead: no-op Executes (forced cache misses),
    /// sequential then concurrent, with the per-stage split.
    Exec(exec::Args),
    /// A burst of distinct actions at once: makespan against the ideal,
    /// and which host and worker ran each (the cluster's offload).
    Fanout(fanout::Args),
    /// Write N tiny blobs straight into an rbe store directory (casd stopped).
    Populate(local::PopulateArgs),
    /// Query rbe-casd's local Stats API, optionally waiting for the index.
    CasdStats(local::StatsArgs),
}

/// Where to send requests.
#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    /// gRPC endpoint, e.g. http://127.0.0.1:8980 (grpc:// is accepted too),
    /// or unix:/path/to/socket.
    #[arg(long)]
    pub endpoint: String,
    /// REAPI instance name.
    #[arg(long, default_value = "")]
    pub instance: String,
    /// Free-form label copied into the JSON line (e.g. "rbe", "buildgrid").
    #[arg(long, default_value = "")]
    pub label: String,
}

/// Largest gRPC message the benchmark client accepts or sends.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Connects to `endpoint` with the same HTTP/2 window sizes rbe's own
/// clients use (applied to every server measured, so it is fair).
/// `unix:/path` connects to a Unix socket (e.g. casd's, bypassing the
/// frontend, to see what the proxy hop costs).
pub async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    if let Some(path) = endpoint.strip_prefix("unix:") {
        return rbe_net::unix_channel(std::path::Path::new(path))
            .await
            .with_context(|| format!("unix socket {path}"));
    }
    let uri = match endpoint.strip_prefix("grpc://") {
        Some(rest) => format!("http://{rest}"),
        None if endpoint.contains("://") => endpoint.to_string(),
        None => format!("http://{endpoint}"),
    };
    let ep = Endpoint::from_shared(uri.clone()).with_context(|| format!("endpoint {uri}"))?;
    rbe_net::tune_endpoint(ep)
        .connect()
        .await
        .with_context(|| format!("connecting to {uri}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rbe-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        match cli.cmd {
            Cmd::Bytestream(a) => bytestream::run(a).await,
            Cmd::Batch(a) => batch::run(a).await,
            Cmd::Fmb(a) => fmb::run(a).await,
            Cmd::Exec(a) => exec::run(a).await,
            Cmd::Fanout(a) => fanout::run(a).await,
            Cmd::Populate(a) => local::populate(a),
            Cmd::CasdStats(a) => local::stats(a).await,
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rbe-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
