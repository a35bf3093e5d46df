//! Input trees built from the store while others use the same blobs:
//! concurrent first uses of executable twins, re-uploads, blobs that vanish
//! mid-build, and the file system's hard-link limit.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Barrier};

use prost::Message;
use rbe_cas::materialize::{materialize, open_target, DirCache, Materialized, TreeError};
use rbe_cas::Store;
use rbe_proto::reapi::{Directory, FileNode};
use rbe_proto::Digest;

mod common;
use common::{blob_path, open, F};

/// A temp dir on a disk file system where there is one (`/var/tmp` is
/// usually not tmpfs): rename and link timing, and the hard-link limit,
/// are those of a real store.
fn disk_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rbe-cas-test-")
        .tempdir_in("/var/tmp")
        .or_else(|_| tempfile::tempdir())
        .expect("tmp")
}

fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Stores a one-level tree of `files` (name, digest, executable).
fn tree(s: &Arc<Store>, files: &[(String, Digest, bool)]) -> Digest {
    let mut dir = Directory {
        files: files
            .iter()
            .map(|(n, d, x)| FileNode {
                name: n.clone(),
                digest: Some(d.to_reapi()),
                is_executable: *x,
                node_properties: None,
            })
            .collect(),
        ..Default::default()
    };
    dir.files.sort_by(|a, b| a.name.cmp(&b.name));
    let b = dir.encode_to_vec();
    let d = Digest::of(F, &b);
    s.put(d, &b).expect("put directory");
    d
}

fn build(s: &Arc<Store>, work: &Path, name: &str, root: Digest) -> Result<Materialized, TreeError> {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let target = open_target(&dir.display().to_string(), &[work.to_path_buf()]).expect("target");
    materialize(s, &DirCache::new(1000), F, root, &target, false)
}

/// A second upload of a present blob keeps the first file: a linker may
/// hold its inode (replacing it dropped that inode's last name mid-link).
#[test]
fn a_reupload_never_replaces_the_published_inode() {
    let t = disk_tempdir();
    let s = open(t.path());
    let bytes = data(5000, 1);
    let d = Digest::of(F, &bytes);
    s.put(d, &bytes).expect("put");
    let ino = std::fs::metadata(blob_path(t.path(), &d))
        .expect("stat")
        .ino();
    // Two writers that both started before either finished.
    let mut w = s.begin_write(d).expect("writer");
    w.write(&bytes).expect("write");
    w.finish().expect("finish");
    let results = s.put_batch(&[(d, bytes.as_slice())]);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(
        std::fs::metadata(blob_path(t.path(), &d))
            .expect("stat")
            .ino(),
        ino,
        "the published inode stays"
    );
    assert_eq!(s.read_all(d).expect("read"), bytes);
    assert_eq!(
        std::fs::read_dir(s.tmp_dir()).expect("ls tmp").count(),
        0,
        "no temp file left"
    );
}

/// Many threads build trees sharing fresh executable blobs at once (each
/// first use races to publish the twin) while the same blobs are uploaded
/// again: every build succeeds.
#[test]
fn concurrent_builds_sharing_executable_blobs_all_succeed() {
    const THREADS: usize = 8;
    const ROUNDS: u64 = 40;
    let t = disk_tempdir();
    let s = open(t.path());
    let work = t.path().join("work");
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let blobs: Vec<Vec<u8>> = (0..4)
            .map(|i| data(128 << 10, round * 100 + i + 7))
            .collect();
        let digests: Vec<Digest> = blobs.iter().map(|b| Digest::of(F, b)).collect();
        for (d, b) in digests.iter().zip(&blobs) {
            s.put(*d, b).expect("put");
        }
        let files: Vec<(String, Digest, bool)> = digests
            .iter()
            .enumerate()
            .flat_map(|(i, d)| {
                // Many names per blob: while one thread publishes a twin,
                // others are linking it.
                (0..100)
                    .map(move |n| (format!("x{i}-{n:03}"), *d, true))
                    .chain([(format!("p{i}"), *d, false)])
            })
            .collect();
        let root = tree(&s, &files);
        let barrier = Arc::new(Barrier::new(THREADS + 1));
        let mut handles = Vec::new();
        for th in 0..THREADS {
            let (s, work, barrier) = (Arc::clone(&s), work.clone(), Arc::clone(&barrier));
            handles.push(std::thread::spawn(move || {
                barrier.wait();
                let name = format!("r{round}-{th}");
                let r = build(&s, &work, &name, root);
                let _ = std::fs::remove_dir_all(work.join(&name));
                r
            }));
        }
        // An upload of the same blobs racing with the builds.
        let uploader = {
            let (s, blobs, digests, barrier) = (
                Arc::clone(&s),
                blobs.clone(),
                digests.clone(),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || {
                barrier.wait();
                for (d, b) in digests.iter().zip(&blobs) {
                    let mut w = s.begin_write(*d).expect("writer");
                    w.write(b).expect("write");
                    w.finish().expect("finish");
                }
            })
        };
        for h in handles {
            match h.join().expect("join") {
                Ok(m) if m.missing.is_empty() => assert_eq!(m.files, 4 * 101),
                Ok(m) => failures.push(format!("round {round}: missing {:?}", m.missing)),
                Err(e) => failures.push(format!("round {round}: {e}")),
            }
        }
        // The uploader is not a builder: its barrier slot was the extra one.
        uploader.join().expect("join uploader");
    }
    assert!(
        failures.is_empty(),
        "{} builds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A blob indexed but gone from disk when the tree is built is reported in
/// `missing` (plain and executable), never as an error.
#[test]
fn a_blob_gone_while_building_is_reported_missing() {
    let t = disk_tempdir();
    let s = open(t.path());
    let work = t.path().join("work");
    let (a, b) = (data(100, 11), data(100, 12));
    let (da, db) = (Digest::of(F, &a), Digest::of(F, &b));
    s.put(da, &a).expect("put");
    s.put(db, &b).expect("put");
    let root = tree(
        &s,
        &[
            ("a".into(), da, false),
            ("b".into(), db, true),
            ("c".into(), da, true),
        ],
    );
    std::fs::remove_file(blob_path(t.path(), &da)).expect("rm a");
    std::fs::remove_file(blob_path(t.path(), &db)).expect("rm b");
    let m = build(&s, &work, "gone", root).expect("reported, not an error");
    let mut want = vec![da, db];
    want.sort_by_key(Digest::hex);
    assert_eq!(m.missing, want);
    assert!(
        !s.contains(&da) && !s.contains(&db),
        "dropped from the index"
    );
}

/// At the file system's link limit the input is copied, and the tree
/// builds. Skipped where the store's file system has no such limit.
#[test]
fn the_link_limit_falls_back_to_a_copy() {
    let t = disk_tempdir();
    let s = open(t.path());
    let work = t.path().join("work");
    let bytes = b"shared by too many names".to_vec();
    let d = Digest::of(F, &bytes);
    s.put(d, &bytes).expect("put");
    let links = t.path().join("links");
    std::fs::create_dir_all(&links).expect("mkdir");
    let src = blob_path(t.path(), &d);
    let mut reached = false;
    for i in 0..70_000 {
        match std::fs::hard_link(&src, links.join(i.to_string())) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc_emlink()) => {
                reached = true;
                break;
            }
            Err(e) => panic!("link {i}: {e}"),
        }
    }
    if !reached {
        eprintln!(
            "SKIP: the file system under {} has no hard-link limit below 70,000",
            t.path().display()
        );
        return;
    }
    let root = tree(&s, &[("plain".into(), d, false)]);
    let m = build(&s, &work, "full", root).expect("copied at the link limit");
    assert!(m.missing.is_empty());
    let meta = std::fs::metadata(work.join("full/plain")).expect("stat");
    assert_ne!(
        meta.ino(),
        std::fs::metadata(&src).expect("stat").ino(),
        "a copy"
    );
    assert_eq!(meta.mode() & 0o777, 0o444);
    assert_eq!(std::fs::read(work.join("full/plain")).expect("read"), bytes);
    assert_eq!(s.stats().link_limit_copies, 1);
}

fn libc_emlink() -> i32 {
    31 // EMLINK on Linux
}
