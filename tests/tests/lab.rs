//! Lab networks of `tests/harness/sysbox` (`up --net lab=LAB`, `lab
//! cut|join|block|unblock|heal|exec`), the ground the cluster tests stand
//! on: two instances on one lab reach each other by name over TCP, a cut
//! cable or a block stops that silently, join and heal bring it back, and
//! `down` leaves no netns or veth behind.
//!
//! Skipped, with the reason on stderr, where `tests/tests/systemd.rs` is
//! (not root, no systemd, cgroup2-only host) and without `ip` (iproute2).
//! One test: the steps depend on each other, and the lab is one network.

mod support;

use std::path::Path;
use std::process::Command;

use rbe_testkit::skip;
use support::{name, netns_list, on_path, text, unsupported, Instance, Lab};

const PORT: u16 = 7000;

/// A socket-activated service on `i` that says hello on each connection:
/// only systemd is needed inside (no nc or socat on the image).
fn serve_hello(i: &Instance) {
    i.sh(&format!(
        "printf '[Socket]\\nListenStream={PORT}\\nAccept=yes\\n' \
           >/etc/systemd/system/hello.socket && \
         printf '[Service]\\nExecStart=/bin/echo hello-from-%%H\\nStandardOutput=socket\\n' \
           >/etc/systemd/system/hello@.service && \
         systemctl daemon-reload && systemctl start hello.socket"
    ));
}

/// bash's /dev/tcp client: what `host` answers on PORT, or `None` if the
/// connection did not complete within `secs` (the bound only keeps a
/// dropped connection from hanging the test).
fn hello_script(host: &str, secs: u32) -> String {
    format!("timeout {secs} bash -c 'exec 3<>/dev/tcp/{host}/{PORT} && head -n1 <&3'")
}

fn hello(from: &Instance, to: &str, secs: u32) -> Option<String> {
    let out = from.try_sh(&hello_script(to, secs));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Links in `netns` (`ip -n NETNS -o link`), or "" if it does not exist.
fn links(netns: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", netns, "-o", "link"])
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn two_instances_talk_by_name_until_cut_or_blocked_and_down_removes_the_network() {
    if let Some(why) = unsupported() {
        return skip(&why);
    }
    if !on_path("ip") {
        return skip("ip (iproute2) is not installed");
    }
    let host_links = links_host();
    let lab = Lab::new(&name("n"));
    let a = Instance::up_lab(&name("a"), &lab, &[]);
    let b = Instance::up_lab(&name("b"), &lab, &[]);
    let (a_ip, b_ip) = (a.lab_ip(), b.lab_ip());
    assert_ne!(a_ip, b_ip);
    assert!(a_ip.starts_with("10.88.0."), "{a_ip}");

    // one hosts file for the lab, seen by every member
    let hosts = lab.hosts();
    assert!(hosts.contains(&format!("{a_ip}\t{}", a.name)), "{hosts}");
    assert!(hosts.contains(&format!("{b_ip}\t{}", b.name)), "{hosts}");
    assert_eq!(a.sh("cat /etc/hosts"), hosts.trim());
    assert_eq!(
        a.sh(&format!("getent hosts {}", b.name))
            .split_whitespace()
            .next(),
        Some(b_ip.as_str())
    );

    serve_hello(&b);
    let want = Some(format!("hello-from-{}", b.name));
    assert_eq!(hello(&a, &b.name, 20), want, "a reaches b by name");

    // The test driver joins the lab from the host side, by address.
    let out = lab.exec(&["bash", "-c", &hello_script(&b_ip, 20)]);
    assert!(out.status.success(), "lab exec: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        want.as_deref().unwrap_or("")
    );
    // The host's own network is untouched.
    assert_eq!(links_host(), host_links, "the host's links changed");

    lab.cut(&b);
    assert_eq!(hello(&a, &b.name, 3), None, "reached b through a cut cable");
    lab.join(&b);
    assert_eq!(hello(&a, &b.name, 20), want, "after join");

    lab.block(&a, &b);
    assert_eq!(hello(&a, &b.name, 3), None, "reached b through a block");
    // a block is between two members only: the driver still reaches b
    let out = lab.exec(&["bash", "-c", &hello_script(&b_ip, 20)]);
    assert!(
        out.status.success(),
        "lab exec while a-b blocked: {}",
        text(&out)
    );
    lab.heal();
    assert_eq!(hello(&a, &b.name, 20), want, "after heal");

    lab.block(&b, &a);
    lab.cut(&a);
    assert_eq!(hello(&a, &b.name, 3), None);
    lab.join(&a);
    assert_eq!(hello(&a, &b.name, 3), None, "join must not lift a block");
    lab.unblock(&a, &b);
    assert_eq!(hello(&a, &b.name, 20), want, "after unblock");

    // Bad requests fail and change nothing.
    for args in [
        &["block", a.name.as_str(), a.name.as_str()][..],
        &["cut", "nosuchbox"][..],
        &["frobnicate"][..],
    ] {
        assert!(!lab.run(args).status.success(), "lab {args:?} succeeded");
    }

    // down: the member's netns and veth go; the lab stays for b...
    let (a_name, b_name) = (a.name.clone(), b.name.clone());
    let out = a.down();
    assert!(out.status.success(), "down a: {}", text(&out));
    let ns = netns_list();
    assert!(!ns.contains(&format!("sysbox-{a_name}")), "{ns:?}");
    assert!(ns.contains(&lab.netns()), "{ns:?}");
    let lab_links = links(&lab.netns());
    assert!(!lab_links.contains(&format!("v-{a_name}@")), "{lab_links}");
    assert!(lab_links.contains(&format!("v-{b_name}@")), "{lab_links}");
    assert!(!lab.hosts().contains(&a_name), "a still in the hosts file");
    // ...and with the last member the lab goes too.
    let out = b.down();
    assert!(out.status.success(), "down b: {}", text(&out));
    let ns = netns_list();
    for n in [format!("sysbox-{b_name}"), lab.netns()] {
        assert!(!ns.contains(&n), "{n} left behind: {ns:?}");
    }
    assert!(
        !Path::new(&format!("/run/sysbox/.lab-{}", lab.name)).exists(),
        "lab state left behind"
    );
    assert_eq!(links_host(), host_links, "the host's links changed");
    // a lab without members is gone for the harness too
    assert!(!lab.run(&["heal"]).status.success());
}

/// The host netns's link names.
fn links_host() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(str::to_owned)
        .collect()
}
