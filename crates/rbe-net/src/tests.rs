use super::*;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn health_router() -> tonic::transport::server::Router {
    let (_reporter, service) = tonic_health::server::health_reporter();
    tune_server(tonic::transport::Server::builder()).add_service(service)
}

async fn check(channel: tonic::transport::Channel) -> ServingStatus {
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    resp.into_inner().status()
}

/// Serves health on `listener`; returns the shutdown trigger and the task.
fn spawn_health(
    listener: Listener,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(health_router(), listener, None, async {
        let _ = rx.await;
    }));
    (tx, task)
}

fn unix(path: &Path) -> Bind {
    Bind::Unix {
        path: path.to_owned(),
        mode: 0o600,
    }
}

#[tokio::test]
async fn health_over_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    // The parent directory does not exist yet.
    let path = dir.path().join("run/rbe/casd.sock");
    let listener = from_activation_or_bind(&mut Vec::new(), "casd", unix(&path)).unwrap();
    assert_eq!(listener.local_addr_string(), path.display().to_string());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o600);

    let (stop, task) = spawn_health(listener);
    let channel = unix_channel(&path).await.unwrap();
    assert_eq!(check(channel).await, ServingStatus::Serving);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn lazy_channel_connects_once_server_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.sock");
    let channel = unix_channel(&path).await.unwrap();
    let listener = from_activation_or_bind(&mut Vec::new(), "x", unix(&path)).unwrap();
    let (stop, task) = spawn_health(listener);
    assert_eq!(check(channel).await, ServingStatus::Serving);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn health_over_tcp() {
    let listener =
        from_activation_or_bind(&mut Vec::new(), "grpc", Bind::Tcp("127.0.0.1:0".into())).unwrap();
    let addr = listener.local_addr_string();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let (stop, task) = spawn_health(listener);
    let channel =
        tune_endpoint(tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap())
            .connect()
            .await
            .unwrap();
    assert_eq!(check(channel).await, ServingStatus::Serving);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "closing a listener leaves its file behind");
    let listener = from_activation_or_bind(&mut Vec::new(), "x", unix(&path)).unwrap();
    let (stop, task) = spawn_health(listener);
    assert_eq!(
        check(unix_channel(&path).await.unwrap()).await,
        ServingStatus::Serving
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn live_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let _live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let err = from_activation_or_bind(&mut Vec::new(), "x", unix(&path)).unwrap_err();
    assert!(matches!(err, NetError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("already in use"));
}

#[tokio::test]
async fn regular_file_is_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    std::fs::write(&path, "data").unwrap();
    let err = from_activation_or_bind(&mut Vec::new(), "x", unix(&path)).unwrap_err();
    assert!(matches!(err, NetError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
}

#[tokio::test]
async fn activated_socket_is_preferred() {
    let dir = tempfile::tempdir().unwrap();
    let activated_path = dir.path().join("activated.sock");
    let fallback_path = dir.path().join("fallback.sock");
    let tcp = OwnedFd::from(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let unix_fd = OwnedFd::from(std::os::unix::net::UnixListener::bind(&activated_path).unwrap());
    let mut fds = vec![("grpc".to_owned(), tcp), ("casd".to_owned(), unix_fd)];

    let listener = from_activation_or_bind(&mut fds, "casd", unix(&fallback_path)).unwrap();
    assert_eq!(
        listener.local_addr_string(),
        activated_path.display().to_string()
    );
    assert!(!fallback_path.exists());
    assert_eq!(fds.len(), 1);
    assert_eq!(fds[0].0, "grpc");

    let (stop, task) = spawn_health(listener);
    assert_eq!(
        check(unix_channel(&activated_path).await.unwrap()).await,
        ServingStatus::Serving
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    let all = take_all_activated(&mut fds, "grpc").unwrap();
    assert!(matches!(all.as_slice(), [Listener::Tcp(_)]));
    assert!(fds.is_empty());
}

#[tokio::test]
async fn activated_socket_of_wrong_kind_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let tcp = OwnedFd::from(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let mut fds = vec![("casd".to_owned(), tcp)];
    let err = from_activation_or_bind(&mut fds, "casd", unix(&dir.path().join("s"))).unwrap_err();
    assert!(matches!(err, NetError::Activation { .. }), "{err}");

    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut fds = vec![("casd".to_owned(), OwnedFd::from(a))];
    let err = from_activation_or_bind(&mut fds, "casd", unix(&dir.path().join("s"))).unwrap_err();
    assert!(err.to_string().contains("not a listening socket"), "{err}");

    let file = OwnedFd::from(std::fs::File::open(dir.path()).unwrap());
    let mut fds = vec![("casd".to_owned(), file)];
    let err = from_activation_or_bind(&mut fds, "casd", unix(&dir.path().join("s"))).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
}

#[test]
fn outside_runtime_is_an_error() {
    let err =
        from_activation_or_bind(&mut Vec::new(), "x", Bind::Tcp("127.0.0.1:0".into())).unwrap_err();
    assert!(matches!(err, NetError::NoRuntime));
}
