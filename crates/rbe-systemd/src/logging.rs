//! Logging setup: journald when stderr goes to the journal, else stderr.

use crate::Error;
use std::env;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer as _, Registry};

use crate::journal::{about_a_unit, UnitEvents};

/// Prefix of our fields in the journal: `action_digest` is
/// `RBE_ACTION_DIGEST`.
const FIELD_PREFIX: &str = "RBE";

/// The installed filter, so a configuration reload can change the level.
static FILTER: std::sync::OnceLock<reload::Handle<EnvFilter, Registry>> =
    std::sync::OnceLock::new();

/// Set when `RUST_LOG` chose the filter: it then wins over reloads too.
static FROM_ENV: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs the global tracing subscriber.
///
/// `level` is an `EnvFilter` directive (from the config file); `RUST_LOG`,
/// when set, replaces it. When stderr is connected to journald (systemd
/// sets `JOURNAL_STREAM`), events go to the journal natively, so their
/// fields become journal fields (`action_digest` as `RBE_ACTION_DIGEST`, so
/// `journalctl RBE_INVOCATION_ID=...` finds a build's actions; the prefix
/// also keeps them from overriding trusted fields such as `PRIORITY`) and
/// `SYSLOG_IDENTIFIER` is `daemon`;
/// otherwise they are formatted to stderr. A second call returns
/// [`Error::LoggingAlreadyInitialized`].
pub fn init_logging(level: &str, daemon: &'static str) -> Result<(), Error> {
    let (directives, from_env) = match env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => (s, true),
        _ => (level.to_owned(), false),
    };
    let (filter, handle) = reload::Layer::new(parse_filter(&directives)?);

    let mut journald_error = None;
    let journald = if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(l) => Some(
                l.with_syslog_identifier(daemon.to_owned())
                    .with_field_prefix(Some(FIELD_PREFIX.to_owned()))
                    .with_filter(filter_fn(|m| !about_a_unit(m))),
            ),
            Err(e) => {
                journald_error = Some(e);
                None
            }
        }
    } else {
        None
    };
    let fmt = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // stderr is usually a file or a collector's pipe here, where
            // colour escape codes are noise.
            .with_ansi(false)
    });
    // Events about a unit (an action's scope) carry OBJECT_SYSTEMD_UNIT.
    let units = journald.is_some().then(|| {
        UnitEvents {
            identifier: daemon,
            prefix: FIELD_PREFIX,
        }
        .with_filter(filter_fn(about_a_unit))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(units)
        .with(fmt)
        .try_init()
        .map_err(|e| Error::LoggingAlreadyInitialized(e.to_string()))?;
    FROM_ENV.store(from_env, std::sync::atomic::Ordering::Relaxed);
    let _ = FILTER.set(handle);
    if let Some(e) = journald_error {
        tracing::warn!(error = %e, "journald unavailable, logging to stderr");
    }
    Ok(())
}

fn parse_filter(directives: &str) -> Result<EnvFilter, Error> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| Error::LogFilter {
            filter: directives.to_owned(),
            reason: e.to_string(),
        })
}

/// Replaces the log filter with `level` (a reloaded `[log] level`). Does
/// nothing when `RUST_LOG` chose the filter, or before [`init_logging`].
pub fn set_log_level(level: &str) -> Result<(), Error> {
    let filter = parse_filter(level)?;
    if FROM_ENV.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    if let Some(h) = FILTER.get() {
        h.reload(filter).map_err(|e| Error::LogFilter {
            filter: level.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// Whether stderr is the journal stream systemd set up for us, rather than
/// something a parent redirected after inheriting `JOURNAL_STREAM`.
fn stderr_is_journal() -> bool {
    let Some(value) = env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    matches_journal_stream(&value.to_string_lossy(), stat.st_dev, stat.st_ino)
}

fn matches_journal_stream(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_matching() {
        assert!(matches_journal_stream("8:1234", 8, 1234));
        assert!(!matches_journal_stream("8:1234", 8, 1235));
        assert!(!matches_journal_stream("garbage", 8, 1234));
    }

    #[test]
    fn second_init_is_an_error_not_a_panic() {
        let _g = crate::ENV_LOCK.lock().unwrap();
        env::remove_var("RUST_LOG");
        assert!(matches!(
            init_logging("info,[=", "test"),
            Err(Error::LogFilter { .. })
        ));
        init_logging("debug", "test").unwrap();
        assert!(matches!(
            init_logging("debug", "test"),
            Err(Error::LoggingAlreadyInitialized(_))
        ));
    }
}
