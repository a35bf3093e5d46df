//! Who may do what, through the real frontend: callers from the network
//! need credentials, each RPC needs its permission on its instance,
//! Capabilities tells a caller what it may do, action-cache writes and
//! refusals are logged with the client, and a revoked token stops working
//! on reload without dropping anyone's streams.
//!
//! "From the network" means through the host's own non-loopback address
//! (the frontend listens there too): the peer is then not local. Tests
//! skip, saying why, on a host without one.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rbe_proto::reapi::{
    action_cache_client::ActionCacheClient, capabilities_client::CapabilitiesClient, ActionResult,
    GetActionResultRequest, GetCapabilitiesRequest, UpdateActionResultRequest,
};
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::grpc::{network_ip, Grpc, WithToken};
use rbe_testkit::{client, exec, free_port, skip, Stack};
use tonic::transport::Channel;
use tonic::Code;

/// A stack whose frontend also listens on the host's network address, with
/// `[auth]` from `auth_toml` (the tokens file is `<tmp>/tokens`).
struct Net {
    stack: Stack,
    network: String,
    tokens: PathBuf,
    issued: Vec<(String, String)>,
}

/// Starts with tokens issued to `names` beforehand.
async fn start(auth_toml: &str, names: &[&str]) -> Option<Net> {
    let Some(ip) = network_ip() else {
        skip("this host has no non-loopback address to call the frontend from the network");
        return None;
    };
    let tokens_dir = tempfile::Builder::new()
        .prefix("rbe-auth-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let tokens = tokens_dir.join("tokens");
    let network = match ip {
        IpAddr::V4(v4) => format!("{v4}:{}", free_port()),
        IpAddr::V6(v6) => format!("[{v6}]:{}", free_port()),
    };
    // The loopback address stays (the harness checks health there); the
    // drop-in's list replaces the layout's, so both are named.
    let frontend = format!(
        "[listen]\ngrpc = [\"@ADDR@\", \"{network}\"]\n[auth]\ntokens = \"{}\"\n{auth_toml}",
        tokens.display()
    );
    let issued = names
        .iter()
        .map(|n| ((*n).to_owned(), issue(&tokens, n)))
        .collect();
    let stack = Stack::start_configured("", &frontend, "").await;
    Some(Net {
        stack,
        network,
        tokens,
        issued,
    })
}

fn issue(file: &std::path::Path, name: &str) -> String {
    let (secret, _) = rbe_auth::tokens::create(
        file,
        name,
        None,
        SystemTime::now(),
        rbe_auth::tokens::NewFileOwner { gid: None },
    )
    .expect("create token");
    secret.expose().to_owned()
}

impl Net {
    fn network_channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.network))
            .expect("uri")
            .connect_lazy()
    }

    /// The token issued to `name` at start.
    fn token(&self, name: &str) -> String {
        self.issued
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .expect("a token issued at start")
    }

    fn as_(&self, token: &str) -> WithToken {
        WithToken::bearer(self.network_channel(), token)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.stack.tmp.path().join("frontend.log")).unwrap_or_default()
    }

    fn reload(&self) {
        let pid = self.stack.frontend_pid().expect("frontend runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
    }
}

fn result_for(n: u8) -> (Digest, UpdateActionResultRequest) {
    let ad = Digest::of(
        DigestFunction::Sha256,
        format!("action {n} {:?}", SystemTime::now()).as_bytes(),
    );
    let req = UpdateActionResultRequest {
        instance_name: String::new(),
        action_digest: Some(ad.to_reapi()),
        action_result: Some(ActionResult {
            exit_code: 0,
            stdout_raw: b"hello".to_vec(),
            ..Default::default()
        }),
        digest_function: DigestFunction::Sha256.to_reapi(),
        ..Default::default()
    };
    (ad, req)
}

async fn write_ac<C: Grpc>(ch: &C, req: UpdateActionResultRequest) -> Result<(), tonic::Status> {
    ActionCacheClient::new(ch.clone())
        .update_action_result(req)
        .await
        .map(|_| ())
}

async fn read_ac<C: Grpc>(ch: &C, ad: &Digest) -> Result<ActionResult, tonic::Status> {
    ActionCacheClient::new(ch.clone())
        .get_action_result(GetActionResultRequest {
            action_digest: Some(ad.to_reapi()),
            digest_function: DigestFunction::Sha256.to_reapi(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// (update_enabled, exec_enabled) as Capabilities offers them to `ch`.
async fn offered<C: Grpc>(ch: &C) -> (bool, bool) {
    let caps = CapabilitiesClient::new(ch.clone())
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .expect("capabilities")
        .into_inner();
    let update = caps
        .cache_capabilities
        .and_then(|c| c.action_cache_update_capabilities)
        .is_some_and(|u| u.update_enabled);
    let exec = caps.execution_capabilities.is_some_and(|e| e.exec_enabled);
    (update, exec)
}

fn assert_code(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, words: &[&str]) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), code, "{e:?}");
    for w in words {
        assert!(e.message().contains(w), "{w:?} not in {:?}", e.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_callers_need_credentials_and_each_rpc_its_permission() {
    let grant = "[[auth.grants]]\nclients = [\"ci-bot\"]\ninstances = [\"*\"]\nrole = \"ci\"\n";
    let Some(mut net) = start(grant, &["alice", "ci-bot"]).await else {
        return;
    };
    let alice = net.token("alice");
    let ci = net.token("ci-bot");
    let anon = net.network_channel();
    let blob = b"some blob".to_vec();
    let d = Digest::of(DigestFunction::Sha256, &blob);

    // No credentials from the network: UNAUTHENTICATED, saying how.
    assert_code(
        client::find_missing(&anon, "", &[d]).await,
        Code::Unauthenticated,
        &["remote_header"],
    );
    let (ad, req) = result_for(1);
    assert_code(
        write_ac(&anon, req.clone()).await,
        Code::Unauthenticated,
        &[],
    );
    assert_code(
        exec::run_command(&anon, &["true"], &[], 60, None).await,
        Code::Unauthenticated,
        &[],
    );
    // A wrong token, a malformed header: UNAUTHENTICATED, the token never echoed.
    let wrong = "rbe_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let e = client::find_missing(&net.as_(wrong), "", &[d])
        .await
        .expect_err("wrong token");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(!e.message().contains(wrong), "{e:?}");
    assert_code(
        client::find_missing(
            &WithToken::raw(net.network_channel(), "Basic Zm9vOmJhcg=="),
            "",
            &[d],
        )
        .await,
        Code::Unauthenticated,
        &[],
    );
    let huge = format!("Bearer {}", "x".repeat(8 << 10));
    let r = client::find_missing(&WithToken::raw(net.network_channel(), &huge), "", &[d]).await;
    assert!(r.is_err(), "an 8 KiB authorization header was accepted");

    // Two authorization values: which one counts would be a guess.
    let mut twice = tonic::Request::new(rbe_proto::reapi::FindMissingBlobsRequest {
        blob_digests: vec![d.to_reapi()],
        ..Default::default()
    });
    for v in [format!("Bearer {alice}"), format!("Bearer {ci}")] {
        twice
            .metadata_mut()
            .append("authorization", v.parse().expect("value"));
    }
    let r =
        rbe_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient::new(
            net.network_channel(),
        )
        .find_missing_blobs(twice)
        .await;
    assert_code(
        r.map(|_| ()),
        Code::Unauthenticated,
        &["several authorization"],
    );

    // alice (developer by default): CAS and execute, read the AC, not write it.
    let alice_ch = net.as_(&alice);
    assert_eq!(offered(&alice_ch).await, (false, true));
    client::batch_update(&alice_ch, "", &[(d, blob.clone())])
        .await
        .expect("cas write");
    assert!(client::find_missing(&alice_ch, "", &[d])
        .await
        .expect("find")
        .is_empty());
    assert_code(
        write_ac(&alice_ch, req.clone()).await,
        Code::PermissionDenied,
        &["alice", "ac-write"],
    );
    let r = exec::run_command(&alice_ch, &["true"], &[], 60, None)
        .await
        .expect("execute");
    assert_eq!(r.result.map(|r| r.exit_code), Some(0));
    // Trailing whitespace and a lower-case scheme are what HTTP allows.
    let sloppy = WithToken::raw(net.network_channel(), &format!("bearer {alice}  "));
    assert!(client::find_missing(&sloppy, "", &[d]).await.is_ok());

    // ci-bot (granted ci): writes the action cache; alice then reads it.
    let ci_ch = net.as_(&ci);
    assert_eq!(offered(&ci_ch).await, (true, true));
    write_ac(&ci_ch, req)
        .await
        .expect("ci writes the action cache");
    let r = read_ac(&alice_ch, &ad).await.expect("alice reads");
    assert!(
        r.stdout_digest.is_some() || r.stdout_raw == b"hello",
        "{r:?}"
    );

    // The journal (stderr here) names who did and who was refused.
    let log = net.log();
    let written = log
        .lines()
        .find(|l| l.contains("action cache written by a client"))
        .unwrap_or_else(|| panic!("no audit line for the write:\n{log}"));
    assert!(
        written.contains("client=ci-bot") && written.contains(&ad.hex()),
        "{written}"
    );
    let refused = log
        .lines()
        .find(|l| l.contains("refused: permission denied"))
        .unwrap_or_else(|| panic!("no audit line for the refusal:\n{log}"));
    assert!(
        refused.contains("client=alice") && refused.contains("ac-write"),
        "{refused}"
    );
    assert!(log.contains("refused: not authenticated"), "{log}");
    // Loopback callers without credentials keep today's local rights.
    let local = net.stack.channel();
    assert_eq!(offered(&local).await, (true, true));
    assert!(net.stack.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_finds_cached_results_but_cannot_write_or_execute() {
    let grant = "[[auth.grants]]\nclients = [\"ci-bot\"]\ninstances = [\"*\"]\nrole = \"ci\"\n";
    let Some(mut net) = start(
        &format!("authenticated_role = \"reader\"\n{grant}"),
        &["dev-ro", "ci-bot"],
    )
    .await
    else {
        return;
    };
    let reader = net.as_(&net.token("dev-ro"));
    let ci = net.as_(&net.token("ci-bot"));
    let (ad, req) = result_for(2);
    write_ac(&ci, req.clone()).await.expect("ci writes");
    assert_eq!(
        read_ac(&reader, &ad).await.expect("reader reads").exit_code,
        0
    );
    assert_eq!(offered(&reader).await, (false, false));
    assert_code(
        write_ac(&reader, req).await,
        Code::PermissionDenied,
        &["ac-write"],
    );
    let blob = b"reader's blob".to_vec();
    let d = Digest::of(DigestFunction::Sha256, &blob);
    assert_code(
        client::batch_update(&reader, "", &[(d, blob)]).await,
        Code::PermissionDenied,
        &["cas-write"],
    );
    let execute = rbe_proto::reapi::execution_client::ExecutionClient::new(reader.clone())
        .execute(rbe_proto::reapi::ExecuteRequest {
            action_digest: Some(ad.to_reapi()),
            digest_function: DigestFunction::Sha256.to_reapi(),
            ..Default::default()
        })
        .await;
    assert_code(execute.map(|_| ()), Code::PermissionDenied, &["execute"]);
    assert!(net.stack.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_on_reload_and_no_stream_is_dropped() {
    let Some(mut net) = start("", &["alice", "bob"]).await else {
        return;
    };
    let alice = net.token("alice");
    let bob = net.token("bob");
    let (alice_ch, bob_ch) = (net.as_(&alice), net.as_(&bob));
    // Both run an action that outlasts the reload.
    let slow = |ch: WithToken| {
        tokio::spawn(async move { exec::run_command(&ch, &["sleep", "3"], &[], 60, None).await })
    };
    let (a, b) = (slow(alice_ch.clone()), slow(bob_ch.clone()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    rbe_auth::tokens::revoke(&net.tokens, "alice").expect("revoke");
    net.reload();
    // The reload is applied once the new rules refuse alice.
    let d = Digest::of(DigestFunction::Sha256, b"x");
    let t = std::time::Instant::now();
    while client::find_missing(&alice_ch, "", &[d]).await.is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "alice still works after the reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_code(
        client::find_missing(&alice_ch, "", &[d]).await,
        Code::Unauthenticated,
        &[],
    );
    assert!(
        client::find_missing(&bob_ch, "", &[d]).await.is_ok(),
        "bob was cut off"
    );
    // Streams admitted before the reload finish, alice's included.
    for (who, h) in [("alice", a), ("bob", b)] {
        let r = h
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("{who}'s Execute: {e:?}"));
        assert_eq!(r.result.map(|r| r.exit_code), Some(0), "{who}");
    }
    assert!(net.stack.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_every_stream() {
    let limits = "[limits]\nmax_streams_per_client = 1\n";
    let Some(mut net) = start(limits, &["alice", "bob"]).await else {
        return;
    };
    let (alice, bob) = (net.as_(&net.token("alice")), net.as_(&net.token("bob")));
    let blob = rbe_testkit::pseudo_random(4 << 20, 7);
    let d = Digest::of(DigestFunction::Sha256, &blob);
    client::write(&alice, "", &d, &blob, 1 << 20)
        .await
        .expect("upload");
    let read = |ch: &WithToken| {
        let name =
            rbe_proto::resource::read_name("", &d, rbe_proto::resource::Compressor::Identity);
        let mut c = rbe_proto::bytestream::byte_stream_client::ByteStreamClient::new(ch.clone());
        async move {
            c.read(rbe_proto::bytestream::ReadRequest {
                resource_name: name,
                ..Default::default()
            })
            .await
        }
    };
    // alice's first Read, left unread, holds her one stream.
    let mut held = read(&alice).await.expect("first read").into_inner();
    held.message().await.expect("a first piece");
    let e = read(&alice).await.expect_err("a second stream");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_streams_per_client"), "{e:?}");
    assert!(
        rbe_proto::status::decode_details(&e).is_some(),
        "no RetryInfo: {e:?}"
    );
    // bob is not affected.
    let mut s = read(&bob).await.expect("bob reads").into_inner();
    let mut got = 0;
    while let Some(m) = s.message().await.expect("bob's data") {
        got += m.data.len();
    }
    assert_eq!(got, blob.len());
    // Once alice lets go, she may read again.
    drop(held);
    let t = std::time::Instant::now();
    loop {
        match read(&alice).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(t.elapsed() < Duration::from_secs(30), "never released");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(net.stack.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_identity_cannot_see_or_cancel_the_firsts_operations() {
    use rbe_proto::longrunning::{
        operations_client::OperationsClient, CancelOperationRequest, GetOperationRequest,
        ListOperationsRequest,
    };
    let Some(mut net) = start("", &["alice", "bob"]).await else {
        return;
    };
    let (alice, bob) = (net.as_(&net.token("alice")), net.as_(&net.token("bob")));
    // alice runs something slow and learns its operation's name.
    let a = alice.clone();
    let run = tokio::spawn(async move {
        exec::run_command(&a, &["sleep", "3"], &[], 60, Some("alice-build")).await
    });
    let t = std::time::Instant::now();
    let name = loop {
        let page = OperationsClient::new(alice.clone())
            .list_operations(ListOperationsRequest {
                name: "operations".into(),
                ..Default::default()
            })
            .await
            .expect("alice lists")
            .into_inner();
        if let Some(op) = page.operations.first() {
            break op.name.clone();
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "alice's operation never listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // bob lists nothing of hers, and may neither read nor cancel it.
    let page = OperationsClient::new(bob.clone())
        .list_operations(ListOperationsRequest {
            name: "operations".into(),
            ..Default::default()
        })
        .await
        .expect("bob lists")
        .into_inner();
    assert!(page.operations.iter().all(|o| o.name != name), "{page:?}");
    let get = OperationsClient::new(bob.clone())
        .get_operation(GetOperationRequest { name: name.clone() })
        .await;
    assert_code(
        get.map(|_| ()),
        Code::PermissionDenied,
        &["operations-read"],
    );
    let cancel = OperationsClient::new(bob.clone())
        .cancel_operation(CancelOperationRequest { name: name.clone() })
        .await;
    assert_code(
        cancel.map(|_| ()),
        Code::PermissionDenied,
        &["operations-cancel"],
    );
    // alice's action ran to the end.
    let r = run.await.expect("join").expect("alice's result");
    assert_eq!(r.result.map(|r| r.exit_code), Some(0));
    let log = net.log();
    assert!(
        log.lines()
            .any(|l| l.contains("refused: permission denied") && l.contains("client=bob")),
        "{log}"
    );
    assert!(net.stack.alive());
}

type Upload = (
    tokio::sync::mpsc::Sender<rbe_proto::bytestream::WriteRequest>,
    tokio::task::JoinHandle<
        Result<tonic::Response<rbe_proto::bytestream::WriteResponse>, tonic::Status>,
    >,
);

/// Starts a ByteStream Write of `blob` (upload `n`), sends its first KiB
/// and keeps it open.
fn start_upload(ch: &WithToken, blob: &[u8], n: u32) -> Upload {
    let d = Digest::of(DigestFunction::Sha256, blob);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let name = rbe_proto::resource::write_name(
        "",
        &format!("7b4c1f5e-0000-4000-8000-{n:012}"),
        &d,
        rbe_proto::resource::Compressor::Identity,
    );
    tx.try_send(rbe_proto::bytestream::WriteRequest {
        resource_name: name,
        write_offset: 0,
        finish_write: false,
        data: blob[..1024].to_vec(),
    })
    .expect("first piece");
    let mut c = rbe_proto::bytestream::byte_stream_client::ByteStreamClient::new(ch.clone());
    let h = tokio::spawn(async move {
        c.write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    (tx, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_every_upload_byte() {
    let limits = "[limits]\nmax_upload_bytes_per_client = \"1MiB\"\n";
    let Some(mut net) = start(limits, &["alice", "bob"]).await else {
        return;
    };
    let (alice, bob) = (net.as_(&net.token("alice")), net.as_(&net.token("bob")));
    // alice starts a 2 MiB upload and keeps it open: more than the limit
    // alone, which is allowed while she has nothing else in flight.
    let big = rbe_testkit::pseudo_random(2 << 20, 9);
    let mut n = 1;
    let (mut tx, mut upload) = start_upload(&alice, &big, n);
    let small = b"a small blob".to_vec();
    let sd = Digest::of(DigestFunction::Sha256, &small);
    let t = std::time::Instant::now();
    let e = loop {
        // A small upload of hers still in flight when the big one arrived
        // refuses the big one: start it again.
        if upload.is_finished() {
            n += 1;
            (tx, upload) = start_upload(&alice, &big, n);
        }
        match client::batch_update(&alice, "", &[(sd, small.clone())]).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "never refused:\n{}",
                    net.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_upload_bytes_per_client"), "{e:?}");
    assert!(
        rbe_proto::status::decode_details(&e).is_some(),
        "no RetryInfo: {e:?}"
    );
    // bob is not affected.
    assert_eq!(
        client::batch_update(&bob, "", &[(sd, small.clone())])
            .await
            .expect("bob"),
        vec![0]
    );
    // alice finishes; then she may upload again.
    tx.send(rbe_proto::bytestream::WriteRequest {
        resource_name: String::new(),
        write_offset: 1024,
        finish_write: true,
        data: big[1024..].to_vec(),
    })
    .await
    .expect("rest");
    drop(tx);
    upload.await.expect("join").expect("alice's upload");
    assert_eq!(
        client::batch_update(&alice, "", &[(sd, small)])
            .await
            .expect("alice again"),
        vec![0]
    );
    assert!(net.stack.alive());
}
