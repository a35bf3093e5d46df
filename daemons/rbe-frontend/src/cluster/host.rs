//! `Peer.Run` on the executing host: an action another host offloads here.
//!
//! The first message must be an Offer from the node the caller's
//! certificate names, for hop 0, with an Assignment that validates. This
//! host admits it only if it can start it soon (`OffloadPolicy::admit`),
//! else it answers Rejected with its load. Once accepted, the input tree
//! is pulled from the origin's read-only peer CAS into the local casd
//! (hash-verified there; the offer counts as `incoming` meanwhile; blobs
//! the origin lacks end it INPUTS_MISSING naming them, which the origin's
//! client gets as from a local worker); when the Offer names this host's
//! own backing store id nothing is pulled (its casd fetches the inputs
//! through from the shared store on Materialize, and a blob that store
//! lacks is the worker's INPUTS_MISSING, which goes back the same way).
//! Then the action is queued as a *hosted* execution owned by `peer:<origin>`:
//! never offered on, and no action-cache entry is written here (the origin
//! writes it once it holds the outputs). Stages, heartbeats every lease/3
//! and the result go back on the stream. CancelLease, or the origin ending
//! its stream, withdraws the handle (the action is killed when no other
//! waiter joined it). An action whose origin is gone (its stream broke,
//! or membership declared it down) is an orphan: after
//! `orphan_grace_secs` `orphan_policy` cancels it or lets it finish
//! ([`orphan`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rbe_cluster::policy::{HostLoad, OfferInfo, PROTO};
use rbe_cluster::NodeName;
use rbe_proto::cluster::{
    host_message, origin_message, Accepted, Heartbeat, HostMessage, LoadReport, Offer,
    OriginMessage, RejectReason, Rejected, StageUpdate,
};
use rbe_proto::reapi::{self, Action, ActionResult, ExecuteResponse};
use rbe_proto::worker::{Assignment, Finished, Outcome};
use rbe_proto::{Digest, DigestFunction};
use rbe_sched::{ActionKey, Platform, Tenant};
use tokio::sync::mpsc;
use tonic::{Code, Status, Streaming};

use super::{orphan, Cluster, Counters, PeerNode};
use crate::exec::handles::{Attached, Origin};
use crate::exec::{Exec, Submission, Submitted};
use crate::proxy::relay::BoxStream;

/// How long the origin may take to send its Offer.
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often membership is looked at for the origin of a hosted action.
const MEMBER_CHECK: Duration = Duration::from_secs(1);

/// An offer that validated.
struct Valid {
    offer: Offer,
    origin: NodeName,
    assignment: Assignment,
    function: DigestFunction,
    action_digest: Digest,
    input_root: Digest,
    platform: Platform,
    do_not_cache: bool,
    /// The client's RequestMetadata: the hosted action is logged under it
    /// here, as at the origin.
    metadata: reapi::RequestMetadata,
    /// The origin's casd and this host's stand in front of one backing
    /// store: nothing is pulled, casd fetches the inputs through.
    shared_store: bool,
}

/// Checks an offer's contents; `caller` is the node the certificate names.
fn validate(caller: &NodeName, offer: Offer) -> Result<Valid, Status> {
    if offer.origin_node != caller.as_str() {
        return Err(Status::permission_denied(format!(
            "the certificate names {caller}, the offer {:?}",
            offer.origin_node
        )));
    }
    let bad = |m: String| Status::invalid_argument(m);
    let mut assignment = Assignment::decode(offer.assignment.as_slice())
        .map_err(|e| bad(format!("the offer's assignment does not decode: {e}")))?;
    // The offer's RequestMetadata is the client's: it names the invocation
    // here and for the worker, whatever the assignment says.
    let metadata = reapi::RequestMetadata::decode(offer.request_metadata.as_slice())
        .map_err(|e| bad(format!("the offer's request metadata does not decode: {e}")))?;
    if !offer.request_metadata.is_empty() {
        assignment.invocation_id = metadata.tool_invocation_id.clone();
        assignment.request_metadata = metadata.encode_to_vec();
    }
    rbe_proto::resource::validate_instance(&assignment.instance_name)
        .map_err(|r| bad(format!("instance name {:?}: {r}", assignment.instance_name)))?;
    let function = DigestFunction::from_reapi(assignment.digest_function)
        .map_err(|e| bad(format!("digest function: {e}")))?;
    let action_digest = Digest::parse(function, &assignment.action_hash, assignment.action_size)
        .map_err(|e| bad(format!("action digest: {e}")))?;
    if Digest::of(function, &assignment.action) != action_digest {
        return Err(bad("the action bytes do not match the action digest".into()));
    }
    let action = Action::decode(assignment.action.as_slice())
        .map_err(|e| bad(format!("the action does not decode: {e}")))?;
    let input_root = Digest::from_reapi_opt(function, action.input_root_digest.as_ref())
        .map_err(|e| bad(format!("input_root_digest: {e}")))?;
    let command = Digest::from_reapi_opt(function, action.command_digest.as_ref())
        .map_err(|e| bad(format!("command_digest: {e}")))?;
    if Digest::of(function, &assignment.command) != command {
        return Err(bad(
            "the command bytes do not match the command digest".into()
        ));
    }
    let platform = Platform::from_pairs(
        offer
            .platform
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect::<Vec<_>>(),
    );
    Ok(Valid {
        origin: caller.clone(),
        assignment,
        function,
        action_digest,
        input_root,
        platform,
        do_not_cache: action.do_not_cache,
        metadata,
        offer,
        shared_store: false,
    })
}

fn one(msg: HostMessage) -> BoxStream<HostMessage> {
    Box::pin(futures::stream::once(async move { Ok(msg) }))
}

/// Peer.Run: see the module documentation.
pub async fn run(
    cluster: &Arc<Cluster>,
    exec: &Arc<Exec>,
    req: tonic::Request<Streaming<OriginMessage>>,
) -> Result<BoxStream<HostMessage>, Status> {
    let caller = PeerNode::of(&req)?.0.clone();
    let mut incoming = req.into_inner();
    let first = tokio::time::timeout(OFFER_TIMEOUT, incoming.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no offer"))??;
    let Some(OriginMessage {
        kind: Some(origin_message::Kind::Offer(offer)),
    }) = first
    else {
        return Err(Status::invalid_argument(
            "the first message must be an Offer",
        ));
    };
    Counters::bump(&cluster.counters.offers_received);
    let mut v = match validate(&caller, offer) {
        Ok(v) => v,
        Err(s) => {
            Counters::bump(&cluster.counters.offers_refused);
            tracing::warn!(origin = %caller, reason = %s.message(), "offload: offer refused");
            return Err(s);
        }
    };
    let limit = cluster.offload.load().max_transfer_bytes;
    // Decided once, with the id the Accepted below carries: the origin
    // pulls the outputs back or not by the same comparison.
    let load = cluster.own_report(exec);
    v.shared_store = super::store::same_store(v.offer.store_id, load.store_id);
    let pools = exec.pool_loads();
    // Nothing moves through a shared store: the transfer limit is moot.
    let admitted = if !v.shared_store && v.offer.input_bytes > limit {
        Counters::bump(&cluster.counters.hosted_too_large);
        Err(RejectReason::TooLarge)
    } else {
        cluster.placement.lock().policy.admit(
            cluster.now(),
            &HostLoad {
                accepting: !exec.draining() && cluster.offload.load().enabled,
                pools: &pools,
                incoming: cluster.incoming.load(Ordering::Relaxed),
            },
            &OfferInfo {
                origin: &v.origin,
                platform: &v.platform,
                hop: v.offer.hop,
                proto: PROTO,
            },
        )
    };
    let lease = v.offer.lease_epoch;
    if let Err(reason) = admitted {
        Counters::bump(&cluster.counters.offers_refused);
        let message = reject_message(reason);
        tracing::info!(origin = %v.origin, lease, operation = %v.assignment.operation, invocation_id = %v.assignment.invocation_id, reason = reason.as_str_name(), "offload: offer rejected");
        return Ok(one(HostMessage {
            kind: Some(host_message::Kind::Rejected(Rejected {
                reason: reason as i32,
                message,
                load: Some(cluster.own_report(exec)),
            })),
            load: None,
        }));
    }
    Counters::bump(&cluster.counters.offers_admitted);
    // Counted from the admission on, not from when the task below starts:
    // the next offer's admission and the load in this Accepted must see
    // it, or the origin, taking that load, offers one too many.
    let counted = Incoming::new(Arc::clone(cluster));
    let lease_secs = cluster.offload.load().lease_secs.max(1);
    let (tx, rx) = mpsc::channel(8);
    let accepted = HostMessage {
        kind: Some(host_message::Kind::Accepted(Accepted {
            lease_ms: u32::try_from(lease_secs * 1000).unwrap_or(u32::MAX),
            load: Some(LoadReport {
                store_id: load.store_id,
                ..cluster.own_report(exec)
            }),
        })),
        load: None,
    };
    // The channel is fresh: this send has room.
    let _ = tx.try_send(Ok(accepted));
    let m = &v.metadata;
    tracing::info!(
        origin = %v.origin,
        lease,
        operation = %v.assignment.operation,
        action_digest = %v.action_digest,
        invocation_id = %v.assignment.invocation_id,
        correlated_invocations_id = %m.correlated_invocations_id,
        tool_name = %m.tool_details.as_ref().map_or("", |t| t.tool_name.as_str()),
        action_mnemonic = %m.action_mnemonic,
        target_id = %m.target_id,
        configuration_id = %m.configuration_id,
        client = %v.offer.client,
        shared_store = v.shared_store,
        "offload: offer accepted"
    );
    let (cluster, exec) = (Arc::clone(cluster), Arc::clone(exec));
    tokio::spawn(async move { host(cluster, exec, v, incoming, tx, counted).await });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

fn reject_message(r: RejectReason) -> String {
    match r {
        RejectReason::Busy => "this host cannot start it soon",
        RejectReason::NoPlatform => "no pool here has its platform",
        RejectReason::Draining => "this host is stopping",
        RejectReason::Version => "another cluster protocol",
        RejectReason::Hop => "offloaded work is not offloaded again",
        RejectReason::Rate => "too many offers from this origin",
        RejectReason::TooLarge => "the input tree is over this host's max_transfer_bytes",
        RejectReason::Invalid | RejectReason::Unspecified => "refused",
    }
    .to_string()
}

type Out = mpsc::Sender<Result<HostMessage, Status>>;

/// Counts one offer in [`Cluster::incoming`] until the hydration ends,
/// however it ends.
struct Incoming(Arc<Cluster>);
impl Incoming {
    fn new(cluster: Arc<Cluster>) -> Self {
        cluster.incoming.fetch_add(1, Ordering::Relaxed);
        Incoming(cluster)
    }
}
impl Drop for Incoming {
    fn drop(&mut self) {
        self.0.incoming.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The accepted action: hydrate, queue, follow, report.
async fn host(
    cluster: Arc<Cluster>,
    exec: Arc<Exec>,
    v: Valid,
    mut incoming: Streaming<OriginMessage>,
    tx: Out,
    counted: Incoming,
) {
    let lease = v.offer.lease_epoch;
    let op = v.assignment.operation.clone();
    let invocation = v.assignment.invocation_id.clone();
    let origin = v.origin.clone();
    let finish = |n: NotStarted| Finished {
        id: lease,
        outcome: n.outcome as i32,
        message: n.message,
        missing: n.missing,
        ..Default::default()
    };
    let attached = {
        let _counted = counted;
        let hydrated = if v.shared_store {
            Counters::bump(&cluster.counters.shared_store_hosted);
            tracing::info!(origin = %v.origin, lease, operation = %op, invocation_id = %invocation, store_id = %super::store::hex(v.offer.store_id), "offload: inputs left in the shared backing store");
            Ok(())
        } else {
            hydrate(&cluster, &exec, &v).await
        };
        match hydrated {
            Ok(()) => submit(&exec, &v),
            Err(e) => Err(e),
        }
    };
    let a = match attached {
        Ok(a) => a,
        Err(f) => {
            let f = finish(f);
            tracing::warn!(origin = %origin, lease, operation = %op, invocation_id = %invocation, reason = %f.message, "offload: hosted action not started");
            let _ = tx.send(Ok(finished_msg(&cluster, &exec, &f))).await;
            return;
        }
    };
    let lease_secs = cluster.offload.load().lease_secs.max(1);
    let mut heartbeat = tokio::time::interval(Duration::from_millis(lease_secs * 1000 / 3));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval(MEMBER_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rx = a.rx.clone();
    let mut last_stage = -1;
    let mut watch = orphan::Watch::default();
    // Decided once the grace time is over: Finish keeps it running.
    let mut fate: Option<orphan::Fate> = None;
    let mut origin_open = true;
    // The origin's stream broke: nothing more can be sent on it.
    let mut broken = false;
    let log = Log {
        origin: &origin,
        lease,
        op: &op,
        invocation: &invocation,
    };
    loop {
        let snap = rx.borrow_and_update().clone();
        if let Some(response) = snap.response {
            if fate == Some(orphan::Fate::Finish) {
                finish_orphan(&cluster, &exec, &v, &log, &response);
            }
            if !broken {
                let f = finished_of(&cluster, lease, response);
                tracing::info!(origin = %origin, lease, operation = %op, invocation_id = %invocation, outcome = f.outcome, "offload: hosted action done");
                // The last message: worth waiting for room, not forever.
                let send = tx.send(Ok(finished_msg(&cluster, &exec, &f)));
                let _ = tokio::time::timeout(Duration::from_secs(lease_secs), send).await;
            }
            exec.stream_ended(a.id, a.exec);
            return;
        }
        if snap.stage != last_stage && !broken {
            let m = HostMessage {
                kind: Some(host_message::Kind::Stage(StageUpdate { stage: snap.stage })),
                load: None,
            };
            match tx.try_send(Ok(m)) {
                Ok(()) => last_stage = snap.stage,
                // Sent again on the next wake (a heartbeat at the latest).
                Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    log.broke(&mut broken, &mut watch, &cluster)
                }
            }
        }
        let o = cluster.offload.load();
        let grace = Duration::from_secs(o.orphan_grace_secs);
        if fate.is_none() && watch.expired(Instant::now(), grace) {
            let shared = super::store::same_store(v.offer.store_id, cluster.store_id());
            let f = orphan::fate(o.orphan_policy, shared, v.do_not_cache);
            if f == orphan::Fate::Cancel {
                Counters::bump(&cluster.counters.orphans_cancelled);
                tracing::warn!(origin = %origin, lease, operation = %op, invocation_id = %invocation, orphan_policy = ?o.orphan_policy, grace_secs = o.orphan_grace_secs, reason = "orphaned", "offload: orphan cancelled after the grace time");
                exec.stream_ended(a.id, a.exec);
                return;
            }
            tracing::info!(origin = %origin, lease, operation = %op, invocation_id = %invocation, orphan_policy = ?o.orphan_policy, grace_secs = o.orphan_grace_secs, "offload: orphan kept running to its end");
            fate = Some(f);
        }
        // Wake at the end of the grace time, not a heartbeat later.
        let wake = watch
            .deadline(grace)
            .filter(|_| fate.is_none())
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = heartbeat.tick() => {
                if !broken {
                    let m = HostMessage { kind: Some(host_message::Kind::Heartbeat(Heartbeat {})), load: None };
                    // Full: the origin is not reading; its silence timer
                    // deals with that, and this loop must not block.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Ok(m)) {
                        log.broke(&mut broken, &mut watch, &cluster);
                    }
                }
            }
            _ = check.tick() => {
                let live = cluster.view().live().any(|m| m.member.node.as_str() == origin.as_str());
                log.changed(watch.membership(Instant::now(), live), &cluster);
            }
            _ = sleep_until(wake) => {}
            m = incoming.message(), if origin_open => match m {
                Ok(Some(OriginMessage { kind: Some(origin_message::Kind::Cancel(_)) })) | Ok(None) => {
                    tracing::info!(origin = %origin, lease, operation = %op, invocation_id = %invocation, reason = "cancelled by the origin", "offload: hosted action withdrawn");
                    exec.stream_ended(a.id, a.exec);
                    return;
                }
                Ok(Some(_)) => {}
                Err(_) => {
                    // Broken, not ended: the origin may be gone for good,
                    // or only its connection; the action runs on a while.
                    origin_open = false;
                    log.broke(&mut broken, &mut watch, &cluster);
                }
            },
        }
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The fields every log line of a hosted action carries.
struct Log<'a> {
    origin: &'a NodeName,
    lease: u64,
    op: &'a str,
    invocation: &'a str,
}

impl Log<'_> {
    /// The origin's stream broke.
    fn broke(&self, broken: &mut bool, watch: &mut orphan::Watch, cluster: &Cluster) {
        *broken = true;
        self.changed(watch.stream_broke(Instant::now()), cluster);
    }

    /// Logs and counts an orphan's change of state.
    fn changed(&self, c: orphan::Change, cluster: &Cluster) {
        let Log {
            origin,
            lease,
            op,
            invocation,
        } = self;
        match c {
            orphan::Change::None => {}
            orphan::Change::Orphaned(cause) => {
                Counters::bump(&cluster.counters.orphans);
                tracing::warn!(origin = %origin, lease, operation = %op, invocation_id = %invocation, reason = cause.as_str(), grace_secs = cluster.offload.load().orphan_grace_secs, "offload: the origin of a hosted action is gone");
            }
            orphan::Change::Adopted => {
                Counters::bump(&cluster.counters.orphans_adopted);
                tracing::info!(origin = %origin, lease, operation = %op, invocation_id = %invocation, "offload: the origin of a hosted action is back");
            }
        }
    }
}

/// An orphan that ran to its end: its result goes to the action cache
/// here (the origin that would have written it is gone).
fn finish_orphan(cluster: &Cluster, exec: &Exec, v: &Valid, log: &Log<'_>, r: &ExecuteResponse) {
    Counters::bump(&cluster.counters.orphans_finished);
    let ran = r.status.as_ref().map_or(0, |s| s.code) == Code::Ok as i32;
    let result = r.result.as_ref().filter(|ar| ran && ar.exit_code == 0);
    let cached = match result {
        Some(ar) if !v.do_not_cache => {
            let instance = v.assignment.instance_name.clone();
            exec.recent().put(
                crate::exec::results::action_key(&instance, &v.action_digest),
                v.assignment.operation.clone(),
                reapi::UpdateActionResultRequest {
                    instance_name: instance,
                    action_digest: Some(v.action_digest.to_reapi()),
                    action_result: Some(ar.clone()),
                    results_cache_policy: None,
                    digest_function: v.function.to_reapi(),
                },
            );
            true
        }
        _ => false,
    };
    tracing::info!(origin = %log.origin, lease = log.lease, operation = %log.op, invocation_id = %log.invocation, cached, "offload: orphan finished");
}

/// The result, with this host's load now that its slot is free.
fn finished_msg(cluster: &Cluster, exec: &Exec, f: &Finished) -> HostMessage {
    HostMessage {
        kind: Some(host_message::Kind::Finished(f.encode_to_vec())),
        load: Some(cluster.own_report(exec)),
    }
}

/// Why a hosted action was not started, for the origin's Finished.
struct NotStarted {
    outcome: Outcome,
    message: String,
    /// INPUTS_MISSING: the blobs, as `<hash>/<size>`.
    missing: Vec<String>,
}

fn unavailable(message: String) -> NotStarted {
    NotStarted {
        outcome: Outcome::Unavailable,
        message,
        missing: vec![],
    }
}

/// Pulls the input tree from the origin's peer CAS into the local casd.
///
/// Blobs the origin lacks are INPUTS_MISSING naming them, which completes
/// the operation at the origin with FAILED_PRECONDITION and its MISSING
/// violations, as a local worker's report would (Bazel uploads them and
/// executes again); another host would lack them just the same, so this is
/// no lost lease. Anything else is UNAVAILABLE: the origin dispatches
/// again.
async fn hydrate(cluster: &Cluster, exec: &Exec, v: &Valid) -> Result<(), NotStarted> {
    let Some((channel, _)) = cluster.any_channel(&v.origin) else {
        return Err(unavailable("the origin is not a member".into()));
    };
    let addr = cluster
        .peers
        .lock()
        .get(&v.origin)
        .map(|p| p.addr.to_string())
        .unwrap_or_default();
    let instance = v.assignment.instance_name.clone();
    // The tree itself, not the offer's word: a claim below the real size,
    // or a tree over this host's limit, is not pulled.
    let limit = cluster.offload.load().max_transfer_bytes;
    let claim = v.offer.input_bytes;
    let bound = if claim > 0 { limit.min(claim) } else { limit };
    let max_message = exec.upstream.max_message;
    match super::tree_size::measure(
        channel.clone(),
        &instance,
        v.function,
        v.input_root,
        bound,
        max_message,
    )
    .await
    {
        Ok(n) if n > bound => {
            Counters::bump(&cluster.counters.hosted_too_large);
            return Err(unavailable(format!(
                "the input tree has over {n} bytes; the offer claimed {claim}, max_transfer_bytes is {limit}"
            )));
        }
        Ok(_) => {}
        Err(s) => {
            return Err(unavailable(format!(
                "the input tree was not measured: {}",
                s.message()
            )))
        }
    }
    let source = rbe_transfer::Source::new(channel, addr, instance.clone(), Default::default());
    let local = rbe_transfer::Local::new(exec.upstream.unary.clone(), instance);
    match rbe_transfer::fetch_input_closure(&source, &local, v.function, v.input_root).await {
        Ok(stats) => {
            Counters::add(&cluster.counters.inputs_pulled_bytes, stats.bytes);
            tracing::info!(origin = %v.origin, lease = v.offer.lease_epoch, operation = %v.assignment.operation, invocation_id = %v.assignment.invocation_id, hydrate_bytes = stats.bytes, hydrate_ms = stats.duration.as_millis() as u64, "offload: inputs pulled from the origin");
            Ok(())
        }
        Err(rbe_transfer::TransferError::NotFound { digests, .. }) => Err(NotStarted {
            outcome: Outcome::InputsMissing,
            message: format!("{} input blob(s) missing at the origin", digests.len()),
            missing: digests
                .iter()
                .map(|d| format!("{}/{}", d.hex(), d.size))
                .collect(),
        }),
        // The origin re-dispatches on UNAVAILABLE: the client never sees it.
        Err(e) => Err(unavailable(format!(
            "inputs not pulled from the origin: {e}"
        ))),
    }
}

/// Queues the hosted execution, owned by `peer:<origin>`.
fn submit(exec: &Exec, v: &Valid) -> Result<Attached, NotStarted> {
    let owner = PeerNode(v.origin.clone()).identity();
    let instance = v.assignment.instance_name.clone();
    let shared_key = crate::exec::results::action_key(&instance, &v.action_digest);
    let name = crate::exec::new_operation_name(&instance);
    let key = if v.do_not_cache {
        ActionKey {
            instance: instance.clone(),
            action: format!("{}:{}:{name}", v.function.name(), v.action_digest),
        }
    } else {
        shared_key.clone()
    };
    let mut assignment = v.assignment.clone();
    assignment.id = 0;
    let payload_bytes =
        assignment.action.len() + assignment.command.len() + assignment.request_metadata.len();
    let s = Submission {
        key,
        shared_key,
        use_recent: false,
        platform: v.platform.clone(),
        priority: v.offer.priority,
        tenant: Tenant::new(owner.name(), v.assignment.invocation_id.as_str()),
        assignment: Arc::new(assignment),
        origin: Origin {
            owner,
            instance,
            action_digest: v.action_digest.to_reapi(),
            digest_function: v.function.to_reapi(),
        },
        name,
        do_not_cache: v.do_not_cache,
        invocation_id: v.assignment.invocation_id.clone(),
        payload_bytes,
    };
    match exec.submit_hosted(s) {
        Ok(Submitted::New(a) | Submitted::Joined(a)) => Ok(a),
        Ok(Submitted::Recent(_)) => Err(unavailable("unexpected recent result".into())),
        Err(e) => Err(unavailable(e.to_string())),
    }
}

/// The Finished report for the origin: the ExecuteResponse's code back to
/// an outcome, and ExecutedActionMetadata.worker naming this host.
fn finished_of(cluster: &Cluster, lease: u64, r: ExecuteResponse) -> Finished {
    let status = r.status.unwrap_or_default();
    let outcome = match Code::from_i32(status.code) {
        Code::Ok => Outcome::Ran,
        Code::DeadlineExceeded => Outcome::TimedOut,
        Code::FailedPrecondition => Outcome::InputsMissing,
        Code::InvalidArgument => Outcome::InvalidAction,
        Code::ResourceExhausted => Outcome::NoSpace,
        Code::Cancelled => Outcome::Cancelled,
        // Stopping, aborted after lost workers: the origin tries again.
        Code::Unavailable | Code::Aborted => Outcome::Unavailable,
        _ => Outcome::WorkerFault,
    };
    let result = r.result.map(|mut ar: ActionResult| {
        let md = ar
            .execution_metadata
            .get_or_insert_with(reapi::ExecutedActionMetadata::default);
        let prefix = format!("{}/", cluster.node);
        if !md.worker.starts_with(&prefix) {
            md.worker = format!("{prefix}{}", md.worker);
        }
        ar
    });
    // A worker here found inputs missing: the origin's client is told
    // which, as by a local worker.
    let missing = if outcome == Outcome::InputsMissing {
        rbe_proto::status::missing_of(&status)
    } else {
        vec![]
    };
    let message = if outcome == Outcome::Ran {
        r.message
    } else {
        status.message
    };
    Finished {
        id: lease,
        outcome: outcome as i32,
        message,
        action_result: result.map(|r| r.encode_to_vec()).unwrap_or_default(),
        missing,
        oom_killed: false,
    }
}
