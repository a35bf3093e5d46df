//! The part of `main` every rbe daemon shares, in the order systemd needs
//! it: socket activation is read before any thread exists (it edits the
//! environment), logging goes to journald or stderr, and errors become exit
//! codes systemd can act on.

use std::fmt::Display;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::process::ExitCode;

/// Exit status for a configuration error (sysexits EX_CONFIG); units use
/// `RestartPreventExitStatus=78` so a broken config is not restarted.
pub const EXIT_CONFIG: u8 = 78;

/// Runs a daemon whose settings are already loaded: takes the activated
/// sockets, starts logging at `log_level`, runs `serve` on a multi-threaded
/// runtime, and maps its error (printed with its whole chain) to a failure.
pub fn run<S, F, Fut, E>(name: &'static str, settings: S, log_level: &str, serve: F) -> ExitCode
where
    F: FnOnce(S, Vec<(String, OwnedFd)>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let fds = match crate::take_listen_fds() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{name}: socket activation: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = crate::init_logging(log_level, name) {
        eprintln!("{name}: logging: {e}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(settings, fds)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain = format!("{e:#}");
            tracing::error!(error = %chain, "{name} failed");
            eprintln!("{name}: {chain}");
            ExitCode::FAILURE
        }
    }
}

/// The whole `main` of a daemon: load the configuration from `dirs` with
/// `load` (a failure is EX_CONFIG), print it and stop when `check_only`,
/// otherwise [`run`] with the level `log_level` picks from it.
pub fn main<S, L, C, F, Fut, E>(
    name: &'static str,
    dirs: &[std::path::PathBuf],
    check_only: bool,
    load: L,
    log_level: fn(&S) -> String,
    serve: F,
) -> ExitCode
where
    S: std::fmt::Debug,
    L: FnOnce(&[std::path::PathBuf]) -> Result<S, C>,
    C: Display,
    F: FnOnce(S, Vec<(String, OwnedFd)>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let settings = match load(dirs) {
        Ok(s) => s,
        Err(e) => return config_error(name, &e),
    };
    if check_only {
        println!("{settings:#?}");
        return ExitCode::SUCCESS;
    }
    let level = log_level(&settings);
    run(name, settings, &level, serve)
}

/// Reports a configuration error the way every daemon does.
pub fn config_error(name: &str, e: &dyn Display) -> ExitCode {
    eprintln!("{name}: configuration error: {e}");
    ExitCode::from(EXIT_CONFIG)
}
