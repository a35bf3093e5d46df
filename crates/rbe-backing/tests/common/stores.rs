//! The object stores the tests start: Debian's nginx with WebDAV and
//! moto's S3 server, each killed by its PID when dropped, and casd's
//! `[backing]` for each.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::BOUND;
use rbe_proto::Digest;

/// A store server the test started; killed (by its PID) when dropped.
pub struct Server {
    child: Option<Child>,
    argv: Vec<String>,
    pub port: u16,
    dir: PathBuf,
}

impl Server {
    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                panic!("{:?} exited with {st}: {log}", self.argv);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?} not listening",
                self.argv
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `SIG<name>` (e.g. `STOP`, `CONT`) to the server, by its PID.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().map(Child::id).unwrap();
        let st = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{name} {pid}");
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rbe-objstore-")
        .tempdir_in(rbe_testkit::disk_tmp())
        .unwrap()
}

/// nginx serving WebDAV under `/dav/` (files under `<dir>/root/dav`) and
/// a 200 HTML "login page" for every URL under `/html/`.
pub async fn nginx(dir: &Path) -> Option<Server> {
    nginx_with(dir, "", "").await
}

/// nginx as [`nginx`], with `listen_extra` after the port (e.g. `ssl`
/// and the certificate directives) and `server_extra` in its `server`.
pub async fn nginx_with(dir: &Path, listen_extra: &str, server_extra: &str) -> Option<Server> {
    let bin = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|b| installed(b))?;
    let port = rbe_testkit::free_port();
    let d = dir.display();
    std::fs::create_dir_all(dir.join("root/dav")).unwrap();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         client_max_body_size 0;\n\
         server {{\n  listen 127.0.0.1:{port}{listen_extra};\n  root {d}/root;\n\
           location /dav/ {{ dav_methods PUT DELETE; create_full_put_path on; dav_access user:rw; }}\n\
           location /html/ {{ default_type text/html; return 200 \"<html><body>Please log in</body></html>\\n\"; }}\n\
           {server_extra}\n\
         }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut s = Server {
        child: None,
        argv: vec![
            bin.to_owned(),
            "-p".into(),
            format!("{d}/"),
            "-e".into(),
            format!("{d}/error.log"),
            "-c".into(),
            format!("{d}/nginx.conf"),
        ],
        port,
        dir: dir.to_owned(),
    };
    s.spawn();
    s.wait_ready().await;
    Some(s)
}

/// moto's S3 server with bucket `rbe-test`; `None` if moto is missing.
pub async fn moto(dir: &Path) -> Option<Server> {
    let python = std::env::var("RBE_MOTO_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import moto.server, flask"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return None;
    }
    let port = rbe_testkit::free_port();
    let mut s = Server {
        child: None,
        argv: vec![
            python,
            "-m".into(),
            "moto.server".into(),
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
        port,
        dir: dir.to_owned(),
    };
    s.spawn();
    s.wait_ready().await;
    http(port, "PUT", "/rbe-test", b"").await;
    Some(s)
}

/// One plain HTTP/1.1 request; the status line's code.
pub async fn http(port: u16, method: &str, path: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(BOUND, c.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

pub fn key(d: &Digest) -> String {
    format!("cas/sha256/{}/{}", d.hex(), d.size)
}

/// casd's `[backing]` for each store.
pub fn dav_backing(port: u16, prefix: &str) -> String {
    format!("[backing]\nmode = \"cache\"\nurl = \"http://127.0.0.1:{port}/{prefix}\"\nrequest_timeout_secs = 5\nconnect_timeout_secs = 2\n")
}

pub fn s3_backing(dir: &Path, port: u16) -> String {
    let creds = dir.join("s3-credentials");
    std::fs::write(
        &creds,
        "access_key_id = testing\nsecret_access_key = testing\n",
    )
    .unwrap();
    format!(
        "[backing]\nmode = \"cache\"\nurl = \"s3://rbe-test/ci\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
         path_style = true\ncredentials_file = {:?}\nrequest_timeout_secs = 5\nconnect_timeout_secs = 2\n",
        creds.display().to_string()
    )
}
