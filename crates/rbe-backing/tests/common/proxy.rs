//! A TCP proxy inside the test, in front of a real store: forwards both
//! ways, and on demand cuts each connection (closes both sockets) once
//! it has passed a number of the store's bytes to the client: a real
//! truncated stream, not a mock server. Every connection task ends when
//! the proxy is dropped.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// Where the proxy connects to.
#[derive(Clone)]
pub enum Upstream {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

const NO_CUT: u64 = u64::MAX;

impl Proxy {
    /// Serves `listener`, forwarding each connection to `up`.
    pub fn start(listener: TcpListener, up: Upstream) -> Proxy {
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicU64::new(NO_CUT));
        let c = Arc::clone(&cut);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                let (up, limit) = (up.clone(), c.load(Ordering::SeqCst));
                conns.spawn(async move {
                    match up {
                        Upstream::Unix(p) => {
                            if let Ok(s) = tokio::net::UnixStream::connect(p).await {
                                pipe(client, s, limit).await;
                            }
                        }
                        Upstream::Tcp(a) => {
                            if let Ok(s) = tokio::net::TcpStream::connect(a).await {
                                let _ = s.set_nodelay(true);
                                pipe(client, s, limit).await;
                            }
                        }
                    }
                });
            }
        });
        Proxy { port, cut, task }
    }

    /// A proxy on a free 127.0.0.1 port.
    pub async fn local(up: Upstream) -> Proxy {
        let l = TcpListener::bind(("127.0.0.1", rbe_testkit::free_port()))
            .await
            .unwrap();
        Proxy::start(l, up)
    }

    /// Connections opened from now on are cut after `n` bytes from the
    /// store.
    pub fn cut_after(&self, n: u64) {
        self.cut.store(n, Ordering::SeqCst);
    }

    /// Connections opened from now on pass everything.
    pub fn fix(&self) {
        self.cut.store(NO_CUT, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The connections' JoinSet goes with the accept task.
        self.task.abort();
    }
}

/// Copies both ways until either side ends; with `limit`, closes both
/// after that many bytes from the store reached the client.
async fn pipe<C, S>(client: C, store: S, limit: u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(store);
    let up = tokio::io::copy(&mut cr, &mut sw);
    let down = async {
        let mut passed = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let n = n.min((limit - passed) as usize);
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
            passed += n as u64;
            if passed >= limit {
                return;
            }
        }
    };
    // Either direction ending drops both sockets: a cut, not a half-close.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
