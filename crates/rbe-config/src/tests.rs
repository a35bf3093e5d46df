use super::*;
use std::fs;
use std::path::Path;

struct Tree(tempfile::TempDir);

impl Tree {
    fn new() -> Self {
        Tree(tempfile::tempdir().unwrap())
    }
    fn dir(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p
    }
    fn dirs(&self) -> Vec<PathBuf> {
        vec![self.dir("usr"), self.dir("run"), self.dir("etc")]
    }
}

fn flat_keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        // A map of user-named entries (`auth.roles`) is one key.
        toml::Value::Table(t) if t.is_empty() && !prefix.is_empty() => out.push(prefix.to_owned()),
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flat_keys(v, &key, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

fn keys_of<T: serde::Serialize>(v: &T) -> Vec<String> {
    let mut out = Vec::new();
    flat_keys(&toml::Value::try_from(v).unwrap(), "", &mut out);
    out.sort();
    out
}

fn sorted(mut v: Vec<&str>) -> Vec<String> {
    v.sort();
    v.into_iter().map(str::to_owned).collect()
}

#[test]
fn defaults_when_nothing_is_there() {
    let t = Tree::new();
    assert_eq!(load_casd(&t.dirs()).unwrap(), CasdSettings::default());
    assert_eq!(
        load_frontend(&t.dirs()).unwrap(),
        FrontendSettings::default()
    );
    let d = CasdSettings::default();
    assert_eq!(d.listen.socket, Path::new("/run/rbe/casd.sock"));
    assert_eq!(d.listen.socket_mode, 0o660);
    assert_eq!(d.storage.max_size, 10 << 30);
    assert_eq!(d.limits.max_batch_total_size_bytes, 4 << 20);
    assert_eq!(d.log.level, "info");
    let f = FrontendSettings::default();
    assert_eq!(f.listen.grpc, ["127.0.0.1:8980"]);
    assert_eq!(f.limits.max_message_bytes, 8 << 20);
    assert_eq!(default_dirs()[2], Path::new("/etc/rbe"));
}

#[test]
fn known_keys_match_settings() {
    assert_eq!(
        keys_of(&CasdSettings::default()),
        sorted(known_keys("casd"))
    );
    assert_eq!(
        keys_of(&FrontendSettings::default()),
        sorted(known_keys("frontend"))
    );
    assert!(known_keys("nope").is_empty());
}

#[test]
fn serialized_defaults_load_back() {
    let t = Tree::new();
    t.write(
        "etc/casd.toml",
        &toml::to_string(&CasdSettings::default()).unwrap(),
    );
    t.write(
        "etc/frontend.toml",
        &toml::to_string(&FrontendSettings::default()).unwrap(),
    );
    assert_eq!(load_casd(&t.dirs()).unwrap(), CasdSettings::default());
    assert_eq!(
        load_frontend(&t.dirs()).unwrap(),
        FrontendSettings::default()
    );
}

#[test]
fn values_are_read() {
    let t = Tree::new();
    t.write(
        "etc/casd.toml",
        r#"
[listen]
socket_mode = 0o600
[storage]
max_size = "50GiB"
verify_reads = false
[limits]
max_batch_total_size_bytes = "8MiB"
[instances]
allowed = ["", "main", "team/ci"]
[log]
level = "debug,h2=warn"
"#,
    );
    let s = load_casd(&t.dirs()).unwrap();
    assert_eq!(s.listen.socket_mode, 0o600);
    assert_eq!(s.storage.max_size, 50 << 30);
    assert!(!s.storage.verify_reads);
    assert_eq!(s.limits.max_batch_total_size_bytes, 8 << 20);
    assert_eq!(s.instances.allowed, ["", "main", "team/ci"]);
    assert_eq!(s.log.level, "debug,h2=warn");
}

#[test]
fn syntax_error_names_file_and_line() {
    let t = Tree::new();
    let p = t.write(
        "etc/casd.toml",
        "[storage]\nmax_size = \"1G\"\nverify_reads = \n",
    );
    let e = load_casd(&t.dirs()).unwrap_err();
    assert_eq!(e.origin, Origin::File(p.clone()));
    assert_eq!(e.line, Some(3));
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("{}:3: TOML syntax error", p.display())),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}

#[test]
fn unknown_key_names_file_and_key() {
    let t = Tree::new();
    let p = t.write("usr/casd.toml", "[storage]\nmax_size = 5\nfoo = 1\n");
    let e = load_casd(&t.dirs()).unwrap_err();
    assert_eq!(e.origin, Origin::File(p.clone()));
    assert_eq!(e.key.as_deref(), Some("storage.foo"));
    assert_eq!(e.line, Some(3));
    let msg = e.to_string();
    assert!(
        msg.contains("key storage.foo: unknown field `foo`"),
        "{msg}"
    );

    let t = Tree::new();
    t.write("etc/frontend.toml", "[bogus]\nx = 1\n");
    let msg = load_frontend(&t.dirs()).unwrap_err().to_string();
    assert!(msg.contains("unknown field `bogus`"), "{msg}");
}

#[test]
fn bad_value_names_file_line_and_key() {
    let t = Tree::new();
    let p = t.write(
        "etc/casd.toml.d/10-size.toml",
        "[storage]\n\nmax_size = \"5XB\"\n",
    );
    let e = load_casd(&t.dirs()).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("storage.max_size"));
    assert_eq!(e.line, Some(3));
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "{}:3: key storage.max_size: unknown unit",
            p.display()
        )),
        "{msg}"
    );

    let t = Tree::new();
    t.write("etc/casd.toml", "[storage]\nverify_reads = \"yes\"\n");
    let e = load_casd(&t.dirs()).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("storage.verify_reads"));
    assert!(e.reason.contains("invalid type"), "{}", e.reason);
}

#[test]
fn watermark_error_names_both_keys() {
    let t = Tree::new();
    let lo = t.write("usr/casd.toml", "[storage]\nlow_watermark = 0.9\n");
    let hi = t.write("etc/casd.toml", "[storage]\nhigh_watermark = 0.8\n");
    let e = load_casd(&t.dirs()).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("storage.low_watermark"));
    assert_eq!(e.origin, Origin::File(lo));
    let msg = e.to_string();
    assert!(msg.contains("storage.high_watermark"), "{msg}");
    assert!(msg.contains(&hi.display().to_string()), "{msg}");

    let t = Tree::new();
    t.write("etc/casd.toml", "[storage]\nlow_watermark = 0.96\n");
    let msg = load_casd(&t.dirs()).unwrap_err().to_string();
    assert!(msg.contains("built-in default"), "{msg}");

    let t = Tree::new();
    t.write("etc/casd.toml", "[storage]\nhigh_watermark = 1.5\n");
    let e = load_casd(&t.dirs()).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("storage.high_watermark"));
}

#[test]
fn default_origin_is_named() {
    let t = Tree::new();
    t.write("etc/casd.toml", "[limits]\nmax_inline_bytes = \"8MiB\"\n");
    let msg = load_casd(&t.dirs()).unwrap_err().to_string();
    assert!(msg.contains("key limits.max_inline_bytes"), "{msg}");
    assert!(
        msg.contains("limits.max_batch_total_size_bytes = 4194304 (set in built-in default)"),
        "{msg}"
    );
}

#[test]
fn range_checks() {
    for (text, key) in [
        (
            "[limits]\nmax_batch_total_size_bytes = 1024\n",
            "limits.max_batch_total_size_bytes",
        ),
        (
            "[limits]\nmax_batch_total_size_bytes = \"65MiB\"\n",
            "limits.max_batch_total_size_bytes",
        ),
        ("[storage]\nmax_size = 0\n", "storage.max_size"),
        ("[storage]\nmax_size = -1\n", "storage.max_size"),
        ("[storage]\npath = \"rel/dir\"\n", "storage.path"),
        ("[listen]\nsocket_mode = 0o17777\n", "listen.socket_mode"),
        (
            "[instances]\nallowed = [\"a/blobs\"]\n",
            "instances.allowed",
        ),
        (
            "[instances]\nseparate_action_cache = [\"a/../b\"]\n",
            "instances.separate_action_cache",
        ),
        ("[log]\nlevel = \"loud\"\n", "log.level"),
    ] {
        let t = Tree::new();
        let p = t.write("etc/casd.toml", text);
        let e = load_casd(&t.dirs()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
        assert_eq!(e.origin, Origin::File(p), "{text}");
    }
    let t = Tree::new();
    t.write(
        "etc/frontend.toml",
        "[listen]\ngrpc = [\"127.0.0.1:1\", \"localhost:80\"]\n",
    );
    let e = load_frontend(&t.dirs()).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("listen.grpc"));
    assert!(e.reason.contains("localhost:80"), "{e}");
}

#[test]
fn max_queued_per_client_is_read_and_not_zero() {
    let t = Tree::new();
    t.write(
        "etc/frontend.toml",
        "[execution]\nmax_queued_per_client = 7\n",
    );
    let s = load_frontend(&t.dirs()).unwrap();
    assert_eq!(s.execution.max_queued_per_client, 7);
    assert_eq!(s.execution.max_queued, 10_000);
    t.write(
        "etc/frontend.toml",
        "[execution]\nmax_queued_per_client = 0\n",
    );
    let e = load_frontend(&t.dirs()).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("execution.max_queued_per_client"));
}

#[test]
fn dropin_overrides_main_file() {
    let t = Tree::new();
    let main = t.write(
        "etc/casd.toml",
        "[storage]\nmax_size = \"1GiB\"\nupload_expiry_secs = 5\n",
    );
    t.write(
        "etc/casd.toml.d/50-big.toml",
        "[storage]\nmax_size = \"2GiB\"\n",
    );
    t.write(
        "etc/casd.toml.d/10-small.toml",
        "[storage]\nmax_size = \"3GiB\"\n",
    );
    let s = load_casd(&t.dirs()).unwrap();
    assert_eq!(s.storage.max_size, 2 << 30);
    assert_eq!(s.storage.upload_expiry_secs, 5);
    assert!(main.exists());
}

#[test]
fn etc_overrides_usr_lib() {
    let t = Tree::new();
    t.write(
        "usr/frontend.toml",
        "[listen]\ngrpc = [\"0.0.0.0:1\", \"[::]:1\"]\n[casd]\nsocket = \"/a.sock\"\n",
    );
    t.write(
        "usr/frontend.toml.d/x.toml",
        "[limits]\nmax_message_bytes = \"16MiB\"\n",
    );
    t.write("etc/frontend.toml", "[listen]\ngrpc = [\"127.0.0.1:2\"]\n");
    let s = load_frontend(&t.dirs()).unwrap();
    assert_eq!(s.listen.grpc, ["127.0.0.1:2"]);
    assert_eq!(s.casd.socket, Path::new("/a.sock"));
    assert_eq!(s.limits.max_message_bytes, 16 << 20);
}

#[test]
fn unreadable_path_is_reported() {
    let t = Tree::new();
    // A directory where the main file should be is a packaging mistake,
    // not something to skip silently.
    fs::create_dir_all(t.dir("etc/casd.toml")).unwrap();
    let e = load_casd(&t.dirs()).unwrap_err();
    assert_eq!(e.origin, Origin::File(t.dir("etc/casd.toml")));
}

#[test]
fn tmpfs_max_is_a_size_and_never_none() {
    assert_eq!(
        crate::load_workerd(&[]).unwrap().limits.tmpfs_max,
        1 << 30,
        "built-in default"
    );
    let t = Tree::new();
    t.write("etc/workerd.toml", "[limits]\ntmpfs_max = \"64MiB\"\n");
    let s = crate::load_workerd(&t.dirs()).unwrap();
    assert_eq!(s.limits.tmpfs_max, 64 << 20);
    for bad in ["\"0\"", "\"512KiB\""] {
        let t = Tree::new();
        t.write(
            "etc/workerd.toml",
            &format!("[limits]\ntmpfs_max = {bad}\n"),
        );
        let e = crate::load_workerd(&t.dirs()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.tmpfs_max"), "{bad}");
    }
}

#[test]
fn workerd_limits_rlimit_keys_and_a_zero_ceiling() {
    let t = Tree::new();
    t.write(
        "etc/workerd.toml",
        "[limits]\nmemory_max = \"1GiB\"\nmax_memory = \"0\"\nfile_size_max = \"2GiB\"\n\
         open_files_max = 4096\n",
    );
    let l = load_workerd(&t.dirs()).unwrap().limits;
    assert_eq!(
        (
            l.memory_max,
            l.max_memory,
            l.file_size_max,
            l.open_files_max
        ),
        (1 << 30, 0, 2 << 30, 4096)
    );
    let t = Tree::new();
    t.write("etc/workerd.toml", "[limits]\nopen_files_max = 3\n");
    let e = load_workerd(&t.dirs()).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("limits.open_files_max"), "{e}");
}
