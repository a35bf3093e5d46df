use super::*;
use std::fs;

fn host<'a>(creds: Option<&'a Path>, hostname: &str) -> Host<'a> {
    Host {
        creds,
        hostname: Some(hostname.to_owned()).filter(|h| !h.is_empty()),
    }
}

fn cluster(text: &str, host: &Host<'_>) -> Result<ClusterSettings, String> {
    let f: ClusterFragment = toml::from_str(text).map_err(|e| e.to_string())?;
    ClusterFragment::build_with(Some(f), &Provenance::default(), host).map_err(|e| e.to_string())
}

fn offload(text: &str) -> Result<OffloadSettings, String> {
    let f: OffloadFragment = toml::from_str(text).map_err(|e| e.to_string())?;
    OffloadFragment::build(Some(f), &Provenance::default()).map_err(|e| e.to_string())
}

/// A directory holding a key, a CA, a cert and a key, and the
/// `[cluster]` text that names them.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Self {
        let d = tempfile::tempdir().unwrap();
        for f in ["cluster.key", "ca.crt", "host.crt", "host.key", "old.key"] {
            fs::write(d.path().join(f), "x").unwrap();
        }
        Files(d)
    }
    fn p(&self, f: &str) -> PathBuf {
        self.0.path().join(f)
    }
    /// Enabled, naming the files, with `extra` lines overriding.
    fn enabled(&self, extra: &str) -> String {
        let mut text = String::from("enabled = true\n");
        for (k, f) in [
            ("key_file", "cluster.key"),
            ("tls_ca", "ca.crt"),
            ("tls_cert", "host.crt"),
            ("tls_key", "host.key"),
        ] {
            if !extra.lines().any(|l| l.starts_with(&format!("{k} "))) {
                text.push_str(&format!("{k} = {:?}\n", self.p(f)));
            }
        }
        text + extra + "\n"
    }
}

fn assert_key_error(r: Result<impl std::fmt::Debug, String>, key: &str) {
    let e = r.unwrap_err();
    assert!(e.contains(&format!("key {key}:")), "wanted {key}, got: {e}");
}

#[test]
fn disabled_needs_no_files_nor_hostname() {
    let c = cluster("", &host(None, "")).unwrap();
    assert_eq!(c, ClusterSettings::default());
    assert!(!c.enabled);
    assert_eq!(c.node, "");
    let c = cluster(
        "node = \"a\"\nkey_file = \"/nope\"",
        &host(None, "Bad_Host"),
    )
    .unwrap();
    assert_eq!(c.node_name().unwrap().as_str(), "a");
}

#[test]
fn enabled_reads_everything() {
    let f = Files::new();
    let c = cluster(
        &f.enabled(
            "name = \"lab\"\nseeds = [\"b.lab:7946\", \"10.0.0.3:7946\", \"[::1]:7946\"]\n\
             gossip_listen = \"10.88.0.1:7000\"\nadvertise_peer = \"a.lab:8981\"\n\
             old_key_files = [\"OLD\"]\nreport_interval_ms = 100\nreport_max_age_ms = 400\n"
                .replace("OLD", f.p("old.key").to_str().unwrap())
                .as_str(),
        ),
        &host(None, "Build-07.example.com"),
    )
    .unwrap();
    assert!(c.enabled);
    assert_eq!(c.name, "lab");
    assert_eq!(c.node, "build-07");
    assert_eq!(c.gossip_listen, "10.88.0.1:7000".parse().unwrap());
    assert_eq!(c.peer_listen, "0.0.0.0:8981".parse().unwrap());
    assert_eq!(c.advertise_gossip, None);
    assert_eq!(c.advertise_peer.as_deref(), Some("a.lab:8981"));
    assert_eq!(c.seeds.len(), 3);
    assert_eq!(c.key_file, f.p("cluster.key"));
    assert_eq!(c.old_key_files, vec![f.p("old.key")]);
    assert_eq!(c.tls_key, Some(f.p("host.key")));
    assert_eq!((c.report_interval_ms, c.report_max_age_ms), (100, 400));
}

#[test]
fn enabled_without_key_or_tls_files_is_an_error() {
    let f = Files::new();
    let h = host(None, "a");
    let e = cluster(&f.enabled("key_file = \"\""), &h).unwrap_err();
    assert!(
        e.contains("key cluster.key_file: the cluster is enabled but no key file"),
        "{e}"
    );
    assert!(
        cluster("key_file = \"\"", &h).is_ok(),
        "disabled, no key is fine"
    );
    // a credential stands in for an unset key_file
    let creds = tempfile::tempdir().unwrap();
    fs::write(creds.path().join("cluster-key"), "k").unwrap();
    let c = cluster(
        &f.enabled("key_file = \"\""),
        &host(Some(creds.path()), "a"),
    )
    .unwrap();
    assert_eq!(c.key_file, creds.path().join("cluster-key"));
    for k in ["tls_ca", "tls_cert", "tls_key"] {
        assert_key_error(
            cluster(&f.enabled(&format!("{k} = \"\"")), &h),
            &format!("cluster.{k}"),
        );
    }
    fs::remove_file(f.p("host.crt")).unwrap();
    assert_key_error(cluster(&f.enabled(""), &h), "cluster.tls_cert");
    fs::remove_file(f.p("cluster.key")).unwrap();
    assert_key_error(cluster(&f.enabled(""), &h), "cluster.key_file");
    // the vendor defaults name files a fresh host does not have
    assert_key_error(
        cluster("enabled = true\nnode = \"a\"", &h),
        "cluster.key_file",
    );
    let f = Files::new();
    assert_key_error(
        cluster(
            &f.enabled(&format!("old_key_files = [{:?}]", f.p("gone"))),
            &h,
        ),
        "cluster.old_key_files",
    );
}

#[test]
fn credential_key_comes_first() {
    let f = Files::new();
    let creds = tempfile::tempdir().unwrap();
    let h = host(Some(creds.path()), "a");
    let c = cluster(&f.enabled(""), &h).unwrap();
    assert_eq!(c.key_file, f.p("cluster.key"));
    fs::write(creds.path().join("cluster-key"), "k").unwrap();
    let c = cluster(&f.enabled(""), &h).unwrap();
    assert_eq!(c.key_file, creds.path().join("cluster-key"));
    // the credential stands in for a key_file that is missing, too
    fs::remove_file(f.p("cluster.key")).unwrap();
    assert!(cluster(&f.enabled(""), &h).is_ok());
    // relative TLS paths are credential names
    fs::write(creds.path().join("peer.crt"), "c").unwrap();
    let c = cluster(&f.enabled("tls_cert = \"peer.crt\""), &h).unwrap();
    assert_eq!(c.tls_cert, Some(creds.path().join("peer.crt")));
    assert_key_error(
        cluster(&f.enabled("tls_cert = \"peer.crt\""), &host(None, "a")),
        "cluster.tls_cert",
    );
    assert_key_error(
        cluster(&f.enabled("tls_key = \"../x\""), &h),
        "cluster.tls_key",
    );
}

#[test]
fn node_names() {
    let f = Files::new();
    for bad in ["-a", "a-", "A", "a.b", "a_b", &"x".repeat(33), "é"] {
        assert_key_error(
            cluster(&f.enabled(&format!("node = {bad:?}")), &host(None, "ok")),
            "cluster.node",
        );
    }
    for good in ["a", "0", "a-b", &"x".repeat(32)] {
        let c = cluster(
            &f.enabled(&format!("node = {good:?}")),
            &host(None, "Bad_Host"),
        );
        assert_eq!(c.unwrap().node, good);
    }
    // from the host name: lowercased, up to the first dot
    for (h, n) in [("HOST1", "host1"), ("b.lab", "b"), ("x-y.z.example", "x-y")] {
        assert_eq!(cluster(&f.enabled(""), &host(None, h)).unwrap().node, n);
    }
    for h in ["bad_host", "", "-x.example", &"y".repeat(40)] {
        let e = cluster(&f.enabled(""), &host(None, h)).unwrap_err();
        assert!(
            e.contains("key cluster.node:") && e.contains("set cluster.node"),
            "{h}: {e}"
        );
    }
}

#[test]
fn bad_cluster_values() {
    let f = Files::new();
    let h = host(None, "a");
    for (extra, key) in [
        ("name = \"\"", "cluster.name"),
        ("name = \"a b\"", "cluster.name"),
        (
            "gossip_listen = \"localhost:7946\"",
            "cluster.gossip_listen",
        ),
        ("peer_listen = \"0.0.0.0\"", "cluster.peer_listen"),
        ("advertise_gossip = \"a.lab\"", "cluster.advertise_gossip"),
        ("advertise_peer = \"a.lab:0\"", "cluster.advertise_peer"),
        ("seeds = [\"b:7946\", \"c\"]", "cluster.seeds"),
        ("seeds = [\"::1:7946\"]", "cluster.seeds"),
        ("seeds = [\"[zz]:7946\"]", "cluster.seeds"),
        ("seeds = [\":7946\"]", "cluster.seeds"),
        ("seeds = [\"a b:7946\"]", "cluster.seeds"),
        ("expected_size = 0", "cluster.expected_size"),
        ("report_interval_ms = 10", "cluster.report_interval_ms"),
        ("report_max_age_ms = 500", "cluster.report_max_age_ms"),
        ("report_max_age_ms = 700000", "cluster.report_max_age_ms"),
    ] {
        assert_key_error(cluster(&f.enabled(extra), &h), key);
    }
    // range checks apply even while disabled, so enabling later cannot
    // reveal an old mistake
    assert_key_error(
        cluster("expected_size = 0", &host(None, "")),
        "cluster.expected_size",
    );
    let e = cluster("bogus = 1", &h).unwrap_err();
    assert!(e.contains("bogus"), "{e}");
}

#[test]
fn offload_values() {
    assert_eq!(offload("").unwrap(), OffloadSettings::default());
    let o = offload(
        "threshold = 2.5\nhysteresis = 0\nchoices = 3\norphan_policy = \"finish\"\n\
         max_transfer_bytes = \"1GiB\"\nlease_secs = 3\norphan_grace_secs = 0\n",
    )
    .unwrap();
    assert_eq!(o.threshold, 2.5);
    assert_eq!(o.hysteresis, 0.0);
    assert_eq!(o.choices, 3);
    assert_eq!(o.orphan_policy, OrphanPolicy::Finish);
    assert_eq!(o.max_transfer_bytes, 1 << 30);
    for (text, key) in [
        ("threshold = 0.0", "offload.threshold"),
        ("threshold = -1.0", "offload.threshold"),
        ("threshold = nan", "offload.threshold"),
        ("threshold = inf", "offload.threshold"),
        ("hysteresis = -0.5", "offload.hysteresis"),
        ("accept_max_rounds = 0.0", "offload.accept_max_rounds"),
        ("choices = 0", "offload.choices"),
        ("choices = 17", "offload.choices"),
        ("max_offers_per_peer = 0", "offload.max_offers_per_peer"),
        ("lease_secs = 2", "offload.lease_secs"),
        ("lease_secs = 3601", "offload.lease_secs"),
        ("orphan_grace_secs = 3601", "offload.orphan_grace_secs"),
    ] {
        assert_key_error(offload(text), key);
    }
    assert!(offload("orphan_policy = \"keep\"").is_err());
}

#[test]
fn reloadable_keys() {
    let running = ClusterSettings::default();
    let mut new = running.clone();
    new.report_interval_ms = 100;
    new.old_key_files = vec!["/k".into()];
    assert_eq!(running.reloadable_from(&new), new);
    new.seeds = vec!["b:7946".into()];
    assert_ne!(running.reloadable_from(&new), new);
}
