//! The tokens file: bearer tokens, stored as hashes.
//!
//! `/etc/rbe/tokens` (root:rbe, 0640) holds one line per token. The file is
//! versioned by its first non-comment line, and keeps the admin's comments
//! and blank lines across rewrites:
//!
//! ```text
//! # Bearer tokens of rbe-frontend; managed with `rbectl token`.
//! rbe-tokens v1
//! # NAME  SHA256-OF-TOKEN  CREATED  EXPIRES
//! ci-main 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 2026-12-02T14:35:04Z never
//! alice   2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae 2026-12-02T14:35:04Z 2027-03-02T14:35:04Z
//! ```
//!
//! A token is `rbe_` followed by the base64url form of 32 random bytes. Only
//! its SHA-256 is stored. A token carries 256 bits of entropy, so a slow
//! password hash (argon2, bcrypt) would add nothing: nobody can guess a
//! preimage of a fast hash of a random 256-bit value either, and a fast
//! hash keeps every request's check cheap. The plaintext exists only in
//! what [`create`] returns, once.
//!
//! To add a field, bump the version line and keep reading `v1`.

use crate::time;
use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Where the tokens file lives unless `[auth] tokens` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/rbe/tokens";

/// The version line this code writes and reads.
const HEADER: &str = "rbe-tokens v1";

/// What every token starts with, so a leaked one is recognisable (secret
/// scanners) and a client's mistake (a password, a JWT) is told apart.
pub const TOKEN_PREFIX: &str = "rbe_";

/// Length of a token: the prefix plus 43 base64url characters.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 43;

/// Mode of a tokens file this code creates: the frontend reads it through
/// group `rbe`; nobody else needs to see even the hashes.
pub const NEW_FILE_MODE: u32 = 0o640;

/// Names that untokened callers get; a token of that name would receive
/// their grants.
const RESERVED_NAMES: [&str; 2] = ["local", "anonymous"];

/// Something wrong with the tokens file or a request to change it.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file (or its directory).
        path: PathBuf,
        /// What failed (shown in the message, so not a `source`).
        error: io::Error,
    },
    /// A line of the file is wrong.
    #[error("{}:{line}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong, without the secret (the file holds none).
        reason: String,
    },
    /// A token name does not follow the rules.
    #[error("invalid token name {name:?}: {reason}")]
    InvalidName {
        /// The name asked for.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// `create` with a name that already has a token.
    #[error("a token named {0:?} already exists (revoke it first, or pick another name)")]
    NameTaken(String),
    /// `revoke` of a name that has no token.
    #[error("no token named {0:?}")]
    UnknownName(String),
    /// An expiry past what the file can say (year 9999).
    #[error("the expiry is too far in the future (at most 9999-12-31)")]
    ExpiryTooFar,
    /// The system's random source failed.
    #[error("cannot get random bytes from the system")]
    Random,
}

/// Checks a token name: 1 to 64 of `A-Z a-z 0-9 . _ @ -`, and not a name
/// reserved for callers without credentials.
pub fn check_name(name: &str) -> Result<(), TokensError> {
    let bad = |reason| {
        Err(TokensError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 64 {
        return bad("must be 1 to 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".@_-".contains(&b))
    {
        return bad("may contain only letters, digits, '.', '_', '@' and '-'");
    }
    if RESERVED_NAMES.contains(&name) {
        return bad("\"local\" and \"anonymous\" name callers without credentials");
    }
    Ok(())
}

/// A token's SHA-256, the only form in which it is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of a presented token.
    pub fn of(token: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, token);
        let mut h = [0u8; 32];
        h.copy_from_slice(d.as_ref());
        TokenHash(h)
    }

    /// The first 8 hex digits: enough to tell tokens apart in a listing,
    /// far too little to matter.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    fn parse(s: &str) -> Option<Self> {
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut h = [0u8; 32];
        hex::decode_to_slice(s, &mut h).ok()?;
        Some(TokenHash(h))
    }
}

/// Only the short prefix, so a debug print never shows a whole hash.
impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", self.short())
    }
}

/// A plaintext token, as returned once by [`create`]. It has no `Display`
/// and its `Debug` hides it, so it cannot reach a log by accident.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The token itself, to show to the admin once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// One token of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    name: String,
    hash: TokenHash,
    created: SystemTime,
    expires: Option<SystemTime>,
}

impl TokenRecord {
    /// The identity the token proves.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The token's hash.
    pub fn hash(&self) -> &TokenHash {
        &self.hash
    }
    /// When it was created (whole seconds).
    pub fn created(&self) -> SystemTime {
        self.created
    }
    /// When it stops working, if ever.
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }
    /// Whether it no longer works at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }
    /// `created` as written in the file (`2026-12-02T14:35:04Z`).
    pub fn created_str(&self) -> String {
        time::format(self.created)
    }
    /// `expires` as written in the file, or `never`.
    pub fn expires_str(&self) -> String {
        self.expires
            .map_or_else(|| "never".to_owned(), time::format)
    }

    fn render(&self) -> String {
        format!(
            "{} {} {} {}",
            self.name,
            hex::encode(self.hash.0),
            self.created_str(),
            self.expires_str()
        )
    }
}

#[derive(Clone, Debug)]
enum Line {
    /// A comment, a blank line or the version line, kept as it was.
    Verbatim(String),
    Token(TokenRecord),
}

/// The parsed contents of a tokens file, with its comments.
#[derive(Clone, Debug)]
pub struct TokensFile {
    lines: Vec<Line>,
}

impl TokensFile {
    /// Reads `path`; a missing file has no tokens.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        match fs::read(path) {
            Ok(bytes) => Self::parse(path, &bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(TokensFile { lines: Vec::new() }),
            Err(e) => Err(io_err(path, e)),
        }
    }

    /// Parses a file's contents; `path` only names it in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, TokensError> {
        let perr = |line: usize, reason: String| TokensError::Parse {
            path: path.to_owned(),
            line,
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            perr(line + 1, "not UTF-8".to_owned())
        })?;
        let mut lines = Vec::new();
        let mut seen_header = false;
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                lines.push(Line::Verbatim(raw.to_owned()));
                continue;
            }
            if !seen_header {
                if trimmed != HEADER {
                    let reason = if trimmed.starts_with("rbe-tokens ") {
                        format!("unsupported version {trimmed:?}; this rbe reads {HEADER:?}")
                    } else {
                        format!("expected the version line {HEADER:?} before any token")
                    };
                    return Err(perr(n, reason));
                }
                seen_header = true;
                lines.push(Line::Verbatim(raw.to_owned()));
                continue;
            }
            let rec = parse_record(trimmed).map_err(|r| perr(n, r))?;
            if !names.insert(rec.name.clone()) {
                return Err(perr(n, format!("a second token named {:?}", rec.name)));
            }
            if !hashes.insert(rec.hash) {
                return Err(perr(n, "the same hash as an earlier line".to_owned()));
            }
            lines.push(Line::Token(rec));
        }
        Ok(TokensFile { lines })
    }

    /// The tokens, in file order.
    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.lines.iter().filter_map(|l| match l {
            Line::Token(r) => Some(r),
            Line::Verbatim(_) => None,
        })
    }

    /// The file's text: what was read, with added tokens at the end and
    /// revoked ones gone.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let has_header = self
            .lines
            .iter()
            .any(|l| matches!(l, Line::Verbatim(s) if s.trim() == HEADER));
        if !has_header {
            out.push_str(
                "# Bearer tokens of rbe-frontend, as SHA-256 hashes; manage them with\n\
                 # `rbectl token create|list|revoke` and apply with\n\
                 # `systemctl reload rbe-frontend`. See rbectl(1).\n",
            );
            out.push_str(HEADER);
            out.push_str("\n# NAME SHA256 CREATED EXPIRES\n");
        }
        for l in &self.lines {
            match l {
                Line::Verbatim(s) => out.push_str(s),
                Line::Token(r) => out.push_str(&r.render()),
            }
            out.push('\n');
        }
        out
    }

    fn add(&mut self, rec: TokenRecord) -> Result<(), TokensError> {
        if self.tokens().any(|r| r.name == rec.name) {
            return Err(TokensError::NameTaken(rec.name));
        }
        self.lines.push(Line::Token(rec));
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<TokenRecord, TokensError> {
        let i = self
            .lines
            .iter()
            .position(|l| matches!(l, Line::Token(r) if r.name == name))
            .ok_or_else(|| TokensError::UnknownName(name.to_owned()))?;
        match self.lines.remove(i) {
            Line::Token(r) => Ok(r),
            Line::Verbatim(_) => Err(TokensError::UnknownName(name.to_owned())),
        }
    }
}

fn parse_record(line: &str) -> Result<TokenRecord, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [name, hash, created, expires] = fields[..] else {
        return Err(format!(
            "expected 4 fields (NAME SHA256 CREATED EXPIRES), found {}",
            fields.len()
        ));
    };
    check_name(name).map_err(|e| e.to_string())?;
    let hash = TokenHash::parse(hash)
        .ok_or_else(|| "the hash is not 64 lowercase hex digits".to_owned())?;
    let when = |what: &str, s: &str| {
        time::parse(s)
            .ok_or_else(|| format!("{what} {s:?} is not a UTC time like 2026-12-02T14:35:04Z"))
    };
    let created = when("creation time", created)?;
    let expires = match expires {
        "never" => None,
        s => Some(when("expiry", s)?),
    };
    Ok(TokenRecord {
        name: name.to_owned(),
        hash,
        created,
        expires,
    })
}

/// Who owns a tokens file that does not exist yet (an existing file keeps
/// its mode and owner).
#[derive(Clone, Copy, Debug, Default)]
pub struct NewFileOwner {
    /// Group to give it (the frontend's group `rbe`), if any.
    pub gid: Option<u32>,
}

/// Adds a token named `name` to the file at `path` (creating the file with
/// mode 0640 if needed) and returns the token, which is stored nowhere.
pub fn create(
    path: &Path,
    name: &str,
    expires_in: Option<Duration>,
    now: SystemTime,
    owner: NewFileOwner,
) -> Result<(Secret, TokenRecord), TokensError> {
    check_name(name)?;
    let _lock = lock_dir(path)?;
    let mut file = TokensFile::load(path)?;
    let secret = generate()?;
    // Whole seconds, so what is returned equals what a later load reads.
    let now = time::parse(&time::format(now)).unwrap_or(now);
    let expires = match expires_in {
        None => None,
        Some(d) => Some(
            now.checked_add(d)
                .filter(|t| time::parse(&time::format(*t)).is_some())
                .ok_or(TokensError::ExpiryTooFar)?,
        ),
    };
    let rec = TokenRecord {
        name: name.to_owned(),
        hash: TokenHash::of(secret.0.as_bytes()),
        created: now,
        expires,
    };
    file.add(rec.clone())?;
    write_atomically(path, file.render().as_bytes(), owner)?;
    Ok((secret, rec))
}

/// The tokens of the file at `path` (none if it does not exist).
pub fn list(path: &Path) -> Result<Vec<TokenRecord>, TokensError> {
    Ok(TokensFile::load(path)?.tokens().cloned().collect())
}

/// Removes the token named `name`; an unknown name is an error.
pub fn revoke(path: &Path, name: &str) -> Result<TokenRecord, TokensError> {
    let _lock = lock_dir(path)?;
    let mut file = TokensFile::load(path)?;
    let rec = file.remove(name)?;
    write_atomically(path, file.render().as_bytes(), NewFileOwner::default())?;
    Ok(rec)
}

fn generate() -> Result<Secret, TokensError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TokensError::Random)?;
    Ok(Secret(format!("{TOKEN_PREFIX}{}", base64url(&bytes))))
}

/// Unpadded base64url (RFC 4648 §5): safe in an HTTP header and a shell.
fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fn io_err(path: &Path, error: io::Error) -> TokensError {
    TokensError::Io {
        path: path.to_owned(),
        error,
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Serialises `rbectl token` runs on one file: each reads, changes and
/// rewrites it, and two at once would lose one's change. The lock is on
/// the directory because the file itself is replaced by rename.
fn lock_dir(path: &Path) -> Result<fs::File, TokensError> {
    let dir = parent_dir(path);
    let f = fs::File::open(dir).map_err(|e| io_err(dir, e))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err(dir, e.into()))?;
    Ok(f)
}

/// Replaces `path` with `contents` so a reader sees the old file or the new
/// one, never a part: a temporary file in the same directory, the old
/// file's mode and owner, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, contents: &[u8], owner: NewFileOwner) -> Result<(), TokensError> {
    let dir = parent_dir(path);
    let (mode, uid, gid) = match fs::metadata(path) {
        Ok(m) => (m.mode() & 0o7777, Some(m.uid()), Some(m.gid())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (NEW_FILE_MODE, None, owner.gid),
        Err(e) => return Err(io_err(path, e)),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tokens.")
        .tempfile_in(dir)
        .map_err(|e| io_err(dir, e))?;
    let tmp_path = tmp.path().to_owned();
    let werr = |e| io_err(&tmp_path, e);
    let f = tmp.as_file_mut();
    let m = f.metadata().map_err(werr)?;
    let uid = uid.filter(|&u| u != m.uid());
    let gid = gid.filter(|&g| g != m.gid());
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::fchown(&*f, uid, gid).map_err(werr)?;
    }
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(werr)?;
    f.write_all(contents).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    tmp.persist(path).map_err(|e| io_err(path, e.error))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

#[cfg(test)]
#[path = "tokens_tests.rs"]
mod tests;
