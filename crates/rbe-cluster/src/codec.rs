//! foca's [`Codec`] for [`Member`]: a small fixed layout of our own.
//!
//! Why not foca's postcard codec: decoding here is the first thing that
//! touches bytes from the network after the AEAD open, and we want every
//! length bounded by construction (node names ≤ 32 bytes, addresses of
//! fixed size), node names validated where they enter, and no dependency on
//! serde derives of foreign types. Every read checks what is left first, so
//! no input can panic; the property test feeds it random bytes.
//!
//! Layout (big-endian):
//!
//! ```text
//! identity := node_len(1) node(node_len) generation(8) addr(gossip) addr(peer)
//! addr     := 4 ip(4) port(2) | 6 ip(16) port(2)
//! member   := identity incarnation(2) state(1: 0 alive, 1 suspect, 2 down)
//! header   := identity(src) incarnation(2) identity(dst) kind(1) [probe(1)] [identity]
//! ```
//!
//! The only identity allowed to carry [`Member::seed`]'s stand-in name is
//! the destination of an Announce. When the codec knows whose it is
//! ([`MemberCodec::for_node`]), it rewrites that destination to its own node
//! name so foca accepts the join from someone who knew only our address.
//!
//! To extend: add a message kind at the end, never renumber; a new field in
//! the identity needs a new wire version (`wire::VERSION`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Message, State};

use crate::identity::{Member, NodeName};

/// Why bytes are not a foca message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("message truncated")]
    Truncated,
    #[error("not enough room in the packet")]
    NoRoom,
    #[error("bad node name")]
    BadNodeName,
    #[error("unknown address family {0}")]
    BadAddressFamily(u8),
    #[error("unknown member state {0}")]
    BadState(u8),
    #[error("unknown message kind {0}")]
    BadMessage(u8),
    #[error("a seed stand-in where a real member is required")]
    UnexpectedSeed,
}

/// Encodes and decodes foca headers and member updates.
#[derive(Debug, Clone, Default)]
pub struct MemberCodec {
    /// Our own node name: an Announce addressed to a seed stand-in is
    /// rewritten to it on decode. `None` rejects such an Announce.
    local: Option<NodeName>,
}

impl MemberCodec {
    /// A codec for the foca instance of `node`.
    pub fn for_node(node: NodeName) -> Self {
        Self { local: Some(node) }
    }
}

const KIND_PING: u8 = 0;
const KIND_ACK: u8 = 1;
const KIND_PING_REQ: u8 = 2;
const KIND_INDIRECT_PING: u8 = 3;
const KIND_INDIRECT_ACK: u8 = 4;
const KIND_FORWARDED_ACK: u8 = 5;
const KIND_ANNOUNCE: u8 = 6;
const KIND_FEED: u8 = 7;
const KIND_GOSSIP: u8 = 8;
const KIND_BROADCAST: u8 = 9;
const KIND_TURN_UNDEAD: u8 = 10;

fn addr_len(a: &SocketAddr) -> usize {
    match a {
        SocketAddr::V4(_) => 1 + 4 + 2,
        SocketAddr::V6(_) => 1 + 16 + 2,
    }
}

fn identity_len(m: &Member) -> usize {
    1 + m.node.as_str().len() + 8 + addr_len(&m.gossip_addr) + addr_len(&m.peer_addr)
}

fn message_len(msg: &Message<Member>) -> usize {
    1 + match msg {
        Message::Ping(_) | Message::Ack(_) => 1,
        Message::PingReq { target: m, .. }
        | Message::IndirectPing { origin: m, .. }
        | Message::IndirectAck { target: m, .. }
        | Message::ForwardedAck { origin: m, .. } => 1 + identity_len(m),
        Message::Announce
        | Message::Feed
        | Message::Gossip
        | Message::Broadcast
        | Message::TurnUndead => 0,
    }
}

fn put_addr(buf: &mut impl BufMut, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            buf.put_u8(4);
            buf.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.put_u8(6);
            buf.put_slice(&ip.octets());
        }
    }
    buf.put_u16(a.port());
}

fn put_identity(buf: &mut impl BufMut, m: &Member) {
    let name = m.node.as_str().as_bytes();
    // Node names are ≤ 32 bytes by construction (NodeName::new), and the
    // seed stand-in is 1 byte.
    buf.put_u8(name.len().min(255) as u8);
    buf.put_slice(&name[..name.len().min(255)]);
    buf.put_u64(m.generation);
    put_addr(buf, &m.gossip_addr);
    put_addr(buf, &m.peer_addr);
}

fn put_message(buf: &mut impl BufMut, msg: &Message<Member>) {
    match msg {
        Message::Ping(n) => {
            buf.put_u8(KIND_PING);
            buf.put_u8(*n);
        }
        Message::Ack(n) => {
            buf.put_u8(KIND_ACK);
            buf.put_u8(*n);
        }
        Message::PingReq {
            target,
            probe_number,
        } => {
            buf.put_u8(KIND_PING_REQ);
            buf.put_u8(*probe_number);
            put_identity(buf, target);
        }
        Message::IndirectPing {
            origin,
            probe_number,
        } => {
            buf.put_u8(KIND_INDIRECT_PING);
            buf.put_u8(*probe_number);
            put_identity(buf, origin);
        }
        Message::IndirectAck {
            target,
            probe_number,
        } => {
            buf.put_u8(KIND_INDIRECT_ACK);
            buf.put_u8(*probe_number);
            put_identity(buf, target);
        }
        Message::ForwardedAck {
            origin,
            probe_number,
        } => {
            buf.put_u8(KIND_FORWARDED_ACK);
            buf.put_u8(*probe_number);
            put_identity(buf, origin);
        }
        Message::Announce => buf.put_u8(KIND_ANNOUNCE),
        Message::Feed => buf.put_u8(KIND_FEED),
        Message::Gossip => buf.put_u8(KIND_GOSSIP),
        Message::Broadcast => buf.put_u8(KIND_BROADCAST),
        Message::TurnUndead => buf.put_u8(KIND_TURN_UNDEAD),
    }
}

fn need(buf: &impl Buf, n: usize) -> Result<(), CodecError> {
    if buf.remaining() < n {
        Err(CodecError::Truncated)
    } else {
        Ok(())
    }
}

fn get_u8(buf: &mut impl Buf) -> Result<u8, CodecError> {
    need(buf, 1)?;
    Ok(buf.get_u8())
}

fn get_u16(buf: &mut impl Buf) -> Result<u16, CodecError> {
    need(buf, 2)?;
    Ok(buf.get_u16())
}

fn get_u64(buf: &mut impl Buf) -> Result<u64, CodecError> {
    need(buf, 8)?;
    Ok(buf.get_u64())
}

fn get_addr(buf: &mut impl Buf) -> Result<SocketAddr, CodecError> {
    let ip = match get_u8(buf)? {
        4 => {
            let mut o = [0u8; 4];
            need(buf, 4)?;
            buf.copy_to_slice(&mut o);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 => {
            let mut o = [0u8; 16];
            need(buf, 16)?;
            buf.copy_to_slice(&mut o);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        other => return Err(CodecError::BadAddressFamily(other)),
    };
    Ok(SocketAddr::new(ip, get_u16(buf)?))
}

/// Reads an identity; the seed stand-in is returned as such, and callers
/// decide whether it is allowed where they are.
fn get_identity(buf: &mut impl Buf) -> Result<Member, CodecError> {
    let len = usize::from(get_u8(buf)?);
    need(buf, len)?;
    let mut name = [0u8; 255];
    buf.copy_to_slice(&mut name[..len]);
    let name = std::str::from_utf8(&name[..len]).map_err(|_| CodecError::BadNodeName)?;
    let node = if name == NodeName::seed_placeholder().as_str() {
        NodeName::seed_placeholder()
    } else {
        NodeName::new(name).map_err(|_| CodecError::BadNodeName)?
    };
    let generation = get_u64(buf)?;
    let gossip_addr = get_addr(buf)?;
    let peer_addr = get_addr(buf)?;
    Ok(Member {
        node,
        generation,
        gossip_addr,
        peer_addr,
    })
}

fn get_real_identity(buf: &mut impl Buf) -> Result<Member, CodecError> {
    let m = get_identity(buf)?;
    if m.is_seed() {
        return Err(CodecError::UnexpectedSeed);
    }
    Ok(m)
}

fn get_message(buf: &mut impl Buf) -> Result<Message<Member>, CodecError> {
    let kind = get_u8(buf)?;
    Ok(match kind {
        KIND_PING => Message::Ping(get_u8(buf)?),
        KIND_ACK => Message::Ack(get_u8(buf)?),
        KIND_PING_REQ => {
            let probe_number = get_u8(buf)?;
            Message::PingReq {
                target: get_real_identity(buf)?,
                probe_number,
            }
        }
        KIND_INDIRECT_PING => {
            let probe_number = get_u8(buf)?;
            Message::IndirectPing {
                origin: get_real_identity(buf)?,
                probe_number,
            }
        }
        KIND_INDIRECT_ACK => {
            let probe_number = get_u8(buf)?;
            Message::IndirectAck {
                target: get_real_identity(buf)?,
                probe_number,
            }
        }
        KIND_FORWARDED_ACK => {
            let probe_number = get_u8(buf)?;
            Message::ForwardedAck {
                origin: get_real_identity(buf)?,
                probe_number,
            }
        }
        KIND_ANNOUNCE => Message::Announce,
        KIND_FEED => Message::Feed,
        KIND_GOSSIP => Message::Gossip,
        KIND_BROADCAST => Message::Broadcast,
        KIND_TURN_UNDEAD => Message::TurnUndead,
        other => return Err(CodecError::BadMessage(other)),
    })
}

impl Codec<Member> for MemberCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<Member>,
        mut buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        let len = identity_len(&header.src)
            + 2
            + identity_len(&header.dst)
            + message_len(&header.message);
        if buf.remaining_mut() < len {
            return Err(CodecError::NoRoom);
        }
        put_identity(&mut buf, &header.src);
        buf.put_u16(header.src_incarnation);
        put_identity(&mut buf, &header.dst);
        put_message(&mut buf, &header.message);
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<Member>, Self::Error> {
        let src = get_real_identity(&mut buf)?;
        let src_incarnation = get_u16(&mut buf)?;
        let mut dst = get_identity(&mut buf)?;
        let message = get_message(&mut buf)?;
        if dst.is_seed() {
            match (&message, &self.local) {
                // foca takes an Announce when its destination has our
                // address (node name); the generation is not compared.
                (Message::Announce, Some(local)) => dst.node = local.clone(),
                _ => return Err(CodecError::UnexpectedSeed),
            }
        }
        Ok(Header {
            src,
            src_incarnation,
            dst,
            message,
        })
    }

    fn encode_member(
        &mut self,
        member: &foca::Member<Member>,
        mut buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        // foca requires a clean buffer when the item does not fit.
        if buf.remaining_mut() < identity_len(member.id()) + 3 {
            return Err(CodecError::NoRoom);
        }
        put_identity(&mut buf, member.id());
        buf.put_u16(member.incarnation());
        buf.put_u8(match member.state() {
            State::Alive => 0,
            State::Suspect => 1,
            State::Down => 2,
        });
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<foca::Member<Member>, Self::Error> {
        let id = get_real_identity(&mut buf)?;
        let incarnation = get_u16(&mut buf)?;
        let state = match get_u8(&mut buf)? {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            other => return Err(CodecError::BadState(other)),
        };
        Ok(foca::Member::new(id, incarnation, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn member(name: &str, generation: u64, v6: bool) -> Member {
        let (g, p): (SocketAddr, SocketAddr) = if v6 {
            (
                "[fd00::1]:7946".parse().expect("addr"),
                "[fd00::1]:8981".parse().expect("addr"),
            )
        } else {
            (
                "10.0.0.1:7946".parse().expect("addr"),
                "10.0.0.1:8981".parse().expect("addr"),
            )
        };
        Member {
            node: NodeName::new(name).expect("name"),
            generation,
            gossip_addr: g,
            peer_addr: p,
        }
    }

    fn all_messages() -> Vec<Message<Member>> {
        let t = member("target", 3, true);
        vec![
            Message::Ping(1),
            Message::Ack(2),
            Message::PingReq {
                target: t.clone(),
                probe_number: 3,
            },
            Message::IndirectPing {
                origin: t.clone(),
                probe_number: 4,
            },
            Message::IndirectAck {
                target: t.clone(),
                probe_number: 5,
            },
            Message::ForwardedAck {
                origin: t,
                probe_number: 6,
            },
            Message::Announce,
            Message::Feed,
            Message::Gossip,
            Message::Broadcast,
            Message::TurnUndead,
        ]
    }

    #[test]
    fn headers_round_trip() {
        let mut codec = MemberCodec::default();
        for message in all_messages() {
            let h = Header {
                src: member("a", u64::MAX, false),
                src_incarnation: 513,
                dst: member("b-2", 0, true),
                message,
            };
            let mut buf = Vec::new();
            codec.encode_header(&h, &mut buf).expect("encode");
            let mut rd = &buf[..];
            assert_eq!(codec.decode_header(&mut rd).expect("decode"), h);
            assert!(rd.is_empty());
        }
    }

    #[test]
    fn members_round_trip_and_never_dirty_a_short_buffer() {
        let mut codec = MemberCodec::default();
        for state in [State::Alive, State::Suspect, State::Down] {
            let m = foca::Member::new(member("x", 9, false), 7, state);
            let mut buf = Vec::new();
            codec.encode_member(&m, &mut buf).expect("encode");
            let full = buf.len();
            assert_eq!(codec.decode_member(&buf[..]).expect("decode"), m);
            for room in 0..full {
                let mut out = Vec::new();
                let mut lim = (&mut out).limit(room);
                assert_eq!(codec.encode_member(&m, &mut lim), Err(CodecError::NoRoom));
                assert!(out.is_empty());
            }
        }
    }

    #[test]
    fn an_announce_to_a_seed_is_taken_as_addressed_to_us_only() {
        let seed = Member::seed("10.0.0.9:7946".parse().expect("addr"));
        let mut announce = Vec::new();
        let h = Header {
            src: member("a", 1, false),
            src_incarnation: 0,
            dst: seed.clone(),
            message: Message::Announce,
        };
        MemberCodec::default()
            .encode_header(&h, &mut announce)
            .expect("encode");
        let got = MemberCodec::for_node(NodeName::new("s1").expect("name"))
            .decode_header(&announce[..])
            .expect("decode");
        assert_eq!(got.dst.node.as_str(), "s1");
        // Without knowing who it is, a codec cannot accept it.
        assert_eq!(
            MemberCodec::default().decode_header(&announce[..]),
            Err(CodecError::UnexpectedSeed)
        );
        // The stand-in is refused anywhere else: as a source, as a ping's
        // destination, inside a member update.
        let mut codec = MemberCodec::for_node(NodeName::new("s1").expect("name"));
        for h in [
            Header {
                src: seed.clone(),
                src_incarnation: 0,
                dst: member("s1", 1, false),
                message: Message::Announce,
            },
            Header {
                src: member("a", 1, false),
                src_incarnation: 0,
                dst: seed.clone(),
                message: Message::Ping(1),
            },
        ] {
            let mut buf = Vec::new();
            codec.encode_header(&h, &mut buf).expect("encode");
            assert_eq!(
                codec.decode_header(&buf[..]),
                Err(CodecError::UnexpectedSeed)
            );
        }
        let mut buf = Vec::new();
        codec
            .encode_member(&foca::Member::alive(seed), &mut buf)
            .expect("encode");
        assert_eq!(
            codec.decode_member(&buf[..]),
            Err(CodecError::UnexpectedSeed)
        );
    }

    #[test]
    fn every_prefix_of_a_valid_header_is_truncated_not_a_panic() {
        let mut codec = MemberCodec::default();
        for message in all_messages() {
            let h = Header {
                src: member("a", 1, true),
                src_incarnation: 1,
                dst: member("b", 2, false),
                message,
            };
            let mut buf = Vec::new();
            codec.encode_header(&h, &mut buf).expect("encode");
            for cut in 0..buf.len() {
                assert!(codec.decode_header(&buf[..cut]).is_err(), "cut {cut}");
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let mut codec = MemberCodec::for_node(NodeName::new("me").expect("name"));
        let mut valid = Vec::new();
        codec
            .encode_header(
                &Header {
                    src: member("a", 1, false),
                    src_incarnation: 1,
                    dst: member("me", 2, false),
                    message: Message::Gossip,
                },
                &mut valid,
            )
            .expect("encode");
        for i in 0..20_000 {
            let data: Vec<u8> = if i % 2 == 0 {
                let len = rng.random_range(0..200);
                (0..len).map(|_| rng.random()).collect()
            } else {
                // Mutations of a valid header reach deeper than noise.
                let mut d = valid.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..d.len());
                    d[at] = rng.random();
                }
                d
            };
            let _ = codec.decode_header(&data[..]);
            let _ = codec.decode_member(&data[..]);
        }
    }
}
