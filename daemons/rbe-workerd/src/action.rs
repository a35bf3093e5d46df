//! One action, start to finish: input tree from casd, sandboxed run,
//! outputs to casd, and the Finished report with full metadata. The action
//! directory is removed afterwards whatever happened.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message;
use rbe_exec::{ActionSpec, Sandbox};
use rbe_proto::casd::MaterializeRequest;
use rbe_proto::reapi::{
    Action, ActionResult, Command, ExecutedActionMetadata, OutputDirectory, OutputFile,
    OutputSymlink,
};
use rbe_proto::worker::{Assignment, Finished, Outcome};
use rbe_proto::{Digest, DigestFunction};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::confine::{self, Scope};
use crate::inputs::{self, InputLease};
use crate::outputs::{self, Found, Uploader};
use crate::server::Worker;

fn ts(t: SystemTime) -> Option<prost_types::Timestamp> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some(prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

fn wkt(t: SystemTime) -> Option<rbe_proto::wkt::Timestamp> {
    ts(t).map(|t| rbe_proto::wkt::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos,
    })
}

/// `otherwise`, unless the error is the worker's disk running full: that
/// is NO_SPACE, the host's fault and worth a retry, never the action's.
fn exec_error_outcome(e: &rbe_exec::ExecError, otherwise: Outcome) -> Outcome {
    if e.is_no_space() {
        Outcome::NoSpace
    } else {
        otherwise
    }
}

fn fail(id: u64, outcome: Outcome, message: impl Into<String>) -> Finished {
    Finished {
        id,
        outcome: outcome as i32,
        message: message.into(),
        ..Default::default()
    }
}

/// The report for an assignment this worker will not run.
pub fn refuse(id: u64, why: &str) -> Finished {
    fail(id, Outcome::Unavailable, why)
}

/// Time allowed beyond the action's own timeout for fetching inputs and
/// uploading outputs.
const OVERHEAD_ALLOWANCE: Duration = Duration::from_secs(600);

/// How long the whole action may take, inputs and uploads included.
fn whole_action_limit(a: &Assignment) -> Duration {
    Duration::from_secs(u64::from(a.timeout_seconds.max(1))) + OVERHEAD_ALLOWANCE
}

/// Runs an assignment and says how it ended.
pub async fn execute(w: &Arc<Worker>, a: Assignment, cancel: CancellationToken) -> Finished {
    let id = a.id;
    let action_id = uuid::Uuid::new_v4().simple().to_string();
    let dir = w.work.path().join(&action_id);
    let slot = w.take_slot();
    // The whole action, inputs and uploads included, is bounded and
    // cancellable: a hung casd must not hold a slot forever.
    let limit = whole_action_limit(&a);
    let inputs = Arc::new(InputLease::default());
    let r = tokio::select! {
        r = run(w, &a, &dir, &action_id, slot, cancel.clone(), &inputs) => r,
        _ = cancel.cancelled() => Ok(fail(id, Outcome::Cancelled, "cancelled")),
        _ = tokio::time::sleep(limit) => Ok(fail(id, Outcome::Unavailable, format!(
            "worker {} could not finish the action within {} s (inputs or outputs stalled)", w.name, limit.as_secs()
        ))),
    };
    // Removing the directory is not on the client's critical path: the
    // result is reported while it goes (everything in it has been uploaded).
    // Whatever the action left there, this ends (see `workdir`).
    let work = Arc::clone(&w.work);
    tokio::task::spawn_blocking(move || work.dispose(&action_id));
    // Every way out passes here: outputs uploaded (they were read from the
    // action directory, not the store), failure, cancel, timeout. Done
    // before the report, so a client that saw the result finds the inputs
    // released (and in jit mode the scratch freed).
    inputs.release(&w.casd, &a.operation).await;
    w.return_slot(slot);
    match r {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(operation = %a.operation, invocation_id = %a.invocation_id, error = format!("{e:#}"), "action failed in the worker");
            // A full disk anywhere on the way (the action directory, the
            // output uploads) is the host's fault, not the action's.
            let full = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .and_then(std::io::Error::raw_os_error)
                    .is_some_and(|n| n == libc::ENOSPC || n == libc::EDQUOT)
                    || c.downcast_ref::<rbe_exec::ExecError>()
                        .is_some_and(rbe_exec::ExecError::is_no_space)
            });
            let outcome = if full {
                Outcome::NoSpace
            } else {
                Outcome::WorkerFault
            };
            fail(id, outcome, format!("worker {}: {e:#}", w.name))
        }
    }
}

async fn run(
    w: &Arc<Worker>,
    a: &Assignment,
    dir: &Path,
    action_id: &str,
    slot: Option<u32>,
    cancel: CancellationToken,
    inputs: &Arc<InputLease>,
) -> anyhow::Result<Finished> {
    let worker_start = SystemTime::now();
    // One snapshot for the whole action: a reload applies to later ones.
    let cfg = w.settings.load_full();
    let f = DigestFunction::from_reapi(a.digest_function).map_err(|e| anyhow::anyhow!("{e}"))?;
    let action_digest =
        Digest::parse(f, &a.action_hash, a.action_size).map_err(|e| anyhow::anyhow!("{e}"))?;
    let action = Action::decode(a.action.as_slice())?;
    let command = Command::decode(a.command.as_slice())?;
    let Some(root_digest) = action.input_root_digest.as_ref() else {
        return Ok(fail(
            a.id,
            Outcome::InvalidAction,
            "action has no input_root_digest",
        ));
    };
    let root = dir.join("root");
    std::fs::create_dir_all(&root)?;
    {
        use std::os::unix::fs::PermissionsExt;
        // The action's user must be able to create outputs at the top.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777))?;
    }
    if w.privileged {
        // Output directories made for the action take the root's owner.
        std::os::unix::fs::chown(&root, Some(cfg.sandbox.uid), Some(cfg.sandbox.gid))?;
    }

    // Inputs.
    let fetch_start = SystemTime::now();
    let req = MaterializeRequest {
        instance_name: a.instance_name.clone(),
        digest_function: a.digest_function,
        root: Some(rbe_proto::casd::Digest {
            hash: root_digest.hash.clone(),
            size_bytes: root_digest.size_bytes,
        }),
        target: root.display().to_string(),
        copy: !w.privileged,
        // As long as the whole action may take; casd caps it.
        pin_ttl_seconds: u32::try_from(whole_action_limit(a).as_secs()).unwrap_or(u32::MAX),
    };
    let m = match inputs::materialize(&w.casd, req, inputs, &a.operation).await {
        Ok(m) => m,
        Err(s) if s.code() == Code::InvalidArgument => {
            return Ok(fail(a.id, Outcome::InvalidAction, s.message()))
        }
        // casd reports blobs that vanish while it builds the tree in
        // `missing` below; NOT_FOUND is left only for an older casd.
        Err(s) if s.code() == Code::NotFound => {
            return Ok(fail(a.id, Outcome::InputsMissing, s.message()))
        }
        Err(s) if s.code() == Code::Unavailable => {
            return Ok(fail(
                a.id,
                Outcome::Unavailable,
                format!("casd is unavailable: {}", s.message()),
            ))
        }
        // A full disk is the host's fault: Bazel may retry or fall back.
        Err(s) if s.code() == Code::ResourceExhausted => {
            return Ok(fail(a.id, Outcome::NoSpace, s.message()))
        }
        Err(s) => anyhow::bail!("materializing inputs: {s}"),
    };
    if !m.missing.is_empty() {
        let mut f = fail(
            a.id,
            Outcome::InputsMissing,
            format!("{} input blob(s) are missing from the CAS", m.missing.len()),
        );
        f.missing = m
            .missing
            .iter()
            .map(|d| format!("{}/{}", d.hash, d.size_bytes))
            .collect();
        return Ok(f);
    }
    let fetch_done = SystemTime::now();

    // Outputs' parent directories, then the run.
    let mut declared: Vec<String> = command.output_paths.clone();
    #[allow(deprecated)]
    {
        declared.extend(command.output_files.iter().cloned());
        declared.extend(command.output_directories.iter().cloned());
    }
    for p in &declared {
        if let Err(e) = rbe_exec::validate_relative_path(p) {
            return Ok(fail(a.id, Outcome::InvalidAction, e.to_string()));
        }
    }
    if let Err(e) = rbe_exec::prepare_output_dirs(&root, &command.working_directory, &declared) {
        return Ok(fail(
            a.id,
            exec_error_outcome(&e, Outcome::InvalidAction),
            e.to_string(),
        ));
    }
    #[allow(deprecated)]
    let properties: Vec<(String, String)> = command
        .platform
        .iter()
        .chain(action.platform.iter())
        .flat_map(|p| p.properties.iter())
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect();
    let limits = match confine::limits_for(&cfg.limits, &properties) {
        Ok(l) => l,
        Err(e) => return Ok(fail(a.id, Outcome::InvalidAction, e)),
    };
    let sandbox = Sandbox {
        uid: w.privileged.then_some(cfg.sandbox.uid),
        gid: w.privileged.then_some(cfg.sandbox.gid),
        network: cfg.sandbox.network,
        hide_paths: std::iter::once(w.work.path().to_path_buf())
            .chain(cfg.sandbox.hide_paths.iter().cloned())
            .collect(),
        // A tmpfs bigger than the memory the action may use could only
        // be filled at the cost of the host.
        tmpfs_size: limits
            .memory_max
            .map_or(cfg.limits.tmpfs_max, |m| m.min(cfg.limits.tmpfs_max)),
    };
    let mut spec = ActionSpec {
        root: root.clone(),
        working_dir: command.working_directory.clone(),
        argv: command.arguments.clone(),
        env: command
            .environment_variables
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        timeout: Duration::from_secs(u64::from(a.timeout_seconds.max(1))),
        stdout: dir.join("stdout"),
        stderr: dir.join("stderr"),
        max_output_bytes: cfg.sandbox.max_output_bytes,
        rlimits: Default::default(),
    };
    let mut scope = Scope::new(
        w.scopes.as_ref(),
        w.cgroups.as_ref(),
        action_id,
        format!("rbe action {action_digest} ({})", a.operation),
        limits.clone(),
    );
    let (cgroup_memory, cgroup_tasks) = scope.cgroup_caps();
    spec.rlimits = confine::rlimits_for(&cfg.limits, &limits, cgroup_memory, cgroup_tasks);
    let cancelled = cancel.clone().cancelled_owned();
    let outcome = match rbe_exec::run_confined(&sandbox, &spec, cancelled, &mut scope).await {
        Ok(o) => o,
        Err(rbe_exec::ExecError::Confinement(why)) => {
            // systemd could not take the action: a fault of this worker,
            // worth retrying elsewhere.
            tracing::error!(operation = %a.operation, unit = %scope.unit, reason = %why, "could not create the action's scope");
            return Ok(fail(
                a.id,
                Outcome::Unavailable,
                format!(
                    "worker {}: could not create the action's scope: {why}",
                    w.name
                ),
            ));
        }
        Err(e) => {
            // A program that does not exist, a bad working directory: the
            // action's fault, reported as such.
            let outcome = match e {
                rbe_exec::ExecError::Setup { .. }
                | rbe_exec::ExecError::Io { .. }
                | rbe_exec::ExecError::Internal(_) => exec_error_outcome(&e, Outcome::WorkerFault),
                _ => Outcome::InvalidAction,
            };
            return Ok(fail(a.id, outcome, e.to_string()));
        }
    };
    if outcome.cancelled {
        return Ok(fail(a.id, Outcome::Cancelled, "cancelled"));
    }

    // Outputs.
    let upload_start = SystemTime::now();
    let mut up = Uploader::new(w.casd.clone(), a.instance_name.clone(), f);
    let mut result = ActionResult {
        exit_code: outcome.exit_code,
        ..Default::default()
    };
    for (path, slot, what) in [
        (&spec.stdout, &mut result.stdout_digest, "stdout"),
        (&spec.stderr, &mut result.stderr_digest, "stderr"),
    ] {
        let d = match std::fs::File::open(path) {
            Ok(f) => up.file(f, what).await?,
            Err(_) => up.bytes(Vec::new()).await?,
        };
        *slot = Some(d.to_reapi());
    }
    #[allow(deprecated)]
    let (legacy_files, legacy_dirs) = (
        command.output_files.clone(),
        command.output_directories.clone(),
    );
    // One budget of entries for all of the action's output directories.
    let mut limits = rbe_exec::OutputLimits {
        max_depth: cfg.outputs.max_depth,
        max_entries: cfg.outputs.max_entries,
        max_path_bytes: cfg.outputs.max_path_bytes,
    };
    for p in &declared {
        let opened = rbe_exec::open_output(&root, &command.working_directory, p, limits);
        let found = match opened {
            Ok(None) => continue,
            Ok(Some(rbe_exec::Output::Directory(mut walk))) => {
                let r = outputs::upload_tree(&mut up, &mut walk).await;
                limits.max_entries = limits.max_entries.saturating_sub(walk.entries());
                r.map(|tree| Found::Directory { tree })
            }
            Ok(Some(o)) => outputs::upload(&mut up, o).await,
            Err(e) => Err(e.into()),
        };
        let found = match found {
            Ok(f) => f,
            // The action's outputs, not the worker: the action fails with
            // what it printed, and Bazel does not retry it.
            Err(e) if e.downcast_ref::<rbe_exec::ExecError>().is_some() => {
                up.flush().await?;
                let (outcome, message) = match e.downcast_ref::<rbe_exec::ExecError>() {
                    Some(limit @ rbe_exec::ExecError::OutputLimit { .. }) => {
                        (Outcome::InvalidAction, limit.to_string())
                    }
                    Some(x) => (
                        exec_error_outcome(x, Outcome::InvalidAction),
                        format!("output {p:?}: {e:#}"),
                    ),
                    None => (Outcome::InvalidAction, format!("output {p:?}: {e:#}")),
                };
                tracing::info!(operation = %a.operation, invocation_id = %a.invocation_id, reason = %message, "action outputs refused");
                let mut f = fail(a.id, outcome, message);
                f.action_result = result.encode_to_vec();
                return Ok(f);
            }
            Err(e) => return Err(e),
        };
        match found {
            Found::File { digest, executable } => result.output_files.push(OutputFile {
                path: p.clone(),
                digest: Some(digest.to_reapi()),
                is_executable: executable,
                contents: Default::default(),
                node_properties: None,
            }),
            Found::Directory { tree } => result.output_directories.push(OutputDirectory {
                path: p.clone(),
                tree_digest: Some(tree.to_reapi()),
                ..Default::default()
            }),
            Found::Symlink { target } => {
                let s = OutputSymlink {
                    path: p.clone(),
                    target,
                    node_properties: None,
                };
                #[allow(deprecated)]
                {
                    if legacy_files.contains(p) {
                        result.output_file_symlinks.push(s.clone());
                    } else if legacy_dirs.contains(p) {
                        result.output_directory_symlinks.push(s.clone());
                    }
                }
                result.output_symlinks.push(s);
            }
        }
    }
    up.flush().await?;
    let done = SystemTime::now();
    let queued = a.queued_unix_micros.max(0) as u64;
    let usage = scope.usage.unwrap_or_default();
    result.execution_metadata = Some(ExecutedActionMetadata {
        auxiliary_metadata: scope.metadata().into_iter().collect(),
        worker: w.name.clone(),
        queued_timestamp: wkt(SystemTime::UNIX_EPOCH + Duration::from_micros(queued)),
        worker_start_timestamp: wkt(worker_start),
        worker_completed_timestamp: wkt(done),
        input_fetch_start_timestamp: wkt(fetch_start),
        input_fetch_completed_timestamp: wkt(fetch_done),
        execution_start_timestamp: wkt(outcome.started),
        execution_completed_timestamp: wkt(outcome.finished),
        output_upload_start_timestamp: wkt(upload_start),
        output_upload_completed_timestamp: wkt(done),
        ..Default::default()
    });
    let ms = |from: SystemTime, to: SystemTime| {
        to.duration_since(from).unwrap_or_default().as_secs_f64() * 1000.0
    };
    // The client's RequestMetadata, as the frontend (of this host, or of
    // the origin that offloaded it here) passed it on: only for this line.
    let m = rbe_proto::reapi::RequestMetadata::decode(a.request_metadata.as_slice())
        .unwrap_or_default();
    tracing::info!(
        operation = %a.operation,
        action_digest = %action_digest,
        invocation_id = %a.invocation_id,
        correlated_invocations_id = %m.correlated_invocations_id,
        tool_name = %m.tool_details.as_ref().map_or("", |t| t.tool_name.as_str()),
        action_mnemonic = %m.action_mnemonic,
        target_id = %m.target_id,
        configuration_id = %m.configuration_id,
        exit_code = outcome.exit_code,
        timed_out = outcome.timed_out,
        oom_killed = scope.oom_killed(),
        slot = slot.map_or(-1, i64::from),
        unit = %scope.systemd_unit(),
        input_fetch_ms = ms(fetch_start, fetch_done),
        execution_ms = ms(outcome.started, outcome.finished),
        output_upload_ms = ms(upload_start, done),
        cpu_usec = usage.cpu_usec.unwrap_or(0),
        memory_peak_bytes = usage.memory_peak_bytes.unwrap_or(0),
        "action finished"
    );
    let mut fin = Finished {
        id: a.id,
        outcome: Outcome::Ran as i32,
        action_result: result.encode_to_vec(),
        ..Default::default()
    };
    if scope.oom_killed() {
        fin.oom_killed = true;
        fin.message = format!(
            "the action was killed by the kernel's OOM killer: it went over its memory limit{} (peak {} bytes)",
            scope.limits.memory_max.map(|m| format!(" of {m} bytes")).unwrap_or_default(),
            usage.memory_peak_bytes.unwrap_or(0),
        );
    } else if scope.hit_tasks_max() && outcome.exit_code != 0 {
        fin.message = format!(
            "the action reached its limit of {} processes and threads (limits.tasks_max); forks failed",
            scope.limits.tasks_max.unwrap_or(0)
        );
    }
    if outcome.timed_out {
        fin.outcome = Outcome::TimedOut as i32;
        fin.message = format!("action timed out after {} s", a.timeout_seconds);
    }
    Ok(fin)
}
