//! rbe-casd: the content-addressable store and action cache, served over a
//! Unix socket to rbe-frontend, rbe-workerd and rbectl.

mod server;
mod service;

use std::path::PathBuf;
use std::process::ExitCode;

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
        Err(e) => return rbe_systemd::daemon::config_error("rbe-casd", &e),
    };
    if args.check_config {
        println!("{settings:#?}");
        return ExitCode::SUCCESS;
    }
    let level = settings.log.level.clone();
    rbe_systemd::daemon::run("rbe-casd", settings, &level, server::run)
}
