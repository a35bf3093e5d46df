//! `rbectl cluster init` and `rbectl cluster issue`: the secrets a cluster
//! of frontends needs. The gossip key (`cluster.key`, 32 random bytes in
//! base64) seals every datagram; the cluster CA signs one certificate per
//! host, whose DNS name is the host's node name, for both ends of the
//! mutual-TLS peer channel.
//!
//! Layout under `--dir` (default `/etc/rbe`), matching frontend.toml's
//! defaults: `cluster.key`, `cluster/ca.crt`, `cluster/ca.key`, and
//! `cluster/NODE.crt` + `cluster/NODE.key` per issued host (or
//! `cluster/host.crt` + `cluster/host.key` with `--as-host`, the names
//! `[cluster]` reads by default).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use base64::Engine as _;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType};

use crate::pki::{common, load_ca, refuse_existing, share_with_rbe_group, write};

const DEFAULT_DIR: &str = "/etc/rbe";
/// What makes the CA `rbectl cluster issue` signs with.
const MADE_BY: &str = "rbectl cluster init";

#[derive(clap::Args)]
pub struct InitArgs {
    /// Configuration directory: cluster.key goes here, the CA in cluster/.
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Replace an existing key and CA (every host then needs the new ones,
    /// and new certificates).
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
pub struct IssueArgs {
    /// The host's node name (cluster.node in its frontend.toml): 1 to 32
    /// of a-z, 0-9 and '-'.
    node: String,
    /// Configuration directory holding cluster/ca.crt and cluster/ca.key.
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Write cluster/host.crt and cluster/host.key (what [cluster] reads by
    /// default), for issuing on the host itself.
    #[arg(long)]
    as_host: bool,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

/// `rbectl cluster init`.
pub fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    let ca_dir = a.dir.join("cluster");
    let key_path = a.dir.join("cluster.key");
    let (ca_crt, ca_key_path) = (ca_dir.join("ca.crt"), ca_dir.join("ca.key"));
    refuse_existing(
        &[key_path.clone(), ca_crt.clone(), ca_key_path.clone()],
        a.force,
    )?;
    std::fs::create_dir_all(&ca_dir).with_context(|| format!("creating {}", ca_dir.display()))?;

    let mut key = [0u8; 32];
    crate::pki::getrandom(&mut key)?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(key) + "\n";
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let (ca_cert, ca_key) = crate::pki::new_ca(&format!("rbe cluster CA ({})", host.trim()))?;

    write(&key_path, &encoded, 0o600, a.force)?;
    let key_note = share_with_rbe_group(&key_path).describe("the gossip key");
    write(&ca_key_path, &ca_key.serialize_pem(), 0o600, a.force)?;
    write(&ca_crt, &ca_cert.pem(), 0o644, a.force)?;

    println!("Created:");
    println!("  {}  {key_note}", key_path.display());
    println!("  {}  the cluster CA certificate", ca_crt.display());
    println!(
        "  {}  the CA key (mode 0600): keep it on this host only",
        ca_key_path.display()
    );
    println!();
    println!(
        "Next: copy {} and {} to every host (same paths, key mode 0640 root:rbe),",
        key_path.display(),
        ca_crt.display()
    );
    println!(
        "issue each host's certificate with `rbectl cluster issue NODE --dir {}`,",
        a.dir.display()
    );
    println!("then on each host in /etc/rbe/frontend.toml.d/50-cluster.toml:");
    println!("  [cluster]");
    println!("  enabled = true");
    println!("  seeds = [\"other-host:7946\"]");
    Ok(ExitCode::SUCCESS)
}

/// `rbectl cluster issue NODE`.
pub fn issue(a: IssueArgs) -> anyhow::Result<ExitCode> {
    let node =
        rbe_cluster::NodeName::new(&a.node).with_context(|| format!("node name {:?}", a.node))?;
    let ca_dir = a.dir.join("cluster");
    let stem = if a.as_host { "host" } else { node.as_str() };
    // NODE.crt for a node called "ca" would be the CA's own certificate.
    if stem == "ca" {
        bail!("a node named \"ca\" would overwrite the CA's files: use --as-host on that host");
    }
    let (issuer, ca_key) = load_ca(&ca_dir, MADE_BY)?;
    let files = [
        ca_dir.join(format!("{stem}.crt")),
        ca_dir.join(format!("{stem}.key")),
    ];
    refuse_existing(&files, a.force)?;

    let mut params = CertificateParams::default();
    common(&mut params, node.as_str(), a.days.into())?;
    let dns = node
        .as_str()
        .to_owned()
        .try_into()
        .map_err(|e| anyhow::anyhow!("{node} is not a DNS name: {e}"))?;
    params.subject_alt_names = vec![SanType::DnsName(dns)];
    // Each host is the server of the peer channels it accepts and the
    // client of those it opens, with the same certificate.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().context("generating the host key")?;
    let cert = params
        .signed_by(&key, &issuer, &ca_key)
        .context("signing the host certificate")?;
    let [crt, key_path] = &files;
    // The key before the certificate, as `rbectl tls init --renew` does.
    write(key_path, &key.serialize_pem(), 0o600, a.force)?;
    let key_note = share_with_rbe_group(key_path).describe("its key");
    write(crt, &cert.pem(), 0o644, a.force)?;

    println!(
        "Created {} (DNS name and CN {node}, valid {} days) and {}",
        crt.display(),
        a.days,
        key_path.display()
    );
    println!("  {key_note}.");
    if !a.as_host {
        println!(
            "Copy them to host {node} as {} and {} (or point cluster.tls_cert and \
             cluster.tls_key at them), with cluster.node = \"{node}\".",
            show(&ca_dir, "host.crt"),
            show(&ca_dir, "host.key")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn show(dir: &Path, f: &str) -> String {
    dir.join(f).display().to_string()
}
