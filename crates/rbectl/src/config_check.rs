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
    let mut report = |name: &str, r: Result<(), String>| match r {
        Ok(()) => println!("{name}: ok"),
        Err(e) => {
            println!("{name}: {e}");
            failed = true;
        }
    };
    if want("casd") {
        report(
            "casd",
            rbe_config::load_casd(&dirs)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    }
    if want("frontend") {
        report("frontend", check_frontend(&dirs));
    }
    if want("workerd") {
        report(
            "workerd",
            rbe_config::load_workerd(&dirs)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    }
    Ok(if failed {
        ExitCode::from(78)
    } else {
        ExitCode::SUCCESS
    })
}

/// frontend.toml, and the TLS files it names, loaded as rbe-frontend
/// loads them at start.
fn check_frontend(dirs: &[PathBuf]) -> Result<(), String> {
    let s = rbe_config::load_frontend(dirs).map_err(|e| e.to_string())?;
    // The tokens file is part of the frontend's configuration: the
    // frontend reads it at start and on reload like its .toml files.
    s.auth.load().map_err(|e| e.to_string())?;
    if let Some(files) = rbe_net::tls::TlsFiles::from_settings(&s.tls) {
        rbe_net::tls::TlsConfig::load(&files).map_err(|e| e.to_string())?;
    }
    if s.cluster.enabled {
        check_cluster(&s.cluster)?;
    }
    Ok(())
}

/// The cluster's key files and peer certificate, read as the frontend
/// reads them: a key is 32 bytes of base64, the certificate and key load
/// with the CA as required client CA, and the certificate names the node.
fn check_cluster(c: &rbe_config::ClusterSettings) -> Result<(), String> {
    for (key, path) in std::iter::once(("cluster.key_file", &c.key_file))
        .chain(c.old_key_files.iter().map(|p| ("cluster.old_key_files", p)))
    {
        rbe_cluster::wire::ClusterKey::load(path).map_err(|e| format!("{key}: {e}"))?;
    }
    // The loader made sure all three are set when the cluster is enabled.
    let (Some(files), Some(cert)) = (rbe_net::tls::TlsFiles::cluster(c), &c.tls_cert) else {
        return Err("cluster: tls_ca, tls_cert and tls_key must be set".to_owned());
    };
    rbe_net::tls::TlsConfig::load(&files).map_err(|e| format!("cluster: {e}"))?;
    let pem = std::fs::read_to_string(cert)
        .map_err(|e| format!("cluster.tls_cert: {}: {e}", cert.display()))?;
    let params = rcgen::CertificateParams::from_ca_cert_pem(&pem)
        .map_err(|e| format!("cluster.tls_cert: {}: {e}", cert.display()))?;
    let named = params
        .subject_alt_names
        .iter()
        .any(|san| matches!(san, rcgen::SanType::DnsName(d) if d.as_str() == c.node));
    if !named {
        return Err(format!(
            "cluster.tls_cert: {} does not name node {:?} (peers check it):              issue one with `rbectl cluster issue {}`",
            cert.display(),
            c.node,
            c.node
        ));
    }
    Ok(())
}
