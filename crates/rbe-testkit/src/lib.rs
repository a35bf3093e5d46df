//! Test kit: runs the real daemon binaries on temporary sockets and ports,
//! and offers small REAPI client helpers. Tests written with it exercise
//! real gRPC over real sockets; nothing is mocked.
//!
//! Binaries are looked up next to the test executable (`target/<profile>/`);
//! the first use builds them with `cargo build --bins` so that a plain
//! `cargo test` works from a clean checkout.
#![allow(missing_docs, clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod buildgrid;
pub mod client;
pub mod cluster;
pub mod exec;
pub mod grpc;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rbe_config::local::LocalLayout;
use tonic::transport::Channel;

/// Takes out of `cmd`'s environment what `cargo test` sets for the test
/// binary itself (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...), for a cargo
/// run from a test. Build scripts watch some of them (ring's
/// `rerun-if-env-changed=CARGO_PKG_NAME`, for one): seen set from a test
/// and unset from a shell, every switch between the two rebuilt ring and
/// everything above it, and relinked the daemons.
pub fn without_test_env(cmd: &mut Command) -> &mut Command {
    const EXACT: [&str; 6] = [
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    const PREFIXES: [&str; 3] = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_EXE_"];
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if EXACT.contains(&k) || PREFIXES.iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Path of a workspace binary, building the workspace's binaries once.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/<test> -> target/<profile>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        if std::env::var_os("RBE_TEST_NO_BUILD").is_none() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "--bins",
                "-p",
                "rbe-casd",
                "-p",
                "rbe-frontend",
                "-p",
                "rbe-workerd",
                "-p",
                "rbectl",
            ]);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let st = without_test_env(&mut cmd)
                .status()
                .expect("running cargo build");
            assert!(st.success(), "cargo build --bins failed");
        }
        dir
    });
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing; run cargo build --bins",
        p.display()
    );
    p
}

/// Reports a skipped test on the real stderr: libtest captures `println!`,
/// but a skip reason must be seen in a plain `cargo test` run.
pub fn skip(reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP: {reason}");
}

/// Where a daemon's stderr goes in tests: a log file in its state dir, so
/// test output stays readable; the path is printed if the daemon dies.
fn log_file(dir: &Path, name: &str) -> Stdio {
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
    {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::inherit(),
    }
}

/// Deterministic pseudo-random bytes (xorshift), distinct per seed: test
/// blobs that do not compress and do not collide.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A parent for state directories whose behaviour depends on a disk file
/// system (hard-link limits, rename and link timing): `/var/tmp` where it
/// exists (usually not tmpfs, unlike `/tmp`), the temp dir otherwise.
pub fn disk_tmp() -> PathBuf {
    let v = Path::new("/var/tmp");
    let writable = tempfile::Builder::new()
        .prefix("rbe-test-probe-")
        .tempdir_in(v)
        .is_ok();
    if writable {
        v.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
/// `RBE_TEST_PORTS=<first>-<last>` confines it to a range, for machines
/// where several test suites run side by side, each in its own range.
pub fn free_port() -> u16 {
    if let Some((lo, hi)) = std::env::var("RBE_TEST_PORTS").ok().and_then(|r| {
        let (lo, hi) = r.split_once('-')?;
        Some((
            lo.trim().parse::<u16>().ok()?,
            hi.trim().parse::<u16>().ok()?,
        ))
    }) {
        // Round robin from a per-process start, so that a port just handed
        // out is not handed out again before its daemon has bound it.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let span = u32::from(hi.saturating_sub(lo)) + 1;
        for _ in 0..span {
            let n = NEXT
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .wrapping_add(std::process::id())
                % span;
            let port = lo + n as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
        panic!("no free port in RBE_TEST_PORTS={lo}-{hi}");
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

async fn wait_healthy(ch: Channel, child: &mut Child, what: &str) {
    let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = c
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            if r.into_inner().status == 1 {
                return;
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited before becoming healthy: {st} (see its .log in the state dir)");
        }
        assert!(Instant::now() < deadline, "{what} not healthy within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running rbe-casd.
pub struct Casd {
    pub layout: LocalLayout,
    child: Option<Child>,
    wrap: Vec<String>,
}

impl Casd {
    /// Starts casd with its state under `root`. `dropin` is extra TOML
    /// written to `config/casd.toml.d/50-test.toml`.
    pub async fn start(root: &Path, max_size: &str, dropin: &str) -> Casd {
        Self::start_wrapped(root, max_size, dropin, &[]).await
    }

    /// [`Casd::start`] with the command line prefixed by `wrap` (e.g.
    /// `ip netns exec NAME`, to run casd in a network namespace); the
    /// wrapper must exec casd, so that the pid is casd's.
    pub async fn start_wrapped(root: &Path, max_size: &str, dropin: &str, wrap: &[&str]) -> Casd {
        let layout = LocalLayout::new(root);
        layout
            .write_configs("127.0.0.1:1", max_size)
            .expect("write config");
        let d = layout.config_dir.join("casd.toml.d");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("50-test.toml"), dropin).expect("dropin");
        let mut casd = Casd {
            layout,
            child: None,
            wrap: wrap.iter().map(|s| (*s).to_owned()).collect(),
        };
        casd.restart().await;
        casd
    }

    /// Starts (again) with the same state.
    pub async fn restart(&mut self) {
        let casd = bin("rbe-casd");
        let mut cmd = match self.wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(casd);
                c
            }
            None => Command::new(casd),
        };
        let mut child = cmd
            .arg("--config-dir")
            .arg(&self.layout.config_dir)
            .stdin(Stdio::null())
            .stderr(log_file(&self.layout.root, "casd"))
            .spawn()
            .expect("spawn rbe-casd");
        let ch = self.channel().await;
        wait_healthy(ch, &mut child, "rbe-casd").await;
        self.child = Some(child);
    }

    pub async fn channel(&self) -> Channel {
        rbe_net::unix_channel(&self.layout.casd_socket())
            .await
            .expect("channel")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is still alive.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Casd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts rbe-frontend on `layout`'s configuration, logging to
/// `dir/frontend.log`, and waits until it answers health checks.
async fn spawn_frontend(dir: &Path, layout: &LocalLayout) -> Child {
    let mut child = Command::new(bin("rbe-frontend"))
        .arg("--config-dir")
        .arg(&layout.config_dir)
        .stdin(Stdio::null())
        .stderr(log_file(dir, "frontend"))
        .spawn()
        .expect("spawn rbe-frontend");
    // Through the local socket, which is plaintext whatever [tls] says
    // about the TCP port.
    let ch = rbe_net::unix_channel(&layout.frontend_socket())
        .await
        .expect("channel");
    wait_healthy(ch, &mut child, "rbe-frontend").await;
    child
}

/// casd plus rbe-frontend on a free port: what a Bazel client talks to.
pub struct Stack {
    pub tmp: tempfile::TempDir,
    pub casd: Casd,
    frontend: Option<Child>,
    workerd: Option<Child>,
    pub addr: String,
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with("").await
    }

    /// Starts with extra casd TOML.
    pub async fn start_with(casd_dropin: &str) -> Stack {
        Self::start_configured(casd_dropin, "", "").await
    }

    /// Starts with extra TOML for each daemon (written as
    /// `config/<daemon>.toml.d/50-test.toml`; `@ADDR@` in the frontend's
    /// is replaced by its loopback address).
    pub async fn start_configured(
        casd_dropin: &str,
        frontend_dropin: &str,
        workerd_dropin: &str,
    ) -> Stack {
        Self::start_configured_in(
            &std::env::temp_dir(),
            casd_dropin,
            frontend_dropin,
            workerd_dropin,
        )
        .await
    }

    /// [`Stack::start_configured`] with the state directory under `parent`.
    pub async fn start_configured_in(
        parent: &Path,
        casd_dropin: &str,
        frontend_dropin: &str,
        workerd_dropin: &str,
    ) -> Stack {
        let tmp = tempfile::Builder::new()
            .prefix("rbe-test-")
            .tempdir_in(parent)
            .expect("tempdir");
        let casd = Casd::start(tmp.path(), "1GiB", casd_dropin).await;
        let addr = format!("127.0.0.1:{}", free_port());
        casd.layout
            .write_configs(&addr, "1GiB")
            .expect("write config");
        // `@ADDR@` in the frontend's drop-in is its loopback address, for
        // a drop-in that lists more listeners beside it.
        let frontend_dropin = frontend_dropin.replace("@ADDR@", &addr);
        for (daemon, dropin) in [
            ("frontend", frontend_dropin.as_str()),
            ("workerd", workerd_dropin),
        ] {
            let d = casd.layout.config_dir.join(format!("{daemon}.toml.d"));
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("50-test.toml"), dropin).expect("dropin");
        }
        let child = spawn_frontend(tmp.path(), &casd.layout).await;
        let mut stack = Stack {
            tmp,
            casd,
            frontend: Some(child),
            workerd: None,
            addr,
        };
        stack.start_workerd();
        stack
    }

    /// Kills rbe-frontend with SIGKILL (no drain, no goodbye to a cluster)
    /// and starts it again on the same configuration, as systemd's
    /// `Restart=on-failure` would; returns once it answers health checks.
    /// casd and rbe-workerd keep running (the worker reconnects).
    pub async fn restart_frontend(&mut self) {
        if let Some(mut c) = self.frontend.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.frontend = Some(spawn_frontend(self.tmp.path(), &self.casd.layout).await);
    }

    /// Starts rbe-workerd (again, after [`Stack::kill_workerd`]).
    pub fn start_workerd(&mut self) {
        assert!(self.workerd.is_none(), "rbe-workerd is already running");
        let workerd = Command::new(bin("rbe-workerd"))
            .arg("--config-dir")
            .arg(&self.casd.layout.config_dir)
            .stdin(Stdio::null())
            .stderr(log_file(self.tmp.path(), "workerd"))
            .spawn()
            .expect("spawn rbe-workerd");
        self.workerd = Some(workerd);
    }

    /// SIGKILLs rbe-workerd (this stack's own, by pid) and reaps it.
    pub fn kill_workerd(&mut self) {
        if let Some(mut c) = self.workerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A channel to the public endpoint.
    pub fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect_lazy()
    }

    /// The frontend's pid, while it runs.
    pub fn frontend_pid(&self) -> Option<u32> {
        self.frontend.as_ref().map(Child::id)
    }

    /// The worker's pid, while it runs.
    pub fn workerd_pid(&self) -> Option<u32> {
        self.workerd.as_ref().map(Child::id)
    }

    /// Waits for the frontend to exit by itself; its exit status.
    pub fn wait_frontend(&mut self) -> Option<std::process::ExitStatus> {
        self.frontend.take().and_then(|mut c| c.wait().ok())
    }

    /// Waits for the worker to exit by itself; its exit status.
    pub fn wait_workerd(&mut self) -> Option<std::process::ExitStatus> {
        self.workerd.take().and_then(|mut c| c.wait().ok())
    }

    /// Whether both daemons are still running.
    pub fn alive(&mut self) -> bool {
        let up = |c: &mut Option<Child>| {
            c.as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_none())
        };
        up(&mut self.frontend) && up(&mut self.workerd) && self.casd.alive()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(mut c) = self.workerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut c) = self.frontend.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
