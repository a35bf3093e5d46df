//! The secret files `[backing]` names: S3 keys and HTTP basic
//! credentials (`backing.credentials_file`), a bearer token
//! (`backing.token_file`). Errors never quote a value, and `Debug` never
//! shows a secret.

use std::path::Path;

/// S3 credentials from `backing.credentials_file`.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// A session token (temporary credentials), if any.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Reads `name = value` lines (`#` comments and blank lines allowed),
/// each name one of `names`; errors never quote a value.
fn read_pairs(path: &Path, names: &[&str]) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!(
                "{} line {}: expected name = value",
                path.display(),
                n + 1
            ));
        };
        let v = v.trim().trim_matches('"').to_owned();
        if v.is_empty() || !v.bytes().all(|c| (0x21..0x7f).contains(&c)) {
            return Err(format!(
                "{} line {}: the value must be printable ASCII without spaces",
                path.display(),
                n + 1
            ));
        }
        let k = k.trim();
        if !names.contains(&k) {
            return Err(format!(
                "{} line {}: unknown name {k:?} ({})",
                path.display(),
                n + 1,
                names.join(", ")
            ));
        }
        pairs.push((k.to_owned(), v));
    }
    Ok(pairs)
}

fn take(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Reads an S3 credentials file: `name = value` lines (`#` comments and
/// blank lines allowed) naming `access_key_id` and `secret_access_key`,
/// optionally `session_token`. Errors never quote a value.
pub fn read_s3_credentials(path: &Path) -> Result<S3Credentials, String> {
    let pairs = read_pairs(
        path,
        &["access_key_id", "secret_access_key", "session_token"],
    )?;
    match (
        take(&pairs, "access_key_id"),
        take(&pairs, "secret_access_key"),
    ) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(S3Credentials {
            access_key_id,
            secret_access_key,
            session_token: take(&pairs, "session_token"),
        }),
        _ => Err(format!(
            "{} must name both access_key_id and secret_access_key",
            path.display()
        )),
    }
}

/// HTTP basic authentication for an `http(s)://` store, from
/// `backing.credentials_file`.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    /// The user name (no `:`).
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never reaches a log.
        f.debug_struct("BasicCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Reads a basic-authentication credentials file: `username = ...` and
/// `password = ...` lines. Errors never quote a value.
pub fn read_basic_credentials(path: &Path) -> Result<BasicCredentials, String> {
    let pairs = read_pairs(path, &["username", "password"])?;
    match (take(&pairs, "username"), take(&pairs, "password")) {
        (Some(username), Some(password)) if !username.contains(':') => {
            Ok(BasicCredentials { username, password })
        }
        (Some(_), Some(_)) => Err(format!(
            "{}: the username must not contain ':'",
            path.display()
        )),
        _ => Err(format!(
            "{} must name both username and password",
            path.display()
        )),
    }
}

/// Reads a bearer token file: one line, trimmed, not empty, printable
/// ASCII (it becomes an HTTP header value).
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if token.lines().count() > 1 || !token.bytes().all(|c| (0x21..0x7f).contains(&c)) {
        return Err(format!(
            "{} must hold one token of printable ASCII without spaces",
            path.display()
        ));
    }
    Ok(token.to_owned())
}
