//! Operation names that say which host holds the operation.
//!
//! In a cluster a client may ask any host about an operation, so the name
//! carries its holder (the host the client called, which keeps the record):
//!
//! ```text
//! {instance}/operations/{node}.{gen36}.{uuid}      e.g. ci/operations/b3.lq8k2w1.6f0c…
//! operations/{node}.{gen36}.{uuid}                 for the empty instance
//! ```
//!
//! `gen36` is the holder's generation in base 36 (lowercase, no leading
//! zeros), so a host that restarted can tell its old names from its own.
//! The instance is what precedes the first `operations` segment, exactly as
//! the frontend's `instance_of_name` splits it, so routing by instance is
//! unchanged. Anything that is not of this form, including the plain
//! `{instance}/operations/{uuid}` names of a host outside a cluster, parses
//! as a local name without a holder. Parsing never panics and never
//! allocates more than a node name.

use std::fmt::Write;

use crate::identity::NodeName;

/// The host that holds an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node: NodeName,
    pub generation: u64,
}

/// An operation name taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedName<'a> {
    /// The instance (empty for `operations/...` or a name without an
    /// `operations` segment).
    pub instance: &'a str,
    /// `None`: a local name, answered by whoever has it.
    pub holder: Option<Holder>,
    /// The part after the holder (the uuid), or the whole part after
    /// `operations/` for a local name, or the whole name when there is no
    /// `operations` segment.
    pub id: &'a str,
}

/// The name of operation `id` held by `node` of `generation`.
pub fn operation_name(instance: &str, node: &NodeName, generation: u64, id: u128) -> String {
    let mut s = String::with_capacity(instance.len() + 12 + node.as_str().len() + 14 + 36);
    if !instance.is_empty() {
        s.push_str(instance);
        s.push('/');
    }
    s.push_str("operations/");
    s.push_str(node.as_str());
    s.push('.');
    s.push_str(&base36(generation));
    s.push('.');
    let b = id.to_be_bytes();
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        // Writing to a String cannot fail.
        let _ = write!(s, "{byte:02x}");
    }
    s
}

/// A fresh random (v4-style) operation id for [`operation_name`].
pub fn new_operation_id() -> u128 {
    let mut id: u128 = rand::random();
    // RFC 9562 version 4, variant 10.
    id = (id & !(0xf_u128 << 76)) | (0x4_u128 << 76);
    id = (id & !(0x3_u128 << 62)) | (0x2_u128 << 62);
    id
}

/// Takes an operation name apart. Never fails: what is not a cluster name
/// is a local one.
pub fn parse_operation_name(name: &str) -> ParsedName<'_> {
    let (instance, tail) = if let Some(t) = name.strip_prefix("operations/") {
        ("", t)
    } else if let Some((i, t)) = name.split_once("/operations/") {
        (i, t)
    } else {
        return ParsedName {
            instance: "",
            holder: None,
            id: name,
        };
    };
    let local = ParsedName {
        instance,
        holder: None,
        id: tail,
    };
    let mut parts = tail.splitn(3, '.');
    let (Some(node), Some(gen), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return local;
    };
    let (Ok(node), Some(generation)) = (NodeName::new(node), parse_base36(gen)) else {
        return local;
    };
    if !is_uuid(id) {
        return local;
    }
    ParsedName {
        instance,
        holder: Some(Holder { node, generation }),
        id,
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut buf = [0u8; 13];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    String::from_utf8_lossy(&buf[i..]).into_owned()
}

/// Canonical base 36 only (lowercase, no sign, no leading zero), so each
/// generation has exactly one spelling.
fn parse_base36(s: &str) -> Option<u64> {
    let ok = !s.is_empty()
        && s.len() <= 13
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        && (s == "0" || !s.starts_with('0'));
    if !ok {
        return None;
    }
    u64::from_str_radix(s, 36).ok()
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> NodeName {
        NodeName::new(s).expect("name")
    }

    #[test]
    fn names_round_trip() {
        let id = 0x6f0c_1d2e_3f40_4a5b_8c6d_7e8f_9012_3456u128;
        for (instance, generation) in [("", 0), ("ci", 1), ("a/b/c", u64::MAX), ("x", 36)] {
            let n = operation_name(instance, &node("b3"), generation, id);
            let p = parse_operation_name(&n);
            assert_eq!(p.instance, instance, "{n}");
            assert_eq!(
                p.holder,
                Some(Holder {
                    node: node("b3"),
                    generation
                }),
                "{n}"
            );
            assert_eq!(p.id, "6f0c1d2e-3f40-4a5b-8c6d-7e8f90123456");
        }
        assert_eq!(
            operation_name("ci", &node("b3"), 35, 0),
            "ci/operations/b3.z.00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(base36(u64::MAX), "3w5e11264sgsf");
    }

    #[test]
    fn fresh_ids_are_v4_and_parse() {
        for _ in 0..100 {
            let n = operation_name("", &node("h"), 7, new_operation_id());
            let p = parse_operation_name(&n);
            assert!(p.holder.is_some(), "{n}");
            assert_eq!(&p.id[14..15], "4");
            assert!("89ab".contains(&p.id[19..20]), "{n}");
        }
    }

    #[test]
    fn plain_and_hostile_names_are_local() {
        let uuid = "6f0c1d2e-3f40-4a5b-8c6d-7e8f90123456";
        let local = |name: &str, instance: &str, id: &str| {
            let p = parse_operation_name(name);
            assert_eq!(p.holder, None, "{name:?}");
            assert_eq!(p.instance, instance, "{name:?}");
            assert_eq!(p.id, id, "{name:?}");
        };
        local(&format!("ci/operations/{uuid}"), "ci", uuid);
        local(&format!("operations/{uuid}"), "", uuid);
        local("", "", "");
        local("operations/", "", "");
        local("garbage", "", "garbage");
        local("/operations/", "", "");
        let bad_tails = [
            format!("B3.1.{uuid}"),                  // bad node
            format!(".1.{uuid}"),                    // empty node
            format!("{}.1.{uuid}", "a".repeat(33)),  // node too long
            format!("b3..{uuid}"),                   // empty generation
            format!("b3.01.{uuid}"),                 // leading zero
            format!("b3.Z.{uuid}"),                  // uppercase
            format!("b3.+1.{uuid}"),                 // sign
            format!("b3.3w5e11264sgsg.{uuid}"),      // u64 overflow
            format!("b3.zzzzzzzzzzzzzz.{uuid}"),     // too long
            "b3.1.not-a-uuid".to_owned(),            // id
            format!("b3.1.{}", uuid.to_uppercase()), // non-canonical id
            format!("b3.1.{uuid}.extra"),            // trailing
            format!("b3.1.{uuid}/more"),             // trailing
            "b3.1".to_owned(),                       // short
            "b3.ä.x".to_owned(),                     // non-ASCII
            format!("b3.1.{}", "é".repeat(18)),      // 36 bytes, not a uuid
        ];
        for tail in &bad_tails {
            local(&format!("ci/operations/{tail}"), "ci", tail);
        }
        // The instance ends at the first `operations` segment.
        let nested = format!("a/operations/operations/b3.1.{uuid}");
        let p = parse_operation_name(&nested);
        assert_eq!(p.instance, "a");
        assert_eq!(p.holder, None);
        // A huge name is fine.
        let huge = format!("{}/operations/x", "i".repeat(1 << 20));
        assert_eq!(parse_operation_name(&huge).holder, None);
    }
}
