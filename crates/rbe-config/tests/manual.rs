//! rbe.toml(5) documents every key the code accepts, with the default the
//! packaged vendor files set and whether reload applies it. The key list
//! comes from `rbe_config::known_keys`, so a new key fails here until it
//! has an entry.

use std::collections::BTreeMap;
use std::path::PathBuf;

const DAEMONS: [&str; 3] = ["casd", "frontend", "workerd"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `.TP` / `.B key` entries of the `.SS <daemon>.toml` subsection, as key →
/// body text with the roff escapes that appear in values undone.
fn entries(page: &str, daemon: &str) -> BTreeMap<String, String> {
    let header = format!(".SS {daemon}.toml");
    let mut out = BTreeMap::new();
    let mut inside = false;
    let mut current: Option<String> = None;
    let mut lines = page.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with(".SS") || line.starts_with(".SH") {
            inside = line == header;
            current = None;
            continue;
        }
        if !inside {
            continue;
        }
        if line == ".TP" {
            let key = lines
                .next()
                .and_then(|l| l.strip_prefix(".B "))
                .unwrap_or_else(|| panic!("{daemon}: .TP not followed by .B key"));
            assert!(
                out.insert(key.to_owned(), String::new()).is_none(),
                "{daemon}: {key} documented twice"
            );
            current = Some(key.to_owned());
        } else if let Some(key) = &current {
            let body = out.get_mut(key).expect("entry");
            body.push_str(&line.replace("\\-", "-"));
            body.push('\n');
        }
    }
    out
}

fn vendor_value(daemon: &str, key: &str) -> String {
    let path = repo().join(format!("packaging/defaults/{daemon}.toml"));
    let doc: toml::Table = std::fs::read_to_string(&path)
        .expect("vendor file")
        .parse()
        .expect("vendor toml");
    let (section, name) = key.split_once('.').expect("dotted key");
    doc.get(section)
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("{daemon}.toml lacks {key}"))
        .to_string()
}

#[test]
fn every_key_has_an_entry_with_its_default_and_reload() {
    let page = std::fs::read_to_string(repo().join("man/rbe.toml.5")).expect("man/rbe.toml.5");
    for daemon in DAEMONS {
        let documented = entries(&page, daemon);
        let known = rbe_config::known_keys(daemon);
        assert!(!known.is_empty(), "no keys for {daemon}");
        for key in &known {
            let body = documented
                .get(*key)
                .unwrap_or_else(|| panic!("rbe.toml(5) has no entry for {daemon}.toml {key}"));
            let default = body
                .split_once("Default: ")
                .and_then(|(_, rest)| rest.split_once(". Reload: "))
                .map(|(value, _)| value.trim())
                .unwrap_or_else(|| {
                    panic!("{daemon}.toml {key}: entry lacks \"Default: V. Reload: ...\": {body}")
                });
            assert_eq!(
                default,
                vendor_value(daemon, key),
                "{daemon}.toml {key}: the manual's default differs from packaging/defaults"
            );
        }
        for key in documented.keys() {
            assert!(
                known.contains(&key.as_str()),
                "rbe.toml(5) documents {daemon}.toml {key}, which the code does not accept"
            );
        }
    }
}
