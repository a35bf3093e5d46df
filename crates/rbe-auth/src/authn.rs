//! Who is calling: from a request's [`Credentials`] to an [`Identity`].
//!
//! An [`Authenticator`] is immutable; on reload the frontend builds a new
//! one from the tokens file and swaps it in, so a revoked token stops
//! working for the next request without touching open connections.

use crate::tokens::{TokenHash, TokenRecord, TOKEN_LEN, TOKEN_PREFIX};
use crate::{Credentials, Identity, PeerAddr, Via};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// Longest `authorization` value looked at. An rbe token header is 54
/// bytes; this leaves room for other schemes' messages while refusing
/// anything that would make hashing or logging costly.
pub const MAX_HEADER_BYTES: usize = 4096;

/// The time source used to check expiry; tests inject a fixed one.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Why a request's credentials were not accepted. The frontend answers
/// UNAUTHENTICATED with [`AuthError::message`]. No variant holds a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials, from a peer that is not on this host, and
    /// `[auth] network_role` is not set.
    #[error(
        "credentials required: callers from {peer} must authenticate; \
         pass a token with Bazel's --remote_header=authorization=Bearer <token> \
         (an admin creates one with `rbectl token create NAME`), \
         or a client certificate (--tls_client_certificate and --tls_client_key)"
    )]
    CredentialsRequired {
        /// Where the call came from.
        peer: String,
    },
    /// The `authorization` value is longer than [`MAX_HEADER_BYTES`].
    #[error("the authorization header is {len} bytes, over the limit of {MAX_HEADER_BYTES}")]
    HeaderTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The `authorization` value is not `Bearer <token>`.
    #[error("malformed authorization header: {reason}; expected \"Bearer <token>\"")]
    MalformedHeader {
        /// What is wrong with it.
        reason: String,
    },
    /// A bearer token that `rbectl token create` cannot have made.
    #[error(
        "the bearer token is not an rbe token (those are \"rbe_\" followed by 43 \
         characters, as `rbectl token create` prints)"
    )]
    NotAnRbeToken,
    /// A well-formed token that the tokens file does not hold.
    #[error(
        "unknown bearer token (revoked, mistyped, or made for another rbe); \
         ask an admin for a new one (`rbectl token create`)"
    )]
    UnknownToken,
    /// The token is known but past its expiry.
    #[error("the bearer token {name:?} expired at {expired}; ask an admin for a new one")]
    ExpiredToken {
        /// The token's name (not the token).
        name: String,
        /// When it expired, as in the tokens file.
        expired: String,
    },
    /// The certificate and the token name different identities.
    #[error(
        "the client certificate names {certificate:?} but the bearer token names {token:?}; \
         send credentials of one identity"
    )]
    IdentityMismatch {
        /// The certificate's name.
        certificate: String,
        /// The token's name.
        token: String,
    },
    /// A verified certificate whose name cannot be an identity.
    #[error("the client certificate's name {name:?} cannot be used as an identity: {reason}")]
    BadCertificateName {
        /// The name taken from the certificate.
        name: String,
        /// Why not.
        reason: &'static str,
    },
}

impl AuthError {
    /// The one-line message for the client (UNAUTHENTICATED) and the journal.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// A short stable word for journal fields and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::CredentialsRequired { .. } => "credentials-required",
            AuthError::HeaderTooLong { .. } => "header-too-long",
            AuthError::MalformedHeader { .. } => "malformed-header",
            AuthError::NotAnRbeToken => "not-an-rbe-token",
            AuthError::UnknownToken => "unknown-token",
            AuthError::ExpiredToken { .. } => "expired-token",
            AuthError::IdentityMismatch { .. } => "identity-mismatch",
            AuthError::BadCertificateName { .. } => "bad-certificate-name",
        }
    }
}

#[derive(Clone)]
struct TokenEntry {
    name: Arc<str>,
    expires: Option<SystemTime>,
}

/// Turns credentials into identities. Immutable and cheap to share.
#[derive(Clone)]
pub struct Authenticator {
    // Looked up by hash: the map's timing can reveal at most something
    // about a hash, and a SHA-256 of a 256-bit random value reveals nothing
    // about the token, so no constant-time comparison is needed.
    tokens: HashMap<TokenHash, TokenEntry>,
    network_anonymous: bool,
    loopback_anonymous: bool,
    clock: Clock,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .field("network_anonymous", &self.network_anonymous)
            .finish_non_exhaustive()
    }
}

impl Default for Authenticator {
    /// No tokens, anonymous network callers refused.
    fn default() -> Self {
        Authenticator::new(std::iter::empty(), false)
    }
}

impl Authenticator {
    /// Accepts the given tokens. `network_anonymous` lets callers without
    /// credentials from other hosts in as [`Identity::anonymous`] (set when
    /// `[auth] network_role` is); otherwise they are refused.
    pub fn new<'a>(
        tokens: impl IntoIterator<Item = &'a TokenRecord>,
        network_anonymous: bool,
    ) -> Self {
        let tokens = tokens
            .into_iter()
            .map(|r| {
                (
                    *r.hash(),
                    TokenEntry {
                        name: r.name().into(),
                        expires: r.expires(),
                    },
                )
            })
            .collect();
        Authenticator {
            tokens,
            network_anonymous,
            loopback_anonymous: true,
            clock: Arc::new(SystemTime::now),
        }
    }

    /// Whether callers without credentials on a loopback address are let
    /// in as `local` (the default; `[auth] local_role = ""` turns it off,
    /// for hosts whose local users are not all trusted). Unix-socket peers
    /// are let in either way: the socket's mode and `SO_PEERCRED` already
    /// limit them to root, rbe's user and its group.
    #[must_use]
    pub fn with_loopback_anonymous(mut self, allowed: bool) -> Self {
        self.loopback_anonymous = allowed;
        self
    }

    /// The same, checking expiry against `clock` instead of the system time.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// How many tokens it accepts (for a log line on reload).
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Whether callers without credentials from other hosts are let in.
    pub fn allows_network_anonymous(&self) -> bool {
        self.network_anonymous
    }

    /// Who `c` is.
    ///
    /// - A verified certificate: its name, [`Via::Certificate`].
    /// - An `authorization: Bearer <token>`: the token's name, [`Via::Token`].
    /// - Both: they must name the same identity, which is then
    ///   [`Via::Certificate`]. Taking either one alone would let a stolen
    ///   token ride on someone else's certificate (or the reverse) and make
    ///   the audit trail name the wrong client; taking the union of their
    ///   rights would be worse.
    /// - Neither, from the Unix socket: `uid:<n>`, [`Via::Local`]; from a
    ///   loopback address: `local`, [`Via::Local`]; from anywhere else:
    ///   [`Identity::anonymous`] if allowed, else
    ///   [`AuthError::CredentialsRequired`].
    ///
    /// A header that is present but wrong is always an error, even where
    /// no credentials would be fine: a client that means to authenticate
    /// should learn that it did not.
    pub fn authenticate(&self, c: &Credentials<'_>) -> Result<Identity, AuthError> {
        let token = c.authorization.map(|v| self.bearer(v)).transpose()?;
        if let Some(cert) = c.certificate {
            check_certificate_name(cert)?;
            if let Some(t) = token {
                if &*t != cert {
                    return Err(AuthError::IdentityMismatch {
                        certificate: cert.to_owned(),
                        token: t.to_string(),
                    });
                }
            }
            return Ok(Identity::new(cert, Via::Certificate));
        }
        if let Some(t) = token {
            return Ok(Identity::new(t, Via::Token));
        }
        match c.peer {
            PeerAddr::Local { uid } => Ok(Identity::new(format!("uid:{uid}"), Via::Local)),
            p if p.is_local() && self.loopback_anonymous => Ok(Identity::new("local", Via::Local)),
            _ if self.network_anonymous => Ok(Identity::anonymous()),
            p => Err(AuthError::CredentialsRequired {
                peer: p.to_string(),
            }),
        }
    }

    /// The name of the token in an `authorization` value.
    fn bearer(&self, value: &[u8]) -> Result<Arc<str>, AuthError> {
        let malformed = |reason: &str| AuthError::MalformedHeader {
            reason: reason.to_owned(),
        };
        // Before anything else, so a huge value costs no hashing or copying.
        if value.len() > MAX_HEADER_BYTES {
            return Err(AuthError::HeaderTooLong { len: value.len() });
        }
        // HTTP field values: visible ASCII, spaces and tabs. (obs-text is
        // allowed by HTTP but no token contains it.)
        if !value
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return Err(malformed("it contains bytes other than visible ASCII"));
        }
        let text = std::str::from_utf8(value)
            .map_err(|_| malformed("it contains bytes other than visible ASCII"))?;
        // Surrounding whitespace is not part of a field value (RFC 9110 §5.5).
        let text = text.trim_matches([' ', '\t']);
        if text.is_empty() {
            return Err(malformed("it is empty"));
        }
        let Some((scheme, rest)) = text.split_once([' ', '\t']) else {
            return Err(if text.eq_ignore_ascii_case("bearer") {
                malformed("no token after Bearer")
            } else if text.starts_with(TOKEN_PREFIX) {
                malformed("the token lacks the \"Bearer \" in front")
            } else {
                malformed("it is not of the form \"Bearer <token>\"")
            });
        };
        // Auth schemes are case-insensitive (RFC 9110 §11.1).
        if !scheme.eq_ignore_ascii_case("bearer") {
            let shown = if scheme.len() <= 16 && scheme.bytes().all(|b| b.is_ascii_alphabetic()) {
                format!("the scheme {scheme:?} is not Bearer")
            } else {
                "the scheme is not Bearer".to_owned()
            };
            return Err(malformed(&shown));
        }
        let token = rest.trim_start_matches([' ', '\t']);
        if token.contains([' ', '\t']) {
            return Err(malformed("more than one word after Bearer"));
        }
        if token.len() != TOKEN_LEN
            || !token.starts_with(TOKEN_PREFIX)
            || !token[TOKEN_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AuthError::NotAnRbeToken);
        }
        let entry = self
            .tokens
            .get(&TokenHash::of(token.as_bytes()))
            .ok_or(AuthError::UnknownToken)?;
        if let Some(exp) = entry.expires {
            if (self.clock)() >= exp {
                return Err(AuthError::ExpiredToken {
                    name: entry.name.to_string(),
                    expired: crate::time::format(exp),
                });
            }
        }
        Ok(entry.name.clone())
    }
}

/// Certificate names share the namespace of grants with token names and
/// the names given to callers without credentials; those must stay apart.
fn check_certificate_name(name: &str) -> Result<(), AuthError> {
    let bad = |reason| {
        Err(AuthError::BadCertificateName {
            name: name.chars().take(256).collect(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 256 {
        return bad("it must be 1 to 256 bytes long");
    }
    if name.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    if name == "local" || name == "anonymous" || name == "*" || name.starts_with("uid:") {
        return bad("\"local\", \"anonymous\", \"*\" and \"uid:…\" are reserved");
    }
    Ok(())
}

#[cfg(test)]
#[path = "authn_tests.rs"]
mod tests;
