//! The packages from `packaging/build`, installed with real dpkg, apt and rpm
//! into a freshly booted systemd 252 (`tests/harness/sysbox`: the host root
//! as a read-only lower layer, so nothing reaches the host): install, one
//! `systemctl enable --now rbe-workerd` to a working stack, upgrade with an
//! edited config, a broken config after an upgrade, remove, purge, a taken
//! port 8980, and the .rpm packages.
//!
//! Tests that boot an instance skip with the reason when not root, when the
//! harness cannot run here, or when the packaging tools are missing. The
//! packages are built once per run, from the debug build into
//! `target/packages-debug` unless `RBE_PACKAGE_PROFILE=release`
//! (`packaging/build` returns at once when they are up to date, as after
//! `tests/run-all.sh` built them).

mod support;

use std::path::Path;
use std::process::Command;

use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::{client, pseudo_random, skip};
use support::packages::{apt_install, cannot_run, enable_workerd, PKG};
use support::{name, on_path, repo, text, Instance};

const PACKAGES: [&str; 5] = [
    "rbe",
    "rbe-common",
    "rbe-casd",
    "rbe-frontend",
    "rbe-workerd",
];
const SERVICES: [&str; 3] = [
    "rbe-casd.service",
    "rbe-frontend.service",
    "rbe-workerd.service",
];
const SOCKETS: [&str; 3] = [
    "rbe-casd.socket",
    "rbe-frontend.socket",
    "rbe-frontend-local.socket",
];
/// Shipped but disabled: only a host that joins a cluster enables them.
const OPTIONAL_SOCKETS: [&str; 2] = ["rbe-frontend-gossip.socket", "rbe-frontend-peer.socket"];
/// Where the instance sees this checkout (read-only). The host path may not
/// be visible inside: a checkout under /tmp or /var/tmp (as in CI) is
/// covered by the instance's own tmpfs there.
const SRC: &str = "/srv/rbe-src";

/// Boots an instance that sees the packages at [`PKG`] and the checkout at
/// [`SRC`].
fn instance(suffix: &str) -> Instance {
    let mut args = support::packages::bind_args();
    args.extend(["--ro-bind".into(), format!("{}:{SRC}", repo().display())]);
    Instance::up(&name(suffix), &args)
}

/// Makes `dir` (inside) hold the packages again with their version suffixed
/// by `+up<n>`, as a newer release would be: same files, new version.
fn newer_debs(inst: &Instance, n: u32, dir: &str) {
    inst.sh(&format!(
        "set -e; mkdir -p {dir}; cd {dir}
         for f in {PKG}/*.deb; do
           v=$(dpkg-deb -f \"$f\" Version); d=$(mktemp -d)
           dpkg-deb -R \"$f\" \"$d\"
           sed -i \"s/$v/$v+up{n}/g\" \"$d/DEBIAN/control\"
           dpkg-deb --root-owner-group -b \"$d\" . >/dev/null
           rm -rf \"$d\"
         done"
    ));
}

fn active(inst: &Instance, unit: &str) -> String {
    inst.prop(unit, "ActiveState")
}

fn main_pid(inst: &Instance, unit: &str) -> String {
    inst.prop(unit, "MainPID")
}

/// Writes `data` through the frontend's local socket (from the host,
/// through the instance's root); the store starts on demand.
async fn put(inst: &Instance, data: &[u8]) -> Digest {
    let ch = rbe_net::unix_channel(&inst.root().join("run/rbe/frontend.sock"))
        .await
        .expect("channel to the frontend");
    let d = Digest::of(DigestFunction::Sha256, data);
    let n = client::write(&ch, "", &d, data, 64 << 10)
        .await
        .expect("write through the frontend");
    assert_eq!(n, data.len() as i64);
    d
}

async fn get(inst: &Instance, d: &Digest) -> Vec<u8> {
    let ch = rbe_net::unix_channel(&inst.root().join("run/rbe/frontend.sock"))
        .await
        .expect("channel to the frontend");
    client::read(&ch, "", d)
        .await
        .expect("read through the frontend")
}

fn blob_path(d: &Digest) -> String {
    let hex = d.hex();
    format!("/var/lib/rbe/cas/cas.v1/sha256/{}/{hex}", &hex[..2])
}

/// Step 2 from inside the instance (its TCP port is in its own network
/// namespace): Bazel builds and tests `tests/bazel-ws` with every action
/// executed remotely by the packaged stack, then rebuilds it from the
/// remote cache; the worker's journal shows the actions.
fn bazel_build_runs_remotely(inst: &Instance) {
    if !on_path("bazel") {
        return skip("bazel is not installed (apt-get install bazel-bootstrap): no Bazel build");
    }
    let script = Path::new(SRC).join("tests/scripts/bazel-cache-e2e.sh");
    let out = inst.exec(&[
        "env",
        "MODE=exec",
        "bash",
        &script.display().to_string(),
        "grpc://127.0.0.1:8980",
    ]);
    let journal = inst.journal("rbe-workerd.service");
    assert!(
        out.status.success(),
        "Bazel through the packaged stack: {}\nerrors in the daemons' journal (last 20 lines):\n{}",
        text(&out),
        inst.sh("journalctl -u 'rbe-*' -o verbose | grep -E '^ *(MESSAGE|RBE_ERROR)=' | grep -B1 RBE_ERROR= | tail -n 20")
    );
    let finished = journal.matches("action finished").count();
    assert!(finished > 0, "no action in the journal:\n{journal}");
    eprintln!(
        "{}; {finished} actions in rbe-workerd's journal",
        String::from_utf8_lossy(&out.stdout).trim()
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ----------------------------------------------------------- no root needed

/// `packaging/install` with stand-in binaries: every file in `systemd/` is
/// placed by its suffix, and each `/etc/rbe/<daemon>.toml` is the vendor
/// file with every key commented out, so it sets nothing until edited.
#[test]
fn install_tree_has_every_unit_and_commented_configs() {
    let t = tempfile::tempdir().expect("tmp");
    let bins = t.path().join("bin");
    std::fs::create_dir_all(&bins).expect("mkdir");
    for b in ["rbe-casd", "rbe-frontend", "rbe-workerd", "rbectl"] {
        std::fs::write(bins.join(b), "").expect("stand-in");
    }
    let dest = t.path().join("root");
    let out = Command::new(repo().join("packaging/install"))
        .arg(&dest)
        .arg("--bindir")
        .arg(&bins)
        .output()
        .expect("run packaging/install");
    assert!(out.status.success(), "{}", text(&out));
    for e in std::fs::read_dir(repo().join("systemd"))
        .expect("systemd/")
        .flatten()
    {
        let f = e.file_name().to_string_lossy().into_owned();
        let at = match f.rsplit_once('.') {
            Some((stem, "sysusers")) => format!("usr/lib/sysusers.d/{stem}.conf"),
            Some((stem, "tmpfiles")) => format!("usr/lib/tmpfiles.d/{stem}.conf"),
            _ => format!("usr/lib/systemd/system/{f}"),
        };
        assert!(dest.join(&at).is_file(), "systemd/{f} is not at /{at}");
    }
    for page in ["man1/rbectl.1", "man5/rbe.toml.5", "man8/rbe-workerd.8"] {
        assert!(dest.join("usr/share/man").join(page).is_file(), "{page}");
    }
    let etc = dest.join("etc/rbe");
    let vendor = dest.join("usr/lib/rbe");
    // Commented out, the administrator's files change nothing.
    assert_eq!(
        rbe_config::load_casd(&[vendor.clone(), etc.clone()]).expect("casd"),
        rbe_config::load_casd(std::slice::from_ref(&vendor)).expect("casd vendor")
    );
    assert_eq!(
        rbe_config::load_frontend(std::slice::from_ref(&etc)).expect("frontend"),
        rbe_config::load_frontend(&[]).expect("frontend built-in")
    );
    assert_eq!(
        rbe_config::load_workerd(std::slice::from_ref(&etc)).expect("workerd"),
        rbe_config::load_workerd(&[]).expect("workerd built-in")
    );
    // Uncommented, they say exactly what the vendor files say.
    let uncommented = t.path().join("uncommented");
    std::fs::create_dir_all(&uncommented).expect("mkdir");
    for daemon in ["casd", "frontend", "workerd"] {
        let file = format!("{daemon}.toml");
        let text = std::fs::read_to_string(etc.join(&file)).expect("etc file");
        let mut on = String::new();
        for line in text.lines() {
            let key = line.strip_prefix('#').filter(|l| {
                l.split_once(" = ")
                    .is_some_and(|(k, _)| !k.is_empty() && !k.contains(' '))
            });
            on.push_str(key.unwrap_or(line));
            on.push('\n');
        }
        for key in rbe_config::known_keys(daemon) {
            let (_, name) = key.split_once('.').expect("dotted");
            assert!(
                text.contains(&format!("\n#{name} = ")),
                "/etc/rbe/{file} does not show {key}"
            );
        }
        std::fs::write(uncommented.join(&file), on).expect("write");
    }
    let u = [uncommented];
    let v = [vendor];
    assert_eq!(
        rbe_config::load_casd(&u).expect("casd"),
        rbe_config::load_casd(&v).expect("v")
    );
    assert_eq!(
        rbe_config::load_frontend(&u).expect("frontend"),
        rbe_config::load_frontend(&v).expect("v")
    );
    assert_eq!(
        rbe_config::load_workerd(&u).expect("workerd"),
        rbe_config::load_workerd(&v).expect("v")
    );
}

#[test]
fn manual_pages_render_without_warnings() {
    if !on_path("groff") && !on_path("nroff") {
        return skip("groff is not installed (groff-base)");
    }
    let mut pages = 0;
    for e in std::fs::read_dir(repo().join("man"))
        .expect("man/")
        .flatten()
    {
        let p = e.path();
        if p.extension().is_none_or(|x| x == "md") {
            continue;
        }
        let out = Command::new("groff")
            .args(["-man", "-ww", "-Tutf8"])
            .arg(&p)
            .output()
            .expect("run groff");
        assert!(out.status.success(), "{}: {}", p.display(), text(&out));
        assert!(out.stderr.is_empty(), "{}: {}", p.display(), text(&out));
        assert!(out.stdout.len() > 500, "{}: renders nothing", p.display());
        pages += 1;
    }
    assert_eq!(
        pages, 5,
        "rbe-casd.8 rbe-frontend.8 rbe-workerd.8 rbectl.1 rbe.toml.5"
    );
}

/// The spec parses where systemd's RPM macros are installed (Fedora, RHEL,
/// openSUSE). RPM expands macros even inside comments, and there each of
/// systemd's scriptlet macros called without arguments is an error: the
/// macros below are defined the way systemd's `src/rpm/macros.systemd.in`
/// defines them (Fedora's `%sysusers_create_compat` checked the same way).
#[test]
fn rpm_spec_parses_with_systemd_macros() {
    if !on_path("rpmspec") {
        return skip("rpmspec is not installed (apt-get install rpm)");
    }
    let t = tempfile::tempdir().expect("tmp");
    let mut macros = String::from(
        "%_unitdir /usr/lib/systemd/system\n\
         %__systemd_someargs_0(:) %{error:The %%%1 macro requires some arguments}\n",
    );
    for m in [
        "systemd_post",
        "systemd_preun",
        "systemd_postun",
        "systemd_postun_with_restart",
        "systemd_postun_with_reload",
        "systemd_user_post",
        "systemd_user_preun",
        "systemd_user_postun",
        "systemd_user_postun_with_restart",
        "tmpfiles_create",
        "sysusers_create",
        "sysusers_create_compat",
        "sysctl_apply",
        "binfmt_apply",
    ] {
        macros.push_str(
            &[
                "%",
                m,
                "() %{expand:%%{?__systemd_someargs_%#:%%__systemd_someargs_%# ",
                m,
                "}} : ",
                m,
                " %{?*}\n",
            ]
            .concat(),
        );
    }
    let file = t.path().join("macros.systemd");
    std::fs::write(&file, macros).expect("write macros");
    // The macros bite: without arguments, an error; with them, a command.
    let eval = |what: &str| {
        Command::new("rpm")
            .arg("--load")
            .arg(&file)
            .args(["--eval", what])
            .output()
            .expect("run rpm --eval")
    };
    let bare = eval("%systemd_post");
    assert!(
        String::from_utf8_lossy(&bare.stderr)
            .contains("The %systemd_post macro requires some arguments"),
        "{}",
        text(&bare)
    );
    let called = eval("%systemd_post rbe-casd.socket");
    assert!(called.status.success(), "{}", text(&called));

    let out = Command::new("rpmspec")
        .arg("-P")
        .arg(repo().join("packaging/rpm/rbe.spec"))
        .arg("--load")
        .arg(&file)
        .args([
            "--define",
            "rbe_version 0.1.0",
            "--define",
            "rbe_release 1",
            "--define",
            "rbe_changelog_date Wed Dec 02 2026",
        ])
        .output()
        .expect("run rpmspec");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "rpmspec -P with systemd's macros: {}",
        text(&out)
    );
    // The comments came through as text, not as expanded macros.
    let parsed = String::from_utf8_lossy(&out.stdout);
    assert!(parsed.contains("%systemd_post, %systemd_preun"), "{parsed}");
}

// ------------------------------------------------ against a booted systemd

/// Acceptance 1, 3, 4 and 6, and a broken config after an upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deb_install_upgrade_remove_purge() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    let inst = instance("a");

    // 1. apt resolves the packages' dependencies from what is installed;
    // Debian's policy enables the units and starts the sockets; the worker
    // is neither enabled nor started, and no daemon runs yet.
    apt_install(&inst, PKG);
    for p in PACKAGES {
        let status = inst.sh(&format!("dpkg-query -W -f '${{Status}}' {p}"));
        assert_eq!(status, "install ok installed", "{p}");
    }
    for s in SOCKETS {
        assert_eq!(
            inst.sh(&format!("systemctl is-enabled {s}")),
            "enabled",
            "{s}"
        );
        assert_eq!(active(&inst, s), "active", "{s}");
    }
    let out = inst.exec(&["systemctl", "is-enabled", "rbe-workerd.service"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "disabled");
    for s in OPTIONAL_SOCKETS {
        let out = inst.exec(&["systemctl", "is-enabled", s]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "disabled",
            "{s}"
        );
        assert_eq!(active(&inst, s), "inactive", "{s}");
    }
    for s in SERVICES {
        assert_eq!(active(&inst, s), "inactive", "{s} started on install");
    }
    assert_eq!(
        inst.sh("stat -c '%U:%G %a' /var/lib/rbe /run/rbe"),
        "rbe:rbe 750\nrbe:rbe 755"
    );
    let conffiles = inst.sh("dpkg-query -W -f '${Conffiles}\\n' rbe-casd rbe-frontend rbe-workerd");
    for d in ["casd", "frontend", "workerd"] {
        assert!(
            conffiles.contains(&format!("/etc/rbe/{d}.toml ")),
            "{conffiles}"
        );
    }
    assert_eq!(
        inst.sh("rbectl config check"),
        "casd: ok\nfrontend: ok\nworkerd: ok"
    );

    // 6. The manuals are installed and rbe.toml(5) documents every key.
    let manual = inst.sh("MANWIDTH=100 man rbe.toml 2>&1");
    for daemon in ["casd", "frontend", "workerd"] {
        for key in rbe_config::known_keys(daemon) {
            assert!(manual.contains(key), "man rbe.toml lacks {key}");
        }
    }
    for page in ["rbe-casd", "rbe-frontend", "rbe-workerd", "rbectl"] {
        inst.sh(&format!("man -w {page}"));
    }

    // 2 (the units part): one command brings the stack up.
    enable_workerd(&inst);
    let data = pseudo_random(200_000, 61);
    let d = put(&inst, &data).await;
    assert_eq!(active(&inst, "rbe-casd.service"), "active");

    // 3. The administrator's edit survives an upgrade; running daemons
    // restart on the new files; the store keeps its content.
    inst.sh("sed -i 's/^#name = \"\"/name = \"edited-worker\"/' /etc/rbe/workerd.toml");
    let edited = inst.sh("cat /etc/rbe/workerd.toml");
    assert!(edited.contains("\nname = \"edited-worker\""), "{edited}");
    inst.sh("systemctl restart rbe-workerd");
    let before: Vec<String> = SERVICES.iter().map(|s| main_pid(&inst, s)).collect();
    newer_debs(&inst, 2, "/root/up2");
    apt_install(&inst, "/root/up2");
    for p in PACKAGES {
        let v = inst.sh(&format!("dpkg-query -W -f '${{Version}}' {p}"));
        assert!(v.ends_with("+up2"), "{p} is at {v}");
    }
    assert_eq!(inst.sh("cat /etc/rbe/workerd.toml"), edited);
    for (s, old) in SERVICES.iter().zip(&before) {
        inst.wait_prop(s, "ActiveState", 30, |v| v == "active");
        let pid = main_pid(&inst, s);
        assert_ne!(&pid, old, "{s} was not restarted by the upgrade");
        let exe = inst.sh(&format!("readlink /proc/{pid}/exe"));
        assert!(
            !exe.ends_with("(deleted)"),
            "{s} runs a replaced binary: {exe}"
        );
    }
    let fields =
        inst.sh("journalctl -u rbe-workerd -o verbose | grep -c RBE_NAME=edited-worker || true");
    assert!(
        fields.parse::<u32>().unwrap_or(0) >= 2,
        "attached as edited-worker before and after"
    );
    assert_eq!(
        get(&inst, &d).await,
        data,
        "the store lost a blob in the upgrade"
    );

    // Bad input: a broken file met by the next upgrade stops casd with the
    // file, the key and the reason in the journal, once, and leaves the
    // store as it was.
    inst.sh("mkdir -p /etc/rbe/casd.toml.d && \
         printf '[storage]\\nmax_size = \"lots\"\\n' >/etc/rbe/casd.toml.d/50-broken.toml");
    newer_debs(&inst, 3, "/root/up3");
    apt_install(&inst, "/root/up3");
    let (state, status) = (
        inst.wait_prop("rbe-casd.service", "ActiveState", 30, |v| v == "failed")
            .0,
        inst.prop("rbe-casd.service", "ExecMainStatus"),
    );
    assert_eq!((state.as_str(), status.as_str()), ("failed", "78"));
    assert_eq!(inst.prop("rbe-casd.service", "NRestarts"), "0");
    let journal = inst.journal("rbe-casd.service");
    assert!(
        journal.contains("/etc/rbe/casd.toml.d/50-broken.toml")
            && journal.contains("storage.max_size")
            && journal.contains("lots"),
        "the journal names the file, the key and the value:\n{}",
        tail(&journal, 10)
    );
    let stat = inst.sh(&format!("stat -c '%U %a %s' {}", blob_path(&d)));
    assert_eq!(stat, format!("rbe 444 {}", data.len()));
    // Fixed, and started again as rbe.toml(5) says.
    inst.sh(
        "rm /etc/rbe/casd.toml.d/50-broken.toml && \
         systemctl reset-failed rbe-casd.service rbe-casd.socket && systemctl start rbe-casd.socket",
    );
    assert_eq!(
        get(&inst, &d).await,
        data,
        "the store after fixing the config"
    );

    // 4. remove stops everything and keeps config and data; purge removes
    // them and leaves no unit enabled.
    inst.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q rbe rbe-workerd rbe-frontend rbe-casd rbe-common");
    for u in SERVICES.iter().chain(SOCKETS.iter()) {
        assert_eq!(active(&inst, u), "inactive", "{u} after remove");
    }
    assert_eq!(inst.sh("pgrep -c -f '^/usr/libexec/rb[e]/' || true"), "0");
    inst.sh(&format!("test -f {}", blob_path(&d)));
    assert_eq!(inst.sh("cat /etc/rbe/workerd.toml"), edited);
    inst.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q rbe-workerd rbe-frontend rbe-casd rbe-common");
    for p in PACKAGES {
        let out = inst.exec(&["dpkg-query", "-W", "-f", "${Status}", p]);
        let st = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            !st.contains("installed") || st.contains("not-installed"),
            "{p}: {st}"
        );
    }
    inst.sh("test ! -e /etc/rbe && test ! -e /var/lib/rbe && test ! -e /var/lib/rbe-frontend");
    assert_eq!(
        inst.sh("find /etc/systemd -name 'rbe*'"),
        "",
        "units left enabled"
    );
    let out = inst.down();
    assert!(out.status.success(), "sysbox down: {}", text(&out));
}

const DAEMONS: [&str; 3] = ["casd", "frontend", "workerd"];

/// Edits each daemon's conffile and adds a drop-in; returns the edited
/// conffiles' text, in [`DAEMONS`] order.
fn edit_configs(inst: &Instance) -> Vec<String> {
    DAEMONS
        .iter()
        .map(|d| {
            inst.sh(&format!(
                "printf '\\n# edited by the administrator\\n' >>/etc/rbe/{d}.toml && \
                 mkdir -p /etc/rbe/{d}.toml.d && \
                 printf '# a drop-in\\n' >/etc/rbe/{d}.toml.d/50-admin.toml && \
                 cat /etc/rbe/{d}.toml"
            ))
        })
        .collect()
}

/// `daemon`'s edited conffile and drop-in are still there, unchanged.
fn config_kept(inst: &Instance, daemon: &str, edited: &[String], after: &str) {
    let i = DAEMONS.iter().position(|d| *d == daemon).expect("daemon");
    let now = inst.try_sh(&format!("cat /etc/rbe/{daemon}.toml"));
    assert_eq!(
        String::from_utf8_lossy(&now.stdout).trim(),
        edited[i],
        "/etc/rbe/{daemon}.toml after {after}: {}",
        text(&now)
    );
    let dropin = format!("/etc/rbe/{daemon}.toml.d/50-admin.toml");
    assert!(
        inst.try_sh(&format!("test -f {dropin}")).status.success(),
        "{dropin} is gone after {after}"
    );
}

fn store_kept(inst: &Instance, d: &Digest, len: usize, after: &str) {
    let stat = inst.try_sh(&format!("stat -c %s {}", blob_path(d)));
    assert_eq!(
        String::from_utf8_lossy(&stat.stdout).trim(),
        len.to_string(),
        "the store lost its blob after {after}: {}",
        text(&stat)
    );
}

/// Bad input for packages: one package purged while the others are removed
/// or installed. Each purge takes only what its own package owns; rbe-common
/// takes the shared directories only once they are empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deb_purge_of_one_package_leaves_the_others() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    let inst = instance("e");
    apt_install(&inst, PKG);
    let edited = edit_configs(&inst);
    let data = pseudo_random(30_000, 71);
    let d = put(&inst, &data).await;
    let purge = |p: &str| {
        inst.sh(&format!(
            "DEBIAN_FRONTEND=noninteractive dpkg --purge {p} </dev/null 2>&1"
        ))
    };

    // The report: the daemons removed, rbe-common purged alone.
    inst.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q rbe rbe-workerd rbe-frontend rbe-casd </dev/null");
    purge("rbe-common");
    for daemon in DAEMONS {
        config_kept(&inst, daemon, &edited, "purging rbe-common");
    }
    store_kept(&inst, &d, data.len(), "purging rbe-common");
    // Reinstalled, rbe-casd finds its edited conffile and its store.
    inst.sh(&format!(
        "cd {PKG} && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./rbe-common_*.deb ./rbe-casd_*.deb </dev/null 2>&1"
    ));
    config_kept(&inst, "casd", &edited, "reinstalling rbe-casd");
    store_kept(&inst, &d, data.len(), "reinstalling rbe-casd");

    // One purge at a time, rbe-common installed and then removed.
    purge("rbe-frontend");
    inst.sh("test ! -e /etc/rbe/frontend.toml && test ! -e /etc/rbe/frontend.toml.d && test ! -e /var/lib/rbe-frontend");
    for daemon in ["casd", "workerd"] {
        config_kept(&inst, daemon, &edited, "purging rbe-frontend");
    }
    store_kept(&inst, &d, data.len(), "purging rbe-frontend");
    purge("rbe-casd");
    inst.sh("test ! -e /etc/rbe/casd.toml && test ! -e /etc/rbe/casd.toml.d && test ! -e /var/lib/rbe/cas");
    config_kept(&inst, "workerd", &edited, "purging rbe-casd");
    inst.sh("test -d /var/lib/rbe && test -d /etc/rbe && test -d /run/rbe");
    inst.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q rbe-common </dev/null");
    config_kept(&inst, "workerd", &edited, "removing rbe-common");
    purge("rbe-common");
    config_kept(&inst, "workerd", &edited, "purging rbe-common again");
    // The last purge leaves nothing of rbe behind.
    purge("rbe-workerd");
    inst.sh("test ! -e /etc/rbe && test ! -e /var/lib/rbe && test ! -e /run/rbe");
    for p in PACKAGES {
        let st = inst.sh(&format!(
            "dpkg-query -W -f '${{db:Status-Abbrev}}' {p} 2>/dev/null || true"
        ));
        assert!(
            st.is_empty() || st.chars().nth(1) == Some('n'),
            "{p} is still known to dpkg: {st}"
        );
    }
    let out = inst.down();
    assert!(out.status.success(), "sysbox down: {}", text(&out));
}

/// Acceptance 2 with the .debs: install, one `systemctl enable --now`, and
/// a Bazel build whose actions run on this host.
#[test]
fn deb_enable_workerd_runs_a_bazel_build() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    let inst = instance("b");
    apt_install(&inst, PKG);
    enable_workerd(&inst);
    bazel_build_runs_remotely(&inst);
    let out = inst.down();
    assert!(out.status.success(), "sysbox down: {}", text(&out));
}

/// The packaged defaults on a network: a client in another network
/// namespace (a veth pair inside the instance, 10.77.0.2 -> 10.77.0.1:8980)
/// without credentials can neither write the action cache nor execute;
/// with a token from `rbectl token create` (after `systemctl reload`) it
/// executes. Loopback callers keep working as before.
#[test]
fn deb_install_refuses_unauthenticated_callers_from_the_network() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    let inst = instance("n");
    apt_install(&inst, PKG);
    enable_workerd(&inst);
    inst.sh("set -e
         ip netns add client
         ip link add rbe-h type veth peer name rbe-c netns client
         ip addr add 10.77.0.1/24 dev rbe-h && ip link set rbe-h up
         ip -n client addr add 10.77.0.2/24 dev rbe-c
         ip -n client link set rbe-c up && ip -n client link set lo up");
    let token = inst.sh("rbectl token create net-client | head -n1");
    assert!(
        token.starts_with("rbe_"),
        "rbectl token create printed {token:?}"
    );
    inst.sh("systemctl reload rbe-frontend");
    inst.wait_prop("rbe-frontend.service", "ActiveState", 30, |v| v == "active");
    let netns = inst.root().join("run/netns/client");
    let outcome = std::thread::spawn(move || from_netns(&netns, &token))
        .join()
        .expect("client thread");
    assert_eq!(
        outcome.ac_write,
        Some(tonic::Code::Unauthenticated),
        "{outcome:?}"
    );
    assert_eq!(
        outcome.execute,
        Some(tonic::Code::Unauthenticated),
        "{outcome:?}"
    );
    assert!(
        outcome.message.contains("credentials required"),
        "{outcome:?}"
    );
    assert_eq!(outcome.with_token_exit, Some(0), "{outcome:?}");
    let journal = inst.journal("rbe-frontend.service");
    assert!(journal.contains("refused: not authenticated"), "{journal}");
    let out = inst.down();
    assert!(out.status.success(), "sysbox down: {}", text(&out));
}

#[derive(Debug, Default)]
struct NetOutcome {
    ac_write: Option<tonic::Code>,
    execute: Option<tonic::Code>,
    message: String,
    with_token_exit: Option<i32>,
}

/// Calls the instance's frontend from the network namespace at `netns`:
/// this thread enters it, so every socket its runtime opens is there.
fn from_netns(netns: &Path, token: &str) -> NetOutcome {
    let ns = std::fs::File::open(netns).expect("open the client netns");
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use rbe_proto::reapi::{action_cache_client::ActionCacheClient, ActionResult};
        let ch = tonic::transport::Channel::from_static("http://10.77.0.1:8980").connect_lazy();
        let mut out = NetOutcome::default();
        let ad = Digest::of(DigestFunction::Sha256, b"an action from the network");
        let write = ActionCacheClient::new(ch.clone())
            .update_action_result(rbe_proto::reapi::UpdateActionResultRequest {
                action_digest: Some(ad.to_reapi()),
                action_result: Some(ActionResult::default()),
                digest_function: DigestFunction::Sha256.to_reapi(),
                ..Default::default()
            })
            .await;
        if let Err(e) = write {
            out.ac_write = Some(e.code());
            out.message = e.message().to_owned();
        }
        let run = rbe_testkit::exec::run_command(&ch, &["true"], &[], 60, None).await;
        out.execute = run.err().map(|e| e.code());
        let authed = rbe_testkit::grpc::WithToken::bearer(ch, token);
        let run = rbe_testkit::exec::run_command(&authed, &["true"], &[], 60, None).await;
        out.with_token_exit = run.ok().and_then(|r| r.result).map(|r| r.exit_code);
        out
    })
}

/// Bad input: port 8980 already taken when the packages are installed.
#[test]
fn deb_install_with_port_8980_taken_fails_only_the_socket() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    let inst = instance("c");
    inst.sh(
        "systemd-run --unit=squatter python3 -c 'import socket, time\n\
         s = socket.socket(socket.AF_INET6)\n\
         s.bind((\"::\", 8980))\n\
         s.listen()\n\
         time.sleep(3600)'",
    );
    inst.wait_prop("squatter.service", "ActiveState", 10, |v| v == "active");
    let t = std::time::Instant::now();
    while inst
        .try_sh("ss -Hltn 'sport = :8980' | grep -q .")
        .status
        .code()
        != Some(0)
    {
        assert!(t.elapsed().as_secs() < 10, "the squatter never listened");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The install itself succeeds: a unit that cannot start is reported,
    // not a broken package.
    apt_install(&inst, PKG);
    assert_eq!(active(&inst, "rbe-frontend.socket"), "failed");
    let journal = inst.journal("rbe-frontend.socket");
    // systemd 252 binds in a helper process; depending on timing the
    // socket unit's own line says "Address already in use" or only
    // "Failed to receive listening socket ([::]:8980)".
    assert!(
        journal.contains("Address already in use")
            || (journal.contains("[::]:8980") && journal.contains("Failed to listen on")),
        "the journal says why:\n{journal}"
    );
    // No loop: nothing restarts, the other sockets serve.
    assert_eq!(inst.prop("rbe-frontend.service", "NRestarts"), "0");
    assert_eq!(active(&inst, "rbe-frontend.service"), "inactive");
    assert_eq!(active(&inst, "rbe-casd.socket"), "active");
    let out = inst.exec(&["systemctl", "start", "rbe-frontend.socket"]);
    assert!(!out.status.success(), "starting it again fails again");
    let status = inst.try_sh("systemctl status --no-pager rbe-frontend.socket");
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("Address already in use"),
        "systemctl status says why: {}",
        text(&status)
    );
    let out = inst.down();
    assert!(out.status.success(), "sysbox down: {}", text(&out));
}

/// Acceptance 5: the .rpm packages with `rpm -i` (`--nodeps`: this root's
/// rpm database is empty, so libc and systemd are unknown to it), presets
/// applied, nothing started, then the same one command and Bazel build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_install_enable_workerd_and_erase() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    let inst = instance("d");
    inst.sh(&format!("rpm -i --nodeps {PKG}/*.rpm 2>&1"));
    for p in PACKAGES {
        inst.sh(&format!("rpm -q {p}"));
    }
    inst.sh("id rbe && test -d /var/lib/rbe");
    for s in SOCKETS {
        assert_eq!(
            inst.sh(&format!("systemctl is-enabled {s}")),
            "enabled",
            "{s}"
        );
    }
    let out = inst.exec(&["systemctl", "is-enabled", "rbe-workerd.service"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "disabled");
    for s in OPTIONAL_SOCKETS {
        let out = inst.exec(&["systemctl", "is-enabled", s]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "disabled",
            "{s}"
        );
        assert_eq!(active(&inst, s), "inactive", "{s}");
    }
    for u in SERVICES.iter().chain(SOCKETS.iter()) {
        assert_eq!(
            active(&inst, u),
            "inactive",
            "{u}: RPM installs start nothing"
        );
    }
    enable_workerd(&inst);
    let data = pseudo_random(50_000, 67);
    let d = put(&inst, &data).await;
    assert_eq!(get(&inst, &d).await, data);
    bazel_build_runs_remotely(&inst);

    inst.sh("rpm -e --nodeps rbe rbe-workerd rbe-frontend rbe-casd rbe-common");
    for u in SERVICES.iter().chain(SOCKETS.iter()) {
        assert_eq!(active(&inst, u), "inactive", "{u} after rpm -e");
    }
    // rpm has no purge: the store stays; the emptied directories go.
    inst.sh(&format!("test -f {}", blob_path(&d)));
    inst.sh("test ! -e /etc/rbe && test ! -e /run/rbe && test ! -e /var/lib/rbe/work");
    assert_eq!(
        inst.sh("find /etc/systemd -name 'rbe*'"),
        "",
        "units left enabled"
    );
    let out = inst.down();
    assert!(out.status.success(), "sysbox down: {}", text(&out));
}

/// The same with rpm, which has no purge: `rpm -e` of one package (with
/// `--nodeps`, as an administrator forcing it would) takes only that
/// package's files, keeps the administrator's edits (`.rpmsave`) and the
/// store, and the shared directories belong to rbe-common, which takes them
/// when they are empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_erase_of_one_package_leaves_the_others() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    let inst = instance("f");
    inst.sh(&format!("rpm -i --nodeps {PKG}/*.rpm 2>&1"));
    assert_eq!(
        inst.sh("rpm -qf --qf '%{NAME}\\n' /etc/rbe /var/lib/rbe /run/rbe /var/lib/rbe/work"),
        "rbe-common\nrbe-common\nrbe-common\nrbe-workerd"
    );
    let edited = edit_configs(&inst);
    inst.sh("systemctl start rbe-casd.socket rbe-frontend.socket rbe-frontend-local.socket");
    let data = pseudo_random(30_000, 73);
    let d = put(&inst, &data).await;
    let erase = |p: &str| inst.sh(&format!("rpm -e --nodeps {p} 2>&1"));

    erase("rbe-common");
    for daemon in DAEMONS {
        config_kept(&inst, daemon, &edited, "erasing rbe-common");
    }
    store_kept(&inst, &d, data.len(), "erasing rbe-common");
    erase("rbe-frontend");
    for daemon in ["casd", "workerd"] {
        config_kept(&inst, daemon, &edited, "erasing rbe-frontend");
    }
    store_kept(&inst, &d, data.len(), "erasing rbe-frontend");
    inst.sh("test ! -e /run/rbe/frontend.sock && test -S /run/rbe/casd.sock");
    erase("rbe-casd");
    config_kept(&inst, "workerd", &edited, "erasing rbe-casd");
    // No purge in rpm: the edit and the store stay for the administrator.
    assert_eq!(
        inst.sh("cat /etc/rbe/casd.toml.rpmsave"),
        edited[0],
        "the edited casd.toml is kept as .rpmsave"
    );
    store_kept(&inst, &d, data.len(), "erasing rbe-casd");
    inst.sh("test ! -e /run/rbe/casd.sock");
    erase("rbe-workerd rbe");
    inst.sh("test -f /etc/rbe/workerd.toml.rpmsave");
    store_kept(&inst, &d, data.len(), "erasing every package");
    let out = inst.down();
    assert!(out.status.success(), "sysbox down: {}", text(&out));
}
