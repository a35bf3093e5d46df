//! BuildGrid's server (`bgd server start`) with only CAS, ByteStream and
//! an action cache on a loopback port: a real third-party REAPI store for
//! the backing-store tests. The configuration is the one
//! `tests/scripts/start-bgd-cache.sh` writes; the venv is the one
//! `tests/run-all.sh` installs (`BGD_VENV`, default `/var/tmp/bgd-venv`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running BuildGrid CAS + action cache; `Drop` kills it (by pid).
pub struct Bgd {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Where its configuration, disk CAS and log live.
    pub dir: PathBuf,
    child: Option<Child>,
}

/// The `bgd` executable, or `None` after saying SKIP and why.
pub fn installed() -> Option<PathBuf> {
    let venv = std::env::var("BGD_VENV").unwrap_or_else(|_| "/var/tmp/bgd-venv".into());
    let bgd = Path::new(&venv).join("bin/bgd");
    if bgd.is_file() {
        return Some(bgd);
    }
    crate::skip(&format!(
        "BuildGrid's bgd is not installed in {venv} (tests/run-all.sh installs it)"
    ));
    None
}

impl Bgd {
    /// Starts BuildGrid with its state under `dir` and instance name
    /// `instance`; `None` (after a SKIP line) when bgd is not installed.
    pub async fn start(dir: &Path, instance: &str) -> Option<Bgd> {
        let bgd = installed()?;
        std::fs::create_dir_all(dir.join("cas")).expect("mkdir bgd state");
        let addr = format!("127.0.0.1:{}", crate::free_port());
        let config = dir.join("buildgrid.yml");
        std::fs::write(
            &config,
            format!(
                "server:\n  - !channel\n    address: \"{addr}\"\n    insecure-mode: true\n\
                 authorization:\n  method: none\n\
                 storages:\n  - !disk-storage &cas\n    path: {cas}\n\
                 caches:\n  - !lru-action-cache &ac\n    storage: *cas\n    \
                 max-cached-refs: 100000\n    allow-updates: true\n    cache-failed-actions: true\n\
                 instances:\n  - name: \"{instance}\"\n    services:\n      \
                 - !action-cache\n        cache: *ac\n      - !cas\n        storage: *cas\n      \
                 - !bytestream\n        storage: *cas\n\
                 thread-pool-size: 16\n",
                cas = dir.join("cas").display(),
            ),
        )
        .expect("write buildgrid.yml");
        let log = std::fs::File::create(dir.join("server.log")).expect("bgd log");
        let mut child = Command::new(bgd)
            .args(["server", "start"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("bgd log"))
            .stderr(log)
            .spawn()
            .expect("spawn bgd server");
        // Python's start-up is slow on a loaded machine; the bound only
        // keeps a broken install from hanging the suite.
        let deadline = Instant::now() + Duration::from_secs(120);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "bgd server exited ({st}) before listening; log:\n{}",
                    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "bgd server not listening on {addr} within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(Bgd {
            addr,
            dir: dir.to_path_buf(),
            child: Some(child),
        })
    }

    /// Its gRPC URL, as a `[backing] url`.
    pub fn url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    /// A channel to it.
    pub fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect_lazy()
    }
}

impl Drop for Bgd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
