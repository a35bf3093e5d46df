//! Settings and checks shared by several daemons.

use crate::layer::Provenance;
use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `[log]`: diagnostics verbosity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Log {
    /// A tracing filter directive such as `info` or `info,rbe_cas=debug`.
    /// `RUST_LOG`, when set, takes precedence at run time.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogFragment {
    level: Option<String>,
}

impl LogFragment {
    pub(crate) fn build(f: Option<Self>, prov: &Provenance) -> Result<Log, ConfigError> {
        let f = f.unwrap_or_default();
        let level = f.level.unwrap_or_else(|| Log::default().level);
        check_log_level(&level).map_err(|r| prov.error("log.level", r))?;
        Ok(Log { level })
    }
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks `directives` in `tracing_subscriber::EnvFilter` syntax.
///
/// EnvFilter itself reads a bare unknown word as a target name, so a typo
/// like `inf` would silently mean "everything in crate `inf`". Bare words
/// must therefore be levels here.
fn check_log_level(directives: &str) -> Result<(), String> {
    if directives.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    for d in directives.split(',').map(str::trim) {
        if d.is_empty() {
            continue;
        }
        let (target, level) = match d.rsplit_once('=') {
            Some((t, l)) => (Some(t), l),
            None => (None, d),
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "invalid directive {d:?}: level must be one of {}",
                LEVELS.join(", ")
            ));
        }
        if target.is_some_and(|t| t.trim().is_empty()) {
            return Err(format!("invalid directive {d:?}: empty target"));
        }
    }
    Ok(())
}

/// Rejects relative paths: daemons run with `/` as working directory, so a
/// relative path would silently point somewhere surprising.
pub(crate) fn check_absolute(prov: &Provenance, key: &str, p: &Path) -> Result<(), ConfigError> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(prov.error(
            key,
            format!("path {:?} must be absolute", p.display().to_string()),
        ))
    }
}

/// A stop's drain time: at most an hour (the units' `TimeoutStopSec=` is
/// what really bounds it).
pub(crate) fn check_drain_timeout(
    prov: &Provenance,
    key: &str,
    secs: u64,
) -> Result<(), ConfigError> {
    if secs > 3600 {
        return Err(prov.error(
            key,
            format!("{secs} is more than 3600 (keep it below the unit's TimeoutStopSec=)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        for ok in [
            "info",
            "DEBUG",
            "warn,rbe_cas=trace",
            "h2=off, info",
            "a[s{x=1}]=debug",
        ] {
            assert!(check_log_level(ok).is_ok(), "{ok}");
        }
        for bad in ["", "inf", "rbe_cas=loud", "=debug"] {
            assert!(check_log_level(bad).is_err(), "{bad}");
        }
    }
}
