//! rbe-workerd: runs actions assigned by rbe-frontend, each in its own
//! namespaces as an unprivileged user, with inputs hard-linked by rbe-casd.

mod action;
mod outputs;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Command line. Everything else comes from workerd.toml (see rbe.toml(5)).
#[derive(Parser)]
#[command(version, about = "rbe worker: runs actions")]
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
    let settings = match rbe_config::load_workerd(&dirs) {
        Ok(s) => s,
        Err(e) => return rbe_systemd::daemon::config_error("rbe-workerd", &e),
    };
    if args.check_config {
        println!("{settings:#?}");
        return ExitCode::SUCCESS;
    }
    let level = settings.log.level.clone();
    rbe_systemd::daemon::run("rbe-workerd", settings, &level, server::run)
}
