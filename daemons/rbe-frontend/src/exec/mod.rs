//! Remote execution in the frontend: the owner of operations ([`Exec`]),
//! the public Execution and Operations services, and the worker hub that
//! rbe-workerd attaches to.
//!
//! An execution (the scheduler's operation, `OpId`) is one run of an
//! action, shared by every identical request; each request holds its own
//! operation handle ([`handles`]): the name the client sees, its owner, and
//! a `watch` channel with its latest snapshot, which the Execute and
//! WaitExecution streams and WaitOperation read. Assignments go to workers
//! through a [`workers::WorkerLink`], cancellations become Cancel
//! messages, results become ExecuteResponses for every handle
//! ([`outcome`]) and (exit 0, cacheable) action-cache entries, written in
//! the background by [`results`].
//!
//! Operation names carry their instance, `{instance}/operations/{uuid}`
//! (`operations/{uuid}` for the empty instance), so a name only ever finds
//! an operation of the instance it names. In a cluster they carry their
//! holder too, `{instance}/operations/{node}.{gen36}.{uuid}` ([`NameMaker`],
//! `rbe_cluster::names`), and [`route`] sends a request about another
//! host's name to that host.
//!
//! # One owner, one lock
//!
//! Everything about operations — the scheduler, the per-execution facts,
//! the handles and the worker links — is one [`owner::State`] behind one
//! mutex inside [`Exec`]. The services never see it: they call `Exec`'s
//! methods, and each method takes the lock once (`Exec::run`), so there is
//! no lock order to keep. Under the lock only work that cannot block is
//! done:
//!
//! - scheduler calls and map updates;
//! - [`workers::WorkerLink`] sends (Assign, Cancel), which must not
//!   block: they are made under the lock so that a Cancel decided later
//!   can never overtake its Assign;
//! - stage changes on the handles' watch channels (no response cloned);
//! - [`results::RecentResults::put`] (a leaf mutex and a channel push): a
//!   result must be findable there before its action leaves the in-flight
//!   map, or an identical request could run it again;
//! - `Caller::granted`, which answers from memory.
//!
//! - short log lines (an assignment, a cancellation).
//!
//! The final responses to the streams of handles just made done (a clone
//! of the response per stream) are collected while the lock is held and
//! sent after it, in one place (`Effects::apply`); a worker's report is
//! decoded, logged and turned into its ExecuteResponse outside the lock.
//! Nothing under the lock awaits, and nothing called under it calls back
//! into `Exec`.
//!
//! # Extending
//!
//! A new kind of executor (the cluster's remote leases) is one more
//! [`workers::WorkerLink`] implementation registered under the `WorkerId`
//! the scheduler gave it; its results come back through
//! [`Exec::worker_finished`] and its loss through [`Exec::worker_detach`],
//! exactly like a local worker's, and a report from a link the scheduler no
//! longer knows is ignored.

pub mod execution;
pub mod handles;
pub mod hub;
pub mod operations;
pub mod outcome;
pub mod owner;
pub mod remote;
pub mod results;
pub mod retained;
pub mod route;
pub mod workers;

#[cfg(test)]
mod fake_worker_tests;
#[cfg(test)]
mod owner_tests;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prost::Message;
use rbe_config::Execution as ExecSettings;
use rbe_proto::longrunning::{operation, Operation};
use rbe_proto::reapi::{self, ExecuteOperationMetadata, ExecuteResponse};
use rbe_proto::wkt::Any;
use rbe_sched::{SchedConfig, Scheduler, SystemClock};

use crate::proxy::Upstream;
use results::RecentResults;

pub use owner::{Submission, Submitted};
pub use workers::HubLink;

/// What a client sees of an operation at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// REAPI ExecutionStage.Value.
    pub stage: i32,
    /// The final response, once done.
    pub response: Option<ExecuteResponse>,
}

/// The owner of every operation, and what the services share.
///
/// Its operation state is private (see the module documentation): the
/// services call its methods, in [`owner`] (requests), [`workers`]
/// (worker links and their reports) and [`owner`]'s lifecycle methods
/// (tick, drain, shutdown).
pub struct Exec {
    /// Who may see and cancel other clients' operations.
    pub access: Arc<crate::access::Access>,
    /// casd, and the limits on streams relayed to it.
    pub upstream: Upstream,
    /// Swapped whole by a reload.
    pub settings: arc_swap::ArcSwap<ExecSettings>,
    /// The scheduler, executions, handles and worker links: one lock.
    state: Mutex<owner::State>,
    /// Results not yet (or only just) in the action cache.
    recent: Arc<RecentResults>,
    /// Makes the names of new operations.
    names: NameMaker,
    /// Woken when work is queued or a worker frees a slot (the cluster's
    /// rebalance waits on it between ticks).
    pub queue_changed: tokio::sync::Notify,
}

/// Makes operation names: plain ones on a host alone, names that carry
/// this host as their holder once it is in a cluster.
///
/// The cluster is set once, at start, before the public listeners serve
/// (the cluster starts after [`Exec`], which its peer service needs).
#[derive(Default)]
pub struct NameMaker(std::sync::OnceLock<Arc<crate::cluster::Cluster>>);

impl NameMaker {
    /// A fresh name for an operation of `instance`. Cheap and never
    /// blocks: it is called under the owner's lock.
    pub fn make(&self, instance: &str) -> String {
        match self.0.get() {
            Some(c) => c.operation_name(instance),
            None => new_operation_name(instance),
        }
    }
}

fn sched_config(settings: &ExecSettings) -> SchedConfig {
    SchedConfig {
        max_queued: settings.max_queued as usize,
        max_queued_per_client: settings.max_queued_per_client as usize,
        retry_after: Duration::from_secs(1),
        retention: Duration::from_secs(settings.operation_retention_secs),
        max_completed: 100_000,
        unmatchable_grace: Duration::from_secs(settings.unmatchable_grace_secs),
    }
}

impl Exec {
    /// A new owner, with no operation and no worker.
    pub fn new(
        upstream: Upstream,
        settings: ExecSettings,
        access: Arc<crate::access::Access>,
    ) -> Arc<Self> {
        let sched = Scheduler::new(sched_config(&settings), Arc::new(SystemClock::default()));
        Arc::new(Exec {
            access,
            state: Mutex::new(owner::State::new(sched)),
            recent: Arc::new(RecentResults::start(upstream.clone())),
            names: NameMaker::default(),
            upstream,
            settings: arc_swap::ArcSwap::from_pointee(settings),
            queue_changed: tokio::sync::Notify::new(),
        })
    }

    /// Applies reloaded `[execution]` settings to operations queued from
    /// now on.
    pub fn reconfigure(&self, settings: ExecSettings) {
        self.run(|st, _| st.sched.set_config(sched_config(&settings)));
        self.settings.store(Arc::new(settings));
    }

    /// Makes this host the holder of every operation named from now on
    /// (set once, at start; a second call is ignored).
    pub fn join_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.names.0.set(cluster);
    }

    /// The cluster this host is in, if any.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.names.0.get()
    }

    /// A fresh name for a new operation of `instance`.
    pub fn operation_name(&self, instance: &str) -> String {
        self.names.make(instance)
    }

    /// Results whose action-cache write is pending or just landed (the
    /// ActionCache proxy waits for them; the stop drains them).
    pub fn recent(&self) -> &Arc<RecentResults> {
        &self.recent
    }
}

/// A fresh operation name for `instance`, as REAPI suggests, on a host
/// outside a cluster (see [`Exec::operation_name`]).
pub fn new_operation_name(instance: &str) -> String {
    let id = uuid::Uuid::new_v4();
    if instance.is_empty() {
        format!("operations/{id}")
    } else {
        format!("{instance}/operations/{id}")
    }
}

/// The instance an operation name belongs to: what precedes its
/// `operations` segment (a reserved word, never part of an instance name).
pub fn instance_of_name(name: &str) -> Option<&str> {
    if name.starts_with("operations/") {
        return Some("");
    }
    name.split_once("/operations/").map(|(i, _)| i)
}

const METADATA_TYPE: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata";
const RESPONSE_TYPE: &str = "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse";

/// A `google.rpc.Status` for an ExecuteResponse.
pub fn rpc_status(code: tonic::Code, message: impl Into<String>) -> rbe_proto::rpc::Status {
    rbe_proto::rpc::Status {
        code: code as i32,
        message: message.into(),
        details: vec![],
    }
}

/// Builds the longrunning Operation for a snapshot.
pub fn operation(
    name: &str,
    action_digest: &reapi::Digest,
    digest_function: i32,
    s: &Snapshot,
) -> Operation {
    let md = ExecuteOperationMetadata {
        stage: s.stage,
        action_digest: Some(action_digest.clone()),
        digest_function,
        ..Default::default()
    };
    Operation {
        name: name.to_string(),
        metadata: Some(Any {
            type_url: METADATA_TYPE.into(),
            value: md.encode_to_vec(),
        }),
        done: s.response.is_some(),
        result: s.response.as_ref().map(|r| {
            operation::Result::Response(Any {
                type_url: RESPONSE_TYPE.into(),
                value: r.encode_to_vec(),
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_carry_their_instance() {
        let n = new_operation_name("");
        assert!(n.starts_with("operations/"), "{n}");
        assert_eq!(instance_of_name(&n), Some(""));
        let n = new_operation_name("a/b");
        assert!(n.starts_with("a/b/operations/"), "{n}");
        assert_eq!(instance_of_name(&n), Some("a/b"));
        assert_eq!(instance_of_name("nonsense"), None);
        // Cluster names split the same way.
        let node = rbe_cluster::NodeName::new("b3").expect("node");
        let id = rbe_cluster::names::new_operation_id();
        let n = rbe_cluster::names::operation_name("a/b", &node, 7, id);
        assert_eq!(instance_of_name(&n), Some("a/b"));
        let n = rbe_cluster::names::operation_name("", &node, 7, id);
        assert_eq!(instance_of_name(&n), Some(""));
    }
}
