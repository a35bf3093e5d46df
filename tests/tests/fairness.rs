//! Fair sharing end to end (issue 11): one client that queues a lot of
//! work first does not starve the next one, and one client cannot fill
//! the queue on its own. Real binaries over real sockets (`Stack`); the
//! assertions are about shares and status codes, never wall time.
//!
//! Until identities exist, the two "clients" are two Bazel invocations of
//! the same (anonymous) caller, told apart by the invocation id in their
//! RequestMetadata; the scheduler shares a client's slots across its
//! invocations the same way it shares slots across clients. To run the
//! same test with two identities, give [`Client::tag`] their credentials.

use std::time::Duration;

use prost::Message;
use rbe_proto::longrunning::{
    operation, operations_client::OperationsClient, CancelOperationRequest, Operation,
};
use rbe_proto::reapi::{
    execution_client::ExecutionClient, execution_stage, Action, Command, Directory,
    ExecuteOperationMetadata, ExecuteRequest, ExecuteResponse, RequestMetadata,
};
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::{client, Stack};
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

const F: DigestFunction = DigestFunction::Sha256;
/// Bounds a hang only: the slowest machine takes a fraction of it.
const HANG: Duration = Duration::from_secs(900);
const TWO_SLOTS: &str = "[worker]\nslots = 2\n";
use execution_stage::Value as S;

/// A caller with its own connection.
struct Client {
    invocation: String,
    ch: Channel,
    token: Option<String>,
}

impl Client {
    fn new(stack: &Stack, invocation: &str) -> Client {
        Client {
            invocation: invocation.into(),
            ch: stack.channel(),
            token: None,
        }
    }

    /// A client identified by a bearer token.
    fn with_token(stack: &Stack, invocation: &str, token: String) -> Client {
        Client {
            token: Some(token),
            ..Client::new(stack, invocation)
        }
    }

    /// `msg` as this client sends it.
    fn tag<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        let md = RequestMetadata {
            tool_invocation_id: self.invocation.clone(),
            ..Default::default()
        };
        req.metadata_mut().insert_bin(
            "build.bazel.remote.execution.v2.requestmetadata-bin",
            tonic::metadata::MetadataValue::from_bytes(&md.encode_to_vec()),
        );
        if let Some(t) = &self.token {
            let v = format!("Bearer {t}").parse().expect("header value");
            req.metadata_mut().insert("authorization", v);
        }
        req
    }

    async fn execute(&self, a: &Digest) -> Result<Streaming<Operation>, tonic::Status> {
        let req = ExecuteRequest {
            action_digest: Some(a.to_reapi()),
            digest_function: F.to_reapi(),
            skip_cache_lookup: true,
            ..Default::default()
        };
        ExecutionClient::new(self.ch.clone())
            .execute(self.tag(req))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Executes `a` and returns its stream once the action is queued.
    async fn queue(&self, a: &Digest) -> (Streaming<Operation>, Operation) {
        let mut s = self.execute(a).await.expect("Execute");
        let first = next(&mut s).await.expect("a first operation");
        assert_eq!(stage_of(&first), S::Queued as i32, "{first:?}");
        (s, first)
    }

    async fn cancel(&self, name: &str) {
        OperationsClient::new(self.ch.clone())
            .cancel_operation(self.tag(CancelOperationRequest { name: name.into() }))
            .await
            .expect("CancelOperation");
    }
}

/// Uploads a command running `argv` and one action per salt; returns the
/// action digests.
async fn actions(ch: &Channel, argv: &[&str], salts: &[String]) -> Vec<Digest> {
    let command = Command {
        arguments: argv.iter().map(|s| (*s).to_owned()).collect(),
        environment_variables: vec![rbe_proto::reapi::command::EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let root = Directory::default().encode_to_vec();
    let (cd, rd) = (Digest::of(F, &command), Digest::of(F, &root));
    let mut blobs = vec![(cd, command), (rd, root)];
    let mut out = Vec::new();
    for salt in salts {
        let action = Action {
            command_digest: Some(cd.to_reapi()),
            input_root_digest: Some(rd.to_reapi()),
            salt: salt.as_bytes().to_vec(),
            ..Default::default()
        }
        .encode_to_vec();
        let ad = Digest::of(F, &action);
        out.push(ad);
        blobs.push((ad, action));
    }
    for chunk in blobs.chunks(200) {
        let codes = client::batch_update(ch, "", chunk)
            .await
            .expect("BatchUpdateBlobs");
        assert!(codes.iter().all(|&c| c == 0), "{codes:?}");
    }
    out
}

fn salts(what: &str, n: usize) -> Vec<String> {
    let run = uuid::Uuid::new_v4();
    (0..n).map(|i| format!("{what}-{i}-{run}")).collect()
}

fn stage_of(op: &Operation) -> i32 {
    let md = op.metadata.as_ref().expect("metadata");
    ExecuteOperationMetadata::decode(md.value.as_slice())
        .expect("ExecuteOperationMetadata")
        .stage
}

async fn next(stream: &mut Streaming<Operation>) -> Option<Operation> {
    tokio::time::timeout(HANG, stream.message())
        .await
        .expect("an operation before the hang bound")
        .expect("stream ok")
}

/// Reads a stream until its operation reaches `stage`; its name.
async fn until_stage(stream: &mut Streaming<Operation>, stage: S) -> String {
    while let Some(op) = next(stream).await {
        if stage_of(&op) == stage as i32 {
            return op.name;
        }
        assert!(!op.done, "done before {stage:?}: {op:?}");
    }
    panic!("the stream ended before {stage:?}");
}

/// When the worker started the action the stream reports on, in
/// nanoseconds since the epoch.
async fn started_at(mut stream: Streaming<Operation>) -> i128 {
    while let Some(op) = next(&mut stream).await {
        if !op.done {
            continue;
        }
        let r = match op.result {
            Some(operation::Result::Response(any)) => {
                ExecuteResponse::decode(any.value.as_slice()).expect("ExecuteResponse")
            }
            other => panic!("done without a response: {other:?}"),
        };
        let code = r.status.as_ref().map_or(0, |s| s.code);
        assert_eq!(code, 0, "{:?}", r.status);
        let t = r
            .result
            .and_then(|r| r.execution_metadata)
            .and_then(|m| m.worker_start_timestamp)
            .expect("worker_start_timestamp");
        return i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    }
    panic!("the stream ended before a done operation");
}

/// Occupies both slots with sleeps until cancelled; returns their names.
async fn block_slots(c: &Client) -> Vec<String> {
    let sleeps = actions(
        &c.ch,
        &["/bin/sh", "-c", "exec sleep 600"],
        &salts("blocker", 2),
    )
    .await;
    let mut names = Vec::new();
    for a in &sleeps {
        let mut s = c.execute(a).await.expect("Execute");
        names.push(until_stage(&mut s, S::Executing).await);
        // Dropping the stream would cancel it: keep reading in the background.
        tokio::spawn(async move { while let Ok(Some(_)) = s.message().await {} });
    }
    names
}

/// Of the starts in time order, the share each client got while both still
/// had work queued: up to the last start of the client that ran out first.
fn shares(starts: &mut [(i128, usize)]) -> (usize, [usize; 2]) {
    starts.sort_unstable();
    let last = |who: usize| {
        starts
            .iter()
            .rposition(|&(_, c)| c == who)
            .expect("both clients ran something")
    };
    let window = last(0).min(last(1)) + 1;
    let mut n = [0usize; 2];
    for &(_, c) in &starts[..window] {
        n[c] += 1;
    }
    (window, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_queueing_500_each_share_two_slots_half_and_half() {
    let s = Stack::start_configured("", "", TWO_SLOTS).await;
    let clients = [Client::new(&s, "client-a"), Client::new(&s, "client-b")];
    share_two_slots(s, clients).await;
}

/// The same with two identities (bearer tokens) in one Bazel invocation:
/// the identity is what is shared fairly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_identities_queueing_500_each_share_two_slots_half_and_half() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tokens");
    let issue = |name: &str| {
        let (secret, _) = rbe_auth::tokens::create(
            &file,
            name,
            None,
            std::time::SystemTime::now(),
            rbe_auth::tokens::NewFileOwner { gid: None },
        )
        .expect("token");
        secret.expose().to_owned()
    };
    let (alice, bob) = (issue("alice"), issue("bob"));
    let auth = format!("[auth]\ntokens = {file:?}\n");
    let s = Stack::start_configured("", &auth, TWO_SLOTS).await;
    let clients = [
        Client::with_token(&s, "one-build", alice),
        Client::with_token(&s, "one-build", bob),
    ];
    share_two_slots(s, clients).await;
}

/// Both slots are held while the first client queues 500 actions, then the
/// second 500; once the slots free, each gets 40-60 % of the starts while
/// both still have work queued.
async fn share_two_slots(mut s: Stack, clients: [Client; 2]) {
    const EACH: usize = 500;
    let blockers = block_slots(&clients[0]).await;

    // The first client queues all its work before the second queues any:
    // in arrival order the second would wait for all of the first's.
    let mut runs = Vec::new();
    for (who, c) in clients.iter().enumerate() {
        let work = actions(&c.ch, &["/bin/true"], &salts(&c.invocation, EACH)).await;
        for a in &work {
            let (stream, _) = c.queue(a).await;
            runs.push(tokio::spawn(async move { (started_at(stream).await, who) }));
        }
    }
    for name in &blockers {
        clients[0].cancel(name).await;
    }
    let mut starts = Vec::new();
    for r in runs {
        starts.push(r.await.expect("join"));
    }
    assert_eq!(starts.len(), 2 * EACH);

    let (window, [a, b]) = shares(&mut starts);
    let share = |x: usize| x as f64 / window as f64;
    eprintln!(
        "while both had work queued: {window} starts, a {a} ({:.1} %), b {b} ({:.1} %)",
        100.0 * share(a),
        100.0 * share(b)
    );
    assert!(
        window >= EACH,
        "one client ran out after only {window} starts"
    );
    for (who, x) in [("a", a), ("b", b)] {
        assert!(
            (0.4..=0.6).contains(&share(x)),
            "client {who} got {x} of the {window} starts while both had work queued"
        );
    }
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_queue_limit_is_resource_exhausted_with_retry_info() {
    let mut s = Stack::start_configured(
        "",
        "[execution]\nmax_queued_per_client = 3\n",
        "[worker]\nslots = 1\n",
    )
    .await;
    let c = Client::new(&s, "greedy");
    let blocker = actions(&c.ch, &["/bin/sh", "-c", "exec sleep 600"], &salts("b", 1)).await;
    let mut bs = c.execute(&blocker[0]).await.expect("Execute");
    let blocker_name = until_stage(&mut bs, S::Executing).await;

    let work = actions(&c.ch, &["/bin/true"], &salts("w", 4)).await;
    let mut queued = Vec::new();
    for a in &work[..3] {
        queued.push(c.queue(a).await);
    }
    let st = c.execute(&work[3]).await.expect_err("over the limit");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(
        st.message().contains("execution.max_queued_per_client"),
        "the message names the limit: {st:?}"
    );
    let details = rbe_proto::status::decode_details(&st).expect("google.rpc.Status details");
    let ri = details
        .details
        .iter()
        .find(|d| d.type_url == "type.googleapis.com/google.rpc.RetryInfo")
        .unwrap_or_else(|| panic!("no RetryInfo in {details:?}"));
    let ri = rbe_proto::rpc::RetryInfo::decode(ri.value.as_slice()).expect("RetryInfo");
    let delay = ri.retry_delay.expect("retry_delay");
    assert!(delay.seconds > 0 || delay.nanos > 0, "{delay:?}");

    // A client's running work does not count: once one queued action
    // starts, the refused one is accepted, and everything runs.
    c.cancel(&blocker_name).await;
    let (stream, _) = queued.remove(0);
    started_at(stream).await;
    let last = c.execute(&work[3]).await.expect("room again");
    started_at(last).await;
    for (stream, _) in queued {
        started_at(stream).await;
    }
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_client_limit_applies_on_reload() {
    let mut s = Stack::start_configured("", "", "[worker]\nslots = 1\n").await;
    let c = Client::new(&s, "reloaded");
    let blocker = actions(&c.ch, &["/bin/sh", "-c", "exec sleep 600"], &salts("b", 1)).await;
    let mut bs = c.execute(&blocker[0]).await.expect("Execute");
    let blocker_name = until_stage(&mut bs, S::Executing).await;
    let work = actions(&c.ch, &["/bin/true"], &salts("w", 3)).await;
    let mut queued = Vec::new();
    for a in &work[..2] {
        queued.push(c.queue(a).await.0);
    }

    let config_dir = &s.casd.layout.config_dir;
    std::fs::write(
        config_dir.join("frontend.toml.d").join("60-reload.toml"),
        "[execution]\nmax_queued_per_client = 2\n",
    )
    .expect("drop-in");
    let pid = s.frontend_pid().expect("frontend runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    let log = s.tmp.path().join("frontend.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("configuration reloaded")
    {
        assert!(std::time::Instant::now() < deadline, "no reload logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = c.execute(&work[2]).await.expect_err("over the new limit");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(st.message().contains("max_queued_per_client"), "{st:?}");

    c.cancel(&blocker_name).await;
    for stream in queued {
        started_at(stream).await;
    }
    assert!(s.alive());
}
