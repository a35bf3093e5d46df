//! `rbectl local`: the whole stack as child processes of one terminal
//! command, for a first try and for development. No systemd, no root.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rbe_config::local::LocalLayout;

#[derive(clap::Args)]
pub struct LocalArgs {
    /// State directory (store, sockets, generated config).
    /// Default: $XDG_STATE_HOME/rbe/local or ~/.local/state/rbe/local.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Public gRPC address.
    #[arg(long, default_value = "127.0.0.1:8980")]
    listen: String,
    /// Size bound of the local store (e.g. 10GiB).
    #[arg(long, default_value = "10GiB")]
    max_size: String,
    /// Directory holding rbe-casd, rbe-frontend and rbe-workerd. Default:
    /// next to rbectl, then /usr/libexec/rbe, then $PATH.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(x).join("rbe/local");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/rbe/local"),
        None => PathBuf::from("/var/tmp/rbe-local"),
    }
}

/// Finds a daemon binary: explicit dir, next to this executable, the
/// packaged location, then $PATH.
pub fn find_binary(name: &str, bin_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(d) = bin_dir {
        candidates.push(d.join(name));
    }
    if let Some(d) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        candidates.push(d.join(name));
    }
    candidates.push(PathBuf::from("/usr/libexec/rbe").join(name));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!("cannot find {name}; build it with `cargo build --release` or pass --bin-dir")
        })
}

struct Daemon {
    name: &'static str,
    child: Child,
}

impl Daemon {
    fn start(name: &'static str, bin: &Path, config_dir: &Path) -> anyhow::Result<Self> {
        // Its own process group: Ctrl-C reaches rbectl only, which then stops
        // the daemons in order (frontend first).
        let child = Command::new(bin)
            .process_group(0)
            .arg("--config-dir")
            .arg(config_dir)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Daemon { name, child })
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(format!("{} exited: {st}", self.name)),
            Ok(None) => None,
            Err(e) => Some(format!("{}: {e}", self.name)),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "rbectl: {} did not stop in {grace:?}; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGINT and SIGTERM, installed before any daemon starts so that a signal
/// during startup stops what was started instead of orphaning it.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn wait_healthy(
    channel: tonic::transport::Channel,
    what: &str,
    daemons: &mut [&mut Daemon],
    signals: &mut Signals,
) -> anyhow::Result<()> {
    tokio::select! {
        r = wait_healthy_inner(channel, what, daemons) => r,
        _ = signals.recv() => bail!("interrupted while starting {what}"),
    }
}

async fn wait_healthy_inner(
    channel: tonic::transport::Channel,
    what: &str,
    daemons: &mut [&mut Daemon],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    loop {
        let req = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        if let Ok(r) = client.check(req).await {
            if r.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                return Ok(());
            }
        }
        for d in daemons.iter_mut() {
            if let Some(why) = d.exited() {
                bail!("{why} before {what} became ready");
            }
        }
        if Instant::now() > deadline {
            bail!("{what} did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn run(a: LocalArgs) -> anyhow::Result<ExitCode> {
    let state = a.state_dir.unwrap_or_else(default_state_dir);
    let layout = LocalLayout::new(&state);
    layout
        .write_configs(&a.listen, &a.max_size)
        .with_context(|| format!("writing config under {}", state.display()))?;
    // Another server on the port would answer our health check in place of
    // our frontend, so make sure the port is free first.
    if let Err(e) = std::net::TcpListener::bind(&a.listen) {
        bail!(
            "cannot listen on {}: {e} (is another rbe or REAPI server running? use --listen)",
            a.listen
        );
    }
    let casd_bin = find_binary("rbe-casd", a.bin_dir.as_deref())?;
    let frontend_bin = find_binary("rbe-frontend", a.bin_dir.as_deref())?;
    let workerd_bin = find_binary("rbe-workerd", a.bin_dir.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut signals = rt.block_on(async { Signals::new() })?;

    let mut casd = Daemon::start("rbe-casd", &casd_bin, &layout.config_dir)?;
    let r = rt.block_on(async {
        let ch = rbe_net::unix_channel(&layout.casd_socket()).await?;
        wait_healthy(ch, "rbe-casd", &mut [&mut casd], &mut signals).await
    });
    if let Err(e) = r {
        casd.stop(Duration::from_secs(5));
        return Err(e);
    }
    let mut frontend = match Daemon::start("rbe-frontend", &frontend_bin, &layout.config_dir) {
        Ok(f) => f,
        Err(e) => {
            casd.stop(Duration::from_secs(5));
            return Err(e);
        }
    };
    let r = rt.block_on(async {
        // On its local socket: the public port may speak TLS (a `[tls]`
        // drop-in in the state directory's config).
        let ch = rbe_net::unix_channel(&layout.frontend_socket()).await?;
        wait_healthy(
            ch,
            "rbe-frontend",
            &mut [&mut casd, &mut frontend],
            &mut signals,
        )
        .await
    });
    if let Err(e) = r {
        frontend.stop(Duration::from_secs(5));
        casd.stop(Duration::from_secs(5));
        return Err(e);
    }

    let mut workerd = match Daemon::start("rbe-workerd", &workerd_bin, &layout.config_dir) {
        Ok(w) => w,
        Err(e) => {
            frontend.stop(Duration::from_secs(5));
            casd.stop(Duration::from_secs(5));
            return Err(e);
        }
    };
    // The worker is a client of the frontend: give it a moment and make
    // sure it did not exit at once (a config error, say).
    std::thread::sleep(Duration::from_millis(300));
    if let Some(why) = workerd.exited() {
        frontend.stop(Duration::from_secs(5));
        casd.stop(Duration::from_secs(5));
        bail!("{why}");
    }

    println!(
        "rbe is serving on grpc://{} (state in {})",
        a.listen,
        state.display()
    );
    println!("Use it from Bazel with:");
    println!("  bazel build --remote_executor=grpc://{} //...", a.listen);
    println!("or, as a remote cache only:");
    println!("  bazel build --remote_cache=grpc://{} //...", a.listen);
    println!("Press Ctrl-C to stop.");

    let why = rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = signals.recv() => return Ok::<Option<String>, anyhow::Error>(None),
                _ = tick.tick() => {
                    if let Some(w) = workerd.exited().or_else(|| frontend.exited()).or_else(|| casd.exited()) {
                        return Ok(Some(w));
                    }
                }
            }
        }
    })?;
    // The worker, then the frontend, so no new request reaches a stopping
    // casd.
    workerd.stop(Duration::from_secs(10));
    frontend.stop(Duration::from_secs(10));
    casd.stop(Duration::from_secs(10));
    match why {
        None => {
            println!("rbe stopped");
            Ok(ExitCode::SUCCESS)
        }
        Some(w) => {
            eprintln!("rbectl: {w}; stopped the rest");
            Ok(ExitCode::FAILURE)
        }
    }
}
