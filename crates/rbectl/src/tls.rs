//! `rbectl tls init` and `rbectl tls client`: a small private CA for the
//! frontend's TLS and client certificates (see `pki` for the shared parts).
//! Files are created with their final mode, so a key is never readable by
//! others, not even for a moment.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType};

use crate::pki::{common, load_ca, refuse_existing, share_with_rbe_group, write};

/// Where `rbectl tls` keeps the CA and certificates by default.
const DEFAULT_DIR: &str = "/etc/rbe/tls";
/// What makes the CA `rbectl tls client` signs with.
const MADE_BY: &str = "rbectl tls init";

#[derive(clap::Subcommand)]
pub enum TlsCmd {
    /// Create a CA (ca.crt, ca.key) and a server certificate signed by it
    /// (server.crt, server.key) for the frontend's [tls].
    Init(InitArgs),
    /// Issue a client certificate NAME.crt / NAME.key (CN=NAME) signed by
    /// the CA, for Bazel's --tls_client_certificate / --tls_client_key.
    Client(ClientArgs),
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// Directory for the files.
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Days the server certificate is valid (the CA: 10 years).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
    /// A DNS name or IP address clients use to reach the frontend;
    /// repeatable. Default: this host's name, localhost, 127.0.0.1, ::1.
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Replace existing files (a new CA too: every client needs the new
    /// ca.crt).
    #[arg(long)]
    force: bool,
    /// Keep the existing CA and only issue a new server certificate and key
    /// (renewal), replacing server.crt and server.key.
    #[arg(long, conflicts_with = "force")]
    renew: bool,
}

#[derive(clap::Args)]
pub struct ClientArgs {
    /// The client's name: the certificate's CN, and the identity the
    /// frontend knows it by.
    name: String,
    /// Directory holding ca.crt and ca.key; NAME.crt and NAME.key go there.
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

pub fn run(cmd: TlsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TlsCmd::Init(a) => init(a),
        TlsCmd::Client(a) => client(a),
    }
}

fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    let names = if a.names.is_empty() {
        default_names()
    } else {
        a.names
    };
    let files = ["ca.crt", "ca.key", "server.crt", "server.key"].map(|f| a.dir.join(f));
    let host = names.first().cloned().unwrap_or_else(|| "rbe".to_owned());
    let (ca_cert, ca_key) = if a.renew {
        load_ca(&a.dir, MADE_BY)?
    } else {
        refuse_existing(&files, a.force)?;
        std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
        crate::pki::new_ca(&format!("rbe CA ({host})"))?
    };

    let mut server = CertificateParams::default();
    common(&mut server, &host, a.days.into())?;
    server.subject_alt_names = names
        .iter()
        .map(|n| san(n))
        .collect::<anyhow::Result<_>>()?;
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let server_key = KeyPair::generate().context("generating the server key")?;
    let server_cert = server
        .signed_by(&server_key, &ca_cert, &ca_key)
        .context("signing the server certificate")?;

    let [ca_crt, ca_key_path, server_crt, server_key_path] = &files;
    let replace = a.force || a.renew;
    if !a.renew {
        write(ca_key_path, &ca_key.serialize_pem(), 0o600, replace)?;
        write(ca_crt, &ca_cert.pem(), 0o644, replace)?;
    }
    // The key before the certificate: a reload between the two renames
    // fails (they do not match) and keeps the running pair.
    write(server_key_path, &server_key.serialize_pem(), 0o600, replace)?;
    let group_note = share_with_rbe_group(server_key_path).describe("the server key");
    write(server_crt, &server_cert.pem(), 0o644, replace)?;
    if a.renew {
        println!(
            "Renewed {} and {} for {} (valid {} days), signed by the existing CA.",
            server_crt.display(),
            server_key_path.display(),
            names.join(", "),
            a.days
        );
        println!("Apply with `systemctl reload rbe-frontend`: established connections stay.");
        return Ok(ExitCode::SUCCESS);
    }

    println!("Created in {}:", a.dir.display());
    println!("  ca.crt      the CA certificate: give it to clients (--tls_certificate)");
    println!("  ca.key      the CA key (mode 0600): keep it secret; it signs client certificates");
    println!(
        "  server.crt  for {} (valid {} days)",
        names.join(", "),
        a.days
    );
    println!("  server.key  {group_note}");
    println!();
    println!("Next, in /etc/rbe/frontend.toml:");
    println!("  [tls]");
    println!("  certificate = \"{}\"", server_crt.display());
    println!("  key = \"{}\"", server_key_path.display());
    println!("  client_ca = \"{}\"", ca_crt.display());
    println!("  client_certificates = \"required\"   # or \"optional\"");
    println!("then `systemctl restart rbe-frontend` (later renewals: `systemctl reload`).");
    println!(
        "Issue a client certificate with `rbectl tls client NAME --dir {}`.",
        a.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn client(a: ClientArgs) -> anyhow::Result<ExitCode> {
    check_client_name(&a.name)?;
    let ca_crt = a.dir.join("ca.crt");
    let (issuer, ca_key) = load_ca(&a.dir, MADE_BY)?;

    let files = [
        a.dir.join(format!("{}.crt", a.name)),
        a.dir.join(format!("{}.key", a.name)),
    ];
    refuse_existing(&files, a.force)?;
    let mut params = CertificateParams::default();
    common(&mut params, &a.name, a.days.into())?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().context("generating the client key")?;
    let cert = params
        .signed_by(&key, &issuer, &ca_key)
        .context("signing the client certificate")?;
    let [crt, key_path] = &files;
    write(key_path, &key.serialize_pem(), 0o600, a.force)?;
    write(crt, &cert.pem(), 0o644, a.force)?;

    println!(
        "Created {} and {} (CN={}, valid {} days; the key is PKCS#8, mode 0600).",
        crt.display(),
        key_path.display(),
        a.name,
        a.days
    );
    println!();
    println!("Copy them and ca.crt to the client; for Bazel:");
    println!(
        "  --remote_executor=grpcs://{}:8980 --tls_certificate={} \\",
        default_names()
            .first()
            .map(String::as_str)
            .unwrap_or("HOST"),
        ca_crt.display()
    );
    println!(
        "  --tls_client_certificate={} --tls_client_key={}",
        crt.display(),
        key_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn san(name: &str) -> anyhow::Result<SanType> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = name
        .to_owned()
        .try_into()
        .map_err(|e| anyhow::anyhow!("--name {name:?} is not a DNS name or IP address: {e}"))?;
    Ok(SanType::DnsName(dns))
}

/// This host's name, localhost and the loopback addresses.
fn default_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" && san(h).is_ok() {
            names.push(h.to_owned());
        }
    }
    names.extend(["localhost", "127.0.0.1", "::1"].map(str::to_owned));
    names
}

/// A client name is a file name and a config identity: letters, digits
/// and `.-_@`, not starting with a dot, at most 64 bytes (X.509's CN
/// limit).
fn check_client_name(name: &str) -> anyhow::Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-@".contains(c);
    if name.is_empty() || name.len() > 64 || name.starts_with('.') || !name.chars().all(ok_char) {
        bail!(
            "client name {name:?}: use 1 to 64 letters, digits, '.', '-', '_' or '@', \
             not starting with '.'"
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn client_names() {
        for ok in ["ci", "alice@example.com", "build-bot_2", "a.b"] {
            assert!(check_client_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "../x", "sp ace", &"x".repeat(65)] {
            assert!(check_client_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sans() {
        assert!(matches!(san("::1").unwrap(), SanType::IpAddress(_)));
        assert!(matches!(
            san("build.example.com").unwrap(),
            SanType::DnsName(_)
        ));
    }
}
