//! Which host answers a request about an operation, by its name.
//!
//! In a cluster every operation name carries its holder, the host the
//! client called, which keeps the operation's record and its waiters
//! (`{instance}/operations/{node}.{gen36}.{uuid}`, see
//! `rbe_cluster::names`). A client may ask any host about it afterwards
//! (Bazel's WaitExecution after a reconnect lands wherever the load
//! balancer sends it), so GetOperation, CancelOperation, DeleteOperation,
//! WaitOperation and WaitExecution go to the holder:
//!
//! - a plain name, or any host outside a cluster: answered here;
//! - this host, under a generation this process has had: answered here;
//! - this host, under another generation: the holder restarted and the
//!   operation is gone; NOT_FOUND, so that Bazel executes again;
//! - another member, up or suspect, of the generation the name carries,
//!   with a peer channel: forwarded one hop ([`crate::cluster::forward`]);
//! - anything else (an unknown node, one down, one that restarted since):
//!   NOT_FOUND naming the holder.
//!
//! NOT_FOUND is the one status Bazel (4.2.3 and later) answers by running
//! the action again; every "the operation is gone" outcome here is exactly
//! that code. DeleteOperation is routed the same way; ListOperations
//! lists this host's operations only.

use rbe_cluster::NodeName;
use tonic::transport::Channel;
use tonic::Status;

use super::Exec;
use crate::cluster::Cluster;

/// Where a request about one operation goes.
pub enum Route {
    /// Answered by this host.
    Local,
    /// Asked of the holder, another member.
    Forward(Remote),
}

/// Another member holding an operation, and the channel to it.
pub struct Remote {
    pub node: NodeName,
    pub channel: Channel,
    /// Bounds the messages relayed from it, as the public listeners do.
    pub max_message: usize,
    /// Counts what is forwarded.
    pub cluster: std::sync::Arc<Cluster>,
}

/// Routes a request about the operation `name`. An error is the status to
/// answer with; nothing is forwarded unless the name is well formed and
/// its holder a live member of the generation it names.
pub fn route(exec: &Exec, name: &str) -> Result<Route, Status> {
    let Some(cluster) = exec.cluster() else {
        return Ok(Route::Local);
    };
    let parsed = rbe_cluster::names::parse_operation_name(name);
    let Some(holder) = parsed.holder else {
        // A plain name (or garbage): only this host could know it.
        return Ok(Route::Local);
    };
    if holder.node == cluster.node {
        if cluster.is_ours(holder.generation) {
            return Ok(Route::Local);
        }
        return Err(Status::not_found(format!(
            "operation {name:?} was given out by this host ({}) before it restarted; \
             the holder restarted and the operation is gone: retry Execute",
            holder.node
        )));
    }
    // The instance goes over the peer channel: refuse what no Execute
    // could have named (a 10 KB instance, control characters).
    rbe_proto::resource::validate_instance(parsed.instance).map_err(|r| {
        Status::invalid_argument(format!("instance name {:?}: {r}", parsed.instance))
    })?;
    let gone = |why: &str| {
        Status::not_found(format!(
            "operation {name:?} is held by host {} (generation {}), which {why}; \
             the operation is gone: retry Execute",
            holder.node, holder.generation
        ))
    };
    let view = cluster.view();
    // Gossip may know a node under several generations (an old one down,
    // the new one up): only the generation the name carries counts.
    let member = view
        .members
        .iter()
        .find(|m| m.member.node == holder.node && m.member.generation == holder.generation);
    let Some(member) = member else {
        return Err(if view.get(holder.node.as_str()).is_some() {
            gone("has restarted since")
        } else {
            gone("is not a member of this cluster")
        });
    };
    if member.state == rbe_cluster::driver::MemberState::Down {
        return Err(gone("is down"));
    }
    match cluster.any_channel(&holder.node) {
        Some((channel, generation)) if generation == holder.generation => {
            Ok(Route::Forward(Remote {
                node: holder.node,
                channel,
                max_message: exec.upstream.max_message,
                cluster: std::sync::Arc::clone(cluster),
            }))
        }
        // Gossip knows it but this host has no channel to that generation
        // (a moment after it joined, or its peer port never answered).
        // Re-executing is always safe; waiting on a host never reached is
        // not.
        _ => Err(gone("this host has no peer channel to")),
    }
}
