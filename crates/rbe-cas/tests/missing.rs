//! What the store lacks of an input closure (`missing_tree`) or of an
//! action result (`ActionCache::missing_for_result`): what a host copying
//! blobs from another host asks before each round.

use std::collections::HashSet;
use std::sync::Arc;

use prost::Message;
use rbe_cas::ac::ActionCache;
use rbe_cas::materialize::{missing_tree, DirCache, TreeError, MAX_ENTRIES};
use rbe_cas::{CasError, Store};
use rbe_proto::reapi::{
    ActionResult, Directory, DirectoryNode, FileNode, OutputDirectory, OutputFile, Tree,
};
use rbe_proto::Digest;

mod common;
use common::F;

fn open() -> (tempfile::TempDir, Arc<Store>) {
    let t = tempfile::tempdir().expect("tmp");
    let s = common::open(t.path());
    (t, s)
}

fn blob(data: &[u8]) -> (Digest, Vec<u8>) {
    (Digest::of(F, data), data.to_vec())
}

fn file(name: &str, d: Digest) -> FileNode {
    FileNode {
        name: name.into(),
        digest: Some(d.to_reapi()),
        is_executable: false,
        node_properties: None,
    }
}

fn sub(name: &str, d: Digest) -> DirectoryNode {
    DirectoryNode {
        name: name.into(),
        digest: Some(d.to_reapi()),
    }
}

fn dir(files: Vec<FileNode>, dirs: Vec<DirectoryNode>) -> (Digest, Vec<u8>) {
    let b = Directory {
        files,
        directories: dirs,
        ..Default::default()
    }
    .encode_to_vec();
    (Digest::of(F, &b), b)
}

fn put(s: &Arc<Store>, b: &(Digest, Vec<u8>)) {
    s.put(b.0, &b.1).expect("put");
}

fn set(ds: &[Digest]) -> HashSet<Digest> {
    ds.iter().copied().collect()
}

#[test]
fn a_complete_tree_lacks_nothing_and_missing_blobs_are_named_once() {
    let (_t, s) = open();
    let cache = DirCache::new(1000);
    let a = blob(b"a");
    let b = blob(b"b");
    // `b` appears in two directories and twice in one: listed once.
    let leaf = dir(vec![file("a", a.0), file("b", b.0)], vec![]);
    let other = dir(vec![file("b", b.0), file("b2", b.0)], vec![]);
    let root = dir(
        vec![file("top", a.0)],
        vec![sub("l", leaf.0), sub("o", other.0)],
    );
    for x in [&leaf, &other, &root] {
        put(&s, x);
    }
    let c = missing_tree(&s, &cache, F, &[root.0], MAX_ENTRIES).expect("walk");
    assert!(c.missing_directories.is_empty());
    assert_eq!(c.missing_files.len(), 2, "{:?}", c.missing_files);
    assert_eq!(set(&c.missing_files), set(&[a.0, b.0]));
    assert_eq!(c.directories, 3);
    put(&s, &a);
    put(&s, &b);
    let c = missing_tree(&s, &cache, F, &[root.0], MAX_ENTRIES).expect("walk");
    assert!(c.missing_directories.is_empty() && c.missing_files.is_empty());
}

#[test]
fn the_walk_stops_below_a_missing_directory() {
    let (_t, s) = open();
    let cache = DirCache::new(1000);
    let deep = blob(b"below the missing directory");
    let hidden = dir(vec![file("x", deep.0)], vec![]);
    let root = dir(vec![], vec![sub("h", hidden.0)]);
    put(&s, &root);
    let c = missing_tree(&s, &cache, F, &[root.0], MAX_ENTRIES).expect("walk");
    assert_eq!(c.missing_directories, vec![hidden.0]);
    assert!(c.missing_files.is_empty(), "nothing below is known");
    // Once the directory is there, the next round finds what it holds;
    // asking for just that subtree finds the same.
    put(&s, &hidden);
    for roots in [vec![root.0], vec![hidden.0]] {
        let c = missing_tree(&s, &cache, F, &roots, MAX_ENTRIES).expect("walk");
        assert!(c.missing_directories.is_empty());
        assert_eq!(c.missing_files, vec![deep.0]);
    }
}

#[test]
fn a_blob_that_is_a_missing_directory_and_a_file_is_named_once() {
    let (_t, s) = open();
    let cache = DirCache::new(1000);
    // (An empty Directory is the empty blob, always present.)
    let d = dir(vec![file("z", Digest::empty(F))], vec![]);
    let root = dir(vec![file("f", d.0)], vec![sub("d", d.0)]);
    put(&s, &root);
    let c = missing_tree(&s, &cache, F, &[root.0], MAX_ENTRIES).expect("walk");
    assert_eq!(c.missing_directories, vec![d.0]);
    assert!(c.missing_files.is_empty());
}

#[test]
fn a_blob_that_is_not_a_directory_is_invalid_and_named() {
    let (_t, s) = open();
    let cache = DirCache::new(1000);
    let junk = blob(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    put(&s, &junk);
    let root = dir(vec![], vec![sub("j", junk.0)]);
    put(&s, &root);
    match missing_tree(&s, &cache, F, &[root.0], MAX_ENTRIES) {
        Err(TreeError::Invalid(m)) => assert!(m.contains(&junk.0.to_string()), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn a_malformed_digest_is_invalid_and_names_its_directory() {
    let (_t, s) = open();
    let cache = DirCache::new(1000);
    let mut bad = file("f", Digest::of(F, b"x"));
    bad.digest = Some(rbe_proto::reapi::Digest {
        hash: "NOT-HEX".into(),
        size_bytes: 1,
    });
    let root = dir(vec![bad], vec![]);
    put(&s, &root);
    match missing_tree(&s, &cache, F, &[root.0], MAX_ENTRIES) {
        Err(TreeError::Invalid(m)) => {
            assert!(m.contains(&root.0.to_string()), "{m}");
            assert!(m.contains("NOT-HEX"), "{m}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn a_walk_beyond_its_entry_bound_is_refused() {
    let (_t, s) = open();
    let cache = DirCache::new(1000);
    let files: Vec<FileNode> = (0..20)
        .map(|i| file(&format!("f{i:02}"), Digest::of(F, &[i as u8])))
        .collect();
    let root = dir(files, vec![]);
    put(&s, &root);
    match missing_tree(&s, &cache, F, &[root.0], 10) {
        Err(TreeError::Invalid(m)) => assert!(m.contains("more than 10 entries"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(missing_tree(&s, &cache, F, &[root.0], 20).is_ok());
}

#[test]
fn a_60000_level_tree_is_walked_without_exhausting_the_stack() {
    let (_t, s) = open();
    let cache = DirCache::new(100_000);
    let leaf_file = blob(b"at the bottom");
    let mut level = dir(vec![file("f", leaf_file.0)], vec![]);
    let mut all = vec![level.clone()];
    for _ in 1..60_000 {
        level = dir(vec![], vec![sub("d", level.0)]);
        all.push(level.clone());
    }
    for chunk in all.chunks(2000) {
        let items: Vec<(Digest, &[u8])> = chunk.iter().map(|(d, b)| (*d, b.as_slice())).collect();
        for r in s.put_batch(&items) {
            r.expect("put");
        }
    }
    // A test thread's stack is small; a recursive walk would overflow it.
    let c = missing_tree(&s, &cache, F, &[level.0], MAX_ENTRIES).expect("walk");
    assert_eq!(c.directories, 60_000);
    assert_eq!(c.missing_files, vec![leaf_file.0]);
}

fn result_with(files: &[(&str, Digest)], trees: &[Digest], stdout: Option<Digest>) -> ActionResult {
    ActionResult {
        output_files: files
            .iter()
            .map(|(p, d)| OutputFile {
                path: (*p).into(),
                digest: Some(d.to_reapi()),
                ..Default::default()
            })
            .collect(),
        output_directories: trees
            .iter()
            .enumerate()
            .map(|(i, t)| OutputDirectory {
                path: format!("out{i}"),
                tree_digest: Some(t.to_reapi()),
                ..Default::default()
            })
            .collect(),
        stdout_digest: stdout.map(|d| d.to_reapi()),
        ..Default::default()
    }
}

fn tree_blob(files: Vec<FileNode>) -> (Digest, Vec<u8>) {
    let b = Tree {
        root: Some(Directory {
            files,
            ..Default::default()
        }),
        children: vec![],
    }
    .encode_to_vec();
    (Digest::of(F, &b), b)
}

#[test]
fn missing_outputs_are_named_once_and_a_missing_tree_alone() {
    let (_t, s) = open();
    let ac = ActionCache::open(Arc::clone(&s)).expect("ac");
    let out = blob(b"output");
    let inside = blob(b"inside the tree");
    let tree = tree_blob(vec![file("i", inside.0), file("o", out.0)]);
    // The output file is also stdout and is in the tree: named once.
    let ar = result_with(
        &[("o", out.0), ("o2", out.0)],
        &[tree.0, tree.0],
        Some(out.0),
    );
    let m = ac.missing_for_result(F, &ar).expect("walk");
    assert_eq!(
        set(&m),
        set(&[out.0, tree.0]),
        "the tree's files are unknown"
    );
    assert_eq!(m.len(), 2);
    put(&s, &tree);
    let m = ac.missing_for_result(F, &ar).expect("walk");
    assert_eq!(set(&m), set(&[out.0, inside.0]));
    assert_eq!(m.len(), 2);
    put(&s, &out);
    put(&s, &inside);
    assert!(ac.missing_for_result(F, &ar).expect("walk").is_empty());
}

#[test]
fn a_malformed_tree_or_digest_in_a_result_is_invalid_and_named() {
    let (_t, s) = open();
    let ac = ActionCache::open(Arc::clone(&s)).expect("ac");
    let junk = blob(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    put(&s, &junk);
    match ac.missing_for_result(F, &result_with(&[], &[junk.0], None)) {
        Err(CasError::Invalid(m)) => assert!(m.contains(&junk.0.to_string()), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let mut ar = result_with(&[("o", junk.0)], &[], None);
    ar.output_files[0].digest = Some(rbe_proto::reapi::Digest {
        hash: "zz".into(),
        size_bytes: 3,
    });
    match ac.missing_for_result(F, &ar) {
        Err(CasError::Invalid(m)) => assert!(m.contains("\"o\""), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}
