//! rbe-frontend: the public REAPI endpoint. Serves Capabilities, CAS, action
//! cache and ByteStream by streaming to rbe-casd, and Execution and
//! Operations with the scheduler that hands actions to attached workers.

mod access;
mod cluster;
mod exec;
mod proxy;
mod quota;
mod server;

use std::process::ExitCode;

use clap::Parser;

/// Command line. Everything else comes from frontend.toml (see rbe.toml(5)).
#[derive(Parser)]
#[command(version, about = "rbe public REAPI endpoint")]
struct Args {
    #[command(flatten)]
    config: rbe_config::cli::ConfigArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let dirs = args.config.dirs();
    rbe_systemd::daemon::main(
        "rbe-frontend",
        &dirs,
        args.config.check_config,
        server::load_checked,
        |s| s.log.level.clone(),
        |s, fds| server::run(s, fds, dirs.clone()),
    )
}
