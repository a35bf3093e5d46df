//! Store behaviour on a real filesystem.

use std::os::unix::fs::PermissionsExt;

use rbe_cas::CasError;
use rbe_proto::{Digest, DigestFunction};

mod common;
use common::{blob_path, open, open_sized};

#[test]
fn put_read_and_readonly_inode() {
    let t = tempfile::tempdir().expect("tmp");
    let s = open(t.path());
    for f in DigestFunction::ALL {
        let d = Digest::of(f, b"hello");
        assert!(!s.contains(&d));
        s.put(d, b"hello").expect("put");
        assert!(s.contains(&d));
        assert_eq!(s.read_all(d).expect("read"), b"hello");
        let mode = std::fs::metadata(blob_path(t.path(), &d))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o222, 0, "CAS files are read-only");
    }
    assert!(s.contains(&Digest::empty(DigestFunction::Sha256)));
}

#[test]
fn wrong_content_is_refused_and_leaves_nothing() {
    let t = tempfile::tempdir().expect("tmp");
    let s = open(t.path());
    let d = Digest::of(DigestFunction::Sha256, b"hello");
    assert!(matches!(
        s.put(d, b"hellp"),
        Err(CasError::DigestMismatch { .. })
    ));
    assert!(matches!(
        s.put(d, b"hello!"),
        Err(CasError::TooLarge { .. })
    ));
    assert!(!s.contains(&d));
    assert_eq!(
        std::fs::read_dir(t.path().join("tmp")).expect("ls").count(),
        0
    );
}

#[test]
fn corrupt_file_is_detected_and_removed() {
    let t = tempfile::tempdir().expect("tmp");
    let s = open(t.path());
    let d = Digest::of(DigestFunction::Sha256, b"precious bytes");
    s.put(d, b"precious bytes").expect("put");
    let p = blob_path(t.path(), &d);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(&p, b"PRECIOUS bytes").expect("corrupt");
    assert!(matches!(s.read_all(d), Err(CasError::Corrupt(_))));
    assert!(!s.contains(&d));
    assert!(!p.exists());
}

#[test]
fn restart_rebuilds_index_and_cleans_temp_files() {
    let t = tempfile::tempdir().expect("tmp");
    let d = Digest::of(DigestFunction::Blake3, b"survivor");
    {
        let s = open(t.path());
        s.put(d, b"survivor").expect("put");
        let _w = s
            .begin_write(Digest::of(DigestFunction::Sha256, b"torn"))
            .expect("begin");
        std::mem::forget(_w); // simulate a crash mid-upload: temp file stays
    }
    assert_eq!(
        std::fs::read_dir(t.path().join("tmp")).expect("ls").count(),
        1
    );
    let s = open(t.path());
    assert_eq!(
        std::fs::read_dir(t.path().join("tmp")).expect("ls").count(),
        0
    );
    assert!(s.contains(&d));
    assert_eq!(s.stats().blobs, 1);
}

#[test]
fn lru_eviction_respects_watermarks_and_pins() {
    let t = tempfile::tempdir().expect("tmp");
    let s = open_sized(t.path(), 1000); // high 900, low 500
    let blobs: Vec<(Digest, Vec<u8>)> = (0..9u8)
        .map(|i| {
            let data = vec![i; 100];
            (Digest::of(DigestFunction::Sha256, &data), data)
        })
        .collect();
    for (d, data) in &blobs[..8] {
        s.put(*d, data).expect("put");
    }
    assert!(s.pin(&[blobs[0].0]).is_empty());
    assert!(s.contains(&blobs[1].0)); // touch: 1 becomes recent
    s.put(blobs[8].0, &blobs[8].1).expect("put"); // 900 bytes: not above high
    assert_eq!(s.stats().blobs, 9);
    let extra = vec![42u8; 100];
    let de = Digest::of(DigestFunction::Sha256, &extra);
    s.put(de, &extra).expect("put"); // 1000 > 900: evict to 500
    let st = s.stats();
    assert!(st.bytes <= 500, "{st:?}");
    assert!(s.contains(&blobs[0].0), "pinned survives");
    assert!(s.contains(&blobs[1].0), "recently used survives");
    assert!(s.contains(&de), "newest survives");
    assert!(!s.contains(&blobs[2].0), "oldest unpinned goes");
    assert!(!blob_path(t.path(), &blobs[2].0).exists());
}

#[test]
fn batch_put_with_syncfs() {
    let t = tempfile::tempdir().expect("tmp");
    let s = open(t.path());
    let datas: Vec<Vec<u8>> = (0..50u32).map(|i| i.to_le_bytes().repeat(10)).collect();
    let mut items: Vec<(Digest, &[u8])> = datas
        .iter()
        .map(|d| (Digest::of(DigestFunction::Sha256, d), d.as_slice()))
        .collect();
    items[3].1 = b"wrong";
    let res = s.put_batch(&items);
    assert!(matches!(res[3], Err(CasError::DigestMismatch { .. })));
    assert_eq!(res.iter().filter(|r| r.is_ok()).count(), 49);
    assert_eq!(
        s.find_missing(&items.iter().map(|i| i.0).collect::<Vec<_>>()),
        vec![items[3].0]
    );
}

#[test]
fn ranged_reads() {
    let t = tempfile::tempdir().expect("tmp");
    let s = open(t.path());
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let d = Digest::of(DigestFunction::Sha256, &data);
    s.put(d, &data).expect("put");
    let mut r = s.reader(d, 1234, 5000).expect("reader");
    let mut got = Vec::new();
    while let Some(c) = r.next_chunk(777).expect("chunk") {
        got.extend(c);
    }
    assert_eq!(got, &data[1234..6234]);
}

#[test]
fn a_read_with_the_wrong_size_does_not_delete_the_blob() {
    let t = tempfile::tempdir().expect("tmp");
    let s = open(t.path());
    let d = Digest::of(DigestFunction::Sha256, b"keep me");
    s.put(d, b"keep me").expect("put");
    let wrong = Digest { size: 3, ..d };
    assert!(matches!(s.read_all(wrong), Err(CasError::NotFound(_))));
    assert!(!s.contains(&wrong));
    assert_eq!(s.read_all(d).expect("still there"), b"keep me");
}

#[test]
fn big_batches_do_not_hold_a_descriptor_per_blob() {
    let t = tempfile::tempdir().expect("tmp");
    let s = open(t.path());
    let datas: Vec<Vec<u8>> = (0..3000u32).map(|i| i.to_le_bytes().to_vec()).collect();
    let items: Vec<(Digest, &[u8])> = datas
        .iter()
        .map(|d| (Digest::of(DigestFunction::Sha256, d), d.as_slice()))
        .collect();
    let before = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    let res = s.put_batch(&items);
    assert!(res.iter().all(Result::is_ok));
    let after = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    // Other tests in this binary open files concurrently; a leak here would
    // be one descriptor per blob, thousands.
    assert!(after <= before + 64, "fds leaked: {before} -> {after}");
    assert!(s
        .find_missing(&items.iter().map(|i| i.0).collect::<Vec<_>>())
        .is_empty());
}

#[test]
fn materialize_refuses_trees_that_expand_beyond_the_limits() {
    use prost::Message;
    use rbe_cas::materialize::{materialize, open_target, DirCache, TreeError};
    use rbe_proto::reapi::{Directory, DirectoryNode, FileNode};
    let t = tempfile::tempdir().expect("tmp");
    let s = open(t.path());
    let f = DigestFunction::Sha256;
    let leaf = Digest::of(f, b"y");
    s.put(leaf, b"y").expect("leaf");
    // Each level holds 10 entries naming the same child: 13 small messages
    // describe 10^12 entries.
    let mut child = Directory {
        files: vec![FileNode {
            name: "f".into(),
            digest: Some(leaf.to_reapi()),
            ..Default::default()
        }],
        ..Default::default()
    };
    for _ in 0..12 {
        let b = child.encode_to_vec();
        let d = Digest::of(f, &b);
        s.put(d, &b).expect("dir");
        child = Directory {
            directories: (0..10)
                .map(|i| DirectoryNode {
                    name: format!("c{i}"),
                    digest: Some(d.to_reapi()),
                })
                .collect(),
            ..Default::default()
        };
    }
    let b = child.encode_to_vec();
    let root = Digest::of(f, &b);
    s.put(root, &b).expect("root");
    let work = t.path().join("work");
    std::fs::create_dir_all(work.join("a")).expect("mkdir");
    let target = open_target(
        &work.join("a").display().to_string(),
        std::slice::from_ref(&work),
    )
    .expect("target");
    match materialize(&s, &DirCache::new(100), f, root, &target, false) {
        Err(TreeError::Invalid(m)) => assert!(m.contains("entries"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_dir(work.join("a")).expect("ls").count(),
        0,
        "nothing was built"
    );
    // A target outside the configured roots is refused.
    assert!(open_target("/etc", std::slice::from_ref(&work)).is_err());
    assert!(open_target(&format!("{}/../x", work.display()), &[work]).is_err());
}

#[test]
fn reclaim_removes_only_what_no_pin_holds() {
    let t = tempfile::tempdir().expect("tmp");
    let s = open(t.path());
    let blobs: Vec<(Digest, Vec<u8>)> = (0..3u8)
        .map(|i| {
            let data = vec![i; 100];
            (Digest::of(DigestFunction::Sha256, &data), data)
        })
        .collect();
    for (d, data) in &blobs {
        s.put(*d, data).expect("put");
    }
    let all: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    // Pinned twice, released once: still held.
    assert!(s.pin(&all[..1]).is_empty());
    assert!(s.pin(&all[..1]).is_empty());
    s.unpin(&all[..1]);
    let absent = Digest::of(DigestFunction::Sha256, b"absent");
    let mut asked = all.clone();
    asked.push(absent);
    assert_eq!(s.reclaim(&asked), (2, 200));
    assert!(s.contains(&all[0]), "pinned survives");
    assert!(blob_path(t.path(), &all[0]).exists());
    for d in &all[1..] {
        assert!(!s.contains(d));
        assert!(!blob_path(t.path(), d).exists());
    }
    let st = s.stats();
    assert_eq!((st.blobs, st.bytes, st.evicted), (1, 100, 2), "{st:?}");
    s.unpin(&all[..1]);
    assert_eq!(s.reclaim(&all), (1, 100));
    assert_eq!(s.stats().bytes, 0);
}
