//! `rbectl config check`: runs each daemon's config pipeline and reports.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Configuration directory, lowest precedence first; repeatable.
    /// Default: /usr/lib/rbe, /run/rbe, /etc/rbe.
    #[arg(long = "config-dir", value_name = "DIR")]
    config_dirs: Vec<PathBuf>,
    /// Check only this daemon (casd, frontend or workerd).
    #[arg(long)]
    daemon: Option<String>,
}

pub fn run(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let dirs = if a.config_dirs.is_empty() {
        rbe_config::default_dirs()
    } else {
        a.config_dirs
    };
    let mut failed = false;
    let want = |d: &str| a.daemon.as_deref().is_none_or(|w| w == d);
    if let Some(d) = a.daemon.as_deref() {
        if !["casd", "frontend", "workerd"].contains(&d) {
            anyhow::bail!("unknown daemon {d:?}; expected casd, frontend or workerd");
        }
    }
    let mut report = |name: &str, r: Result<(), rbe_config::ConfigError>| match r {
        Ok(()) => println!("{name}: ok"),
        Err(e) => {
            println!("{name}: {e}");
            failed = true;
        }
    };
    if want("casd") {
        report("casd", rbe_config::load_casd(&dirs).map(|_| ()));
    }
    if want("frontend") {
        // The tokens file is part of the frontend's configuration: the
        // frontend reads it at start and on reload like its .toml files.
        let r = rbe_config::load_frontend(&dirs).and_then(|s| s.auth.load().map(|_| ()));
        report("frontend", r);
    }
    if want("workerd") {
        report("workerd", rbe_config::load_workerd(&dirs).map(|_| ()));
    }
    Ok(if failed {
        ExitCode::from(78)
    } else {
        ExitCode::SUCCESS
    })
}
