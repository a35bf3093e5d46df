//! ByteStream resource names (REAPI v2, "ByteStream API" section).
//!
//! Read:  `{instance}/blobs/{fn/}{hash}/{size}`
//!        `{instance}/compressed-blobs/{compressor}/{fn/}{hash}/{size}`
//! Write: `{instance}/uploads/{uuid}/blobs/{fn/}{hash}/{size}{/metadata}`
//!        `{instance}/uploads/{uuid}/compressed-blobs/{compressor}/{fn/}{hash}/{size}{/metadata}`
//!
//! The instance name may span segments; no segment may be a reserved keyword,
//! empty, `.` or `..`.

use crate::digest::{Digest, DigestError, DigestFunction};

/// Compressors for `compressed-blobs/` names and batch calls.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Compressor {
    /// Plain bytes.
    Identity,
    /// Zstandard.
    Zstd,
}

impl Compressor {
    /// Maps REAPI's `Compressor.Value`; `None` for compressors rbe lacks.
    pub fn from_reapi(v: i32) -> Option<Self> {
        match v {
            0 => Some(Self::Identity),
            1 => Some(Self::Zstd),
            _ => None,
        }
    }

    /// REAPI's `Compressor.Value`.
    pub fn to_reapi(self) -> i32 {
        match self {
            Self::Identity => 0,
            Self::Zstd => 1,
        }
    }
}

/// Why a resource name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceError {
    /// The name does not have the shape REAPI defines.
    #[error("resource name {name:?} is malformed: {reason}")]
    Malformed {
        /// The name (truncated).
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The compressor is not one rbe supports.
    #[error("compressor {0:?} is not supported; rbe supports zstd")]
    UnsupportedCompressor(String),
    /// The digest part is invalid.
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// A parsed read resource name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResource {
    /// Instance name (may be empty).
    pub instance: String,
    /// Wire form of the bytes.
    pub compressor: Compressor,
    /// The (uncompressed) blob.
    pub digest: Digest,
}

/// A parsed write resource name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResource {
    /// Instance name (may be empty).
    pub instance: String,
    /// Client-chosen upload id.
    pub uuid: String,
    /// Wire form of the bytes.
    pub compressor: Compressor,
    /// The (uncompressed) blob.
    pub digest: Digest,
}

const RESERVED: [&str; 7] = [
    "blobs",
    "uploads",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
    "compressed-blobs",
];

/// Longest resource name accepted; longer names are hostile, not clients.
pub const MAX_RESOURCE_NAME: usize = 4096;

fn malformed(name: &str, reason: &'static str) -> ResourceError {
    ResourceError::Malformed {
        name: name.chars().take(200).collect(),
        reason,
    }
}

/// Validates instance-name segments: no empty, `.`, `..` or reserved segment
/// and no control characters. An empty instance name is valid.
pub fn validate_instance(instance: &str) -> Result<(), &'static str> {
    if instance.is_empty() {
        return Ok(());
    }
    if instance.len() > 1024 {
        return Err("instance name is longer than 1024 bytes");
    }
    for seg in instance.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err("instance name has an empty, '.' or '..' segment");
        }
        if RESERVED.contains(&seg) {
            return Err("instance name has a reserved segment");
        }
        if seg.chars().any(|c| c.is_control()) {
            return Err("instance name has a control character");
        }
    }
    Ok(())
}

/// Parses `[compressor/]{fn/}hash/size` starting at `segs[0]`; returns the
/// parsed parts and how many segments were used.
fn parse_blob_tail(
    name: &str,
    segs: &[&str],
    compressed: bool,
) -> Result<(Compressor, Digest, usize), ResourceError> {
    let mut i = 0;
    let compressor = if compressed {
        let c = segs
            .first()
            .ok_or_else(|| malformed(name, "missing compressor"))?;
        i += 1;
        match *c {
            "zstd" => Compressor::Zstd,
            "identity" => {
                return Err(malformed(
                    name,
                    "identity is not a compressor for compressed-blobs",
                ))
            }
            other => {
                return Err(ResourceError::UnsupportedCompressor(
                    other.chars().take(40).collect(),
                ))
            }
        }
    } else {
        Compressor::Identity
    };
    let first = segs.get(i).ok_or_else(|| malformed(name, "missing hash"))?;
    let explicit = DigestFunction::from_name(first)?;
    if explicit.is_some() {
        i += 1;
    }
    let hash = segs.get(i).ok_or_else(|| malformed(name, "missing hash"))?;
    let size_s = segs
        .get(i + 1)
        .ok_or_else(|| malformed(name, "missing size"))?;
    if size_s.is_empty() || !size_s.bytes().all(|b| b.is_ascii_digit()) || size_s.len() > 19 {
        return Err(malformed(name, "size is not a decimal number"));
    }
    let size: i64 = size_s
        .parse()
        .map_err(|_| malformed(name, "size is out of range"))?;
    // SHA-256 is the only 64-character function REAPI lets clients leave
    // implicit; BLAKE3 must be named.
    let function = explicit.unwrap_or(DigestFunction::Sha256);
    let digest = Digest::parse(function, hash, size)?;
    Ok((compressor, digest, i + 2))
}

fn split_instance<'a>(
    name: &str,
    segs: &'a [&'a str],
    keys: &[&str],
) -> Result<(String, usize), ResourceError> {
    let pos = segs
        .iter()
        .position(|s| keys.contains(s))
        .ok_or_else(|| malformed(name, "no blobs/, compressed-blobs/ or uploads/ segment"))?;
    let instance = segs[..pos].join("/");
    validate_instance(&instance).map_err(|r| malformed(name, r))?;
    Ok((instance, pos))
}

fn check_len(name: &str) -> Result<(), ResourceError> {
    if name.len() > MAX_RESOURCE_NAME {
        return Err(malformed(name, "longer than 4096 bytes"));
    }
    if name.starts_with('/') {
        return Err(malformed(name, "starts with '/'"));
    }
    Ok(())
}

/// Parses a ByteStream Read resource name.
pub fn parse_read(name: &str) -> Result<ReadResource, ResourceError> {
    check_len(name)?;
    let segs: Vec<&str> = name.split('/').collect();
    let (instance, pos) = split_instance(name, &segs, &["blobs", "compressed-blobs", "uploads"])?;
    let compressed = match segs[pos] {
        "blobs" => false,
        "compressed-blobs" => true,
        _ => return Err(malformed(name, "a read name cannot be an uploads/ name")),
    };
    let tail = &segs[pos + 1..];
    let (compressor, digest, used) = parse_blob_tail(name, tail, compressed)?;
    if used != tail.len() {
        return Err(malformed(name, "trailing segments after size"));
    }
    Ok(ReadResource {
        instance,
        compressor,
        digest,
    })
}

/// Parses a ByteStream Write resource name.
pub fn parse_write(name: &str) -> Result<WriteResource, ResourceError> {
    check_len(name)?;
    let segs: Vec<&str> = name.split('/').collect();
    let (instance, pos) = split_instance(name, &segs, &["uploads", "blobs", "compressed-blobs"])?;
    if segs[pos] != "uploads" {
        return Err(malformed(
            name,
            "a write name needs uploads/{uuid}/ before blobs/",
        ));
    }
    let uuid = segs
        .get(pos + 1)
        .ok_or_else(|| malformed(name, "missing upload uuid"))?;
    if uuid.is_empty()
        || uuid.len() > 128
        || !uuid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(malformed(
            name,
            "upload uuid must be 1-128 characters of [A-Za-z0-9_-]",
        ));
    }
    let compressed = match segs.get(pos + 2) {
        Some(&"blobs") => false,
        Some(&"compressed-blobs") => true,
        _ => {
            return Err(malformed(
                name,
                "expected blobs/ or compressed-blobs/ after the upload uuid",
            ))
        }
    };
    // Anything after the size is optional metadata, which rbe ignores.
    let (compressor, digest, _) = parse_blob_tail(name, &segs[pos + 3..], compressed)?;
    Ok(WriteResource {
        instance,
        uuid: uuid.to_string(),
        compressor,
        digest,
    })
}

/// The canonical read name of a blob (used by clients and tests).
pub fn read_name(instance: &str, d: &Digest, compressor: Compressor) -> String {
    let mut s = String::new();
    if !instance.is_empty() {
        s.push_str(instance);
        s.push('/');
    }
    if compressor == Compressor::Zstd {
        s.push_str("compressed-blobs/zstd/");
    } else {
        s.push_str("blobs/");
    }
    if d.function != DigestFunction::Sha256 {
        s.push_str(d.function.name());
        s.push('/');
    }
    s.push_str(&format!("{}/{}", d.hex(), d.size));
    s
}

/// The canonical write name of a blob.
pub fn write_name(instance: &str, uuid: &str, d: &Digest, compressor: Compressor) -> String {
    let read = read_name("", d, compressor);
    if instance.is_empty() {
        format!("uploads/{uuid}/{read}")
    } else {
        format!("{instance}/uploads/{uuid}/{read}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn read_forms() {
        let r = parse_read(&format!("blobs/{H}/0")).expect("plain");
        assert_eq!(r.instance, "");
        let r = parse_read(&format!("a/b/blobs/blake3/{H}/5")).expect("instance+fn");
        assert_eq!(r.instance, "a/b");
        assert_eq!(r.digest.function, DigestFunction::Blake3);
        let r = parse_read(&format!("x/compressed-blobs/zstd/{H}/7")).expect("zstd");
        assert_eq!(r.compressor, Compressor::Zstd);
    }

    #[test]
    fn write_forms() {
        let w = parse_write(&format!("i/uploads/u-1/blobs/{H}/3/meta/data")).expect("meta");
        assert_eq!(w.uuid, "u-1");
        assert_eq!(w.digest.size, 3);
        let w =
            parse_write(&format!("uploads/u/compressed-blobs/zstd/blake3/{H}/3")).expect("zstd");
        assert_eq!(w.compressor, Compressor::Zstd);
    }

    #[test]
    fn hostile_names() {
        for n in [
            format!("../blobs/{H}/0"),
            format!("a//blobs/{H}/0"),
            format!("/blobs/{H}/0"),
            format!("blobs/{H}/-1"),
            format!("blobs/{H}/1e3"),
            format!("blobs/{H}/99999999999999999999"),
            format!("blobs/{H}"),
            format!("blobs/{H}/0/extra"),
            format!("blobs/md5/{H}/0"),
            format!("compressed-blobs/brotli/{H}/0"),
            format!("uploads/../blobs/{H}/0"),
            format!("uploads/u/blobs/{}/0", &H[..40]),
            "blobs".to_string(),
            "".to_string(),
            "x".repeat(5000),
        ] {
            assert!(parse_read(&n).is_err() || parse_write(&n).is_err(), "{n}");
        }
        assert!(parse_write(&format!("uploads/../blobs/{H}/0")).is_err());
        assert!(parse_read(&format!("uploads/u/blobs/{H}/0")).is_err());
    }
}
