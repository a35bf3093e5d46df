//! rbe-frontend: the public REAPI endpoint. Serves Capabilities, CAS, action
//! cache and ByteStream by streaming to rbe-casd (and, in later releases,
//! Execution, the scheduler and the cluster gossip).

mod exec;
mod proxy;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

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
        Err(e) => return rbe_systemd::daemon::config_error("rbe-frontend", &e),
    };
    if args.check_config {
        println!("{settings:#?}");
        return ExitCode::SUCCESS;
    }
    let level = settings.log.level.clone();
    rbe_systemd::daemon::run("rbe-frontend", settings, &level, server::run)
}
