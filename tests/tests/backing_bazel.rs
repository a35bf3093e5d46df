//! Debian's Bazel 4.2.3 against rbe in front of a backing store (issue 13's
//! acceptance). Per leg: host A (casd with `[backing]`, frontend, workerd
//! on loopback) runs every action of `tests/bazel-ws` remotely; then host
//! B, a fresh empty store in front of the same backing store, serves the
//! rebuild after `bazel clean` entirely from cache, with byte-identical
//! outputs, and the backing store itself holds every output Bazel's
//! execution log lists. In `jit` mode a third empty host C then runs every
//! action again (a new salt) on inputs Bazel did not upload to it, because
//! the backing store had them. Legs: a second rbe-casd in `cache` and in
//! `jit` mode, and BuildGrid's server (`bgd`) in `cache` mode (skipped,
//! saying why, when bgd is not installed). One Bazel server and output root serve
//! every leg, which keeps the test to a few builds' worth of wall time.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::buildgrid::Bgd;
use rbe_testkit::{client, disk_tmp, Casd, Stack};
use tonic::transport::Channel;

mod exec_kit;
use exec_kit::casd_stats;

/// Everything but `//host:host_info`, which is `no-remote-exec`: what is
/// left must all run remotely.
const TARGETS: [&str; 3] = ["--", "//...", "-//host:host_info"];

/// One Bazel server over one output root; `Drop` shuts it down.
struct Bazel {
    root: tempfile::TempDir,
    ws: PathBuf,
}

impl Bazel {
    fn new(parent: &Path) -> Bazel {
        let root = tempfile::Builder::new()
            .prefix("bazel-")
            .tempdir_in(parent)
            .expect("output root");
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("bazel-ws");
        Bazel { root, ws }
    }

    fn run(&self, args: &[String]) -> Output {
        // --nohome_rc, not --nosystem_rc: Debian's /etc/bazel/bazelrc sets
        // the install base bazel-bootstrap needs (see bazel-ws/README.md).
        Command::new("bazel")
            .current_dir(&self.ws)
            .arg("--nohome_rc")
            .arg(format!("--output_user_root={}", self.root.path().display()))
            .args(args)
            .output()
            .expect("run bazel")
    }

    fn run_ok(&self, args: &[String]) -> String {
        let out = self.run(args);
        let text = log_of(&out);
        assert!(out.status.success(), "bazel {args:?} failed:\n{text}");
        text
    }

    /// `bazel test` of [`TARGETS`] with every action sent to `endpoint`;
    /// its process summary and Bazel's execution log.
    fn build(&self, endpoint: &str, salt: &str, what: &str) -> Build {
        let exec_log = self.root.path().join(format!("{what}.exec.json"));
        let mut args = vec!["test".to_owned()];
        args.extend(flags(endpoint, salt));
        args.push(format!("--execution_log_json_file={}", exec_log.display()));
        args.extend(TARGETS.map(str::to_owned));
        let text = self.run_ok(&args);
        let kinds = summary(&text).unwrap_or_else(|| panic!("{what}: no process summary:\n{text}"));
        let warnings: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("WARNING") || l.starts_with("ERROR"))
            .collect();
        eprintln!("bazel [{what}] against {endpoint}: {kinds:?}");
        for w in warnings {
            eprintln!("  {w}");
        }
        let spawns = std::fs::read_to_string(&exec_log).expect("execution log");
        Build {
            kinds,
            spawns: spawns_of(&spawns),
            text,
        }
    }

    fn bazel_bin(&self, endpoint: &str, salt: &str) -> PathBuf {
        let mut args = vec!["info".to_owned()];
        args.extend(flags(endpoint, salt));
        args.push("bazel-bin".into());
        let out = self.run(&args);
        assert!(out.status.success(), "bazel info: {}", log_of(&out));
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    }

    fn clean(&self) {
        self.run_ok(&["clean".into()]);
    }
}

impl Drop for Bazel {
    fn drop(&mut self) {
        let _ = self.run(&["shutdown".into()]);
        // Bazel leaves read-only directories behind.
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(self.root.path())
            .status();
    }
}

fn log_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn flags(endpoint: &str, salt: &str) -> Vec<String> {
    vec![
        format!("--remote_executor={endpoint}"),
        "--remote_timeout=120".into(),
        // No convenience symlinks in the source tree.
        "--symlink_prefix=/".into(),
        "--jobs=4".into(),
        // A salt per leg makes every action key new to its backing store.
        format!("--action_env=RBE_E2E_SALT={salt}"),
        format!("--host_action_env=RBE_E2E_SALT={salt}"),
        format!("--test_env=RBE_E2E_SALT={salt}"),
    ]
}

struct Build {
    /// Bazel's last `INFO: N processes: a kind, b kind.` line, by kind.
    kinds: BTreeMap<String, u64>,
    /// Per spawn in the execution log: its runner and its outputs.
    spawns: Vec<(String, Vec<Digest>)>,
    text: String,
}

impl Build {
    fn count(&self, kind: &str) -> u64 {
        self.kinds.get(kind).copied().unwrap_or(0)
    }

    /// Panics unless every non-internal process was of `kind`.
    fn assert_only(&self, kind: &str, what: &str) {
        let others: Vec<_> = self
            .kinds
            .iter()
            .filter(|(k, _)| *k != "internal" && *k != kind)
            .collect();
        assert!(
            others.is_empty() && self.count(kind) > 0,
            "{what}: every process should be {kind:?}, Bazel says {:?}\n{}",
            self.kinds,
            self.text
        );
    }
}

/// Bazel 4.2.3 ends a build with e.g. `INFO: 35 processes: 16 internal,
/// 19 remote.` (or `INFO: 0 processes.`).
fn summary(text: &str) -> Option<BTreeMap<String, u64>> {
    let line = text.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("INFO: ")?;
        let (n, rest) = rest.split_once(' ')?;
        n.parse::<u64>().ok()?;
        rest.starts_with("process").then_some(rest)
    })?;
    let detail = line.split_once(": ").map_or("", |(_, d)| d);
    Some(
        detail
            .trim_end_matches('.')
            .split(", ")
            .filter_map(|part| {
                let (n, kind) = part.trim().split_once(' ')?;
                Some((kind.to_owned(), n.parse().ok()?))
            })
            .collect(),
    )
}

/// The spawns of `--execution_log_json_file` (concatenated JSON objects of
/// Bazel's `SpawnExec`, camelCase names, int64 sizes as strings).
fn spawns_of(text: &str) -> Vec<(String, Vec<Digest>)> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .map(|v| {
            let v = v.expect("execution log JSON");
            let runner = v["runner"].as_str().unwrap_or("").to_owned();
            let outputs = v["actualOutputs"]
                .as_array()
                .map(|outs| {
                    outs.iter()
                        .filter_map(|o| {
                            let d = &o["digest"];
                            let hash = d["hash"].as_str()?;
                            let size = match &d["sizeBytes"] {
                                serde_json::Value::String(s) => s.parse().ok()?,
                                n => n.as_i64().unwrap_or(0),
                            };
                            Some(
                                Digest::parse(DigestFunction::Sha256, hash, size)
                                    .expect("output digest"),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            (runner, outputs)
        })
        .collect()
}

/// sha256 and executable bit of every regular file under `dir` (symlinks,
/// such as runfiles trees, are not followed).
fn manifest(dir: &Path) -> Manifest {
    fn walk(root: &Path, dir: &Path, out: &mut Manifest) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                walk(root, &p, out);
            } else if m.is_file() {
                let data = std::fs::read(&p).expect("read output");
                let rel = p.strip_prefix(root).expect("under root").to_path_buf();
                let exec = m.permissions().mode() & 0o111 != 0;
                out.insert(rel, (Digest::of(DigestFunction::Sha256, &data).hex(), exec));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// What the steps of one leg share.
struct Leg<'a> {
    bazel: &'a Bazel,
    parent: &'a Path,
    what: &'a str,
    /// casd's `[backing]` drop-in, the same on every host of the leg.
    dropin: String,
    salt: String,
}

type Manifest = BTreeMap<PathBuf, (String, bool)>;

impl Leg<'_> {
    /// A host (casd, frontend, workerd) with an empty store.
    async fn host(&self) -> Stack {
        Stack::start_configured_in(self.parent, &self.dropin, "", "").await
    }

    /// Host C, also empty, runs every action again (a new salt): Bazel
    /// uploads only what FindMissingBlobs says the backing store lacks, so
    /// C's worker runs on inputs hydrated from the store. Only for `jit`,
    /// whose point that is (cache mode's fetch-through for Materialize is
    /// `crates/rbe-backing/tests/through.rs`'s); one build less on CI.
    async fn on_c(&self, first: &Build, before: &Manifest, bin: &Path) -> Stack {
        let what = self.what;
        let mut c = self.host().await;
        let c_casd = c.casd.channel().await;
        self.bazel.clean();
        let third = self.bazel.build(
            &format!("grpc://{}", c.addr),
            &format!("{}-c", self.salt),
            &format!("{what}-third"),
        );
        // An action the salt does not reach (one in Bazel 4.2.3's set) is a
        // cache hit from the backing store instead; all others run on C.
        let hits = third.count("remote cache hit");
        assert!(
            third
                .kinds
                .keys()
                .all(|k| ["internal", "remote", "remote cache hit"].contains(&k.as_str()))
                && hits <= 1
                && third.count("remote") + hits == first.count("remote"),
            "{what}: build on C: Bazel says {:?}\n{}",
            third.kinds,
            third.text
        );
        assert_eq!(
            &manifest(bin),
            before,
            "{what}: outputs differ after the build on C"
        );
        assert!(
            casd_stats(&c_casd).await.backing_fetches > 0,
            "{what}: C's inputs came through the backing store"
        );
        assert!(c.alive(), "{what}: a daemon of host C died");
        c
    }
}

/// One leg: host A builds with every action remote, host B (fresh) serves
/// the rebuild from the backing store `store` (`url` for `[backing]`);
/// in jit mode host C then runs it all again on hydrated inputs.
async fn leg(bazel: &Bazel, parent: &Path, what: &str, mode: &str, url: &str, store: &Channel) {
    let leg = Leg {
        bazel,
        parent,
        what,
        dropin: format!(
            "[backing]\nmode = \"{mode}\"\nurl = \"{url}\"\nrequest_timeout_secs = 60\n"
        ),
        salt: format!(
            "{what}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ),
    };
    let salt = &leg.salt;
    let mut a = leg.host().await;
    let ep_a = format!("grpc://{}", a.addr);
    bazel.clean();
    let first = bazel.build(&ep_a, salt, &format!("{what}-first"));
    first.assert_only("remote", &format!("{what}, first build on A"));
    assert!(a.alive(), "{what}: a daemon of host A died");

    let remote: Vec<&(String, Vec<Digest>)> =
        first.spawns.iter().filter(|(r, _)| r == "remote").collect();
    assert_eq!(
        remote.len() as u64,
        first.count("remote"),
        "{what}: remote spawns in the execution log"
    );
    let outputs: Vec<Digest> = remote.iter().flat_map(|(_, o)| o.iter().copied()).collect();
    assert!(
        !outputs.is_empty(),
        "{what}: no outputs in the execution log"
    );
    let missing = client::find_missing(store, "", &outputs)
        .await
        .expect("FindMissingBlobs on the backing store");
    assert!(
        missing.is_empty(),
        "{what}: the backing store lacks {} of the {} outputs: {missing:?}",
        missing.len(),
        outputs.len()
    );

    let bin = bazel.bazel_bin(&ep_a, salt);
    let before = manifest(&bin);
    assert!(
        !before.is_empty(),
        "{what}: nothing under {}",
        bin.display()
    );

    let mut b = leg.host().await;
    let b_casd = b.casd.channel().await;
    assert_eq!(casd_stats(&b_casd).await.blobs, 0, "{what}: B starts empty");
    bazel.clean();
    assert!(
        manifest(&bin).is_empty(),
        "{what}: bazel-bin left after clean"
    );
    let second = bazel.build(
        &format!("grpc://{}", b.addr),
        salt,
        &format!("{what}-second"),
    );
    second.assert_only("remote cache hit", &format!("{what}, rebuild on B"));
    assert_eq!(
        second.count("remote cache hit"),
        first.count("remote"),
        "{what}: every action of the first build is a cache hit on B"
    );
    assert_eq!(
        manifest(&bin),
        before,
        "{what}: outputs differ after the rebuild on B"
    );
    assert!(
        casd_stats(&b_casd).await.backing_fetches > 0,
        "{what}: B served its hits through the backing store"
    );
    assert!(b.alive(), "{what}: a daemon of host B died");

    let mut hosts = vec![("A", a), ("B", b)];
    if mode == "jit" {
        hosts.push(("C", leg.on_c(&first, &before, &bin).await));
    }
    for (host, s) in &hosts {
        let errors = casd_stats(&s.casd.channel().await).await.backing_errors;
        assert_eq!(
            errors,
            0,
            "{what}: host {host}'s casd counted backing errors\n{}",
            complaints(s.tmp.path())
        );
    }
}

/// The warnings and errors in a stack's daemon logs.
fn complaints(dir: &Path) -> String {
    ["casd", "frontend", "workerd"]
        .iter()
        .flat_map(|d| {
            std::fs::read_to_string(dir.join(format!("{d}.log")))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .map(|l| format!("{d}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_builds_through_cache_and_jit_modes_and_a_fresh_host_rebuilds_from_the_backing_store()
{
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("bazel").is_file()));
    if !on_path {
        rbe_testkit::skip(
            "bazel is not installed (apt-get install bazel-bootstrap; tests/run-all.sh does it)",
        );
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("rbe-backing-bazel-")
        .tempdir_in(disk_tmp())
        .expect("tempdir");
    let bazel = Bazel::new(dir.path());
    for mode in ["cache", "jit"] {
        let store = Casd::start(&dir.path().join(format!("{mode}-store")), "2GiB", "").await;
        let url = format!("unix:{}", store.layout.casd_socket().display());
        leg(&bazel, dir.path(), mode, mode, &url, &store.channel().await).await;
    }
    if let Some(bgd) = Bgd::start(&dir.path().join("bgd"), "").await {
        leg(
            &bazel,
            dir.path(),
            "buildgrid",
            "cache",
            &bgd.url(),
            &bgd.channel(),
        )
        .await;
    }
}
