//! rbe-workerd: runs actions assigned by rbe-frontend, each in its own
//! namespaces as an unprivileged user, with inputs hard-linked by rbe-casd.

mod action;
mod cgroups;
mod confine;
mod inputs;
mod outputs;
mod privileges;
mod server;
mod workdir;

use std::process::ExitCode;

use clap::Parser;

/// Command line. Everything else comes from workerd.toml (see rbe.toml(5)).
#[derive(Parser)]
#[command(version, about = "rbe worker: runs actions")]
struct Args {
    #[command(flatten)]
    config: rbe_config::cli::ConfigArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Before any thread exists: capabilities are per thread.
    if let Err(e) = privileges::drop_unneeded() {
        eprintln!("rbe-workerd: cannot drop unneeded capabilities: {e}");
        return ExitCode::FAILURE;
    }
    let dirs = args.config.dirs();
    rbe_systemd::daemon::main(
        "rbe-workerd",
        &dirs,
        args.config.check_config,
        rbe_config::load_workerd,
        |s| s.log.level.clone(),
        |s, fds| server::run(s, fds, dirs.clone()),
    )
}
