//! Local sockets check who is calling (SO_PEERCRED): with the socket file
//! opened to everyone (mode 0666), a process that is not root, casd's user
//! or in its group is still refused, and the daemon says who it was.

use std::process::Command;

use rbe_testkit::{skip, Casd};

/// Connects to `sock` as `uid` (via setpriv), sends the HTTP/2 preface and
/// an empty SETTINGS frame, and returns how many bytes the server answered
/// with before closing or going quiet (a gRPC server sends its SETTINGS).
fn answered_bytes(sock: &std::path::Path, uid: u32) -> usize {
    let script = "import socket,sys\n\
s=socket.socket(socket.AF_UNIX)\n\
s.settimeout(5)\n\
s.connect(sys.argv[1])\n\
try:\n    s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n' + bytes([0,0,0,4,0,0,0,0,0]))\n    print(len(s.recv(65536)))\n\
except OSError:\n    print(0)\n";
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .arg(sock)
        .output()
        .expect("run setpriv python3");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a byte count")
}

#[tokio::test]
async fn casd_refuses_a_local_peer_that_is_not_root_rbe_or_its_group() {
    if !rustix::process::geteuid().is_root() {
        return skip("needs root to connect as another user");
    }
    let tmp = tempfile::tempdir().expect("tmp");
    // World-traversable so the other user reaches the socket at all.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut casd = Casd::start(tmp.path(), "1GiB", "[listen]\nsocket_mode = \"0666\"\n").await;
    let sock = casd.layout.casd_socket();
    for p in sock
        .ancestors()
        .skip(1)
        .take_while(|p| p.starts_with(tmp.path()))
    {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    assert!(answered_bytes(&sock, 0) > 0, "root must be answered");
    assert_eq!(answered_bytes(&sock, 65534), 0, "uid 65534 must be refused");
    assert!(casd.alive(), "casd must survive the refused peer");
    let log = std::fs::read_to_string(casd.layout.root.join("casd.log")).unwrap_or_default();
    assert!(
        log.contains("refused a local connection") && log.contains("peer_uid=65534"),
        "{log}"
    );
}
