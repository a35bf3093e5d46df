//! `[auth]` of frontend.toml: values, validation errors naming file and key,
//! and building the authenticator and policy from a real tokens file.
#![allow(clippy::unwrap_used)]

use rbe_auth::{Credentials, Identity, PeerAddr, Permission, Via};
use rbe_config::{load_frontend, AuthSettings, ConfigError, GrantSettings, Origin};
use std::fs;
use std::path::{Path, PathBuf};

struct Tree(tempfile::TempDir);

impl Tree {
    fn new() -> Self {
        Tree(tempfile::tempdir().unwrap())
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.0.path().join(rel)
    }
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p
    }
    fn dirs(&self) -> Vec<PathBuf> {
        vec![self.path("usr"), self.path("etc")]
    }
    fn load_err(&self) -> ConfigError {
        load_frontend(&self.dirs()).unwrap_err()
    }
}

#[test]
fn defaults() {
    let a = load_frontend(&[]).unwrap().auth;
    assert_eq!(a, AuthSettings::default());
    assert_eq!(a.tokens, Path::new("/etc/rbe/tokens"));
    assert_eq!(a.authenticated_role, "developer");
    assert_eq!(a.local_role, "ci");
    assert_eq!(a.network_role, "");
    assert!(a.roles.is_empty() && a.grants.is_empty());
}

#[test]
fn values_are_read_and_merged_across_files() {
    let t = Tree::new();
    let tokens = t.path("tokens");
    t.write(
        "usr/frontend.toml",
        "[auth]\nroles = {}\ngrants = []\nnetwork_role = \"\"\n",
    );
    t.write(
        "etc/frontend.toml",
        &format!(
            r#"
[auth]
tokens = "{}"
authenticated_role = "reader"
local_role = "developer"
network_role = "none"

[auth.roles.cache-writer]
permissions = ["ac-write", "ac-read"]

[[auth.grants]]
clients = ["ci-main"]
instances = ["", "release"]
role = "ci"

[[auth.grants]]
clients = ["*"]
instances = ["*"]
role = "cache-writer"
"#,
            tokens.display()
        ),
    );
    t.write(
        "etc/frontend.toml.d/50-ops.toml",
        "[auth.roles.ops]\npermissions = [\"operations-read\", \"operations-cancel\"]\n",
    );
    let a = load_frontend(&t.dirs()).unwrap().auth;
    assert_eq!(a.tokens, tokens);
    assert_eq!(
        (
            a.authenticated_role.as_str(),
            a.local_role.as_str(),
            a.network_role.as_str()
        ),
        ("reader", "developer", "none")
    );
    assert_eq!(a.roles.keys().collect::<Vec<_>>(), ["cache-writer", "ops"]);
    assert_eq!(
        a.grants[0],
        GrantSettings {
            clients: vec!["ci-main".into()],
            instances: vec!["".into(), "release".into()],
            role: "ci".into()
        }
    );

    let (auth, policy) = a.load().unwrap();
    assert_eq!(
        auth.token_count(),
        0,
        "a missing tokens file holds no tokens"
    );
    assert!(auth.allows_network_anonymous(), "network_role is set");
    let ci = Identity::new("ci-main", Via::Token);
    assert!(policy.check(&ci, "release", Permission::Execute).is_ok());
    assert!(policy.check(&ci, "other", Permission::Execute).is_err());
    assert!(policy.check(&ci, "other", Permission::AcWrite).is_ok());
    assert!(policy
        .check(&Identity::anonymous(), "", Permission::CasRead)
        .is_err());
}

#[test]
fn load_reads_the_tokens_file() {
    let t = Tree::new();
    let path = t.path("tokens");
    t.write(
        "etc/frontend.toml",
        &format!("[auth]\ntokens = \"{}\"\n", path.display()),
    );
    let s = load_frontend(&t.dirs()).unwrap().auth;
    let now = std::time::SystemTime::now();
    let (secret, _) =
        rbe_auth::tokens::create(&path, "alice", None, now, Default::default()).unwrap();
    let (auth, policy) = s.load().unwrap();
    assert!(!auth.allows_network_anonymous());
    let header = format!("Bearer {}", secret.expose());
    let c = Credentials {
        peer: PeerAddr::Tcp("192.0.2.1:9".parse().unwrap()),
        certificate: None,
        authorization: Some(header.as_bytes()),
    };
    let who = auth.authenticate(&c).unwrap();
    assert_eq!(who, Identity::new("alice", Via::Token));
    assert!(policy.check(&who, "", Permission::Execute).is_ok());
    assert!(policy.check(&who, "", Permission::AcWrite).is_err());

    // Revoked, then reloaded: the token no longer works.
    rbe_auth::tokens::revoke(&path, "alice").unwrap();
    let (auth, _) = s.load().unwrap();
    assert_eq!(auth.authenticate(&c).unwrap_err().kind(), "unknown-token");

    // A bad line names file:line.
    fs::write(&path, "rbe-tokens v1\n# ok\nalice nothex\n").unwrap();
    let e = s.load().unwrap_err();
    assert_eq!(e.origin, Origin::File(path.clone()));
    assert_eq!(e.line, Some(3));
    assert!(
        e.to_string()
            .starts_with(&format!("{}:3: expected 4 fields", path.display())),
        "{e}"
    );

    // Unreadable (here: a directory) is an error, not "no tokens".
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    let e = s.load().unwrap_err();
    assert_eq!(e.origin, Origin::File(path));
    assert!(e.reason.contains("cannot read the tokens file"), "{e}");
}

#[test]
fn each_validation_names_file_and_key() {
    for (text, key, needle) in [
        (
            "[auth]\ntokens = \"rel/tokens\"\n",
            "auth.tokens",
            "must be absolute",
        ),
        (
            "[auth]\nauthenticated_role = \"dev\"\n",
            "auth.authenticated_role",
            "undefined role \"dev\"",
        ),
        (
            "[auth]\nlocal_role = \"root\"\n",
            "auth.local_role",
            "undefined role",
        ),
        (
            "[auth]\nnetwork_role = \"guest\"\n",
            "auth.network_role",
            "undefined role",
        ),
        (
            "[auth.roles.w]\npermissions = [\"ac-write\", \"ac_read\"]\n",
            "auth.roles.w.permissions",
            "unknown permission \"ac_read\" (known: cas-read,",
        ),
        (
            "[auth.roles.ci]\npermissions = [\"ac-read\"]\n",
            "auth.roles.ci",
            "built in and cannot be redefined",
        ),
        (
            "[auth.roles.\"a b\"]\npermissions = []\n",
            "auth.roles.a b",
            "invalid role name",
        ),
        (
            "[[auth.grants]]\nclients = [\"a\"]\ninstances = [\"\"]\nrole = \"ci\"\n\
             [[auth.grants]]\nclients = [\"a\"]\ninstances = [\"\"]\nrole = \"writer\"\n",
            "auth.grants[1].role",
            "undefined role \"writer\"",
        ),
        (
            "[[auth.grants]]\nclients = [\"a\"]\ninstances = [\"a/../b\"]\nrole = \"ci\"\n",
            "auth.grants[0].instances",
            "\"a/../b\"",
        ),
        (
            "[[auth.grants]]\nclients = [\"a\"]\ninstances = []\nrole = \"ci\"\n",
            "auth.grants[0].instances",
            "at least one instance",
        ),
        (
            "[[auth.grants]]\nclients = []\ninstances = [\"*\"]\nrole = \"ci\"\n",
            "auth.grants[0].clients",
            "at least one client",
        ),
        (
            "[[auth.grants]]\nclients = [\"\"]\ninstances = [\"*\"]\nrole = \"ci\"\n",
            "auth.grants[0].clients",
            "1 to 256 bytes",
        ),
    ] {
        let t = Tree::new();
        let p = t.write("etc/frontend.toml.d/10-auth.toml", text);
        let e = t.load_err();
        assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
        assert_eq!(e.origin, Origin::File(p.clone()), "{text}: {e}");
        assert!(e.reason.contains(needle), "{text}: {e}");
        assert!(!e.to_string().contains('\n'));
    }
}

#[test]
fn schema_errors_name_the_key() {
    for (text, key) in [
        ("[auth]\nsecret = 1\n", "auth.secret"),
        ("[auth.roles.x]\nperms = []\n", "auth.roles.x.perms"),
        (
            "[[auth.grants]]\nclients = [\"a\"]\nrole = \"ci\"\n",
            "auth.grants[0]",
        ),
        ("[auth]\ngrants = \"all\"\n", "auth.grants"),
    ] {
        let t = Tree::new();
        t.write("etc/frontend.toml", text);
        let e = t.load_err();
        assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
    }
}
