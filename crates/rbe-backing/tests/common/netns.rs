//! Two network namespaces joined by a veth pair, for a backing store whose
//! link can be cut or slowed: casd A runs in `a` (started through
//! [`Link::exec_in_a`]), the store listens in `b` ([`Link::listen_in_b`]).
//! Nothing of the host's network is touched; dropping the [`Link`]
//! deletes both namespaces, and with them the veth.
#![allow(dead_code, clippy::unwrap_used)]

use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A's address on the veth.
pub const A_IP: &str = "10.77.0.1";
/// B's address on the veth.
pub const B_IP: &str = "10.77.0.2";

pub struct Link {
    pub a: String,
    pub b: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Link {
    /// Creates the namespaces and the veth; `Err` says why this machine
    /// cannot (not root, no `ip`), for the test to skip with.
    pub fn new() -> Result<Link, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("network namespaces need root".into());
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let prefix = std::env::var("RBE_TEST_SYSBOX_PREFIX").unwrap_or_default();
        let name = format!("{prefix}rbe-nf-{}-{n}", std::process::id());
        let link = Link {
            a: format!("{name}-a"),
            b: format!("{name}-b"),
        };
        ip(&["netns", "add", &link.a])?;
        ip(&["netns", "add", &link.b])?;
        let (a, b) = (link.a.as_str(), link.b.as_str());
        for args in [
            &["-n", a, "link", "set", "lo", "up"][..],
            &["-n", b, "link", "set", "lo", "up"],
            &[
                "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b,
            ],
            &["-n", a, "addr", "add", &format!("{A_IP}/24"), "dev", "va"],
            &["-n", b, "addr", "add", &format!("{B_IP}/24"), "dev", "vb"],
            &["-n", a, "link", "set", "va", "up"],
            &["-n", b, "link", "set", "vb", "up"],
        ] {
            ip(args)?;
        }
        Ok(link)
    }

    /// The command prefix that runs a program in A's namespace.
    pub fn exec_in_a(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.a]
    }

    /// Cuts the link at B's end: A's side keeps its address and route
    /// but loses its carrier, so what A sends vanishes (no RST, no
    /// refusal) and a connection only notices by its timeouts.
    pub fn down(&self) {
        ip(&["-n", &self.b, "link", "set", "vb", "down"]).unwrap();
    }

    pub fn up(&self) {
        ip(&["-n", &self.b, "link", "set", "vb", "up"]).unwrap();
    }

    /// Limits both directions to `rate` (tc's syntax, e.g. `16mbit`) with
    /// a token bucket filter; `Err` if this kernel has no `tbf` qdisc.
    pub fn rate_limit(&self, rate: &str) -> Result<(), String> {
        for (ns, dev) in [(&self.a, "va"), (&self.b, "vb")] {
            let out = Command::new("tc")
                .args(["-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf"])
                .args(["rate", rate, "burst", "64kb", "latency", "400ms"])
                .output()
                .map_err(|e| format!("tc: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "tc qdisc tbf: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(())
    }

    /// A TCP listener on `B_IP:port` inside B's namespace: bound by a
    /// thread that entered it (setns moves only the calling thread, and a
    /// socket stays in the namespace it was made in).
    pub fn listen_in_b(&self, port: u16) -> tokio::net::TcpListener {
        let path = format!("/run/netns/{}", self.b);
        let l = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            let l = std::net::TcpListener::bind((B_IP, port)).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .join()
        .unwrap();
        tokio::net::TcpListener::from_std(l).unwrap()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}
