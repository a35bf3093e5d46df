//! `[outputs]` in workerd.toml: defaults, overrides, and values refused
//! with the key named.
#![allow(clippy::unwrap_used)]

use rbe_config::{load_workerd, OutputsSection};

fn load(text: &str) -> Result<OutputsSection, String> {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("workerd.toml"), text).unwrap();
    load_workerd(&[t.path().to_path_buf()])
        .map(|s| s.outputs)
        .map_err(|e| e.to_string())
}

#[test]
fn defaults_and_overrides() {
    assert_eq!(
        load("").unwrap(),
        OutputsSection {
            max_depth: 256,
            max_entries: 1_000_000,
            max_path_bytes: 4096,
        }
    );
    let o = load("[outputs]\nmax_depth = 10\nmax_entries = 20\nmax_path_bytes = 300\n").unwrap();
    assert_eq!(
        (o.max_depth, o.max_entries, o.max_path_bytes),
        (10, 20, 300)
    );
}

#[test]
fn bad_values_name_their_key() {
    for (text, key) in [
        ("[outputs]\nmax_depth = 0\n", "outputs.max_depth"),
        ("[outputs]\nmax_entries = 0\n", "outputs.max_entries"),
        ("[outputs]\nmax_path_bytes = 10\n", "outputs.max_path_bytes"),
        ("[outputs]\nmax_files = 10\n", "max_files"),
    ] {
        let e = load(text).unwrap_err();
        assert!(e.contains(key), "{text}: {e}");
    }
}
