//! Finding, parsing and merging the configuration files of one daemon.
//!
//! Every file is checked against the daemon's fragment schema on its own
//! before merging, so that a typo is blamed on the file that contains it
//! rather than on the merged result.

use crate::error::{ConfigError, Origin};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Which file last set each dotted key.
#[derive(Debug, Default, Clone)]
pub(crate) struct Provenance {
    origins: BTreeMap<String, PathBuf>,
}

impl Provenance {
    /// The file that set `key`, or [`Origin::Default`].
    pub(crate) fn origin(&self, key: &str) -> Origin {
        match self.origins.get(key) {
            Some(p) => Origin::File(p.clone()),
            None => Origin::Default,
        }
    }

    /// An error about `key`, blamed on whoever set it.
    pub(crate) fn error(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(self.origin(key), Some(key), reason)
    }
}

/// Configuration files for `daemon` in precedence order, lowest first.
pub(crate) fn config_files(daemon: &str, dirs: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    let io_err =
        |p: &Path, e: io::Error| ConfigError::new(Origin::File(p.to_owned()), None, e.to_string());
    let mut files = Vec::new();
    for dir in dirs {
        let main = dir.join(format!("{daemon}.toml"));
        match fs::metadata(&main) {
            Ok(m) if m.is_file() => files.push(main),
            Ok(_) => return Err(io_err(&main, io::Error::other("not a regular file"))),
            Err(e) if is_absent(&e) => {}
            Err(e) => return Err(io_err(&main, e)),
        }
        let dropin = dir.join(format!("{daemon}.toml.d"));
        let entries = match fs::read_dir(&dropin) {
            Ok(entries) => entries,
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(io_err(&dropin, e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&dropin, e))?;
            let name = entry.file_name();
            let name_s = name.to_string_lossy();
            // Editors and package managers leave dot-files (.foo.toml.swp,
            // .dpkg-new) around; only real *.toml drop-ins count.
            if name_s.starts_with('.') || !name_s.ends_with(".toml") {
                continue;
            }
            let path = entry.path();
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => found.push((name, path)),
                Ok(_) => {}
                // A dangling symlink is how drop-ins are commonly masked.
                Err(e) if is_absent(&e) => {}
                Err(e) => return Err(io_err(&path, e)),
            }
        }
        found.sort();
        files.extend(found.into_iter().map(|(_, p)| p));
    }
    Ok(files)
}

fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Loads and merges all files for `daemon`; `F` is its fragment schema.
pub(crate) fn load<F: DeserializeOwned>(
    daemon: &str,
    dirs: &[PathBuf],
) -> Result<(F, Provenance), ConfigError> {
    let mut merged = toml::Table::new();
    let mut prov = Provenance::default();
    for path in config_files(daemon, dirs)? {
        let table = parse_file::<F>(&path)?;
        merge(&mut merged, table, "", &path, &mut prov);
    }
    // Each file was valid alone and merging only replaces leaves, so this
    // can fail only if a table in one file met a scalar in another.
    let fragment = serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
        let key = key_path(&e);
        let origin = key.as_deref().map_or(Origin::Default, |k| prov.origin(k));
        ConfigError::new(origin, key.as_deref(), e.inner().to_string())
    })?;
    Ok((fragment, prov))
}

/// Reads one file, checks it against the schema `F` and returns it as a table.
pub(crate) fn parse_file<F: DeserializeOwned>(path: &Path) -> Result<toml::Table, ConfigError> {
    let origin = || Origin::File(path.to_owned());
    let text =
        fs::read_to_string(path).map_err(|e| ConfigError::new(origin(), None, e.to_string()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        ConfigError::new(
            origin(),
            None,
            format!("TOML syntax error: {}", e.message()),
        )
        .with_line(line_of(&text, e.span()))
    })?;
    // Deserializing the text again (rather than `table`) keeps source spans,
    // so type errors can name the line as well as the key.
    let de = toml::Deserializer::new(&text);
    serde_path_to_error::deserialize::<_, F>(de).map_err(|e| {
        ConfigError::new(origin(), key_path(&e).as_deref(), e.inner().message())
            .with_line(line_of(&text, e.inner().span()))
    })?;
    Ok(table)
}

fn key_path<E>(e: &serde_path_to_error::Error<E>) -> Option<String> {
    let path = e.path().to_string();
    (path != "." && !path.is_empty()).then_some(path)
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> Option<usize> {
    let start = span?.start.min(text.len());
    Some(
        text.as_bytes()[..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1,
    )
}

/// Deep-merges `src` into `dst`: tables merge key by key, anything else
/// (including arrays) replaces what was there.
fn merge(
    dst: &mut toml::Table,
    src: toml::Table,
    prefix: &str,
    file: &Path,
    prov: &mut Provenance,
) {
    for (k, v) in src {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (dst.get_mut(&k), v) {
            (Some(toml::Value::Table(d)), toml::Value::Table(s)) => merge(d, s, &key, file, prov),
            (_, toml::Value::Table(s)) => {
                let mut fresh = toml::Table::new();
                merge(&mut fresh, s, &key, file, prov);
                dst.insert(k, toml::Value::Table(fresh));
            }
            (_, v) => {
                prov.origins.insert(key, file.to_owned());
                dst.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_records_last_writer() {
        let a: toml::Table = toml::from_str("[s]\nx = 1\ny = 2").unwrap();
        let b: toml::Table = toml::from_str("[s]\ny = 3\nz = [1]").unwrap();
        let mut dst = toml::Table::new();
        let mut prov = Provenance::default();
        merge(&mut dst, a, "", Path::new("/a"), &mut prov);
        merge(&mut dst, b, "", Path::new("/b"), &mut prov);
        assert_eq!(dst["s"]["x"].as_integer(), Some(1));
        assert_eq!(dst["s"]["y"].as_integer(), Some(3));
        assert_eq!(prov.origin("s.x"), Origin::File("/a".into()));
        assert_eq!(prov.origin("s.y"), Origin::File("/b".into()));
        assert_eq!(prov.origin("s.z"), Origin::File("/b".into()));
        assert_eq!(prov.origin("s.w"), Origin::Default);
    }

    #[test]
    fn line_numbers() {
        assert_eq!(line_of("a\nb\nc", Some(4..5)), Some(3));
        assert_eq!(line_of("a", None), None);
    }

    #[test]
    fn dropins_sorted_and_filtered() {
        let d = tempfile::tempdir().unwrap();
        let dd = d.path().join("casd.toml.d");
        fs::create_dir(&dd).unwrap();
        for n in ["20-b.toml", "10-a.toml", ".hidden.toml", "notes.txt"] {
            fs::write(dd.join(n), "").unwrap();
        }
        fs::write(d.path().join("casd.toml"), "").unwrap();
        let files = config_files("casd", &[d.path().to_owned(), d.path().join("missing")]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| {
                p.strip_prefix(d.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "casd.toml",
                "casd.toml.d/10-a.toml",
                "casd.toml.d/20-b.toml"
            ]
        );
    }
}
