//! Remote execution end to end: Execution and Operations in rbe-frontend,
//! actions run by rbe-workerd in its sandbox, inputs and outputs through
//! rbe-casd. Real binaries, real gRPC, a real client; nothing mocked.
//!
//! Every test starts its own stack, so action-cache state never leaks
//! between tests. Processes an action leaves behind are found with
//! `pgrep -f` on a marker unique to the test (`exec -a <marker> sleep N`),
//! so tests running in parallel (or anything else on the host) cannot
//! confuse each other.

use std::process::Command as HostCommand;
use std::time::{Duration, Instant};

use prost::Message;
use rbe_proto::longrunning::{
    operation, operations_client::OperationsClient, CancelOperationRequest, GetOperationRequest,
    ListOperationsRequest, Operation,
};
use rbe_proto::reapi::{
    self, action_cache_client::ActionCacheClient, capabilities_client::CapabilitiesClient,
    command::EnvironmentVariable, execution_client::ExecutionClient, execution_stage, Action,
    ActionResult, Command, Directory, DirectoryNode, ExecuteOperationMetadata, ExecuteRequest,
    ExecuteResponse, FileNode, GetActionResultRequest, GetCapabilitiesRequest, SymlinkNode, Tree,
    WaitExecutionRequest,
};
use rbe_proto::rpc::PreconditionFailure;
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::{client, Stack};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// PATH given to every action that names programs without a slash.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// workerd's default `sandbox.max_output_bytes`.
const MAX_OUTPUT: i64 = 64 << 20;
/// How long any single Execute may take before the test gives up.
const EXECUTE_LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Input trees and actions
// ---------------------------------------------------------------------------

/// One entry of an input tree, as the test describes it. Names are taken as
/// given (no validation, duplicates kept) so bad trees can be built.
#[derive(Clone, Debug)]
enum Node {
    File { data: Vec<u8>, executable: bool },
    Dir(Vec<(String, Node)>),
    Symlink(String),
}

fn file(name: &str, data: &str) -> (String, Node) {
    (
        name.to_string(),
        Node::File {
            data: data.as_bytes().to_vec(),
            executable: false,
        },
    )
}

fn exe(name: &str, data: &str) -> (String, Node) {
    (
        name.to_string(),
        Node::File {
            data: data.as_bytes().to_vec(),
            executable: true,
        },
    )
}

fn dir(name: &str, entries: Vec<(String, Node)>) -> (String, Node) {
    (name.to_string(), Node::Dir(entries))
}

fn symlink(name: &str, target: &str) -> (String, Node) {
    (name.to_string(), Node::Symlink(target.to_string()))
}

/// Everything that makes an action.
#[derive(Clone, Debug)]
struct Spec {
    function: DigestFunction,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    working_dir: String,
    /// REAPI v2.1 outputs.
    output_paths: Vec<String>,
    /// Legacy (deprecated) `output_files`.
    output_files: Vec<String>,
    /// Legacy (deprecated) `output_directories`.
    output_directories: Vec<String>,
    inputs: Vec<(String, Node)>,
    timeout: Option<Duration>,
    platform: Vec<(String, String)>,
    do_not_cache: bool,
    salt: Vec<u8>,
}

impl Spec {
    /// `argv` with `PATH` set and nothing else.
    fn new(argv: &[&str]) -> Spec {
        Spec {
            function: DigestFunction::Sha256,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("PATH".into(), PATH.into())],
            working_dir: String::new(),
            output_paths: vec![],
            output_files: vec![],
            output_directories: vec![],
            inputs: vec![],
            timeout: None,
            platform: vec![],
            do_not_cache: false,
            salt: vec![],
        }
    }

    /// `/bin/sh -c <script>`.
    fn sh(script: &str) -> Spec {
        Spec::new(&["/bin/sh", "-c", script])
    }

    /// `/bin/bash -c <script>` (for `exec -a`).
    fn bash(script: &str) -> Spec {
        Spec::new(&["/bin/bash", "-c", script])
    }

    fn outputs(mut self, paths: &[&str]) -> Spec {
        self.output_paths = paths.iter().map(|s| s.to_string()).collect();
        self
    }

    fn inputs(mut self, inputs: Vec<(String, Node)>) -> Spec {
        self.inputs = inputs;
        self
    }

    fn timeout(mut self, t: Duration) -> Spec {
        self.timeout = Some(t);
        self
    }

    /// A unique salt: a distinct action, never an action-cache hit.
    fn unique(mut self) -> Spec {
        self.salt = uuid::Uuid::new_v4().as_bytes().to_vec();
        self
    }

    /// Encodes the Directory, Command and Action messages.
    fn build(&self) -> Built {
        let mut blobs = Vec::new();
        let input_root = encode_dir(self.function, &self.inputs, &mut blobs);
        let mut env = self.env.clone();
        env.sort();
        #[allow(deprecated)]
        let command = Command {
            arguments: self.argv.clone(),
            environment_variables: env
                .into_iter()
                .map(|(name, value)| EnvironmentVariable { name, value })
                .collect(),
            output_files: self.output_files.clone(),
            output_directories: self.output_directories.clone(),
            output_paths: self.output_paths.clone(),
            working_directory: self.working_dir.clone(),
            ..Default::default()
        };
        let command = put(self.function, &mut blobs, command.encode_to_vec());
        let platform = (!self.platform.is_empty()).then(|| reapi::Platform {
            properties: self
                .platform
                .iter()
                .map(|(name, value)| reapi::platform::Property {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        });
        let action = Action {
            command_digest: Some(command.to_reapi()),
            input_root_digest: Some(input_root.to_reapi()),
            timeout: self.timeout.map(|t| rbe_proto::wkt::Duration {
                seconds: t.as_secs() as i64,
                nanos: t.subsec_nanos() as i32,
            }),
            do_not_cache: self.do_not_cache,
            salt: self.salt.clone(),
            platform,
        };
        let action = put(self.function, &mut blobs, action.encode_to_vec());
        Built {
            action,
            command,
            input_root,
            blobs,
        }
    }
}

/// The encoded action and every blob it needs.
struct Built {
    action: Digest,
    command: Digest,
    input_root: Digest,
    blobs: Vec<(Digest, Vec<u8>)>,
}

impl Built {
    /// The blobs minus those in `skip`.
    fn blobs_without(&self, skip: &[Digest]) -> Vec<(Digest, Vec<u8>)> {
        self.blobs
            .iter()
            .filter(|(d, _)| !skip.contains(d))
            .cloned()
            .collect()
    }
}

fn put(f: DigestFunction, blobs: &mut Vec<(Digest, Vec<u8>)>, data: Vec<u8>) -> Digest {
    let d = Digest::of(f, &data);
    if !blobs.iter().any(|(x, _)| *x == d) {
        blobs.push((d, data));
    }
    d
}

/// Encodes a directory (children first), sorted by name as the REAPI
/// requires; bad or duplicate names are kept as they are.
fn encode_dir(
    f: DigestFunction,
    entries: &[(String, Node)],
    blobs: &mut Vec<(Digest, Vec<u8>)>,
) -> Digest {
    let mut d = Directory::default();
    for (name, node) in entries {
        match node {
            Node::File { data, executable } => {
                let digest = put(f, blobs, data.clone());
                d.files.push(FileNode {
                    name: name.clone(),
                    digest: Some(digest.to_reapi()),
                    is_executable: *executable,
                    node_properties: None,
                });
            }
            Node::Dir(sub) => {
                let digest = encode_dir(f, sub, blobs);
                d.directories.push(DirectoryNode {
                    name: name.clone(),
                    digest: Some(digest.to_reapi()),
                });
            }
            Node::Symlink(target) => d.symlinks.push(SymlinkNode {
                name: name.clone(),
                target: target.clone(),
                node_properties: None,
            }),
        }
    }
    d.files.sort_by(|a, b| a.name.cmp(&b.name));
    d.directories.sort_by(|a, b| a.name.cmp(&b.name));
    d.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
    put(f, blobs, d.encode_to_vec())
}

/// Uploads blobs with BatchUpdateBlobs; every one must be accepted.
async fn upload(ch: &Channel, blobs: &[(Digest, Vec<u8>)]) {
    if blobs.is_empty() {
        return;
    }
    let codes = client::batch_update(ch, "", blobs)
        .await
        .expect("BatchUpdateBlobs");
    assert!(
        codes.iter().all(|&c| c == 0),
        "BatchUpdateBlobs refused some blobs: {codes:?}"
    );
}

/// Builds the action, uploads all its blobs, returns the encoded action.
async fn prepare(ch: &Channel, spec: &Spec) -> Built {
    let b = spec.build();
    upload(ch, &b.blobs).await;
    b
}

// ---------------------------------------------------------------------------
// Execute and the operations it streams
// ---------------------------------------------------------------------------

/// What an Execute (or WaitExecution) stream delivered.
#[derive(Debug)]
struct Executed {
    /// The operation name (the same in every streamed Operation).
    name: String,
    /// ExecuteOperationMetadata.stage of every streamed Operation, in order.
    stages: Vec<i32>,
    /// The final Operation's ExecuteResponse.
    response: ExecuteResponse,
}

impl Executed {
    fn code(&self) -> Code {
        code_of(&self.response)
    }

    fn result(&self) -> &ActionResult {
        self.response
            .result
            .as_ref()
            .unwrap_or_else(|| panic!("ExecuteResponse has no result: {:?}", self.response))
    }

    /// Asserts the response status is OK and the action exited with `exit`.
    fn assert_ran(&self, exit: i32) -> &ActionResult {
        assert_eq!(self.code(), Code::Ok, "status: {:?}", self.response.status);
        let r = self.result();
        assert_eq!(r.exit_code, exit, "exit code of {:?}", self.response);
        r
    }
}

fn code_of(r: &ExecuteResponse) -> Code {
    Code::from_i32(r.status.as_ref().map_or(0, |s| s.code))
}

fn message_of(r: &ExecuteResponse) -> String {
    r.status
        .as_ref()
        .map(|s| s.message.clone())
        .unwrap_or_default()
}

fn request(f: DigestFunction, action: &Digest) -> ExecuteRequest {
    ExecuteRequest {
        instance_name: String::new(),
        skip_cache_lookup: false,
        action_digest: Some(action.to_reapi()),
        execution_policy: None,
        results_cache_policy: None,
        digest_function: f.to_reapi(),
        inline_stdout: false,
        inline_stderr: false,
        inline_output_files: vec![],
    }
}

fn exec_client(ch: &Channel) -> ExecutionClient<Channel> {
    ExecutionClient::new(ch.clone()).max_decoding_message_size(64 << 20)
}

fn ops_client(ch: &Channel) -> OperationsClient<Channel> {
    OperationsClient::new(ch.clone()).max_decoding_message_size(64 << 20)
}

/// Stage of an Operation, from its ExecuteOperationMetadata.
fn stage_of(op: &Operation) -> i32 {
    let md = op
        .metadata
        .as_ref()
        .unwrap_or_else(|| panic!("operation {} has no metadata", op.name));
    assert_eq!(
        md.type_url,
        "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata"
    );
    ExecuteOperationMetadata::decode(md.value.as_slice())
        .expect("ExecuteOperationMetadata decodes")
        .stage
}

/// The ExecuteResponse of a done Operation.
fn response_of(op: &Operation) -> ExecuteResponse {
    assert!(op.done, "operation {} is not done", op.name);
    match op.result.as_ref() {
        Some(operation::Result::Response(any)) => {
            assert_eq!(
                any.type_url,
                "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse"
            );
            ExecuteResponse::decode(any.value.as_slice()).expect("ExecuteResponse decodes")
        }
        other => panic!("operation {} done without a response: {other:?}", op.name),
    }
}

/// Reads Operations until the done one; the stream must then end.
async fn collect(
    stream: &mut Streaming<Operation>,
    mut name: Option<String>,
    mut stages: Vec<i32>,
) -> Result<Executed, tonic::Status> {
    let fut = async {
        while let Some(op) = stream.message().await? {
            match &name {
                Some(n) => assert_eq!(&op.name, n, "operation name changed mid-stream"),
                None => {
                    assert!(op.name.starts_with("operations/"), "odd name {:?}", op.name);
                    name = Some(op.name.clone());
                }
            }
            stages.push(stage_of(&op));
            if op.done {
                let response = response_of(&op);
                assert!(
                    stream.message().await?.is_none(),
                    "the stream went on after the done operation"
                );
                return Ok(Executed {
                    name: op.name,
                    stages,
                    response,
                });
            }
        }
        panic!("the operation stream ended before a done operation (stages {stages:?})");
    };
    tokio::time::timeout(EXECUTE_LIMIT, fut)
        .await
        .expect("the operation finished in time")
}

/// Execute, streamed to the end.
async fn execute_req(ch: &Channel, req: ExecuteRequest) -> Result<Executed, tonic::Status> {
    let mut stream = exec_client(ch).execute(req).await?.into_inner();
    collect(&mut stream, None, vec![]).await
}

/// Execute with defaults (cache lookup on).
async fn execute(ch: &Channel, spec: &Spec, b: &Built) -> Result<Executed, tonic::Status> {
    execute_req(ch, request(spec.function, &b.action)).await
}

/// Upload and execute; the RPC itself must succeed.
async fn run(ch: &Channel, spec: &Spec) -> (Built, Executed) {
    let b = prepare(ch, spec).await;
    let e = execute(ch, spec, &b)
        .await
        .unwrap_or_else(|s| panic!("Execute of {:?} failed: {s:?}", spec.argv));
    (b, e)
}

/// Starts an Execute and returns the stream after its first Operation past
/// the cache check.
async fn start(ch: &Channel, spec: &Spec) -> (Built, Streaming<Operation>, Operation) {
    let b = prepare(ch, spec).await;
    let mut stream = exec_client(ch)
        .execute(request(spec.function, &b.action))
        .await
        .expect("Execute")
        .into_inner();
    let mut first = next_op(&mut stream).await;
    if stage_of(&first) == execution_stage::Value::CacheCheck as i32 {
        first = next_op(&mut stream).await;
    }
    assert!(!first.done, "the action finished at once: {first:?}");
    (b, stream, first)
}

async fn next_op(stream: &mut Streaming<Operation>) -> Operation {
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("operation in time")
        .expect("stream ok")
        .expect("an operation")
}

// ---------------------------------------------------------------------------
// Reading results
// ---------------------------------------------------------------------------

async fn blob(ch: &Channel, f: DigestFunction, d: Option<&reapi::Digest>) -> Vec<u8> {
    let d = Digest::from_reapi(f, d.expect("a digest")).expect("valid digest");
    client::read(ch, "", &d).await.expect("blob in the CAS")
}

async fn stdout_of(ch: &Channel, r: &ActionResult) -> String {
    let b = blob(ch, DigestFunction::Sha256, r.stdout_digest.as_ref()).await;
    String::from_utf8(b).expect("utf-8 stdout")
}

async fn stderr_of(ch: &Channel, r: &ActionResult) -> String {
    let b = blob(ch, DigestFunction::Sha256, r.stderr_digest.as_ref()).await;
    String::from_utf8(b).expect("utf-8 stderr")
}

fn output_file<'a>(r: &'a ActionResult, path: &str) -> &'a reapi::OutputFile {
    r.output_files
        .iter()
        .find(|o| o.path == path)
        .unwrap_or_else(|| panic!("no output file {path:?} in {:?}", r.output_files))
}

async fn get_action_result(ch: &Channel, action: &Digest) -> Result<ActionResult, tonic::Status> {
    ActionCacheClient::new(ch.clone())
        .get_action_result(GetActionResultRequest {
            instance_name: String::new(),
            action_digest: Some(action.to_reapi()),
            inline_stdout: false,
            inline_stderr: false,
            inline_output_files: vec![],
            digest_function: action.function.to_reapi(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// PreconditionFailure carried in an ExecuteResponse status.
fn precondition_in(st: &rbe_proto::rpc::Status) -> PreconditionFailure {
    let any = st
        .details
        .iter()
        .find(|a| a.type_url == "type.googleapis.com/google.rpc.PreconditionFailure")
        .unwrap_or_else(|| panic!("no PreconditionFailure in {st:?}"));
    PreconditionFailure::decode(any.value.as_slice()).expect("PreconditionFailure decodes")
}

fn missing_subjects(pf: &PreconditionFailure) -> Vec<String> {
    for v in &pf.violations {
        assert_eq!(v.r#type, "MISSING", "{v:?}");
    }
    let mut s: Vec<String> = pf.violations.iter().map(|v| v.subject.clone()).collect();
    s.sort();
    s
}

fn subject(d: &Digest) -> String {
    format!("blobs/{}/{}", d.hex(), d.size)
}

fn ts(t: Option<&rbe_proto::wkt::Timestamp>, what: &str) -> (i64, i32) {
    let t = t.unwrap_or_else(|| panic!("{what} is not set"));
    assert!(
        t.seconds > 1_600_000_000,
        "{what} is not a real time: {t:?}"
    );
    (t.seconds, t.nanos)
}

// ---------------------------------------------------------------------------
// Host-side checks
// ---------------------------------------------------------------------------

/// A marker for `exec -a`, unique to this run.
fn marker(what: &str) -> String {
    format!("rbe-e2e-{what}-{}", uuid::Uuid::new_v4().simple())
}

/// Whether any host process has `marker` in its command line.
fn running(marker: &str) -> bool {
    let out = HostCommand::new("pgrep")
        .arg("-f")
        .arg(marker)
        .output()
        .expect("running pgrep");
    out.status.success()
}

/// Polls `cond` every 50 ms up to `limit`.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every execution slot is free: as many actions as the worker has slots
/// (its default, the CPU count) run at the same time (their run intervals
/// overlap) and complete.
async fn assert_slots_free(ch: &Channel) {
    let slots = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runs = (0..slots).map(|_| {
        let spec = Spec::sh("date +%s%N; sleep 1.5; date +%s%N").unique();
        async move {
            let (_, e) = run(ch, &spec).await;
            let r = e.assert_ran(0);
            let out = stdout_of(ch, r).await;
            let t: Vec<u128> = out
                .lines()
                .map(|l| l.parse().expect("a date +%s%N line"))
                .collect();
            assert_eq!(t.len(), 2, "stdout {out:?}");
            (t[0], t[1])
        }
    });
    let spans = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(runs))
        .await
        .expect("follow-up actions completed: slots are free");
    let last_start = spans.iter().map(|s| s.0).max().expect("spans");
    let first_end = spans.iter().map(|s| s.1).min().expect("spans");
    assert!(
        last_start < first_end,
        "{slots} actions did not run at once (a slot is still busy): {spans:?}"
    );
}

/// The work directory holds no action directory (the worker removes it
/// just after reporting, so allow it a moment).
fn assert_work_dir_empty(s: &Stack) {
    let mut left = Vec::new();
    for _ in 0..100 {
        left = std::fs::read_dir(&s.casd.layout.work_dir)
            .expect("work dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("action directories left behind: {left:?}");
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_enable_execution() {
    let mut s = Stack::start().await;
    let caps = CapabilitiesClient::new(s.channel())
        .get_capabilities(GetCapabilitiesRequest {
            instance_name: String::new(),
        })
        .await
        .expect("GetCapabilities")
        .into_inner();
    let ec = caps.execution_capabilities.expect("execution capabilities");
    assert!(ec.exec_enabled);
    assert!(ec.digest_functions.contains(&1), "sha256 offered");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_action_outputs_and_metadata() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let script = "set -e\n\
        cat in.txt\n\
        echo to-stderr >&2\n\
        ./tool.sh > result.txt\n\
        cp tool.sh exe.sh\n\
        mkdir -p outdir/sub\n\
        cp d/nested.txt outdir/sub/n.txt\n\
        printf '#!/bin/sh\\necho hi\\n' > outdir/run.sh\n\
        chmod +x outdir/run.sh\n\
        ln -s sub/n.txt outdir/link\n";
    let spec = Spec::sh(script)
        .inputs(vec![
            file("in.txt", "hello from an input\n"),
            exe("tool.sh", "#!/bin/sh\necho tool output\n"),
            dir("d", vec![file("nested.txt", "nested\n")]),
        ])
        .outputs(&["result.txt", "exe.sh", "outdir", "never-created"]);
    let (b, e) = run(&ch, &spec).await;
    let r = e.assert_ran(0);
    assert!(!e.response.cached_result);

    // stdout and stderr, from the CAS.
    assert_eq!(stdout_of(&ch, r).await, "hello from an input\n");
    assert_eq!(stderr_of(&ch, r).await, "to-stderr\n");

    // Output files with their executable bit.
    let f = output_file(r, "result.txt");
    assert!(!f.is_executable);
    assert_eq!(
        blob(&ch, spec.function, f.digest.as_ref()).await,
        b"tool output\n"
    );
    let f = output_file(r, "exe.sh");
    assert!(f.is_executable, "cp keeps the executable bit: {f:?}");
    assert_eq!(
        blob(&ch, spec.function, f.digest.as_ref()).await,
        b"#!/bin/sh\necho tool output\n"
    );
    assert_eq!(r.output_files.len(), 2, "{:?}", r.output_files);
    assert!(r.output_symlinks.is_empty(), "{:?}", r.output_symlinks);

    // The output directory, as a Tree.
    assert_eq!(r.output_directories.len(), 1);
    let od = &r.output_directories[0];
    assert_eq!(od.path, "outdir");
    let tree = Tree::decode(
        blob(&ch, spec.function, od.tree_digest.as_ref())
            .await
            .as_slice(),
    )
    .expect("Tree decodes");
    let root = tree.root.expect("tree root");
    assert_eq!(root.files.len(), 1, "{root:?}");
    assert_eq!(root.files[0].name, "run.sh");
    assert!(root.files[0].is_executable);
    assert_eq!(
        blob(&ch, spec.function, root.files[0].digest.as_ref()).await,
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(root.symlinks.len(), 1, "{root:?}");
    assert_eq!(root.symlinks[0].name, "link");
    assert_eq!(root.symlinks[0].target, "sub/n.txt");
    assert_eq!(root.directories.len(), 1, "{root:?}");
    assert_eq!(root.directories[0].name, "sub");
    let sub_digest = root.directories[0].digest.clone().expect("sub digest");
    let sub = tree
        .children
        .iter()
        .find(|c| Digest::of(spec.function, &c.encode_to_vec()).to_reapi() == sub_digest)
        .expect("the sub directory is among the Tree's children");
    assert_eq!(sub.files.len(), 1);
    assert_eq!(sub.files[0].name, "n.txt");
    assert!(!sub.files[0].is_executable);
    assert_eq!(
        blob(&ch, spec.function, sub.files[0].digest.as_ref()).await,
        b"nested\n"
    );

    // Metadata: every timestamp set, in order; a worker name, the worker's
    // own outside a cluster (in one it is `{node}/{worker}`).
    let md = r.execution_metadata.as_ref().expect("execution metadata");
    assert!(!md.worker.is_empty());
    assert!(!md.worker.contains('/'), "{}", md.worker);
    let order = [
        ("queued", ts(md.queued_timestamp.as_ref(), "queued")),
        (
            "worker_start",
            ts(md.worker_start_timestamp.as_ref(), "worker_start"),
        ),
        (
            "input_fetch_start",
            ts(md.input_fetch_start_timestamp.as_ref(), "input_fetch_start"),
        ),
        (
            "input_fetch_completed",
            ts(
                md.input_fetch_completed_timestamp.as_ref(),
                "input_fetch_completed",
            ),
        ),
        (
            "execution_start",
            ts(md.execution_start_timestamp.as_ref(), "execution_start"),
        ),
        (
            "execution_completed",
            ts(
                md.execution_completed_timestamp.as_ref(),
                "execution_completed",
            ),
        ),
        (
            "output_upload_start",
            ts(
                md.output_upload_start_timestamp.as_ref(),
                "output_upload_start",
            ),
        ),
        (
            "output_upload_completed",
            ts(
                md.output_upload_completed_timestamp.as_ref(),
                "output_upload_completed",
            ),
        ),
        (
            "worker_completed",
            ts(md.worker_completed_timestamp.as_ref(), "worker_completed"),
        ),
    ];
    for w in order.windows(2) {
        assert!(w[0].1 <= w[1].1, "{} after {}: {md:?}", w[0].0, w[1].0);
    }

    // Stages: never backwards, ending COMPLETED, at least one before it.
    use execution_stage::Value as S;
    let valid = [
        S::CacheCheck as i32,
        S::Queued as i32,
        S::Executing as i32,
        S::Completed as i32,
    ];
    assert!(e.stages.iter().all(|s| valid.contains(s)), "{:?}", e.stages);
    assert!(e.stages.windows(2).all(|w| w[0] <= w[1]), "{:?}", e.stages);
    assert_eq!(e.stages.last(), Some(&(S::Completed as i32)));
    assert!(e.stages.len() >= 2, "{:?}", e.stages);
    assert_eq!(
        e.stages
            .iter()
            .filter(|&&s| s == S::Completed as i32)
            .count(),
        1
    );

    // The result is in the action cache.
    let cached = get_action_result(&ch, &b.action)
        .await
        .expect("result cached");
    assert_eq!(cached.output_files, r.output_files);
    assert_work_dir_empty(&s);
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_output_files_and_directories() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let mut spec = Spec::sh(
        "echo a > gen/a.txt && ln -s a.txt gen/ln && mkdir -p gendir/x && echo b > gendir/x/b",
    );
    spec.output_files = vec!["gen/a.txt".into(), "gen/ln".into()];
    spec.output_directories = vec!["gendir".into()];
    let (_, e) = run(&ch, &spec).await;
    let r = e.assert_ran(0);
    // The parent of a declared output exists before the action runs.
    let f = output_file(r, "gen/a.txt");
    assert_eq!(blob(&ch, spec.function, f.digest.as_ref()).await, b"a\n");
    #[allow(deprecated)]
    {
        assert_eq!(r.output_file_symlinks.len(), 1, "{r:?}");
        assert_eq!(r.output_file_symlinks[0].path, "gen/ln");
        assert_eq!(r.output_file_symlinks[0].target, "a.txt");
    }
    assert_eq!(r.output_symlinks.len(), 1, "{r:?}");
    assert_eq!(r.output_directories.len(), 1);
    assert_eq!(r.output_directories[0].path, "gendir");
    let tree = Tree::decode(
        blob(
            &ch,
            spec.function,
            r.output_directories[0].tree_digest.as_ref(),
        )
        .await
        .as_slice(),
    )
    .expect("Tree");
    assert_eq!(tree.children.len(), 1);
    assert_eq!(tree.children[0].files[0].name, "b");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blake3_action_runs() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let mut spec = Spec::sh("cat in > out")
        .inputs(vec![file("in", "blake3 input\n")])
        .outputs(&["out"]);
    spec.function = DigestFunction::Blake3;
    let (b, e) = run(&ch, &spec).await;
    let r = e.assert_ran(0);
    let f = output_file(r, "out");
    let d = Digest::from_reapi(DigestFunction::Blake3, f.digest.as_ref().expect("digest"))
        .expect("digest");
    assert_eq!(d, Digest::of(DigestFunction::Blake3, b"blake3 input\n"));
    assert_eq!(
        client::read(&ch, "", &d).await.expect("read"),
        b"blake3 input\n"
    );
    get_action_result(&ch, &b.action)
        .await
        .expect("cached under blake3");
    let again = execute(&ch, &spec, &b).await.expect("Execute");
    assert!(again.response.cached_result);
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_environment_is_exactly_the_commands() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    // Bare argv[0] resolved against the Command's PATH; nothing inherited.
    let mut spec = Spec::new(&["env"]);
    spec.env.push(("RBE_TEST_VAR".into(), "x y".into()));
    let (_, e) = run(&ch, &spec).await;
    let r = e.assert_ran(0);
    assert_eq!(
        stdout_of(&ch, r).await,
        format!("PATH={PATH}\nRBE_TEST_VAR=x y\n")
    );
    // Unprivileged user, own hostname, only loopback.
    let spec =
        Spec::sh("id -u; id -g; uname -n; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '");
    let (_, e) = run(&ch, &spec).await;
    let r = e.assert_ran(0);
    assert_eq!(stdout_of(&ch, r).await, "65534\n65534\nrbe-action\nlo\n");
    // No PATH: a bare name cannot be found.
    let mut spec = Spec::new(&["true"]);
    spec.env.clear();
    let (_, e) = run(&ch, &spec).await;
    assert_eq!(e.code(), Code::InvalidArgument, "{:?}", e.response);
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmpfs_past_limits_tmpfs_max_is_enospc_for_the_action_only() {
    let mut s = Stack::start_configured("", "", "[limits]\ntmpfs_max = \"8MiB\"\n").await;
    let ch = s.channel();
    // Unbounded, these pages would belong to no process: the OOM killer
    // would pick a daemon instead of the action.
    let spec = Spec::sh(
        "for d in /tmp /dev/shm; do head -c 12m /dev/zero > $d/big; echo $d $? $(stat -c %s $d/big); done",
    )
    .unique();
    let (_, e) = run(&ch, &spec).await;
    let r = e.assert_ran(0);
    assert_eq!(
        stdout_of(&ch, r).await,
        format!("/tmp 1 {n}\n/dev/shm 1 {n}\n", n = 8 << 20)
    );
    assert!(
        stderr_of(&ch, r).await.contains("No space left on device"),
        "{}",
        stderr_of(&ch, r).await
    );
    let (_, e) = run(&ch, &Spec::sh("echo next").unique()).await;
    let r = e.assert_ran(0);
    assert_eq!(stdout_of(&ch, r).await, "next\n");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_cache_hit_skip_do_not_cache_and_failures() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let spec = Spec::sh("date +%s%N > stamp").outputs(&["stamp"]);
    let (b, first) = run(&ch, &spec).await;
    let r1 = first.assert_ran(0).clone();
    assert!(!first.response.cached_result);
    let d1 = output_file(&r1, "stamp").digest.clone();

    // Same action again: served from the cache, never queued or re-run.
    let hit = execute(&ch, &spec, &b).await.expect("Execute");
    assert!(hit.response.cached_result);
    assert_eq!(hit.code(), Code::Ok);
    let rh = hit.result();
    assert_eq!(output_file(rh, "stamp").digest, d1, "the action re-ran");
    assert_eq!(
        hit.stages,
        vec![execution_stage::Value::Completed as i32],
        "a cache hit is never queued"
    );

    // skip_cache_lookup: runs again and overwrites the entry.
    let mut req = request(spec.function, &b.action);
    req.skip_cache_lookup = true;
    let skipped = execute_req(&ch, req).await.expect("Execute");
    let r3 = skipped.assert_ran(0);
    assert!(!skipped.response.cached_result);
    let d3 = output_file(r3, "stamp").digest.clone();
    assert_ne!(d3, d1, "skip_cache_lookup must run the action");
    let ac = get_action_result(&ch, &b.action).await.expect("AC entry");
    assert_eq!(output_file(&ac, "stamp").digest, d3, "AC entry overwritten");

    // do_not_cache: runs, is not written to the action cache.
    let mut nc = Spec::sh("date +%s%N > stamp").outputs(&["stamp"]);
    nc.do_not_cache = true;
    let (bn, e) = run(&ch, &nc).await;
    let rn = e.assert_ran(0);
    let dn = output_file(rn, "stamp").digest.clone();
    let st = get_action_result(&ch, &bn.action)
        .await
        .expect_err("do_not_cache result must not be cached");
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
    let e = execute(&ch, &nc, &bn).await.expect("Execute");
    assert!(!e.response.cached_result);
    assert_ne!(output_file(e.assert_ran(0), "stamp").digest, dn);

    // A non-zero exit is reported, and not cached.
    let fail = Spec::sh("date +%s%N > stamp; echo failing; exit 7").outputs(&["stamp"]);
    let (bf, e) = run(&ch, &fail).await;
    let rf = e.assert_ran(7);
    assert_eq!(stdout_of(&ch, rf).await, "failing\n");
    assert_eq!(
        rf.output_files.len(),
        1,
        "outputs of a failed action are returned"
    );
    let st = get_action_result(&ch, &bf.action)
        .await
        .expect_err("a failed action must not be cached");
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
    let e = execute(&ch, &fail, &bf).await.expect("Execute");
    assert!(!e.response.cached_result);
    e.assert_ran(7);
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_executes_run_once() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let spec = Spec::sh("sleep 1; date +%s%N > stamp").outputs(&["stamp"]);
    let b = prepare(&ch, &spec).await;
    let (a, c) = tokio::join!(execute(&ch, &spec, &b), execute(&ch, &spec, &b));
    let (a, c) = (a.expect("first Execute"), c.expect("second Execute"));
    assert_ne!(
        a.name, c.name,
        "each request gets its own operation, even when the run is shared"
    );
    let (ra, rc) = (a.assert_ran(0), c.assert_ran(0));
    assert!(!a.response.cached_result && !c.response.cached_result);
    assert_eq!(
        output_file(ra, "stamp").digest,
        output_file(rc, "stamp").digest,
        "the action ran twice"
    );
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_input_blobs_fail_precondition() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let spec = Spec::sh("cat a sub/b")
        .inputs(vec![
            file("a", "present? no\n"),
            dir("sub", vec![file("b", "in a subdirectory\n")]),
        ])
        .unique();
    let b = spec.build();
    let missing_file = Digest::of(spec.function, b"present? no\n");
    upload(&ch, &b.blobs_without(&[missing_file])).await;
    let e = execute(&ch, &spec, &b).await.expect("Execute RPC");
    assert_eq!(e.code(), Code::FailedPrecondition, "{:?}", e.response);
    let st = e.response.status.as_ref().expect("status");
    assert_eq!(
        missing_subjects(&precondition_in(st)),
        vec![subject(&missing_file)]
    );
    assert!(
        get_action_result(&ch, &b.action).await.is_err(),
        "not cached"
    );

    // A missing subdirectory (Directory message) is reported the same way.
    let spec2 = Spec::sh("ls sub2")
        .inputs(vec![dir("sub2", vec![file("c", "c\n")])])
        .unique();
    let b2 = spec2.build();
    let sub2 = encode_dir(spec2.function, &[file("c", "c\n")], &mut Vec::new());
    upload(&ch, &b2.blobs_without(&[sub2])).await;
    let e2 = execute(&ch, &spec2, &b2).await.expect("Execute RPC");
    assert_eq!(e2.code(), Code::FailedPrecondition, "{:?}", e2.response);
    let st2 = e2.response.status.as_ref().expect("status");
    assert_eq!(
        missing_subjects(&precondition_in(st2)),
        vec![subject(&sub2)]
    );

    // After the client uploads what was missing, the same action runs.
    upload(&ch, &b.blobs).await;
    let e = execute(&ch, &spec, &b).await.expect("Execute");
    let r = e.assert_ran(0);
    assert_eq!(stdout_of(&ch, r).await, "present? no\nin a subdirectory\n");
    assert_slots_free(&ch).await;
    assert!(s.alive());
}

/// Uploads everything but the blob `which` picks; Execute must fail with
/// FAILED_PRECONDITION naming exactly that blob as MISSING.
async fn assert_missing_blob_fails_precondition(which: fn(&Built) -> Digest) {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let spec = Spec::sh("echo never").unique();
    let b = spec.build();
    let missing = which(&b);
    upload(&ch, &b.blobs_without(&[missing])).await;
    let st = execute(&ch, &spec, &b)
        .await
        .expect_err("Execute must fail");
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    let pf = rbe_proto::status::precondition_failure(&st).expect("PreconditionFailure");
    assert_eq!(missing_subjects(&pf), vec![subject(&missing)]);
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_command_blob_fails_precondition() {
    assert_missing_blob_fails_precondition(|b| b.command).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_action_blob_fails_precondition() {
    assert_missing_blob_fails_precondition(|b| b.action).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_gives_deadline_exceeded_with_partial_output() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let m = marker("timeout");
    let spec = Spec::bash(&format!(
        "echo partial; echo err-partial >&2; exec -a {m} sleep 30"
    ))
    .timeout(Duration::from_secs(1));
    let t0 = Instant::now();
    let (b, e) = run(&ch, &spec).await;
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(e.code(), Code::DeadlineExceeded, "{:?}", e.response);
    let r = e.result();
    assert_eq!(stdout_of(&ch, r).await, "partial\n");
    assert_eq!(stderr_of(&ch, r).await, "err-partial\n");
    assert!(
        eventually(Duration::from_secs(5), || !running(&m)).await,
        "the timed-out action's process is still running"
    );
    assert_eq!(
        get_action_result(&ch, &b.action)
            .await
            .expect_err("not cached")
            .code(),
        Code::NotFound
    );
    assert_slots_free(&ch).await;
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_above_the_maximum_is_invalid() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let spec = Spec::sh("true").timeout(Duration::from_secs(100_000));
    let b = prepare(&ch, &spec).await;
    let st = execute(&ch, &spec, &b).await.expect_err("refused");
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    assert!(st.message().contains("maximum"), "{st:?}");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_operation_kills_the_action() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let m = marker("cancel");
    let spec = Spec::bash(&format!("exec -a {m} sleep 30"));
    let (_, mut stream, first) = start(&ch, &spec).await;
    assert!(
        eventually(Duration::from_secs(20), || running(&m)).await,
        "the action never started"
    );
    ops_client(&ch)
        .cancel_operation(CancelOperationRequest {
            name: first.name.clone(),
        })
        .await
        .expect("CancelOperation");
    let t0 = Instant::now();
    let e = collect(&mut stream, Some(first.name.clone()), vec![])
        .await
        .expect("stream ends with a done operation");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(e.code(), Code::Cancelled, "{:?}", e.response);
    assert!(
        eventually(Duration::from_secs(5), || !running(&m)).await,
        "the cancelled action's process is still running"
    );
    // The operation stays visible, done and cancelled.
    let op = ops_client(&ch)
        .get_operation(GetOperationRequest {
            name: first.name.clone(),
        })
        .await
        .expect("GetOperation")
        .into_inner();
    assert_eq!(code_of(&response_of(&op)), Code::Cancelled);
    // Cancelling a done operation is harmless.
    ops_client(&ch)
        .cancel_operation(CancelOperationRequest { name: first.name })
        .await
        .expect("CancelOperation again");
    assert_slots_free(&ch).await;
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_waiter_disconnecting_cancels_the_action() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let m = marker("disconnect");
    let spec = Spec::bash(&format!("exec -a {m} sleep 30"));
    let (_, stream, first) = start(&ch, &spec).await;
    assert!(
        eventually(Duration::from_secs(20), || running(&m)).await,
        "the action never started"
    );
    drop(stream);
    assert!(
        eventually(Duration::from_secs(10), || !running(&m)).await,
        "the action kept running after its only client left"
    );
    let op = ops_client(&ch)
        .get_operation(GetOperationRequest { name: first.name })
        .await
        .expect("GetOperation")
        .into_inner();
    assert_eq!(code_of(&response_of(&op)), Code::Cancelled);
    assert_slots_free(&ch).await;
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_execution_get_and_list_operations() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let spec = Spec::sh("sleep 2; echo waited");
    let (_, mut stream, first) = start(&ch, &spec).await;
    let name = first.name.clone();

    // GetOperation while it runs.
    let op = ops_client(&ch)
        .get_operation(GetOperationRequest { name: name.clone() })
        .await
        .expect("GetOperation")
        .into_inner();
    assert_eq!(op.name, name);
    assert!(!op.done);
    assert!(op.result.is_none());
    // ListOperations lists it.
    let list = ops_client(&ch)
        .list_operations(ListOperationsRequest {
            name: String::new(),
            filter: String::new(),
            page_size: 0,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .expect("ListOperations")
        .into_inner();
    assert!(
        list.operations.iter().any(|o| o.name == name),
        "{name} not in {:?}",
        list.operations
    );

    // WaitExecution gets the final result.
    let mut waiting = exec_client(&ch)
        .wait_execution(WaitExecutionRequest { name: name.clone() })
        .await
        .expect("WaitExecution")
        .into_inner();
    let w = collect(&mut waiting, Some(name.clone()), vec![])
        .await
        .expect("WaitExecution stream");
    assert_eq!(stdout_of(&ch, w.assert_ran(0)).await, "waited\n");
    let e = collect(&mut stream, Some(name.clone()), vec![stage_of(&first)])
        .await
        .expect("Execute stream");
    assert_eq!(e.response, w.response);

    // Done: GetOperation has the response; WaitExecution answers at once.
    let op = ops_client(&ch)
        .get_operation(GetOperationRequest { name: name.clone() })
        .await
        .expect("GetOperation")
        .into_inner();
    assert_eq!(response_of(&op), e.response);
    let mut again = exec_client(&ch)
        .wait_execution(WaitExecutionRequest { name: name.clone() })
        .await
        .expect("WaitExecution on a done operation")
        .into_inner();
    let w2 = collect(&mut again, Some(name), vec![])
        .await
        .expect("stream");
    assert_eq!(w2.stages, vec![execution_stage::Value::Completed as i32]);
    assert_eq!(w2.response, e.response);

    // Unknown names.
    let unknown = "operations/00000000-0000-0000-0000-000000000000".to_string();
    let st = ops_client(&ch)
        .get_operation(GetOperationRequest {
            name: unknown.clone(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
    let st = exec_client(&ch)
        .wait_execution(WaitExecutionRequest {
            name: unknown.clone(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
    let st = ops_client(&ch)
        .cancel_operation(CancelOperationRequest { name: unknown })
        .await
        .expect_err("unknown");
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
    assert!(s.alive());
}

/// An input tree with a bad entry: INVALID_ARGUMENT in the response, the
/// host untouched, the slots free.
async fn bad_input_tree(inputs: Vec<(String, Node)>, says: &str) {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let spec = Spec::sh("echo ran; ls -la").inputs(inputs.clone());
    let (b, e) = run(&ch, &spec).await;
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "inputs {inputs:?}: {:?}",
        e.response
    );
    assert!(
        message_of(&e.response).contains(says),
        "{says:?} not in {:?}",
        e.response.status
    );
    assert!(e.response.result.is_none(), "the action must not run");
    assert!(get_action_result(&ch, &b.action).await.is_err());
    // Nothing appeared beside the action directories.
    let parent = s
        .casd
        .layout
        .work_dir
        .parent()
        .expect("parent")
        .to_path_buf();
    for n in ["a", "b", "x", "dup"] {
        assert!(!parent.join(n).exists(), "{n} created beside the work dir");
        assert!(!s.casd.layout.work_dir.join(n).exists());
    }
    assert_work_dir_empty(&s);
    assert_slots_free(&ch).await;
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_name_dotdot_is_invalid() {
    bad_input_tree(vec![file("..", "x")], r#"entry name "..""#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_name_with_slash_is_invalid() {
    bad_input_tree(vec![file("a/b", "x")], r#"entry name "a/b""#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_name_dot_is_invalid() {
    bad_input_tree(vec![dir(".", vec![file("x", "x")])], r#"entry name ".""#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_name_empty_is_invalid() {
    bad_input_tree(vec![symlink("", "x")], r#"entry name """#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_duplicate_names_are_invalid() {
    bad_input_tree(
        vec![file("dup", "one"), file("dup", "two")],
        r#"name "dup" appears twice"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_duplicate_names_across_kinds_are_invalid() {
    bad_input_tree(
        vec![
            dir("x", vec![file("dup", "a"), dir("dup", vec![])]),
            file("ok", "ok"),
        ],
        r#"name "dup" appears twice"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_input_to_etc_stays_a_symlink_and_reads_nothing_secret() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let inputs = vec![symlink("link", "/etc")];
    let (_, e) = run(&ch, &Spec::sh("readlink link").inputs(inputs.clone())).await;
    assert_eq!(stdout_of(&ch, e.assert_ran(0)).await, "/etc\n");
    let (_, e) = run(&ch, &Spec::sh("cat link/shadow").inputs(inputs)).await;
    assert_eq!(e.code(), Code::Ok, "{:?}", e.response);
    let r = e.result();
    assert_ne!(r.exit_code, 0, "/etc/shadow was readable");
    assert!(!stdout_of(&ch, r).await.contains("root:"));
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_through_dotdot_fails_and_leaves_the_host_untouched() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let host_before = [
        std::path::Path::new("/escape").exists(),
        std::path::Path::new("/tmp/escape").exists(),
    ];
    let (_, e) = run(&ch, &Spec::sh("echo x > ../escape")).await;
    assert_eq!(e.code(), Code::Ok, "{:?}", e.response);
    assert_ne!(e.result().exit_code, 0, "wrote ../escape");
    let (_, e) = run(&ch, &Spec::sh("echo x > ../../escape")).await;
    assert_eq!(e.code(), Code::Ok, "{:?}", e.response);
    assert_ne!(e.result().exit_code, 0, "wrote ../../escape");
    // Every level up: report which writes succeeded inside the sandbox.
    let script = "for p in ../escape ../../escape ../../../escape /escape /etc/escape; do \
                  (echo x > $p) 2>/dev/null && echo wrote $p; done; true";
    let (_, e) = run(&ch, &Spec::sh(script)).await;
    assert_eq!(stdout_of(&ch, e.assert_ran(0)).await, "");
    let work = &s.casd.layout.work_dir;
    for p in [
        work.join("escape"),
        work.parent().expect("parent").join("escape"),
        "/etc/escape".into(),
    ] {
        assert!(!p.exists(), "{} appeared on the host", p.display());
    }
    assert_eq!(
        [
            std::path::Path::new("/escape").exists(),
            std::path::Path::new("/tmp/escape").exists(),
        ],
        host_before,
        "/escape or /tmp/escape appeared on the host"
    );
    assert_work_dir_empty(&s);
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_symlinks_are_returned_as_symlinks() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let mut spec = Spec::sh(
        "ln -s /etc/shadow out && ln -s /etc/shadow legacy && ln -s /etc etcdir \
         && mkdir d && ln -s /etc/shadow d/s",
    )
    .outputs(&["out", "etcdir", "d"]);
    spec.output_files = vec!["legacy".into()];
    let (_, e) = run(&ch, &spec).await;
    let r = e.assert_ran(0);
    assert!(r.output_files.is_empty(), "contents returned: {r:?}");
    let mut links: Vec<(String, String)> = r
        .output_symlinks
        .iter()
        .map(|l| (l.path.clone(), l.target.clone()))
        .collect();
    links.sort();
    assert_eq!(
        links,
        vec![
            ("etcdir".to_string(), "/etc".to_string()),
            ("legacy".to_string(), "/etc/shadow".to_string()),
            ("out".to_string(), "/etc/shadow".to_string()),
        ]
    );
    #[allow(deprecated)]
    {
        assert_eq!(r.output_file_symlinks.len(), 1, "{r:?}");
        assert_eq!(r.output_file_symlinks[0].path, "legacy");
    }
    assert_eq!(r.output_directories.len(), 1);
    let tree = Tree::decode(
        blob(
            &ch,
            spec.function,
            r.output_directories[0].tree_digest.as_ref(),
        )
        .await
        .as_slice(),
    )
    .expect("Tree");
    let root = tree.root.expect("root");
    assert!(root.files.is_empty(), "{root:?}");
    assert_eq!(root.symlinks.len(), 1);
    assert_eq!(root.symlinks[0].target, "/etc/shadow");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_output_is_invalid() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let spec = Spec::sh("mkfifo out").outputs(&["out"]);
    let t0 = Instant::now();
    let (b, e) = run(&ch, &spec).await;
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert_eq!(e.code(), Code::InvalidArgument, "{:?}", e.response);
    assert!(message_of(&e.response).contains("fifo"), "{:?}", e.response);
    assert!(get_action_result(&ch, &b.action).await.is_err());
    // Inside an output directory too.
    let spec = Spec::sh("mkdir d && mkfifo d/p").outputs(&["d"]);
    let (_, e) = run(&ch, &spec).await;
    assert_eq!(e.code(), Code::InvalidArgument, "{:?}", e.response);
    assert_work_dir_empty(&s);
    assert_slots_free(&ch).await;
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_directory_outside_the_root_is_invalid() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    for wd in ["../..", "/tmp", "a/../.."] {
        let mut spec = Spec::sh("pwd; echo x > escape");
        spec.working_dir = wd.into();
        let (_, e) = run(&ch, &spec).await;
        assert_eq!(
            e.code(),
            Code::InvalidArgument,
            "working dir {wd:?}: {:?}",
            e.response
        );
        assert!(e.response.result.is_none(), "{wd:?}: the action ran");
        assert!(
            message_of(&e.response).contains(&format!("invalid path {wd:?}")),
            "{:?}",
            e.response
        );
    }
    assert!(!s.casd.layout.root.join("escape").exists());
    assert_slots_free(&ch).await;
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_holding_stdout_does_not_block_the_action() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let m = marker("daemon");
    let spec = Spec::bash(&format!("(exec -a {m} sleep 100) & echo hi"));
    let t0 = Instant::now();
    let (_, e) = run(&ch, &spec).await;
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(stdout_of(&ch, e.assert_ran(0)).await, "hi\n");
    assert!(
        eventually(Duration::from_secs(2), || !running(&m)).await,
        "the forked daemon outlived its action"
    );
    assert_slots_free(&ch).await;
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_stdout_is_truncated_to_the_configured_maximum() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let spec = Spec::sh("head -c 200000000 /dev/zero; echo done >&2");
    let (_, e) = run(&ch, &spec).await;
    let r = e.assert_ran(0);
    let out = r.stdout_digest.as_ref().expect("stdout digest");
    assert_eq!(out.size_bytes, MAX_OUTPUT, "stdout kept up to the maximum");
    let d = Digest::from_reapi(DigestFunction::Sha256, out).expect("digest");
    assert_eq!(
        d,
        Digest::of(DigestFunction::Sha256, &vec![0u8; MAX_OUTPUT as usize])
    );
    assert!(
        client::find_missing(&ch, "", &[d])
            .await
            .expect("FindMissingBlobs")
            .is_empty(),
        "the stdout blob is in the CAS"
    );
    assert_eq!(stderr_of(&ch, r).await, "done\n");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_directory_message_is_invalid() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let big = vec![0xffu8; 100 << 20];
    let root = Digest::of(DigestFunction::Sha256, &big);
    client::write(&ch, "", &root, &big, 1 << 20)
        .await
        .expect("ByteStream write of 100 MB");
    drop(big);
    let spec = Spec::sh("echo ran").unique();
    let mut b = spec.build();
    // The same Command, with the 100 MB blob as the input root.
    let action = Action {
        command_digest: Some(b.command.to_reapi()),
        input_root_digest: Some(root.to_reapi()),
        salt: spec.salt.clone(),
        ..Default::default()
    };
    let bytes = action.encode_to_vec();
    b.action = Digest::of(DigestFunction::Sha256, &bytes);
    let mut blobs = b.blobs_without(&[b.input_root]);
    blobs.push((b.action, bytes));
    upload(&ch, &blobs).await;
    let e = execute(&ch, &spec, &b).await.expect("Execute RPC");
    assert_eq!(e.code(), Code::InvalidArgument, "{:?}", e.response);
    assert!(
        message_of(&e.response).contains("larger than"),
        "{:?}",
        e.response
    );
    assert!(e.response.result.is_none(), "the action must not run");
    assert_slots_free(&ch).await;
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatchable_platform_fails_fast() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    // A first action proves the worker is attached.
    let (_, e) = run(&ch, &Spec::sh("true").unique()).await;
    e.assert_ran(0);
    let mut spec = Spec::sh("true");
    spec.platform = vec![("OSFamily".into(), "windows".into())];
    let b = prepare(&ch, &spec).await;
    let t0 = Instant::now();
    let st = execute(&ch, &spec, &b)
        .await
        .expect_err("no worker offers OSFamily=windows");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    assert!(st.message().contains("OSFamily=windows"), "{st:?}");
    // A matching property runs.
    let mut spec = Spec::sh("echo linux");
    spec.platform = vec![("OSFamily".into(), "linux".into())];
    let (_, e) = run(&ch, &spec).await;
    assert_eq!(stdout_of(&ch, e.assert_ran(0)).await, "linux\n");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hit_operation_can_be_looked_up() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let spec = Spec::sh("echo once");
    let (b, e) = run(&ch, &spec).await;
    e.assert_ran(0);
    let hit = execute(&ch, &spec, &b).await.expect("Execute");
    assert!(hit.response.cached_result);
    // A completed operation stays visible for the retention time, cache
    // hits included: a client whose stream broke calls WaitExecution.
    let op = ops_client(&ch)
        .get_operation(GetOperationRequest {
            name: hit.name.clone(),
        })
        .await
        .expect("GetOperation on a cache hit's operation");
    assert_eq!(response_of(op.get_ref()), hit.response);
    let mut w = exec_client(&ch)
        .wait_execution(WaitExecutionRequest {
            name: hit.name.clone(),
        })
        .await
        .expect("WaitExecution on a cache hit's operation")
        .into_inner();
    let w = collect(&mut w, Some(hit.name), vec![])
        .await
        .expect("stream");
    assert!(w.response.cached_result);
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduplicated_action_survives_one_client_leaving() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let m = marker("dedup-leave");
    let spec = Spec::bash(&format!(
        "(exec -a {m} sleep 2); date +%s%N > stamp; echo finished"
    ))
    .outputs(&["stamp"]);
    let (b, first_stream, first) = start(&ch, &spec).await;
    let mut second = exec_client(&ch)
        .execute(request(spec.function, &b.action))
        .await
        .expect("second Execute")
        .into_inner();
    assert!(
        eventually(Duration::from_secs(20), || running(&m)).await,
        "the action never started"
    );
    // The first client leaves; the second still waits, so it runs on.
    drop(first_stream);
    let e = collect(&mut second, None, vec![])
        .await
        .expect("second stream");
    // Merged into one run, but each request has its own operation.
    assert_ne!(e.name, first.name);
    assert_eq!(stdout_of(&ch, e.assert_ran(0)).await, "finished\n");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_execution_keeps_the_action_alive_when_the_executor_leaves() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let spec = Spec::sh("sleep 2; echo still-here");
    let (_, stream, first) = start(&ch, &spec).await;
    let mut waiting = exec_client(&ch)
        .wait_execution(WaitExecutionRequest {
            name: first.name.clone(),
        })
        .await
        .expect("WaitExecution")
        .into_inner();
    // Let the WaitExecution stream register before the Execute client goes.
    let w0 = waiting
        .message()
        .await
        .expect("stream")
        .expect("a first operation");
    assert!(!w0.done);
    drop(stream);
    let w = collect(&mut waiting, Some(first.name), vec![stage_of(&w0)])
        .await
        .expect("WaitExecution stream");
    assert_eq!(stdout_of(&ch, w.assert_ran(0)).await, "still-here\n");
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_cache_actions_are_not_merged() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    // REAPI: with do_not_cache "in-flight requests for the same Action may
    // not be merged".
    let mut spec = Spec::sh("sleep 1; date +%s%N > stamp").outputs(&["stamp"]);
    spec.do_not_cache = true;
    let b = prepare(&ch, &spec).await;
    let (a, c) = tokio::join!(execute(&ch, &spec, &b), execute(&ch, &spec, &b));
    let (a, c) = (a.expect("first Execute"), c.expect("second Execute"));
    assert_ne!(a.name, c.name, "do_not_cache requests were merged");
    assert_ne!(
        output_file(a.assert_ran(0), "stamp").digest,
        output_file(c.assert_ran(0), "stamp").digest,
        "do_not_cache action ran once for two requests"
    );
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_operation_never_runs_it() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let slots = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Fill every slot.
    let mut busy = Vec::new();
    for i in 0..slots {
        let m = marker(&format!("busy{i}"));
        let (_, stream, first) = start(&ch, &Spec::bash(&format!("exec -a {m} sleep 30"))).await;
        assert!(
            eventually(Duration::from_secs(20), || running(&m)).await,
            "busy action {i} never started"
        );
        busy.push((m, stream, first));
    }
    let qm = marker("queued");
    let (_, mut stream, first) = start(&ch, &Spec::bash(&format!("exec -a {qm} sleep 30"))).await;
    assert_eq!(
        stage_of(&first),
        execution_stage::Value::Queued as i32,
        "all slots are busy"
    );
    ops_client(&ch)
        .cancel_operation(CancelOperationRequest {
            name: first.name.clone(),
        })
        .await
        .expect("CancelOperation");
    let e = collect(&mut stream, Some(first.name), vec![])
        .await
        .expect("stream");
    assert_eq!(e.code(), Code::Cancelled, "{:?}", e.response);
    // Free the slots; the cancelled action must not start in one.
    for (m, mut stream, first) in busy {
        ops_client(&ch)
            .cancel_operation(CancelOperationRequest {
                name: first.name.clone(),
            })
            .await
            .expect("CancelOperation");
        let e = collect(&mut stream, Some(first.name), vec![])
            .await
            .expect("stream");
        assert_eq!(e.code(), Code::Cancelled);
        assert!(eventually(Duration::from_secs(5), || !running(&m)).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!running(&qm), "the cancelled queued action ran");
    assert_slots_free(&ch).await;
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_cannot_be_changed_through_their_links() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let inputs = vec![
        file("in.txt", "pristine\n"),
        exe("tool", "#!/bin/sh\necho pristine tool\n"),
    ];
    let script = "for f in in.txt tool; do \
                  (echo evil > $f) 2>/dev/null && echo wrote $f; \
                  chmod 777 $f 2>/dev/null && echo chmod $f; \
                  (echo evil >> $f) 2>/dev/null && echo appended $f; done; true";
    let (_, e) = run(&ch, &Spec::sh(script).inputs(inputs)).await;
    assert_eq!(stdout_of(&ch, e.assert_ran(0)).await, "");
    // The store's blobs are intact, and a new action sees them unchanged.
    let d = Digest::of(DigestFunction::Sha256, b"pristine\n");
    assert_eq!(
        client::read(&ch, "", &d).await.expect("read"),
        b"pristine\n"
    );
    let (_, e) = run(
        &ch,
        &Spec::sh("cat in.txt; ./tool")
            .inputs(vec![
                file("in.txt", "pristine\n"),
                exe("tool", "#!/bin/sh\necho pristine tool\n"),
            ])
            .unique(),
    )
    .await;
    assert_eq!(
        stdout_of(&ch, e.assert_ran(0)).await,
        "pristine\npristine tool\n"
    );
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_below_a_symlink_leading_out_is_refused() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    for target in ["/etc", "../../../../../../../../etc"] {
        let spec = Spec::sh(&format!("rm -rf out && ln -s {target} out")).outputs(&["out/passwd"]);
        let (_, e) = run(&ch, &spec).await;
        assert_eq!(
            e.code(),
            Code::InvalidArgument,
            "{target}: {:?}",
            e.response
        );
        if let Some(r) = e.response.result.as_ref() {
            assert!(r.output_files.is_empty(), "{target}: {r:?}");
        }
    }
    // An input symlink leading out, below which an output is declared.
    let spec = Spec::sh("true")
        .inputs(vec![symlink("link", "/etc")])
        .outputs(&["link/passwd"]);
    let (_, e) = run(&ch, &spec).await;
    assert_eq!(e.code(), Code::InvalidArgument, "{:?}", e.response);
    assert_slots_free(&ch).await;
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_deep_input_trees_are_refused_without_harm() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    // 600 nested directories: deeper than the materializer allows (512).
    let mut deep = dir("d", vec![file("leaf", "x")]);
    for i in 0..600 {
        deep = dir(&format!("d{i}"), vec![deep]);
    }
    let mut spec = Spec::sh("echo ran").unique();
    spec.inputs = vec![deep];
    let (_, e) = run(&ch, &spec).await;
    assert_eq!(e.code(), Code::InvalidArgument, "{:?}", e.response);
    assert!(
        message_of(&e.response).contains("levels deep"),
        "{:?}",
        e.response
    );
    assert_slots_free(&ch).await;
    assert!(s.alive(), "casd, the frontend and workerd survive");
}
