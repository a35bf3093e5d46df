//! Platform properties: what an action requires and what a worker offers.
//!
//! An action matches a worker when every property the action names is
//! offered by the worker with that exact value. A worker may offer several
//! values for one name (e.g. `ISA=x86-64` and `ISA=x86-64-v2`).
//!
//! Names starting with [`REQUEST_PREFIX`] (`rbe.memory_max`, ...) are
//! resource requests the worker applies to the action's scope, not
//! capabilities: they take no part in matching.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A set of (name, value) properties.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Platform(BTreeMap<String, BTreeSet<String>>);

/// Prefix of platform properties that request resources (see the module
/// docs); the worker checks them against its ceilings.
pub const REQUEST_PREFIX: &str = "rbe.";

impl Platform {
    /// Builds a platform from pairs; repeated names add values. Resource
    /// requests (names starting with [`REQUEST_PREFIX`]) are left out.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (k, v) in pairs {
            let k = k.into();
            if k.starts_with(REQUEST_PREFIX) {
                continue;
            }
            m.entry(k).or_default().insert(v.into());
        }
        Platform(m)
    }

    /// Whether a worker offering `self` can run an action requiring `need`.
    pub fn satisfies(&self, need: &Platform) -> bool {
        need.0
            .iter()
            .all(|(k, vs)| self.0.get(k).is_some_and(|have| vs.is_subset(have)))
    }

    /// The required properties a worker offering `self` lacks.
    pub fn missing(&self, need: &Platform) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, vs) in &need.0 {
            for v in vs {
                if !self.0.get(k).is_some_and(|have| have.contains(v)) {
                    out.push((k.clone(), v.clone()));
                }
            }
        }
        out
    }

    /// Every (name, value) pair, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.0
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.as_str(), v.as_str())))
    }

    /// Whether no property is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, vs) in &self.0 {
            for v in vs {
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                write!(f, "{k}={v}")?;
            }
        }
        if first {
            f.write_str("(none)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_requests_do_not_take_part_in_matching() {
        let worker = Platform::from_pairs([("OSFamily", "linux")]);
        let need = Platform::from_pairs([("OSFamily", "linux"), ("rbe.memory_max", "2GiB")]);
        assert!(worker.satisfies(&need));
        assert_eq!(need, worker);
    }

    #[test]
    fn matching() {
        let worker = Platform::from_pairs([
            ("OSFamily", "linux"),
            ("ISA", "x86-64"),
            ("ISA", "x86-64-v2"),
        ]);
        assert!(worker.satisfies(&Platform::default()));
        assert!(worker.satisfies(&Platform::from_pairs([("OSFamily", "linux")])));
        assert!(worker.satisfies(&Platform::from_pairs([("ISA", "x86-64-v2")])));
        assert!(!worker.satisfies(&Platform::from_pairs([("OSFamily", "windows")])));
        assert!(!worker.satisfies(&Platform::from_pairs([("gpu", "1")])));
        assert_eq!(
            worker.missing(&Platform::from_pairs([("gpu", "1"), ("OSFamily", "linux")])),
            vec![("gpu".to_string(), "1".to_string())]
        );
    }
}
