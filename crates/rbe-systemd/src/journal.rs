//! Journal entries about a transient unit, such as an action's scope.
//!
//! `journalctl -u UNIT` also matches entries that a root-owned sender marks
//! with `OBJECT_SYSTEMD_UNIT=UNIT`. tracing-journald prefixes every field
//! it writes (ours with `RBE_`), so it cannot set that one; events that
//! carry a `unit` field are written here instead, with the same fields,
//! names and priorities, plus `OBJECT_SYSTEMD_UNIT` when `unit` is not
//! empty. So `journalctl -u rbe-action-<id>.scope` shows systemd's own
//! lines about the scope and rbe-workerd's account of the action together.

use std::fmt::{self, Write as _};

use libsystemd::logging::{journal_send, Priority};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::Context;

/// The field that names the unit an event is about.
const UNIT_FIELD: &str = "unit";

/// Whether `meta` is an event this module writes (and tracing-journald
/// leaves alone).
pub(crate) fn about_a_unit(meta: &Metadata<'_>) -> bool {
    meta.is_event() && meta.fields().field(UNIT_FIELD).is_some()
}

/// The layer for events with a `unit` field.
pub(crate) struct UnitEvents {
    pub(crate) identifier: &'static str,
    pub(crate) prefix: &'static str,
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for UnitEvents {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields {
            prefix: self.prefix,
            ..Default::default()
        };
        event.record(&mut fields);
        let mut vars = vec![
            ("SYSLOG_IDENTIFIER".to_owned(), self.identifier.to_owned()),
            ("TARGET".to_owned(), meta.target().to_owned()),
        ];
        if let Some(file) = meta.file() {
            vars.push(("CODE_FILE".to_owned(), file.to_owned()));
        }
        if let Some(line) = meta.line() {
            vars.push(("CODE_LINE".to_owned(), line.to_string()));
        }
        if let Some(unit) = fields.unit.filter(|u| !u.is_empty()) {
            vars.push(("OBJECT_SYSTEMD_UNIT".to_owned(), unit));
        }
        vars.extend(fields.vars);
        // Like tracing-journald: nothing sensible to do if the journal
        // refuses an entry.
        let _ = journal_send(priority(meta.level()), &fields.message, vars.into_iter());
    }
}

/// tracing-journald's default mapping, so both writers agree.
fn priority(level: &Level) -> Priority {
    match *level {
        Level::ERROR => Priority::Error,
        Level::WARN => Priority::Warning,
        Level::INFO => Priority::Notice,
        Level::DEBUG => Priority::Info,
        Level::TRACE => Priority::Debug,
    }
}

#[derive(Default)]
struct Fields {
    prefix: &'static str,
    message: String,
    unit: Option<String>,
    vars: Vec<(String, String)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            name => {
                if name == UNIT_FIELD {
                    self.unit = Some(value.clone());
                }
                self.vars.push((journal_name(self.prefix, name), value));
            }
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.put(field, s);
    }
}

/// `action_digest` with prefix `RBE` is `RBE_ACTION_DIGEST`: upper case,
/// anything but letters and digits as `_`, as tracing-journald names it.
fn journal_name(prefix: &str, name: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1 + name.len());
    out.push_str(prefix);
    out.push('_');
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_tracing_journald() {
        assert_eq!(journal_name("RBE", "action_digest"), "RBE_ACTION_DIGEST");
        assert_eq!(journal_name("RBE", "r#type"), "RBE_R_TYPE");
    }
}
