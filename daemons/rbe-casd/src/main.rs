//! rbe-casd: the content-addressable store and action cache, served over a
//! Unix socket to rbe-frontend, rbe-workerd and rbectl.

mod server;
mod service;

use std::process::ExitCode;

use clap::Parser;

/// Command line. Everything else comes from casd.toml (see rbe.toml(5)).
#[derive(Parser)]
#[command(version, about = "rbe content-addressable store and action cache")]
struct Args {
    #[command(flatten)]
    config: rbe_config::cli::ConfigArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let dirs = args.config.dirs();
    rbe_systemd::daemon::main(
        "rbe-casd",
        &dirs,
        args.config.check_config,
        rbe_config::load_casd,
        |s| s.log.level.clone(),
        |s, fds| server::run(s, fds, dirs.clone()),
    )
}
