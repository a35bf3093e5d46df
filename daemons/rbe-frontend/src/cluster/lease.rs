//! One offloaded operation, on the origin: the offer on a `Peer.Run`
//! stream, then the lease until the peer's result is in.
//!
//! The lease is a one-slot pseudo-worker of the scheduler
//! ([`crate::exec::remote`]); its `WorkerId` is the fencing token, so a
//! report that arrives after the lease was lost or released is ignored by
//! the scheduler. The lease is lost (the operation goes back to the queue,
//! at most 3 times; execution is at-least-once) when the stream breaks, the
//! peer is silent for `lease_secs`, membership declares it down, its
//! outputs cannot be pulled, or it reports the lease lost (UNAVAILABLE:
//! it is stopping). A result completes the operation only after its
//! outputs are in this host's casd, so no answer to a client names a blob
//! this host cannot serve. A lease lost to silence or membership keeps its
//! stream read: the peer's late result is counted and dropped.
//!
//! Before the offer, the input tree is measured in the local casd: over
//! `max_transfer_bytes` the operation stays here for good. A BUSY reject
//! starts the peer's backoff in the `PeerTable`. A peer in front of this
//! host's backing store (the same non-zero store id) moves no blobs:
//! nothing is measured, and its outputs are not pulled (casd fetches them
//! through when a client reads them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rbe_cluster::NodeName;
use rbe_proto::cluster::peer_client::PeerClient;
use rbe_proto::cluster::{
    host_message, origin_message, CancelLease, HostMessage, Offer, OriginMessage, Property,
};
use rbe_proto::reapi::{self, ActionResult};
use rbe_proto::worker::{Assignment, Finished, Outcome};
use rbe_proto::DigestFunction;
use rbe_sched::OpId;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::{Cluster, Counters};
use crate::exec::remote::Leased;
use crate::exec::workers::WorkerLink;
use crate::exec::Exec;

/// How long the peer may take to answer an offer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often membership is looked at while a lease runs.
const MEMBER_CHECK: Duration = Duration::from_secs(1);

/// What the owner tells a lease task (from under its lock: never blocks).
pub enum LinkMsg {
    Cancel,
}

/// The owner's link to a lease: Cancel goes to the lease task, which sends
/// CancelLease to the peer.
pub struct RemoteLink {
    pub tx: mpsc::UnboundedSender<LinkMsg>,
    /// The peer's node name.
    pub name: String,
}

impl WorkerLink for RemoteLink {
    fn assign(&self, _: Assignment) -> bool {
        // The scheduler never assigns to a lease: its offer is the
        // assignment.
        true
    }

    fn cancel(&self, _: OpId) {
        let _ = self.tx.send(LinkMsg::Cancel);
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// How a lease ended.
enum End {
    /// The peer said no (or never answered): back to the queue's place.
    Rejected,
    /// Its input tree is over `max_transfer_bytes` (measured here, or the
    /// peer said TOO_LARGE): back to its place, and it stays here.
    TooLarge(String),
    /// Cancelled here: nothing more to do for the operation.
    Cancelled,
    /// Lost: re-queued.
    Lost(String),
    /// Lost to silence or membership while the stream still stands:
    /// re-queued, and the stream is still read for a late result.
    Silent(String, Box<Tail>),
    /// A result, outputs pulled: completes the operation.
    Finished(Box<Finished>),
}

/// Runs the lease `l` on `to` until it ends, then tells the owner.
pub async fn run(
    cluster: Arc<Cluster>,
    exec: Arc<Exec>,
    to: NodeName,
    channel: Channel,
    l: Leased,
    rx: mpsc::UnboundedReceiver<LinkMsg>,
) {
    let op = l.assignment.operation.clone();
    let end = drive(&cluster, &exec, &to, channel, &l, rx).await;
    let lease = l.lease;
    match end {
        End::Rejected => exec.release(lease),
        End::TooLarge(reason) => {
            Counters::bump(&cluster.counters.offers_too_large);
            cluster.keep_local(l.op);
            exec.release(lease);
            tracing::info!(peer = %to, lease, operation = %op, invocation_id = %l.invocation_id, reason = %reason, "offload: the input tree is too large to move; the operation stays here");
        }
        End::Cancelled => exec.release(lease),
        End::Lost(reason) => {
            Counters::bump(&cluster.counters.leases_lost);
            let requeued = exec.worker_detach(lease);
            tracing::warn!(peer = %to, lease, operation = %op, invocation_id = %l.invocation_id, reason = %reason, requeued, "offload: lease lost; the operation is dispatched again");
        }
        End::Silent(reason, tail) => {
            Counters::bump(&cluster.counters.leases_lost);
            let requeued = exec.worker_detach(lease);
            tracing::warn!(peer = %to, lease, operation = %op, invocation_id = %l.invocation_id, reason = %reason, requeued, "offload: lease lost; the operation is dispatched again");
            let limit = tail_limit(&l);
            tokio::spawn(follow_tail(cluster.clone(), to.clone(), l, tail, limit));
        }
        End::Finished(f) => {
            if !exec.worker_finished(lease, *f) {
                Counters::bump(&cluster.counters.stale_reports);
                tracing::info!(peer = %to, lease, operation = %op, "offload: result of a lease no longer held ignored");
            }
            // The pseudo-worker and its link go with the lease (a
            // completed operation is not put back).
            exec.release(lease);
        }
    }
    exec.queue_changed.notify_one();
}

/// No offer goes to `to` for a while (`busy_backoff`, doubling while it
/// lasts): it said BUSY, or an offer to it failed. A failed offer carries
/// no load to hold the peer back, so without this a peer that died (and
/// that membership has not declared down yet) gets a new offer on every
/// queue change. An accept or a newer report with a free slot ends it.
/// Returns the wait in ms.
fn back_off(cluster: &Cluster, to: &NodeName) -> u64 {
    Counters::bump(&cluster.counters.peer_backoffs);
    let mut placement = cluster.placement.lock();
    let b = placement.policy.config().busy_backoff;
    placement
        .peers
        .rejected_busy(cluster.now(), to, b)
        .as_millis() as u64
}

fn properties(p: &rbe_sched::Platform) -> Vec<Property> {
    p.pairs()
        .map(|(k, v)| Property {
            name: k.to_owned(),
            value: v.to_owned(),
        })
        .collect()
}

async fn drive(
    cluster: &Arc<Cluster>,
    exec: &Arc<Exec>,
    to: &NodeName,
    channel: Channel,
    l: &Leased,
    mut link: mpsc::UnboundedReceiver<LinkMsg>,
) -> End {
    let lease = l.lease;
    let mut assignment = (*l.assignment).clone();
    assignment.id = lease;
    // The client's whole RequestMetadata, so the executing host logs the
    // action as this one does.
    let request_metadata = if assignment.request_metadata.is_empty() {
        reapi::RequestMetadata {
            tool_invocation_id: l.invocation_id.clone(),
            ..Default::default()
        }
        .encode_to_vec()
    } else {
        assignment.request_metadata.clone()
    };
    let limit = cluster.offload.load().max_transfer_bytes;
    let own_store = cluster.store_id();
    let peer_store = cluster
        .placement
        .lock()
        .peers
        .get(to)
        .map_or(0, |p| p.store_id);
    let input_bytes = if super::store::same_store(own_store, peer_store) {
        // Nothing will move: no limit to check, no tree to walk.
        0
    } else {
        match input_size(exec, l, limit).await {
            Ok(n) => n,
            Err(e) => {
                // Unknown: offered all the same; the peer measures it too.
                tracing::debug!(peer = %to, lease, operation = %l.name, error = %e, "offload: the input tree was not measured");
                0
            }
        }
    };
    if input_bytes > limit {
        // The offer counted by `offer_sent` is not sent.
        cluster
            .placement
            .lock()
            .peers
            .offer_answered(cluster.now(), to, false, None);
        return End::TooLarge(format!(
            "the input tree has over {input_bytes} bytes; max_transfer_bytes is {limit}"
        ));
    }
    let offer = Offer {
        assignment: assignment.encode_to_vec(),
        platform: properties(&l.platform),
        priority: l.priority,
        origin_node: cluster.node.to_string(),
        origin_generation: cluster.generation(),
        lease_epoch: lease,
        request_metadata,
        traceparent: String::new(),
        store_id: own_store,
        hop: 0,
        client: l.client.clone(),
        input_bytes,
    };
    let (otx, orx) = mpsc::channel::<OriginMessage>(4);
    let first = OriginMessage {
        kind: Some(origin_message::Kind::Offer(offer)),
    };
    if otx.send(first).await.is_err() {
        return End::Rejected;
    }
    Counters::bump(&cluster.counters.offers_sent);
    let sent = Instant::now();
    let answered = |accepted: bool, load: Option<&rbe_proto::cluster::LoadReport>| {
        cluster
            .placement
            .lock()
            .peers
            .offer_answered(cluster.now(), to, accepted, load);
    };
    let mut client = PeerClient::new(channel).max_decoding_message_size(exec.upstream.max_message);
    let call = client.run(tokio_stream::wrappers::ReceiverStream::new(orx));
    let mut stream = match tokio::time::timeout(ANSWER_TIMEOUT, call).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => {
            answered(false, None);
            Counters::bump(&cluster.counters.offers_failed);
            let backoff_ms = back_off(cluster, to);
            tracing::info!(peer = %to, lease, operation = %l.name, reason = %s.message(), backoff_ms, "offload: offer failed");
            return End::Rejected;
        }
        Err(_) => {
            answered(false, None);
            Counters::bump(&cluster.counters.offers_failed);
            let backoff_ms = back_off(cluster, to);
            tracing::info!(peer = %to, lease, operation = %l.name, reason = "no answer", backoff_ms, "offload: offer failed");
            return End::Rejected;
        }
    };
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, stream.message()).await;
    let offer_rtt_us = sent.elapsed().as_micros() as u64;
    let (lease_ms, shared) = match answer {
        Ok(Ok(Some(HostMessage {
            kind: Some(host_message::Kind::Accepted(a)),
            ..
        }))) => {
            answered(true, a.load.as_ref());
            cluster.counters.offer_rtt_us.record(offer_rtt_us);
            Counters::bump(&cluster.counters.offers_accepted);
            // The executor compared the same ids, with the one it says
            // here: it pulled no inputs exactly when this holds.
            let shared =
                super::store::same_store(own_store, a.load.as_ref().map_or(0, |r| r.store_id));
            if shared {
                Counters::bump(&cluster.counters.shared_store_offers);
            }
            tracing::info!(peer = %to, lease, operation = %l.name, invocation_id = %l.invocation_id, offer_rtt_us, shared_store = shared, "offload: offer accepted");
            (a.lease_ms, shared)
        }
        Ok(Ok(Some(HostMessage {
            kind: Some(host_message::Kind::Rejected(r)),
            ..
        }))) => {
            answered(false, r.load.as_ref());
            cluster.counters.offer_rtt_us.record(offer_rtt_us);
            cluster.counters.rejected(r.reason);
            let why = rbe_proto::cluster::RejectReason::try_from(r.reason).ok();
            let reason = why.map_or("UNKNOWN", |r| r.as_str_name());
            let backoff_ms = if why == Some(rbe_proto::cluster::RejectReason::Busy) {
                back_off(cluster, to)
            } else {
                0
            };
            tracing::info!(peer = %to, lease, operation = %l.name, invocation_id = %l.invocation_id, offer_rtt_us, reason, message = %r.message, backoff_ms, "offload: offer rejected");
            if why == Some(rbe_proto::cluster::RejectReason::TooLarge) {
                return End::TooLarge(r.message);
            }
            return End::Rejected;
        }
        other => {
            answered(false, None);
            Counters::bump(&cluster.counters.offers_failed);
            let reason = match other {
                Err(_) => "no answer".to_string(),
                Ok(Err(s)) => s.message().to_string(),
                _ => "the peer answered neither Accepted nor Rejected".to_string(),
            };
            let backoff_ms = back_off(cluster, to);
            tracing::info!(peer = %to, lease, operation = %l.name, offer_rtt_us, reason = %reason, backoff_ms, "offload: offer failed");
            return End::Rejected;
        }
    };
    let configured = Duration::from_secs(cluster.offload.load().lease_secs.max(1));
    // The peer's own heartbeat period is a third of its lease; silence
    // longer than either side's lease is a loss.
    let silence = configured.max(Duration::from_millis(u64::from(lease_ms)));
    let generation = cluster.any_channel(to).map(|(_, g)| g);
    let mut check = tokio::time::interval(MEMBER_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deadline = Instant::now() + silence;
    loop {
        tokio::select! {
            m = link.recv() => {
                // Cancelled, or the owner let the link go (shutdown).
                let _ = m;
                let cancel = OriginMessage { kind: Some(origin_message::Kind::Cancel(CancelLease {})) };
                let _ = otx.try_send(cancel);
                tracing::info!(peer = %to, lease, operation = %l.name, "offload: lease cancelled");
                // Let the CancelLease reach the peer before the stream ends.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return End::Cancelled;
            }
            _ = check.tick() => {
                if Instant::now() >= deadline {
                    let reason = format!("no message from the peer for {} s", silence.as_secs());
                    return End::Silent(reason, Box::new(Tail { stream, _otx: otx }));
                }
                if cluster.any_channel(to).map(|(_, g)| g) != generation {
                    let reason = "membership declared the peer down".to_string();
                    return End::Silent(reason, Box::new(Tail { stream, _otx: otx }));
                }
            }
            m = stream.message() => {
                let msg = match m {
                    Ok(Some(m)) => m,
                    Ok(None) => return End::Lost("the peer ended the stream".into()),
                    Err(s) => return End::Lost(format!("the stream broke: {}", s.message())),
                };
                deadline = Instant::now() + silence;
                match msg.kind {
                    Some(host_message::Kind::Stage(s)) => exec.set_stage(lease, l.op, s.stage),
                    Some(host_message::Kind::Heartbeat(_)) => {}
                    Some(host_message::Kind::Finished(bytes)) => {
                        // The freed slot counts for the next decision now,
                        // not at the next gossip round.
                        if let Some(load) = &msg.load {
                            cluster.placement.lock().peers.on_direct(cluster.now(), load);
                        }
                        return finished(cluster, exec, to, l, &bytes, shared).await;
                    }
                    _ => tracing::debug!(peer = %to, lease, "offload: unexpected message ignored"),
                }
            }
        }
    }
}

/// The size of `l`'s input tree in this host's casd (at most a little
/// over `limit`: the walk stops there).
async fn input_size(exec: &Exec, l: &Leased, limit: u64) -> Result<u64, String> {
    let function =
        DigestFunction::from_reapi(l.assignment.digest_function).map_err(|e| e.to_string())?;
    let action =
        reapi::Action::decode(l.assignment.action.as_slice()).map_err(|e| e.to_string())?;
    let root = rbe_proto::Digest::from_reapi_opt(function, action.input_root_digest.as_ref())
        .map_err(|e| e.to_string())?;
    super::tree_size::measure(
        exec.upstream.unary.clone(),
        &l.assignment.instance_name,
        function,
        root,
        limit,
        exec.upstream.max_message,
    )
    .await
    .map_err(|s| s.message().to_owned())
}

/// What a peer's Finished on the stream of `lease` is.
#[derive(Debug, PartialEq)]
enum Report {
    /// This lease's result.
    Ours,
    /// Another lease's: the stream is the peer's, so a fault of the peer;
    /// nothing of it is used and the lease is lost.
    NotOurs(String),
    /// The peer gave the lease up (UNAVAILABLE: stopping, or the inputs
    /// could not be pulled).
    GivenUp(String),
}

fn check_report(lease: u64, f: &Finished) -> Report {
    if f.id != lease {
        return Report::NotOurs(format!(
            "the peer reported lease {} on the stream of lease {lease}",
            f.id
        ));
    }
    if f.outcome == Outcome::Unavailable as i32 {
        return Report::GivenUp(format!("the peer gave the lease up: {}", f.message));
    }
    Report::Ours
}

/// A lost lease's stream, still open: the peer may yet report.
struct Tail {
    stream: tonic::Streaming<HostMessage>,
    /// Held so the peer does not read the end of the stream as a cancel.
    _otx: mpsc::Sender<OriginMessage>,
}

/// The longest a lost lease's stream is read: the action's own timeout
/// and a lease more (an hour when it has none).
fn tail_limit(l: &Leased) -> Duration {
    match l.assignment.timeout_seconds {
        0 => Duration::from_secs(3600),
        t => Duration::from_secs(u64::from(t) + 60),
    }
}

/// Reads a lost lease's stream until the peer reports, the stream ends,
/// or `limit`: a late result is of a lease no longer held (the operation
/// was dispatched again), so it is counted and dropped, never used.
async fn follow_tail(
    cluster: Arc<Cluster>,
    to: NodeName,
    l: Leased,
    mut tail: Box<Tail>,
    limit: Duration,
) {
    let read = async {
        loop {
            match tail.stream.message().await {
                Ok(Some(HostMessage {
                    kind: Some(host_message::Kind::Finished(bytes)),
                    ..
                })) => return Some(Finished::decode(bytes.as_slice()).ok()),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    };
    if let Ok(Some(f)) = tokio::time::timeout(limit, read).await {
        Counters::bump(&cluster.counters.late_results);
        let outcome = f.map_or(-1, |f| f.outcome);
        tracing::info!(peer = %to, lease = l.lease, operation = %l.name, invocation_id = %l.invocation_id, outcome, "offload: late result of a lost lease ignored");
    }
}

/// The peer's result: its outputs are pulled into this host's casd before
/// the operation completes.
async fn finished(
    cluster: &Arc<Cluster>,
    exec: &Arc<Exec>,
    to: &NodeName,
    l: &Leased,
    bytes: &[u8],
    shared: bool,
) -> End {
    let Ok(mut f) = Finished::decode(bytes) else {
        return End::Lost("the peer's result does not decode".into());
    };
    match check_report(l.lease, &f) {
        Report::Ours => {}
        Report::NotOurs(reason) => {
            Counters::bump(&cluster.counters.stale_reports);
            return End::Lost(reason);
        }
        Report::GivenUp(reason) => return End::Lost(reason),
    }
    f.id = l.op;
    let result = (!f.action_result.is_empty())
        .then(|| ActionResult::decode(f.action_result.as_slice()).ok())
        .flatten();
    if shared {
        // The executor's casd wrote them through to the store this
        // host's casd fetches from on a client's read.
        tracing::info!(peer = %to, lease = l.lease, operation = %l.name, invocation_id = %l.invocation_id, store_id = %super::store::hex(cluster.store_id()), "offload: outputs left in the shared backing store");
    } else if let Some(r) = &result {
        let Ok(function) = DigestFunction::from_reapi(l.assignment.digest_function) else {
            return End::Lost("the action's digest function is unknown".into());
        };
        let Some((channel, _)) = cluster.any_channel(to) else {
            return End::Lost("the peer left before its outputs were pulled".into());
        };
        let addr = cluster
            .peers
            .lock()
            .get(to)
            .map(|p| p.addr.to_string())
            .unwrap_or_default();
        let source = rbe_transfer::Source::new(
            channel,
            addr,
            l.assignment.instance_name.clone(),
            rbe_transfer::Timeouts::default(),
        );
        let local = rbe_transfer::Local::new(
            exec.upstream.unary.clone(),
            l.assignment.instance_name.clone(),
        );
        match rbe_transfer::fetch_result_outputs(&source, &local, function, r).await {
            Ok(stats) => {
                Counters::add(&cluster.counters.outputs_pulled_bytes, stats.bytes);
                tracing::info!(peer = %to, lease = l.lease, operation = %l.name, invocation_id = %l.invocation_id, hydrate_bytes = stats.bytes, hydrate_ms = stats.duration.as_millis() as u64, "offload: outputs pulled from the peer");
            }
            Err(e) => return End::Lost(format!("its outputs could not be pulled: {e}")),
        }
    }
    End::Finished(Box::new(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(id: u64, outcome: Outcome) -> Finished {
        Finished {
            id,
            outcome: outcome as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_result_for_a_lease_the_peer_does_not_hold_is_not_used() {
        assert_eq!(check_report(7, &finished(7, Outcome::Ran)), Report::Ours);
        assert!(matches!(
            check_report(7, &finished(6, Outcome::Ran)),
            Report::NotOurs(_)
        ));
        // Even a give-up is not believed for another lease.
        assert!(matches!(
            check_report(7, &finished(8, Outcome::Unavailable)),
            Report::NotOurs(_)
        ));
        assert!(matches!(
            check_report(7, &finished(7, Outcome::Unavailable)),
            Report::GivenUp(_)
        ));
    }
}
