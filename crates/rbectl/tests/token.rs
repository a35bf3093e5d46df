//! `rbectl token create|list|revoke`, run as the real binary on a temporary
//! tokens file, and the frontend's view of the result through rbe-config.
#![allow(clippy::unwrap_used)]

use rbe_auth::{Credentials, PeerAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
mod common;
use common::{ok, rbectl};

fn fails(args: &[&str]) -> String {
    let out = rbectl(args);
    assert!(!out.status.success(), "rbectl {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

fn authenticate(config_dir: &Path, token: &str) -> Result<String, String> {
    let s = rbe_config::load_frontend(&[config_dir.to_owned()]).unwrap();
    let (auth, _) = s.auth.load().unwrap();
    let header = format!("Bearer {token}");
    let c = Credentials {
        peer: PeerAddr::Tcp("192.0.2.1:1".parse().unwrap()),
        certificate: None,
        authorization: Some(header.as_bytes()),
    };
    auth.authenticate(&c)
        .map(|id| id.name().to_owned())
        .map_err(|e| e.kind().to_owned())
}

#[test]
fn create_list_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let f = file.to_str().unwrap();

    let out = ok(&["token", "create", "ci-main", "--file", f]);
    let token = out.lines().next().unwrap();
    assert!(token.starts_with("rbe_") && token.len() == 47, "{out}");
    assert!(
        out.contains(&format!("--remote_header=authorization=Bearer {token}")),
        "{out}"
    );
    assert!(out.contains("systemctl reload rbe-frontend"), "{out}");
    assert_eq!(
        out.matches(token).count(),
        2,
        "the token and the flag: {out}"
    );

    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(token) && !text.contains(&token[4..]));

    let out = ok(&[
        "token",
        "create",
        "alice",
        "--expires-in",
        "30",
        "--file",
        f,
    ]);
    let alice = out.lines().next().unwrap().to_owned();
    assert!(out.contains("expires: 20"), "{out}");

    let e = fails(&["token", "create", "alice", "--file", f]);
    assert!(e.contains("a token named \"alice\" already exists"), "{e}");
    let e = fails(&["token", "create", "a b", "--file", f]);
    assert!(e.contains("invalid token name"), "{e}");
    let e = fails(&["token", "create", "x", "--expires-in", "0", "--file", f]);
    assert!(e.contains("--expires-in"), "{e}");

    let out = ok(&["token", "list", "--file", f]);
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("NAME "), "{out}");
    assert!(
        lines[1].starts_with("ci-main ") && lines[1].contains(" never "),
        "{out}"
    );
    assert!(
        lines[2].starts_with("alice ") && !lines[2].contains("never"),
        "{out}"
    );
    // Hashes only as a short prefix; tokens never.
    let full_hashes: Vec<_> = text.split_whitespace().filter(|w| w.len() == 64).collect();
    assert_eq!(full_hashes.len(), 1);
    assert!(!out.contains(full_hashes[0]) && out.contains(&full_hashes[0][..8]));
    assert!(!out.contains(token) && !out.contains(&alice));

    let out = ok(&["token", "revoke", "ci-main", "--file", f]);
    assert!(out.contains("systemctl reload rbe-frontend"), "{out}");
    let e = fails(&["token", "revoke", "ci-main", "--file", f]);
    assert!(e.contains("no token named \"ci-main\""), "{e}");
    let out = ok(&["token", "list", "--file", f]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777,
        0o640
    );
}

#[test]
fn the_file_comes_from_frontend_toml_and_the_frontend_accepts_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(
        conf.join("frontend.toml"),
        format!("[auth]\ntokens = \"{}\"\n", file.display()),
    )
    .unwrap();
    let c = conf.to_str().unwrap();

    let out = ok(&["token", "list", "--config-dir", c]);
    assert_eq!(out, "", "no tokens yet");
    let out = ok(&["token", "create", "bob", "--config-dir", c]);
    let token = out.lines().next().unwrap();
    assert!(file.exists());
    assert_eq!(authenticate(&conf, token), Ok("bob".to_owned()));
    assert!(ok(&["config", "check", "--daemon", "frontend", "--config-dir", c]).contains("ok"));

    ok(&["token", "revoke", "bob", "--config-dir", c]);
    assert_eq!(authenticate(&conf, token), Err("unknown-token".to_owned()));

    // A broken tokens file is a configuration error naming file:line.
    std::fs::write(&file, "rbe-tokens v1\nbob\n").unwrap();
    let out = rbectl(&["config", "check", "--daemon", "frontend", "--config-dir", c]);
    assert_eq!(out.status.code(), Some(78));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains(&format!("{}:2: expected 4 fields", file.display())),
        "{stdout}"
    );
    let e = fails(&["token", "list", "--config-dir", c]);
    assert!(e.contains(":2: expected 4 fields"), "{e}");

    // A broken frontend.toml is named when the file comes from it.
    std::fs::write(conf.join("frontend.toml"), "[auth]\ntokens = 5\n").unwrap();
    let e = fails(&["token", "list", "--config-dir", c]);
    assert!(e.contains("frontend.toml") && e.contains("--file"), "{e}");
}
