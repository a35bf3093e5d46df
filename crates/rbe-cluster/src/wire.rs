//! The AEAD envelope around every gossip datagram.
//!
//! ```text
//! ver(1) ‖ key_id(1) ‖ session(16) ‖ counter(8) ‖ ChaCha20-Poly1305(foca bytes) ‖ tag(16)
//! ```
//!
//! - **One shared cluster key, per-sender keys.** Each process picks a random
//!   128-bit `session` at start and seals with
//!   `HKDF-SHA256(cluster_key, salt = cluster name, info = "rbe-gossip-v1" ‖ session)`.
//!   The nonce is `0⁴ ‖ counter`, the counter going up by one per datagram.
//!   Under a key used by one sender only, a counter nonce can never repeat;
//!   random 96-bit nonces under one key shared by 100 hosts would reach the
//!   birthday bound within weeks. The header is the AAD, so nothing in it
//!   can be changed either.
//! - **Cluster name as salt.** Hosts of another cluster, even one sharing the
//!   key file by mistake, derive other keys: their datagrams fail to open
//!   ([`WireError::AuthFailed`]) and the mismatch costs no extra field.
//! - **Replay window.** For each session that has sent at least one
//!   authentic datagram the receiver keeps the highest counter and a bitmap
//!   of the 64 below it, as IPsec does. Sessions are tracked only after a
//!   datagram opened, so forged sessions cost no memory, and the table is
//!   bounded ([`MAX_SESSIONS`]; the least recently heard session goes first).
//!   A forgotten session can replay at most what it sent before; the foca
//!   messages it carries are idempotent anyway.
//! - **Key rotation.** A [`Keyring`] has a primary key (sends and receives)
//!   and old keys (receive only). `key_id` is the first byte of SHA-256 of
//!   the key, only a hint: every key of that id is tried, so two keys that
//!   happen to share one still work. Rotate by adding the new key as an old
//!   key everywhere (reload), then making it primary everywhere, then
//!   dropping the previous one. A new primary starts a new session.
//!
//! All crypto is `ring`'s: `aead::CHACHA20_POLY1305`, `hkdf::HKDF_SHA256`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// The envelope version this code writes and reads.
pub const VERSION: u8 = 1;
/// `ver ‖ key_id ‖ session ‖ counter`.
pub const HEADER_LEN: usize = 1 + 1 + 16 + 8;
/// The Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes the envelope adds to foca's.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The largest datagram sent or accepted: fits an Ethernet MTU with IPv6.
pub const MAX_DATAGRAM: usize = 1400;
/// foca's `max_packet_size`.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - OVERHEAD;
/// Sessions whose replay windows are kept.
pub const MAX_SESSIONS: usize = 1024;

const HKDF_INFO: &[u8] = b"rbe-gossip-v1";

/// Why a datagram was not accepted (or could not be sealed).
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("datagram of {0} bytes is shorter than the envelope")]
    Truncated(usize),
    #[error("datagram of {0} bytes is larger than {MAX_DATAGRAM}")]
    Oversized(usize),
    #[error("unknown envelope version {0}")]
    UnknownVersion(u8),
    #[error("no key with id {0:#04x}")]
    UnknownKey(u8),
    /// Also what a datagram of another cluster (other name) gets.
    #[error("authentication failed (wrong key or cluster name, or forged)")]
    AuthFailed,
    #[error("replayed or too old")]
    Replayed,
}

impl WireError {
    /// A short stable name for counters and the `reason` log field.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::Truncated(_) => "truncated",
            WireError::Oversized(_) => "oversized",
            WireError::UnknownVersion(_) => "unknown_version",
            WireError::UnknownKey(_) => "unknown_key",
            WireError::AuthFailed => "auth_failed",
            WireError::Replayed => "replayed",
        }
    }
}

/// Why a cluster key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read cluster key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster key file {path}: {reason}")]
    Format { path: PathBuf, reason: String },
}

/// A 32-byte cluster key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, only its id.
        write!(f, "ClusterKey(id={:#04x})", self.id())
    }
}

impl ClusterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses key text: 32 bytes as 64 hex digits or as base64 (standard
    /// alphabet, padding optional), surrounding whitespace ignored.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|e| e.to_string())?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
                .map_err(|_| {
                    "expected 32 bytes as base64 or 64 hex digits (`openssl rand -base64 32`)"
                        .to_owned()
                })?
        };
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("expected 32 bytes, found {}", bytes.len()))?;
        if arr.iter().all(|&b| b == 0) {
            return Err("the key is all zero bytes (a placeholder, not a key)".to_owned());
        }
        Ok(Self(arr))
    }

    /// Reads and parses a key file (for example `/etc/rbe/cluster.key` or
    /// `$CREDENTIALS_DIRECTORY/cluster-key`).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| KeyError::Format {
            path: path.to_owned(),
            reason,
        })
    }

    /// The first byte of SHA-256 of the key: a hint saying which key sealed
    /// a datagram, safe to show (it reveals 8 bits of a hash).
    pub fn id(&self) -> u8 {
        ring::digest::digest(&ring::digest::SHA256, &self.0).as_ref()[0]
    }
}

/// The primary key (sends and receives) and old keys (receive only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyring {
    pub primary: ClusterKey,
    pub old: Vec<ClusterKey>,
}

impl Keyring {
    pub fn new(primary: ClusterKey) -> Self {
        Self {
            primary,
            old: Vec::new(),
        }
    }

    /// Reads the primary key file and the old ones (`key_file`,
    /// `old_key_files`); the first bad file is the error, named.
    pub fn load(primary: &Path, old: &[PathBuf]) -> Result<Self, KeyError> {
        let mut ring = Self::new(ClusterKey::load(primary)?);
        for p in old {
            ring.old.push(ClusterKey::load(p)?);
        }
        Ok(ring)
    }

    pub fn with_old(mut self, old: impl IntoIterator<Item = ClusterKey>) -> Self {
        self.old.extend(old);
        self
    }

    fn keys(&self) -> impl Iterator<Item = &ClusterKey> {
        std::iter::once(&self.primary).chain(self.old.iter())
    }
}

fn derive(key: &ClusterKey, cluster: &[u8], session: &[u8; 16]) -> LessSafeKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, cluster).extract(&key.0);
    let info = [HKDF_INFO, &session[..]];
    // expand fails only when the output is longer than 255 hashes; a
    // 32-byte AEAD key never is.
    #[allow(clippy::expect_used)]
    let okm = prk
        .expand(&info, &CHACHA20_POLY1305)
        .expect("HKDF output of one AEAD key");
    LessSafeKey::new(UnboundKey::from(okm))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Highest counter seen plus a bitmap of the 64 counters below it.
#[derive(Debug, Clone, Copy, Default)]
struct ReplayWindow {
    highest: u64,
    seen: u64,
}

impl ReplayWindow {
    fn check(&self, counter: u64) -> bool {
        if counter > self.highest {
            return true;
        }
        let back = self.highest - counter;
        back < 64 && self.seen & (1u64 << back) == 0
    }

    fn mark(&mut self, counter: u64) {
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = counter;
        } else {
            let back = self.highest - counter;
            if back < 64 {
                self.seen |= 1u64 << back;
            }
        }
    }
}

struct Session {
    key: LessSafeKey,
    /// Which keyring key it was derived from, so a reload can drop sessions
    /// whose key is gone.
    from: ClusterKey,
    window: ReplayWindow,
    last_heard: u64,
}

struct Sender {
    key_id: u8,
    session: [u8; 16],
    key: LessSafeKey,
    next: u64,
}

/// Seals outgoing and opens incoming datagrams for one process.
pub struct Wire {
    cluster: Vec<u8>,
    keyring: Keyring,
    sender: Sender,
    sessions: HashMap<([u8; 16], u8), Session>,
    tick: u64,
}

fn random_session() -> [u8; 16] {
    let mut s = [0u8; 16];
    // The system RNG fails only when the kernel has none; a fixed session
    // would still be safe against forgery (the key is secret) but reuse
    // nonces across restarts, so fall back to the time-seeded thread RNG.
    if SystemRandom::new().fill(&mut s).is_err() {
        s = rand::random();
    }
    s
}

impl Wire {
    /// A wire for `cluster_name` with a fresh random session.
    pub fn new(cluster_name: &str, keyring: Keyring) -> Self {
        Self::with_session(cluster_name, keyring, random_session())
    }

    /// As [`Wire::new`] with a chosen session (tests, the simulator). A
    /// session must never be reused with the same key across processes.
    pub fn with_session(cluster_name: &str, keyring: Keyring, session: [u8; 16]) -> Self {
        let cluster = cluster_name.as_bytes().to_vec();
        let sender = Sender {
            key_id: keyring.primary.id(),
            session,
            key: derive(&keyring.primary, &cluster, &session),
            next: 1,
        };
        Self {
            cluster,
            keyring,
            sender,
            sessions: HashMap::new(),
            tick: 0,
        }
    }

    /// This process's current sending session.
    pub fn session(&self) -> [u8; 16] {
        self.sender.session
    }

    /// Applies a new keyring. A new primary key starts a new session;
    /// sessions derived from keys no longer in the ring are forgotten.
    pub fn reload(&mut self, keyring: Keyring) {
        if keyring.primary != self.keyring.primary {
            let session = random_session();
            self.sender = Sender {
                key_id: keyring.primary.id(),
                session,
                key: derive(&keyring.primary, &self.cluster, &session),
                next: 1,
            };
        }
        self.sessions
            .retain(|_, s| keyring.keys().any(|k| *k == s.from));
        self.keyring = keyring;
    }

    /// Seals foca's bytes into one datagram.
    pub fn seal(&mut self, payload: &[u8]) -> Result<Vec<u8>, WireError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(WireError::Oversized(payload.len() + OVERHEAD));
        }
        if self.sender.next == u64::MAX {
            // Unreachable in practice (2⁶⁴ datagrams); a new session keeps
            // nonces unique if it ever were.
            let session = random_session();
            self.sender.session = session;
            self.sender.key = derive(&self.keyring.primary, &self.cluster, &session);
            self.sender.next = 1;
        }
        let counter = self.sender.next;
        self.sender.next += 1;
        let mut out = Vec::with_capacity(payload.len() + OVERHEAD);
        out.push(VERSION);
        out.push(self.sender.key_id);
        out.extend_from_slice(&self.sender.session);
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(payload);
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let tag = self
            .sender
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&*header), body)
            .map_err(|_| WireError::Oversized(payload.len() + OVERHEAD))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a datagram in place and returns foca's bytes inside it.
    pub fn open<'a>(&mut self, datagram: &'a mut [u8]) -> Result<&'a [u8], WireError> {
        let len = datagram.len();
        if len > MAX_DATAGRAM {
            return Err(WireError::Oversized(len));
        }
        if len < OVERHEAD {
            return Err(WireError::Truncated(len));
        }
        let (header, body) = datagram.split_at_mut(HEADER_LEN);
        if header[0] != VERSION {
            return Err(WireError::UnknownVersion(header[0]));
        }
        let key_id = header[1];
        let mut session = [0u8; 16];
        session.copy_from_slice(&header[2..18]);
        let mut ctr = [0u8; 8];
        ctr.copy_from_slice(&header[18..26]);
        let counter = u64::from_be_bytes(ctr);
        self.tick += 1;

        if let Some(s) = self.sessions.get_mut(&(session, key_id)) {
            if !s.window.check(counter) {
                return Err(WireError::Replayed);
            }
            let plain = s
                .key
                .open_in_place(nonce(counter), Aad::from(&*header), body)
                .map_err(|_| WireError::AuthFailed)?;
            s.window.mark(counter);
            s.last_heard = self.tick;
            return Ok(plain);
        }

        let candidates: Vec<ClusterKey> = self
            .keyring
            .keys()
            .filter(|k| k.id() == key_id)
            .cloned()
            .collect();
        if candidates.is_empty() {
            return Err(WireError::UnknownKey(key_id));
        }
        // ring zeroes the buffer when a tag does not verify, so with more
        // than one candidate (two keys sharing an id) each try needs the
        // original bytes back.
        let original = (candidates.len() > 1).then(|| body.to_vec());
        for from in candidates {
            if let Some(o) = &original {
                body.copy_from_slice(o);
            }
            let key = derive(&from, &self.cluster, &session);
            if key
                .open_in_place(nonce(counter), Aad::from(&*header), body)
                .is_ok()
            {
                self.track(session, key_id, key, from, counter);
                let plain_len = body.len() - TAG_LEN;
                return Ok(&body[..plain_len]);
            }
        }
        Err(WireError::AuthFailed)
    }

    fn track(&mut self, session: [u8; 16], key_id: u8, key: LessSafeKey, from: ClusterKey, c: u64) {
        if self.sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_heard)
                .map(|(k, _)| *k)
            {
                self.sessions.remove(&oldest);
            }
        }
        let mut window = ReplayWindow::default();
        window.mark(c);
        self.sessions.insert(
            (session, key_id),
            Session {
                key,
                from,
                window,
                last_heard: self.tick,
            },
        );
    }

    /// How many sessions' replay windows are kept (bounded by
    /// [`MAX_SESSIONS`]).
    pub fn tracked_sessions(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
