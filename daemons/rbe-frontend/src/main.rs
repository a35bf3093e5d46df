//! rbe-frontend: the public REAPI endpoint. Serves Capabilities, CAS, action
//! cache and ByteStream by streaming to rbe-casd (and, in later releases,
//! Execution, the scheduler and the cluster gossip).

mod proxy;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// Command line. Everything else comes from frontend.toml (see rbe.toml(5)).
#[derive(Parser)]
#[command(version, about = "rbe public REAPI endpoint")]
struct Args {
    /// Configuration directory, lowest precedence first; repeatable.
    /// Default: /usr/lib/rbe, /run/rbe, /etc/rbe.
    #[arg(long = "config-dir", value_name = "DIR")]
    config_dirs: Vec<PathBuf>,
    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let dirs = if args.config_dirs.is_empty() {
        rbe_config::default_dirs()
    } else {
        args.config_dirs
    };
    let settings = match rbe_config::load_frontend(&dirs) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rbe-frontend: configuration error: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    if args.check_config {
        println!("{settings:#?}");
        return ExitCode::SUCCESS;
    }
    // Before any thread exists: this edits the environment.
    let fds = match rbe_systemd::take_listen_fds() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("rbe-frontend: socket activation: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = rbe_systemd::init_logging(&settings.log.level, "rbe-frontend") {
        eprintln!("rbe-frontend: logging: {e}");
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(server::run(settings, fds)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "rbe-frontend failed");
            eprintln!("rbe-frontend: {e:#}");
            ExitCode::FAILURE
        }
    }
}
