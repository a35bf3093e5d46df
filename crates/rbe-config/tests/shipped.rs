//! The shipped vendor defaults parse, and say what the built-in defaults say
//! (except where the packaged host deliberately differs).

use std::path::PathBuf;

fn defaults_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../packaging/defaults")
}

#[test]
fn shipped_casd_defaults_match_builtin() {
    let shipped = rbe_config::load_casd(&[defaults_dir()]).expect("shipped casd.toml is valid");
    let builtin = rbe_config::load_casd(&[]).expect("built-in defaults");
    assert_eq!(shipped, builtin);
}

#[test]
fn shipped_frontend_defaults_match_builtin_except_public_listen() {
    let shipped =
        rbe_config::load_frontend(&[defaults_dir()]).expect("shipped frontend.toml is valid");
    let mut builtin = rbe_config::load_frontend(&[]).expect("built-in defaults");
    assert_eq!(
        shipped.listen.grpc,
        vec!["0.0.0.0:8980".to_string()],
        "a packaged host serves the network"
    );
    builtin.listen.grpc = shipped.listen.grpc.clone();
    assert_eq!(shipped, builtin);
}

#[test]
fn every_known_key_is_in_the_shipped_files() {
    for daemon in ["casd", "frontend", "workerd"] {
        let text =
            std::fs::read_to_string(defaults_dir().join(format!("{daemon}.toml"))).expect("read");
        let doc: toml::Table = text.parse().expect("toml");
        for key in rbe_config::known_keys(daemon) {
            let (section, name) = key.split_once('.').expect("dotted");
            let present = doc
                .get(section)
                .and_then(|s| s.as_table())
                .is_some_and(|t| t.contains_key(name));
            assert!(present, "{daemon}.toml lacks {key}");
        }
    }
}

#[test]
fn shipped_workerd_defaults_match_builtin() {
    let shipped =
        rbe_config::load_workerd(&[defaults_dir()]).expect("shipped workerd.toml is valid");
    let builtin = rbe_config::load_workerd(&[]).expect("built-in defaults");
    assert_eq!(shipped, builtin);
}
