//! The one error type every loading failure is reported as.

use std::fmt;
use std::path::PathBuf;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The value was read from this file.
    File(PathBuf),
    /// No file set the key; the compiled-in default applies.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Default => f.write_str("built-in default"),
        }
    }
}

/// A configuration file could not be read, parsed or validated.
///
/// `Display` is a single line meant for an operator:
/// `<file>[:<line>]: [key <dotted.key>: ]<reason>`.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(.origin, .line, .key, .reason))]
pub struct ConfigError {
    /// The file at fault, or [`Origin::Default`] when a built-in default
    /// conflicts with a value set elsewhere.
    pub origin: Origin,
    /// 1-based line within `origin`, when the parser knows it.
    pub line: Option<usize>,
    /// Dotted key path (`storage.max_size`), when the error concerns one key.
    pub key: Option<String>,
    /// Human-readable reason, without trailing punctuation.
    pub reason: String,
}

fn render(origin: &Origin, line: &Option<usize>, key: &Option<String>, reason: &str) -> String {
    let mut s = origin.to_string();
    if let Some(line) = line {
        s.push_str(&format!(":{line}"));
    }
    s.push_str(": ");
    if let Some(key) = key {
        s.push_str(&format!("key {key}: "));
    }
    // Parser messages sometimes span lines; journald and `systemctl status`
    // show one line per entry, so keep the whole error on one line.
    s.push_str(&reason.split_whitespace().collect::<Vec<_>>().join(" "));
    s
}

impl ConfigError {
    pub(crate) fn new(origin: Origin, key: Option<&str>, reason: impl Into<String>) -> Self {
        ConfigError {
            origin,
            line: None,
            key: key.map(str::to_owned),
            reason: reason.into(),
        }
    }

    pub(crate) fn with_line(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line() {
        let e = ConfigError::new(
            Origin::File("/etc/rbe/casd.toml".into()),
            Some("storage.max_size"),
            "invalid value\n  at here",
        )
        .with_line(Some(3));
        assert_eq!(
            e.to_string(),
            "/etc/rbe/casd.toml:3: key storage.max_size: invalid value at here"
        );
        let e = ConfigError::new(Origin::Default, None, "x");
        assert_eq!(e.to_string(), "built-in default: x");
    }
}
