//! Several rbe hosts on loopback forming one cluster: each a [`Stack`]
//! (casd, frontend, workerd) with `[cluster]` on, its own node name, gossip
//! and peer ports, a certificate from one test CA and the same key.
//!
//! ```ignore
//! let c = LocalCluster::start(&[("a", 1), ("b", 4)], "").await;
//! c.wait_formed(Duration::from_secs(30)).await;
//! let s = c.status(0).await; // what host a sees
//! ```

use std::path::PathBuf;
use std::time::Duration;

use rbe_proto::cluster::cluster_admin_client::ClusterAdminClient;
use rbe_proto::cluster::{ClusterStatus, ClusterStatusRequest};

use crate::tls::TestPki;
use crate::{free_port, Stack};

/// One host of a [`LocalCluster`].
pub struct Host {
    pub node: String,
    pub stack: Stack,
    pub gossip_port: u16,
    pub peer_port: u16,
}

/// Hosts on 127.0.0.1, all seeded with each other.
pub struct LocalCluster {
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
    pub key: PathBuf,
    pub hosts: Vec<Host>,
}

/// A 32-byte key, base64, as `rbectl cluster init` writes it.
pub const TEST_KEY: &str = "cmJlIHRlc3QgY2x1c3RlciBrZXksIDMyIGJ5dGVzLiE=";
/// Another one: a host holding it is not of the cluster.
pub const OTHER_KEY: &str = "YW5vdGhlciBjbHVzdGVyJ3Mga2V5LCAzMiBieXRlcyE=";

impl LocalCluster {
    /// Starts one host per `(node, worker slots)`, each with
    /// `extra_frontend` appended to its frontend drop-in.
    pub async fn start(nodes: &[(&str, u32)], extra_frontend: &str) -> LocalCluster {
        Self::start_with_casd(nodes, extra_frontend, &[]).await
    }

    /// [`LocalCluster::start`] with `casd[i]` as host `i`'s casd drop-in
    /// (a `[backing]` section, say); hosts past its end get none.
    pub async fn start_with_casd(
        nodes: &[(&str, u32)],
        extra_frontend: &str,
        casd: &[String],
    ) -> LocalCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new(dir.path());
        let key = dir.path().join("cluster.key");
        std::fs::write(&key, format!("{TEST_KEY}\n")).expect("key");
        let ports: Vec<(u16, u16)> = nodes.iter().map(|_| (free_port(), free_port())).collect();
        let mut c = LocalCluster {
            dir,
            pki,
            key,
            hosts: Vec::new(),
        };
        for (i, (node, slots)) in nodes.iter().enumerate() {
            let seeds: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (g, _))| format!("\"127.0.0.1:{g}\""))
                .collect();
            let host = c
                .start_host(
                    node,
                    *slots,
                    ports[i],
                    &seeds,
                    &c.key.clone(),
                    (extra_frontend, casd.get(i).map_or("", String::as_str)),
                )
                .await;
            c.hosts.push(host);
        }
        c
    }

    /// Starts one more host (not in the others' seed lists: it announces
    /// itself to them) with its own key file contents.
    pub async fn add_host(&mut self, node: &str, slots: u32, key_text: &str) -> usize {
        let key = self.dir.path().join(format!("{node}-cluster.key"));
        std::fs::write(&key, format!("{key_text}\n")).expect("key");
        let seeds: Vec<String> = self
            .hosts
            .iter()
            .map(|h| format!("\"127.0.0.1:{}\"", h.gossip_port))
            .collect();
        let host = self
            .start_host(
                node,
                slots,
                (free_port(), free_port()),
                &seeds,
                &key,
                ("", ""),
            )
            .await;
        self.hosts.push(host);
        self.hosts.len() - 1
    }

    async fn start_host(
        &self,
        node: &str,
        slots: u32,
        (gossip, peer): (u16, u16),
        seeds: &[String],
        key: &std::path::Path,
        (extra, casd): (&str, &str),
    ) -> Host {
        let (cert, cert_key) = self.pki.host(node);
        let frontend = format!(
            "[cluster]\nenabled = true\nname = \"test\"\nnode = \"{node}\"\n\
             gossip_listen = \"127.0.0.1:{gossip}\"\npeer_listen = \"127.0.0.1:{peer}\"\n\
             seeds = [{}]\nkey_file = \"{}\"\ntls_ca = \"{}\"\ntls_cert = \"{}\"\n\
             tls_key = \"{}\"\n{extra}",
            seeds.join(", "),
            key.display(),
            self.pki.ca.display(),
            cert.display(),
            cert_key.display(),
        );
        let workerd = format!("[worker]\nslots = {slots}\nname = \"{node}-worker\"\n");
        let stack = Stack::start_configured(casd, &frontend, &workerd).await;
        Host {
            node: node.to_owned(),
            stack,
            gossip_port: gossip,
            peer_port: peer,
        }
    }

    /// What host `i` reports through `rbectl cluster status`'s service.
    pub async fn status(&self, i: usize) -> ClusterStatus {
        let ch = rbe_net::unix_channel(&self.hosts[i].stack.casd.layout.frontend_socket())
            .await
            .expect("channel");
        ClusterAdminClient::new(ch)
            .status(ClusterStatusRequest {})
            .await
            .expect("ClusterAdmin.Status")
            .into_inner()
    }

    /// A client of host `to`'s Peer service (mutual TLS), presenting a
    /// cluster certificate for `as_node`: for tests that speak to the peer
    /// listener as some host would.
    pub fn peer_client(
        &self,
        to: usize,
        as_node: &str,
    ) -> rbe_proto::cluster::peer_client::PeerClient<tonic::transport::Channel> {
        let (cert, key) = self.pki.host(as_node);
        let files = rbe_net::tls::TlsFiles {
            certificate: cert,
            key,
            client_ca: Some(self.pki.ca.clone()),
            require_client_certificate: true,
            handshake_timeout: Duration::from_secs(10),
            keys: rbe_net::tls::TlsKeys::CLUSTER,
        };
        let tls = rbe_net::PeerClientTls::load(&files).expect("peer TLS");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.hosts[to].peer_port));
        let ch = rbe_net::peer_channel(addr, &self.hosts[to].node, &tls, Duration::from_secs(10))
            .expect("peer channel");
        rbe_proto::cluster::peer_client::PeerClient::new(ch)
    }

    /// Whether host `i` sees every node in `nodes` up and eligible.
    pub async fn sees_eligible(&self, i: usize, nodes: &[&str]) -> bool {
        let s = self.status(i).await;
        nodes.iter().all(|n| {
            s.members
                .iter()
                .any(|m| m.node == *n && m.state == "up" && m.eligible)
        })
    }

    /// Waits until each host sees every other up and eligible; false if
    /// that does not happen within `limit`.
    pub async fn wait_formed(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut all = true;
            for i in 0..self.hosts.len() {
                let others: Vec<&str> = self
                    .hosts
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, h)| h.node.as_str())
                    .collect();
                all &= self.sees_eligible(i, &others).await;
            }
            if all {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
