//! Operations seen only by their owner, over real gRPC: the Execution and
//! Operations services served in-process on a Unix socket, two identities
//! set by a test-only interceptor standing in for the authentication
//! layer (the production binary has no way to pick an identity from
//! metadata). Each identity's operation is an action-cache hit recorded as
//! the Execute path does, so no casd or worker is needed.

use std::sync::Arc;

use rbe_auth::{Identity, Via};
use rbe_proto::longrunning::{
    operations_client::OperationsClient, operations_server::OperationsServer,
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    WaitOperationRequest,
};
use rbe_proto::reapi::{
    execution_client::ExecutionClient, execution_server::ExecutionServer, ExecuteResponse,
    WaitExecutionRequest,
};
use rbe_sched::ActionKey;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use super::execution::ExecutionService;
use super::handles::Origin;
use super::operations::OperationsService;
use super::{rpc_status, Exec};
use crate::proxy::{relay::StreamLimits, Upstream};

const WHO: &str = "x-test-identity";

/// Stands in for authentication: the identity named in `x-test-identity`.
#[allow(clippy::result_large_err)]
fn identify(mut req: Request<()>) -> Result<Request<()>, Status> {
    let who = req
        .metadata()
        .get(WHO)
        .and_then(|v| v.to_str().ok())
        .map(|n| Identity::new(n, Via::Token));
    if let Some(who) = who {
        req.extensions_mut().insert(who);
    }
    Ok(req)
}

fn hit(exec: &Exec, owner: &str, n: u8) -> String {
    let digest = rbe_proto::reapi::Digest {
        hash: format!("{n:064x}"),
        size_bytes: 1,
    };
    exec.record_hit(
        ActionKey {
            instance: "ci".into(),
            action: format!("sha256:{n:064x}/1"),
        },
        Origin {
            owner: Identity::new(owner, Via::Token),
            instance: "ci".into(),
            action_digest: digest,
            digest_function: 1,
        },
        "",
        ExecuteResponse {
            status: Some(rpc_status(Code::Ok, "")),
            cached_result: true,
            ..Default::default()
        },
    )
}

fn as_who<T>(msg: T, who: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(w) = who {
        r.metadata_mut()
            .insert(WHO, w.parse().unwrap_or_else(|_| panic!("{w}")));
    }
    r
}

struct Served {
    ch: Channel,
    _dir: tempfile::TempDir,
}

async fn serve(exec: &Arc<Exec>) -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("frontend.sock");
    let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
    let router = tonic::transport::Server::builder()
        .add_service(ExecutionServer::with_interceptor(
            ExecutionService(Arc::clone(exec)),
            identify,
        ))
        .add_service(OperationsServer::with_interceptor(
            OperationsService(Arc::clone(exec)),
            identify,
        ));
    tokio::spawn(rbe_net::serve(
        router,
        rbe_net::Listener::Unix(listener),
        None,
        std::future::pending(),
    ));
    let ch = rbe_net::unix_channel(&sock).await.expect("channel");
    Served { ch, _dir: dir }
}

fn denied(r: Result<impl std::fmt::Debug, Status>, permission: &str) {
    match r {
        Ok(v) => panic!("allowed: {v:?}"),
        Err(st) => {
            assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
            assert!(st.message().contains(permission), "{st:?}");
        }
    }
}

#[tokio::test]
async fn another_identitys_operations_are_denied_and_not_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing here reaches casd: the channels connect lazily.
    let upstream = Upstream::connect(
        &dir.path().join("no-casd.sock"),
        4 << 20,
        StreamLimits::for_tests(),
    )
    .await
    .expect("channels");
    let exec = Exec::new(
        upstream,
        rbe_config::Execution::default(),
        crate::access::Access::builtin(),
    );
    let alices = hit(&exec, "alice", 1);
    let bobs = hit(&exec, "bob", 2);
    let s = serve(&exec).await;
    let ops = || OperationsClient::new(s.ch.clone());

    // Alice sees hers.
    let op = ops()
        .get_operation(as_who(
            GetOperationRequest {
                name: alices.clone(),
            },
            Some("alice"),
        ))
        .await
        .expect("alice reads her own")
        .into_inner();
    assert!(op.done);
    // Bob, and an anonymous caller, do not.
    for who in [Some("bob"), None] {
        let get = GetOperationRequest {
            name: alices.clone(),
        };
        denied(
            ops().get_operation(as_who(get, who)).await,
            "operations-read",
        );
        let wait = WaitOperationRequest {
            name: alices.clone(),
            timeout: None,
        };
        denied(
            ops().wait_operation(as_who(wait, who)).await,
            "operations-read",
        );
        let wait = WaitExecutionRequest {
            name: alices.clone(),
        };
        denied(
            ExecutionClient::new(s.ch.clone())
                .wait_execution(as_who(wait, who))
                .await
                .map(|_| ()),
            "operations-read",
        );
        let cancel = CancelOperationRequest {
            name: alices.clone(),
        };
        denied(
            ops().cancel_operation(as_who(cancel, who)).await,
            "operations-cancel",
        );
        let delete = DeleteOperationRequest {
            name: alices.clone(),
        };
        denied(
            ops().delete_operation(as_who(delete, who)).await,
            "operations-cancel",
        );
    }
    // Each lists only its own.
    let list = |who: Option<&'static str>| {
        let mut c = ops();
        async move {
            let req = ListOperationsRequest {
                name: "ci/operations".into(),
                ..Default::default()
            };
            c.list_operations(as_who(req, who))
                .await
                .expect("ListOperations")
                .into_inner()
                .operations
                .into_iter()
                .map(|o| o.name)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(Some("alice")).await, std::slice::from_ref(&alices));
    assert_eq!(list(Some("bob")).await, std::slice::from_ref(&bobs));
    assert!(list(None).await.is_empty());
    // Bob's refused delete left Alice's operation; hers works.
    ops()
        .delete_operation(as_who(
            DeleteOperationRequest {
                name: alices.clone(),
            },
            Some("alice"),
        ))
        .await
        .expect("alice deletes her own");
    let gone = ops()
        .get_operation(as_who(GetOperationRequest { name: alices }, Some("alice")))
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    assert_eq!(list(Some("bob")).await, [bobs]);
}
