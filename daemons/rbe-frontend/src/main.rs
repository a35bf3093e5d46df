//! rbe-frontend: the public REAPI endpoint. Serves Capabilities, CAS, action
//! cache and ByteStream by streaming to rbe-casd, and Execution and
//! Operations with the scheduler that hands actions to attached workers.

mod auth;
mod exec;
mod proxy;
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
        rbe_config::load_frontend,
        |s| s.log.level.clone(),
        |s, fds| server::run(s, fds, dirs.clone()),
    )
}
