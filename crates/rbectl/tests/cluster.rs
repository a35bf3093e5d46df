//! `rbectl cluster init|issue`, run as the real binary in a temporary
//! directory, and `rbectl config check` on a frontend.toml that uses what
//! they made.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
mod common;
use common::{ok, rbectl};
use std::process::Command;

fn fails(args: &[&str]) -> String {
    let out = rbectl(args);
    assert!(!out.status.success(), "rbectl {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn decode(p: &Path) -> Vec<u8> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(p).unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap()
}

/// `openssl verify` of `cert` against `ca` for one purpose.
fn openssl_verifies(ca: &Path, cert: &Path, purpose: &str) -> bool {
    let out = Command::new("openssl")
        .args(["verify", "-purpose", purpose, "-CAfile"])
        .arg(ca)
        .arg(cert)
        .output();
    match out {
        Ok(o) => o.status.success(),
        // no openssl here: the config check below still verifies the chain
        Err(_) => true,
    }
}

#[test]
fn init_makes_a_key_and_a_ca_and_refuses_to_overwrite() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_str().unwrap();
    ok(&["cluster", "init", "--dir", dir]);
    let key = t.path().join("cluster.key");
    let ca_key = t.path().join("cluster/ca.key");
    assert_eq!(decode(&key).len(), 32);
    // 0640 when a group rbe exists and we may chown to it, else 0600
    assert!(matches!(mode(&key), 0o600 | 0o640), "{:o}", mode(&key));
    assert_eq!(mode(&ca_key), 0o600);
    assert_eq!(mode(&t.path().join("cluster/ca.crt")), 0o644);

    let before = std::fs::read(&key).unwrap();
    let e = fails(&["cluster", "init", "--dir", dir]);
    assert!(e.contains("--force") && e.contains("cluster.key"), "{e}");
    assert_eq!(
        std::fs::read(&key).unwrap(),
        before,
        "a refused init changed the key"
    );

    ok(&["cluster", "init", "--dir", dir, "--force"]);
    assert_ne!(std::fs::read(&key).unwrap(), before);
    assert_eq!(decode(&key).len(), 32);
}

#[test]
fn issue_signs_a_host_certificate_for_both_ends() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_str().unwrap();
    let e = fails(&["cluster", "issue", "b", "--dir", dir]);
    assert!(e.contains("rbectl cluster init"), "{e}");
    ok(&["cluster", "init", "--dir", dir]);

    for bad in ["B", "-b", "b-", "b_c", "b.lab", "", &"x".repeat(33), "../b"] {
        let e = fails(&["cluster", "issue", "--dir", dir, "--", bad]);
        assert!(e.contains("node name"), "{bad}: {e}");
    }
    let e = fails(&["cluster", "issue", "ca", "--dir", dir]);
    assert!(e.contains("--as-host"), "{e}");

    ok(&["cluster", "issue", "b", "--dir", dir]);
    let (ca, crt, key) = (
        t.path().join("cluster/ca.crt"),
        t.path().join("cluster/b.crt"),
        t.path().join("cluster/b.key"),
    );
    assert!(matches!(mode(&key), 0o600 | 0o640), "{:o}", mode(&key));
    let pem = std::fs::read_to_string(&crt).unwrap();
    let params = rcgen::CertificateParams::from_ca_cert_pem(&pem).unwrap();
    let dns: Vec<String> = params
        .subject_alt_names
        .iter()
        .filter_map(|s| match s {
            rcgen::SanType::DnsName(d) => Some(d.as_str().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(dns, ["b"]);
    assert!(openssl_verifies(&ca, &crt, "sslserver"));
    assert!(openssl_verifies(&ca, &crt, "sslclient"));

    let e = fails(&["cluster", "issue", "b", "--dir", dir]);
    assert!(e.contains("--force"), "{e}");
    ok(&["cluster", "issue", "b", "--dir", dir, "--force"]);
    ok(&["cluster", "issue", "c", "--dir", dir, "--as-host"]);
    assert!(t.path().join("cluster/host.crt").exists());
    assert!(t.path().join("cluster/host.key").exists());
    assert!(!t.path().join("cluster/c.crt").exists());
}

#[test]
fn config_check_reads_the_cluster_files() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_str().unwrap();
    ok(&["cluster", "init", "--dir", dir]);
    ok(&["cluster", "issue", "b", "--dir", dir, "--as-host"]);
    let conf = t.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let write_conf = |node: &str, key: &Path| {
        std::fs::write(
            conf.join("frontend.toml"),
            format!(
                "[auth]\ntokens = {tokens:?}\n[cluster]\nenabled = true\nnode = {node:?}\n\
                 key_file = {key:?}\ntls_ca = {ca:?}\ntls_cert = {crt:?}\ntls_key = {hk:?}\n",
                tokens = t.path().join("tokens"),
                ca = t.path().join("cluster/ca.crt"),
                crt = t.path().join("cluster/host.crt"),
                hk = t.path().join("cluster/host.key"),
            ),
        )
        .unwrap();
    };
    let check = ["config", "check", "--daemon", "frontend", "--config-dir"];
    let check: Vec<&str> = check
        .iter()
        .copied()
        .chain([conf.to_str().unwrap()])
        .collect();

    write_conf("b", &t.path().join("cluster.key"));
    ok(&check);

    // the certificate names another node
    write_conf("c", &t.path().join("cluster.key"));
    let out = rbectl(&check);
    assert_eq!(out.status.code(), Some(78));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cluster.tls_cert") && text.contains("\"c\""),
        "{text}"
    );

    // a key of the wrong length, and a missing key
    let short = t.path().join("short.key");
    std::fs::write(&short, "c2hvcnQ=\n").unwrap();
    write_conf("b", &short);
    let e = fails(&check);
    assert!(e.contains("cluster.key_file") && e.contains("32"), "{e}");
    write_conf("b", &t.path().join("missing.key"));
    let e = fails(&check);
    assert!(e.contains("cluster.key_file"), "{e}");
}
