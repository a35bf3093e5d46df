//! Digests: a digest function, a 32-byte hash and a size, validated once at the
//! service edge. rbe supports SHA-256 and BLAKE3, both 32-byte hashes.

use std::fmt;

use crate::reapi;

/// A digest function rbe supports.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum DigestFunction {
    /// SHA-256, REAPI's default.
    Sha256,
    /// BLAKE3 with 32-byte output.
    Blake3,
}

/// Why a digest or digest function was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// A function REAPI names but rbe does not implement (MD5, SHA-1, ...).
    #[error("digest function {0} is not supported; rbe supports sha256 and blake3")]
    UnsupportedFunction(String),
    /// The hash has the wrong number of characters for its function.
    #[error(
        "hash {hash:?} has {len} characters; {function} needs 64 lowercase hex characters{hint}"
    )]
    HashLength {
        /// The hash as received (truncated for display).
        hash: String,
        /// Its length.
        len: usize,
        /// The function it was checked against.
        function: DigestFunction,
        /// A hint naming the function the length suggests.
        hint: &'static str,
    },
    /// The hash has characters other than `0-9a-f`.
    #[error("hash {0:?} is not lowercase hex")]
    HashNotLowercaseHex(String),
    /// A negative size.
    #[error("size {0} is negative")]
    NegativeSize(i64),
    /// A digest message was required but absent.
    #[error("digest is missing")]
    Missing,
}

impl DigestFunction {
    /// All supported functions, in the order advertised in Capabilities.
    pub const ALL: [DigestFunction; 2] = [DigestFunction::Sha256, DigestFunction::Blake3];

    /// Maps REAPI's `DigestFunction.Value`; `UNKNOWN` (0) means SHA-256 as the
    /// API's inference rule gives for 64-character hashes.
    pub fn from_reapi(value: i32) -> Result<Self, DigestError> {
        use reapi::digest_function::Value;
        match Value::try_from(value) {
            Ok(Value::Unknown) | Ok(Value::Sha256) => Ok(Self::Sha256),
            Ok(Value::Blake3) => Ok(Self::Blake3),
            Ok(other) => Err(DigestError::UnsupportedFunction(
                other.as_str_name().to_ascii_lowercase(),
            )),
            Err(_) => Err(DigestError::UnsupportedFunction(format!("#{value}"))),
        }
    }

    /// REAPI's `DigestFunction.Value` for this function.
    pub fn to_reapi(self) -> i32 {
        use reapi::digest_function::Value;
        match self {
            Self::Sha256 => Value::Sha256 as i32,
            Self::Blake3 => Value::Blake3 as i32,
        }
    }

    /// The lowercase name used in resource names and on disk.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Blake3 => "blake3",
        }
    }

    /// Parses the lowercase name of any REAPI digest function. Returns
    /// `Ok(None)` when `s` is not a digest function name at all.
    pub fn from_name(s: &str) -> Result<Option<Self>, DigestError> {
        match s {
            "sha256" => Ok(Some(Self::Sha256)),
            "blake3" => Ok(Some(Self::Blake3)),
            "md5" | "sha1" | "sha384" | "sha512" | "vso" | "murmur3" | "sha256tree" => {
                Err(DigestError::UnsupportedFunction(s.to_string()))
            }
            _ => Ok(None),
        }
    }

    /// A fresh streaming hasher.
    pub fn hasher(self) -> Hasher {
        match self {
            Self::Sha256 => Hasher::Sha256(ring::digest::Context::new(&ring::digest::SHA256)),
            Self::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }
}

impl fmt::Display for DigestFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A streaming hasher for one of the supported functions.
// One hasher exists per blob in flight, so variant size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 (ring's assembly implementation, as fast as OpenSSL's).
    Sha256(ring::digest::Context),
    /// BLAKE3.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(c) => c.update(data),
            Self::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The 32-byte hash of everything fed.
    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        match self {
            Self::Sha256(c) => out.copy_from_slice(c.finish().as_ref()),
            Self::Blake3(h) => out = *h.finalize().as_bytes(),
        }
        out
    }
}

/// A validated digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// The function that produced `hash`.
    pub function: DigestFunction,
    /// The raw hash.
    pub hash: [u8; 32],
    /// The blob's size in bytes.
    pub size: u64,
}

fn length_hint(len: usize) -> &'static str {
    match len {
        32 => " (32 characters looks like MD5, which rbe does not support)",
        40 => " (40 characters looks like SHA-1, which rbe does not support)",
        96 => " (96 characters looks like SHA-384, which rbe does not support)",
        128 => " (128 characters looks like SHA-512, which rbe does not support)",
        _ => "",
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Value of each byte as a lowercase hex digit, or 0xff. Uppercase is not a
/// digit here: REAPI hashes are lowercase.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Decodes 64 lowercase hex characters in one pass; `None` if any
/// character is not `0-9a-f` or the length is not 64.
fn decode_hex32(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let hi = HEX_VALUE[pair[0] as usize];
        let lo = HEX_VALUE[pair[1] as usize];
        // 0xff has bit 7 set; valid digits never do.
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 15);
    }
    (bad & 0x80 == 0).then_some(out)
}

impl Digest {
    /// Validates a hash string and size for `function`. Hashes must be 64
    /// lowercase hex characters, as REAPI requires.
    pub fn parse(function: DigestFunction, hash: &str, size: i64) -> Result<Self, DigestError> {
        if hash.len() != 64 {
            let shown: String = hash.chars().take(80).collect();
            return Err(DigestError::HashLength {
                hash: shown,
                len: hash.len(),
                function,
                hint: length_hint(hash.len()),
            });
        }
        let raw = decode_hex32(hash.as_bytes())
            .ok_or_else(|| DigestError::HashNotLowercaseHex(hash.to_string()))?;
        let size = u64::try_from(size).map_err(|_| DigestError::NegativeSize(size))?;
        Ok(Self {
            function,
            hash: raw,
            size,
        })
    }

    /// Validates a REAPI digest message.
    pub fn from_reapi(function: DigestFunction, d: &reapi::Digest) -> Result<Self, DigestError> {
        Self::parse(function, &d.hash, d.size_bytes)
    }

    /// Validates an optional REAPI digest field.
    pub fn from_reapi_opt(
        function: DigestFunction,
        d: Option<&reapi::Digest>,
    ) -> Result<Self, DigestError> {
        Self::from_reapi(function, d.ok_or(DigestError::Missing)?)
    }

    /// The REAPI message.
    pub fn to_reapi(&self) -> reapi::Digest {
        reapi::Digest {
            hash: self.hex(),
            size_bytes: self.size as i64,
        }
    }

    /// The hash as lowercase hex.
    pub fn hex(&self) -> String {
        let mut out = [0u8; 64];
        for (pair, b) in out.chunks_exact_mut(2).zip(self.hash) {
            pair[0] = HEX_DIGITS[(b >> 4) as usize];
            pair[1] = HEX_DIGITS[(b & 15) as usize];
        }
        // Only ASCII hex digits were written.
        String::from_utf8(out.to_vec()).unwrap_or_default()
    }

    /// The digest of `data`.
    pub fn of(function: DigestFunction, data: &[u8]) -> Self {
        let mut h = function.hasher();
        h.update(data);
        Self {
            function,
            hash: h.finish(),
            size: data.len() as u64,
        }
    }

    /// The digest of everything `r` yields, read a piece at a time (a
    /// large file is never held whole).
    pub fn of_reader(function: DigestFunction, mut r: impl std::io::Read) -> std::io::Result<Self> {
        let mut h = function.hasher();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            size += n as u64;
        }
        Ok(Self {
            function,
            hash: h.finish(),
            size,
        })
    }

    /// The digest of the empty blob, which is always present.
    pub fn empty(function: DigestFunction) -> Self {
        Self::of(function, &[])
    }

    /// Whether this is the empty blob.
    pub fn is_empty_blob(&self) -> bool {
        self.size == 0 && *self == Self::empty(self.function)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.function, self.hex(), self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn a_reader_digests_like_its_bytes() {
        let data: Vec<u8> = (0..(3 << 20) + 7).map(|i| (i % 251) as u8).collect();
        for f in [DigestFunction::Sha256, DigestFunction::Blake3] {
            for n in [0, 1, 1 << 20, data.len()] {
                let got = Digest::of_reader(f, &data[..n]).expect("reading a slice");
                assert_eq!(got, Digest::of(f, &data[..n]));
            }
        }
    }

    #[test]
    fn empty_sha256() {
        assert_eq!(Digest::empty(DigestFunction::Sha256).hex(), EMPTY_SHA256);
    }

    #[test]
    fn empty_blake3() {
        assert_eq!(
            Digest::empty(DigestFunction::Blake3).hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn rejects_bad_hashes() {
        let f = DigestFunction::Sha256;
        assert!(matches!(
            Digest::parse(f, &EMPTY_SHA256.to_uppercase(), 0),
            Err(DigestError::HashNotLowercaseHex(_))
        ));
        assert!(matches!(
            Digest::parse(f, &EMPTY_SHA256[..40], 0),
            Err(DigestError::HashLength { len: 40, .. })
        ));
        assert!(matches!(
            Digest::parse(f, EMPTY_SHA256, -1),
            Err(DigestError::NegativeSize(-1))
        ));
        let msg = Digest::parse(f, &EMPTY_SHA256[..40], 0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("SHA-1"), "{msg}");
    }

    #[test]
    fn hex_round_trips_and_refuses_every_non_digit() {
        let d = Digest::of(DigestFunction::Sha256, b"abc");
        assert_eq!(d.hex(), hex::encode(d.hash));
        let parsed = Digest::parse(DigestFunction::Sha256, &d.hex(), 3);
        assert_eq!(parsed, Ok(d));
        for b in 0..=255u8 {
            let mut h = EMPTY_SHA256.as_bytes().to_vec();
            h[17] = b;
            let ok = b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
            match String::from_utf8(h) {
                Ok(h) => assert_eq!(
                    Digest::parse(DigestFunction::Sha256, &h, 0).is_ok(),
                    ok,
                    "byte {b:#x}"
                ),
                Err(_) => assert!(!ok),
            }
        }
    }

    #[test]
    fn functions() {
        assert_eq!(DigestFunction::from_reapi(0), Ok(DigestFunction::Sha256));
        assert_eq!(DigestFunction::from_reapi(9), Ok(DigestFunction::Blake3));
        assert!(
            matches!(DigestFunction::from_reapi(3), Err(DigestError::UnsupportedFunction(n)) if n == "md5")
        );
        assert!(DigestFunction::from_reapi(2).is_err());
        assert!(DigestFunction::from_reapi(999).is_err());
    }
}
