//! rbe-casd: the content-addressable store and action cache, served over a
//! Unix socket to rbe-frontend, rbe-workerd and rbectl.

mod server;
mod service;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// Command line. Everything else comes from casd.toml (see rbe.toml(5)).
#[derive(Parser)]
#[command(version, about = "rbe content-addressable store and action cache")]
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
    let settings = match rbe_config::load_casd(&dirs) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rbe-casd: configuration error: {e}");
            return ExitCode::from(78); // EX_CONFIG: systemd shows it as a config failure
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
            eprintln!("rbe-casd: socket activation: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = rbe_systemd::init_logging(&settings.log.level, "rbe-casd") {
        eprintln!("rbe-casd: logging: {e}");
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(server::run(settings, fds)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "rbe-casd failed");
            eprintln!("rbe-casd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
