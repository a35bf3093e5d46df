//! [`LoadReport`] as a foca custom broadcast.
//!
//! foca piggybacks custom broadcasts on its probes, acks and periodic
//! gossip, up to `max_transmissions` times each, and asks the
//! [`BroadcastHandler`] whether a received one is news. A report is news
//! when it is newer than anything seen from its node: a higher generation,
//! or the same generation and a higher `seq`. The [`ReportKey`] makes a
//! newer report replace an older one still waiting in foca's backlog, so a
//! host's backlog holds at most one report per node.
//!
//! The handler keeps no reports, only the newest (generation, seq) per
//! node. Each news report goes to a sink (a callback) so the driver and the
//! simulator consume them the same way; [`ReportQueue`] is the simple sink.
//!
//! Size: a report is capped at [`MAX_REPORT_BYTES`]. When a host has more
//! pools than fit, pools with queued work or free slots go first and the
//! others are dropped, since a pool that is full and has nothing waiting
//! tells a peer nothing it can act on.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use foca::{BroadcastHandler, Invalidates};
use prost::Message;
use rbe_proto::cluster::{LoadReport, Pool};

use crate::identity::{Member, NodeName};

/// The largest encoded report, well under one datagram.
pub const MAX_REPORT_BYTES: usize = 1024;

/// How many nodes the handler remembers the newest (generation, seq) of.
/// Only key holders can send reports, so this only bounds a buggy peer.
const MAX_TRACKED_NODES: usize = 4096;

/// How many undrained reports a [`ReportQueue`] holds before it drops the
/// oldest.
const MAX_QUEUED: usize = 4096;

/// Why a report was not encoded or not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("load report of {0} bytes is larger than {MAX_REPORT_BYTES} even without pools")]
    TooBig(usize),
    #[error("load report does not decode: {0}")]
    Decode(String),
    #[error("load report names a bad node {0:?}")]
    BadNode(String),
}

/// Encodes a report, dropping pools until it fits in [`MAX_REPORT_BYTES`].
pub fn encode_report(report: &LoadReport) -> Result<Vec<u8>, ReportError> {
    let bytes = report.encode_to_vec();
    if bytes.len() <= MAX_REPORT_BYTES {
        return Ok(bytes);
    }
    let mut trimmed = report.clone();
    // Stable: pools that can use or give work keep their order, first.
    trimmed.pools.sort_by_key(|p| !actionable(p));
    while trimmed.encoded_len() > MAX_REPORT_BYTES {
        if trimmed.pools.pop().is_none() {
            return Err(ReportError::TooBig(trimmed.encoded_len()));
        }
    }
    Ok(trimmed.encode_to_vec())
}

fn actionable(p: &Pool) -> bool {
    p.queued > 0 || p.slots > p.running
}

/// Decodes and checks a received report.
pub fn decode_report(data: &[u8]) -> Result<LoadReport, ReportError> {
    if data.len() > MAX_REPORT_BYTES {
        return Err(ReportError::TooBig(data.len()));
    }
    let r = LoadReport::decode(data).map_err(|e| ReportError::Decode(e.to_string()))?;
    NodeName::new(&r.node).map_err(|_| ReportError::BadNode(r.node.clone()))?;
    Ok(r)
}

/// What foca keeps in its backlog for one report: a newer report of the
/// same node replaces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportKey {
    pub node: String,
    pub generation: u64,
    pub seq: u64,
}

impl Invalidates for ReportKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node && (self.generation, self.seq) >= (other.generation, other.seq)
    }
}

type Sink = Box<dyn FnMut(LoadReport) + Send>;

/// foca's handler for load reports. Give it to
/// `foca::Foca::with_custom_broadcast`; publish our own reports with
/// `foca.add_broadcast(&encode_report(..)?)`.
pub struct ReportHandler {
    own: NodeName,
    newest: HashMap<String, (u64, u64)>,
    sink: Sink,
}

impl ReportHandler {
    /// `sink` receives every report from another node that is newer than
    /// what was seen before from that node (never our own).
    pub fn new(own: NodeName, sink: impl FnMut(LoadReport) + Send + 'static) -> Self {
        Self {
            own,
            newest: HashMap::new(),
            sink: Box::new(sink),
        }
    }

    /// A handler whose sink is a [`ReportQueue`].
    pub fn queued(own: NodeName) -> (Self, ReportQueue) {
        let q = ReportQueue::default();
        let sink = q.clone();
        (Self::new(own, move |r| sink.push(r)), q)
    }

    /// Whether `r` is newer than anything seen from its node; if so it is
    /// remembered as the newest.
    fn is_news(&mut self, r: &LoadReport) -> bool {
        let cand = (r.generation, r.seq);
        match self.newest.get_mut(&r.node) {
            Some(seen) if *seen >= cand => false,
            Some(seen) => {
                *seen = cand;
                true
            }
            None => {
                if self.newest.len() >= MAX_TRACKED_NODES {
                    // Forgetting a node only lets one stale report of it
                    // through again; receivers compare seq themselves.
                    if let Some(k) = self.newest.keys().next().cloned() {
                        self.newest.remove(&k);
                    }
                }
                self.newest.insert(r.node.clone(), cand);
                true
            }
        }
    }
}

impl BroadcastHandler<Member> for ReportHandler {
    type Key = ReportKey;
    type Error = ReportError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&Member>,
    ) -> Result<Option<ReportKey>, ReportError> {
        let r = decode_report(data)?;
        let ours = r.node == self.own.as_str();
        // Our own reports come in through add_broadcast (no sender); one
        // that arrives from the network naming us is either our own echo
        // or an impostor, and neither is news.
        if ours != sender.is_none() || !self.is_news(&r) {
            return Ok(None);
        }
        let key = ReportKey {
            node: r.node.clone(),
            generation: r.generation,
            seq: r.seq,
        };
        if !ours {
            (self.sink)(r);
        }
        Ok(Some(key))
    }
}

/// A bounded queue of received reports, shared between the handler (inside
/// foca) and whoever drains it.
#[derive(Clone, Default)]
pub struct ReportQueue(Arc<Mutex<VecDeque<LoadReport>>>);

impl ReportQueue {
    fn push(&self, r: LoadReport) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_QUEUED {
            q.pop_front();
        }
        q.push_back(r);
    }

    /// Everything received since the last drain, oldest first.
    pub fn drain(&self) -> Vec<LoadReport> {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rbe_proto::cluster::Property;

    fn report(node: &str, generation: u64, seq: u64) -> LoadReport {
        LoadReport {
            node: node.into(),
            generation,
            seq,
            proto: 1,
            accepting: true,
            store_id: 0,
            pools: vec![Pool {
                platform: vec![Property {
                    name: "OSFamily".into(),
                    value: "linux".into(),
                }],
                slots: 4,
                running: 2,
                queued: 1,
                incoming: 0,
                oldest_queued_ms: 30,
                mean_exec_ms: 900,
            }],
            peer_addr: "10.0.0.1:8981".into(),
        }
    }

    fn sender() -> Member {
        Member {
            node: NodeName::new("relay").expect("name"),
            generation: 1,
            gossip_addr: "10.0.0.2:7946".parse().expect("addr"),
            peer_addr: "10.0.0.2:8981".parse().expect("addr"),
        }
    }

    #[test]
    fn only_newer_reports_are_news_and_reach_the_sink() {
        let (mut h, q) = ReportHandler::queued(NodeName::new("me").expect("name"));
        let s = sender();
        let enc = |r: &LoadReport| encode_report(r).expect("encode");
        let k = h.receive_item(&enc(&report("b", 5, 2)), Some(&s));
        assert_eq!(
            k,
            Ok(Some(ReportKey {
                node: "b".into(),
                generation: 5,
                seq: 2
            }))
        );
        // Same, older seq, older generation: not news.
        for (g, seq) in [(5, 2), (5, 1), (4, 99)] {
            assert_eq!(
                h.receive_item(&enc(&report("b", g, seq)), Some(&s)),
                Ok(None)
            );
        }
        // A restarted host's first report is news.
        assert!(h
            .receive_item(&enc(&report("b", 6, 0)), Some(&s))
            .expect("ok")
            .is_some());
        let got: Vec<_> = q.drain().iter().map(|r| (r.generation, r.seq)).collect();
        assert_eq!(got, vec![(5, 2), (6, 0)]);
        assert!(q.drain().is_empty());
    }

    #[test]
    fn our_own_reports_are_disseminated_but_never_consumed_and_impostors_are_ignored() {
        let (mut h, q) = ReportHandler::queued(NodeName::new("me").expect("name"));
        let data = encode_report(&report("me", 1, 1)).expect("encode");
        assert!(h.receive_item(&data, None).expect("ok").is_some());
        let echo = encode_report(&report("me", 1, 7)).expect("encode");
        assert_eq!(h.receive_item(&echo, Some(&sender())), Ok(None));
        assert!(q.drain().is_empty());
    }

    #[test]
    fn a_newer_key_invalidates_an_older_one_of_the_same_node_only() {
        let k = |n: &str, g, s| ReportKey {
            node: n.into(),
            generation: g,
            seq: s,
        };
        assert!(k("a", 1, 2).invalidates(&k("a", 1, 1)));
        assert!(k("a", 2, 0).invalidates(&k("a", 1, 9)));
        assert!(!k("a", 1, 1).invalidates(&k("a", 1, 2)));
        assert!(!k("a", 1, 9).invalidates(&k("b", 1, 1)));
    }

    #[test]
    fn an_oversized_report_drops_idle_full_pools_first() {
        let mut r = report("big", 1, 1);
        let pool = |i: u32, queued: u32, running: u32| Pool {
            platform: vec![Property {
                name: "container-image".into(),
                value: format!(
                    "docker://registry.example/image-{i:04}@sha256:{}",
                    "0".repeat(40)
                ),
            }],
            slots: 4,
            running,
            queued,
            ..Default::default()
        };
        // Full and idle pools first in the input, useful ones after.
        r.pools = (0..20).map(|i| pool(i, 0, 4)).collect();
        r.pools.extend((100..104).map(|i| pool(i, 3, 4)));
        r.pools.extend((200..204).map(|i| pool(i, 0, 1)));
        let data = encode_report(&r).expect("encode");
        assert!(data.len() <= MAX_REPORT_BYTES);
        let back = decode_report(&data).expect("decode");
        assert!(back.pools.len() >= 8, "kept {}", back.pools.len());
        assert!(back.pools[..8].iter().all(actionable));
        // A report too big even without pools is refused, not sent.
        let mut huge = report("big", 1, 1);
        huge.peer_addr = "x".repeat(2000);
        assert!(matches!(encode_report(&huge), Err(ReportError::TooBig(_))));
    }

    #[test]
    fn hostile_report_bytes_are_errors() {
        let (mut h, q) = ReportHandler::queued(NodeName::new("me").expect("name"));
        let s = sender();
        assert!(h
            .receive_item(&[0u8; MAX_REPORT_BYTES + 1], Some(&s))
            .is_err());
        let bad_name = report("Bad Name", 1, 1).encode_to_vec();
        assert!(matches!(
            h.receive_item(&bad_name, Some(&s)),
            Err(ReportError::BadNode(_))
        ));
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..5000 {
            let len = rng.random_range(0..300);
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = h.receive_item(&data, Some(&s));
        }
        // Random bytes can decode as a valid report only by chance; none
        // of those may name us.
        assert!(q.drain().iter().all(|r| r.node != "me"));
    }
}
