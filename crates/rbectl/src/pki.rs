//! What `rbectl tls` and `rbectl cluster` share: a small private CA with
//! rcgen (ring, no OpenSSL), certificates signed by it, and writing secret
//! files with their final mode from the start.
//!
//! Keys are ECDSA P-256 in PKCS#8 PEM, the one format every client reads
//! (Bazel's netty reads no other).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// How long a CA is valid: long, since renewing it means handing every
/// client (or host) a new `ca.crt`.
pub const CA_DAYS: i64 = 3650;

/// A new self-signed CA named `cn` that may sign leaf certificates only.
pub fn new_ca(cn: &str) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let mut ca = CertificateParams::default();
    common(&mut ca, cn, CA_DAYS)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().context("generating the CA key")?;
    let cert = ca.self_signed(&key).context("signing the CA")?;
    Ok((cert, key))
}

/// The CA (`ca.crt`, `ca.key`) in `dir`, as rcgen needs an issuer: its
/// name and its key. `made_by` is the command that creates it, for the
/// error when it is missing.
pub fn load_ca(dir: &Path, made_by: &str) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let ca_crt = dir.join("ca.crt");
    let ca_key_path = dir.join("ca.key");
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .with_context(|| format!("reading {} (create the CA with `{made_by}`)", p.display()))
    };
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?)
        .with_context(|| format!("{}: not a PEM private key", ca_key_path.display()))?;
    let ca_params = CertificateParams::from_ca_cert_pem(&read(&ca_crt)?)
        .with_context(|| format!("{}: not a PEM CA certificate", ca_crt.display()))?;
    // Signing it anew only builds the issuer value; it is never written.
    let issuer = ca_params
        .self_signed(&ca_key)
        .context("the CA key does not fit the CA certificate")?;
    Ok((issuer, ca_key))
}

/// Subject CN, validity from an hour ago (clocks differ a little) for
/// `days`, and a random positive serial.
pub fn common(p: &mut CertificateParams, cn: &str, days: i64) -> anyhow::Result<()> {
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(days);
    let mut serial = [0u8; 16];
    getrandom(&mut serial)?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(())
}

/// Fills `buf` from the kernel's CSPRNG.
pub fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("reading /dev/urandom")
}

/// Fails naming the files that exist, unless `force`.
pub fn refuse_existing(files: &[PathBuf], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    let existing: Vec<String> = files
        .iter()
        .filter(|f| f.exists())
        .map(|f| f.display().to_string())
        .collect();
    if !existing.is_empty() {
        bail!(
            "{} already exist{}; use --force to replace",
            existing.join(", "),
            if existing.len() == 1 { "s" } else { "" }
        );
    }
    Ok(())
}

/// Writes `text` to `path` created with `mode`: a new file (never an
/// existing one) unless `force`, where a temporary file is renamed over it.
pub fn write(path: &Path, text: &str, mode: u32, force: bool) -> anyhow::Result<()> {
    let target = if force {
        let mut t = path.as_os_str().to_owned();
        t.push(".tmp-rbectl");
        PathBuf::from(t)
    } else {
        path.to_owned()
    };
    if force {
        let _ = std::fs::remove_file(&target);
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&target)
        .with_context(|| format!("creating {}", target.display()))?;
    // The umask may have taken bits away from a certificate's 0644.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(text.as_bytes()))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", target.display()))?;
    if force {
        std::fs::rename(&target, path).with_context(|| format!("replacing {}", path.display()))?;
    }
    Ok(())
}

/// Whether [`share_with_rbe_group`] handed a file to group rbe.
pub enum Shared {
    /// Group rbe, mode 0640.
    Yes,
    /// No group rbe on this host; the file stays 0600.
    NoGroup,
    /// The group exists but the file could not be given to it.
    Failed(std::io::Error),
}

impl Shared {
    /// A note for the operator about `what` (e.g. "the server key").
    pub fn describe(&self, what: &str) -> String {
        match self {
            Shared::Yes => format!("{what} (mode 0640, group rbe: readable by rbe-frontend)"),
            Shared::NoGroup => format!(
                "{what} (mode 0600; no group rbe here: make it readable by the \
                 frontend's user, or pass it with LoadCredential=)"
            ),
            Shared::Failed(e) => format!(
                "{what} (mode 0600: could not give it to group rbe: {e}; run as root, \
                 or pass it with LoadCredential=)"
            ),
        }
    }
}

/// Lets the frontend (user rbe, group rbe) read a secret: group rbe and
/// mode 0640, when that group exists and we may hand the file to it.
pub fn share_with_rbe_group(path: &Path) -> Shared {
    let Ok(Some(group)) = nix::unistd::Group::from_name("rbe") else {
        return Shared::NoGroup;
    };
    let shared = nix::unistd::chown(path, None, Some(group.gid))
        .map_err(std::io::Error::from)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640)));
    match shared {
        Ok(()) => Shared::Yes,
        Err(e) => Shared::Failed(e),
    }
}
