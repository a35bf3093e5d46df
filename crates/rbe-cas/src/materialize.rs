//! Builds an action's input tree from the store, for rbe-workerd.
//!
//! Everything is created relative to directory file descriptors opened with
//! `O_NOFOLLOW`, so no name (already validated) and no symlink in the tree
//! can make casd write outside the target. Files are hard links to the
//! store's read-only inodes; executables link to a separate 0555 twin so a
//! plain blob's mode never changes. Directories are made 0777 so the
//! unprivileged action user can create outputs in them (the work directory
//! above is closed to everyone else).

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use prost::Message;
use rbe_proto::reapi::Directory;
use rbe_proto::{Digest, DigestFunction};
use rustix::fs::{AtFlags, Mode, OFlags, CWD};

use crate::error::CasError;
use crate::store::Store;

/// Largest Directory message accepted.
pub const MAX_DIRECTORY_BYTES: u64 = 64 << 20;
/// Most directories in one input tree.
pub const MAX_DIRECTORIES: usize = 1_000_000;
/// Deepest input tree built (build recurses once per level).
pub const MAX_DEPTH: u32 = 512;
/// Most entries (files, symlinks, directories) an input tree may expand
/// to: shared subtrees are built once per place they appear, so a small
/// set of Directory messages can describe an enormous tree.
pub const MAX_ENTRIES: u64 = 2_000_000;

/// What went wrong with a tree, beyond missing blobs.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A name or structure the REAPI forbids.
    #[error("invalid input tree: {0}")]
    Invalid(String),
    /// A store failure.
    #[error(transparent)]
    Cas(#[from] CasError),
    /// The file system of the action directory is full (or over quota).
    #[error("{0}: no space left on the work directory's file system")]
    NoSpace(String),
}

/// Result of a materialization.
#[derive(Debug, Default)]
pub struct Materialized {
    /// Blobs absent from the store. When non-empty the tree is not usable:
    /// nothing was built, or (for blobs that vanished while it was built)
    /// part of it, which the caller removes with its target.
    pub missing: Vec<Digest>,
    /// Files created.
    pub files: u64,
    /// Directories created.
    pub directories: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// A bounded cache of decoded Directory messages: input trees of one build
/// share most of their directories.
pub struct DirCache {
    map: Mutex<HashMap<Digest, Arc<Directory>>>,
    cap: usize,
}

impl DirCache {
    /// A cache of at most `cap` directories.
    pub fn new(cap: usize) -> Self {
        DirCache {
            map: Mutex::new(HashMap::new()),
            cap,
        }
    }

    fn get(&self, store: &Arc<Store>, d: Digest) -> Result<Arc<Directory>, TreeError> {
        if let Some(dir) = self.map.lock().get(&d) {
            return Ok(Arc::clone(dir));
        }
        if d.size > MAX_DIRECTORY_BYTES {
            return Err(TreeError::Invalid(format!(
                "directory {d} is larger than {MAX_DIRECTORY_BYTES} bytes"
            )));
        }
        let bytes = store.read_all(d)?;
        let dir = Arc::new(
            Directory::decode(bytes.as_slice())
                .map_err(|e| TreeError::Invalid(format!("blob {d} is not a Directory: {e}")))?,
        );
        let mut m = self.map.lock();
        if m.len() >= self.cap {
            // Simple and bounded: a full cache starts over.
            m.clear();
        }
        m.insert(d, Arc::clone(&dir));
        Ok(dir)
    }
}

/// Checks one entry name: a single, real path component.
pub fn check_name(name: &str) -> Result<(), TreeError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(TreeError::Invalid(format!(
            "entry name {name:?} is empty, '.', '..' or contains '/' or NUL"
        )));
    }
    Ok(())
}

fn digest_of(
    f: DigestFunction,
    d: Option<&rbe_proto::reapi::Digest>,
    what: &str,
) -> Result<Digest, TreeError> {
    let d = d.ok_or_else(|| TreeError::Invalid(format!("{what} has no digest")))?;
    Digest::from_reapi(f, d).map_err(|e| TreeError::Invalid(format!("{what}: {e}")))
}

/// A loaded tree: its directories by digest, and the blobs it lacks.
struct Tree {
    dirs: HashMap<Digest, Arc<Directory>>,
    missing: Vec<Digest>,
    /// How many of `missing`, at its start, are directories.
    missing_dirs: usize,
    /// Every file of the closure, each once.
    files: Vec<Digest>,
    entries: u64,
}

/// Loads and validates the closure of `roots`, breadth first (a queue, so
/// no depth can exhaust the stack), each directory once. A directory that
/// is absent is listed as missing and nothing below it is known. Each blob
/// is listed once. At most `max_entries` entries of distinct directories
/// are read.
fn load_tree(
    store: &Arc<Store>,
    cache: &DirCache,
    f: DigestFunction,
    roots: &[Digest],
    max_entries: u64,
) -> Result<Tree, TreeError> {
    let mut dirs = HashMap::new();
    let mut missing = Vec::new();
    let mut files = Vec::new();
    let mut seen_files = HashSet::new();
    let mut entries = 0u64;
    let mut queue: VecDeque<Digest> = VecDeque::new();
    let mut seen = HashSet::new();
    for r in roots {
        if seen.insert(*r) {
            queue.push_back(*r);
        }
    }
    while let Some(d) = queue.pop_front() {
        if dirs.len() >= MAX_DIRECTORIES {
            return Err(TreeError::Invalid(format!(
                "more than {MAX_DIRECTORIES} directories"
            )));
        }
        let dir = match cache.get(store, d) {
            Ok(dir) => dir,
            Err(TreeError::Cas(CasError::NotFound(_)))
            | Err(TreeError::Cas(CasError::Corrupt(_))) => {
                missing.push(d);
                continue;
            }
            Err(e) => return Err(e),
        };
        entries = entries
            .saturating_add((dir.files.len() + dir.directories.len() + dir.symlinks.len()) as u64);
        if entries > max_entries {
            return Err(TreeError::Invalid(format!(
                "input tree has more than {max_entries} entries in its distinct directories"
            )));
        }
        let in_dir = |e: TreeError| match e {
            TreeError::Invalid(m) => TreeError::Invalid(format!("directory {d}: {m}")),
            e => e,
        };
        let mut names = HashSet::new();
        for n in dir
            .files
            .iter()
            .map(|x| &x.name)
            .chain(dir.directories.iter().map(|x| &x.name))
            .chain(dir.symlinks.iter().map(|x| &x.name))
        {
            check_name(n).map_err(in_dir)?;
            if !names.insert(n.as_str()) {
                return Err(TreeError::Invalid(format!(
                    "name {n:?} appears twice in directory {d}"
                )));
            }
        }
        for file in &dir.files {
            let fd = digest_of(f, file.digest.as_ref(), &format!("file {:?}", file.name))
                .map_err(in_dir)?;
            if seen_files.insert(fd) {
                files.push(fd);
            }
        }
        for sub in &dir.directories {
            let sd = digest_of(f, sub.digest.as_ref(), &format!("directory {:?}", sub.name))
                .map_err(in_dir)?;
            if seen.insert(sd) {
                queue.push_back(sd);
            }
        }
        dirs.insert(d, dir);
    }
    // A blob can be both a directory and a file of the tree: name it once.
    let missing_dirs: HashSet<Digest> = missing.iter().copied().collect();
    let n_dirs = missing.len();
    missing.extend(
        store
            .find_missing(&files)
            .into_iter()
            .filter(|d| !missing_dirs.contains(d)),
    );
    Ok(Tree {
        dirs,
        missing,
        missing_dirs: n_dirs,
        files,
        entries,
    })
}

/// What [`missing_tree`] found.
#[derive(Debug, Default)]
pub struct Closure {
    /// Directories of the closure absent from the store, each once; their
    /// contents are unknown.
    pub missing_directories: Vec<Digest>,
    /// Files of the closure absent from the store, each once, and none
    /// that is also listed as a missing directory.
    pub missing_files: Vec<Digest>,
    /// Distinct directories read.
    pub directories: u64,
    /// Entries of those directories.
    pub entries: u64,
}

/// The blobs of the input closure of `roots` (input roots, or subtrees of
/// one already partly copied) that the store lacks. The walk stops below a
/// missing directory: a caller copying a tree fetches what is listed and
/// asks again, for at most as many rounds as the tree is deep. Malformed
/// directories and digests are [`TreeError::Invalid`], naming the
/// directory; so is a closure of more than `max_entries` entries.
pub fn missing_tree(
    store: &Arc<Store>,
    cache: &DirCache,
    f: DigestFunction,
    roots: &[Digest],
    max_entries: u64,
) -> Result<Closure, TreeError> {
    let mut t = load_tree(store, cache, f, roots, max_entries)?;
    let missing_files = t.missing.split_off(t.missing_dirs);
    Ok(Closure {
        missing_directories: t.missing,
        missing_files,
        directories: t.dirs.len() as u64,
        entries: t.entries,
    })
}

/// [`missing_tree`] for one input root that also pins, with `pin` (which
/// pins what is present and returns what is absent, as
/// [`crate::pins::Leases::add`] does), every directory read and every file
/// of the closure. What `pin` finds absent is listed as missing even if
/// the walk saw it: it was evicted or reclaimed in between. So once an
/// answer lists nothing, the whole tree is present and pinned, and
/// [`materialize`] cannot lose an input to eviction or to another lease's
/// release.
pub fn pin_tree(
    store: &Arc<Store>,
    cache: &DirCache,
    f: DigestFunction,
    root: Digest,
    max_entries: u64,
    pin: impl FnOnce(&[Digest]) -> Vec<Digest>,
) -> Result<Closure, TreeError> {
    let t = load_tree(store, cache, f, &[root], max_entries)?;
    let mut all: Vec<Digest> = t.dirs.keys().copied().collect();
    all.extend(t.files.iter().copied());
    let absent: HashSet<Digest> = pin(&all).into_iter().collect();
    let mut missing_directories: Vec<Digest> = t.missing[..t.missing_dirs].to_vec();
    missing_directories.extend(t.dirs.keys().filter(|d| absent.contains(*d)).copied());
    let listed: HashSet<Digest> = missing_directories.iter().copied().collect();
    let missing_files = t
        .files
        .iter()
        // `pin` checks presence itself: a file the walk found absent is
        // absent to it too, unless it arrived meanwhile (and is now held).
        .filter(|d| absent.contains(*d) && !listed.contains(*d))
        .copied()
        .collect();
    Ok(Closure {
        missing_directories,
        missing_files,
        directories: t.dirs.len() as u64,
        entries: t.entries,
    })
}

fn io(op: &'static str, path: &str, e: rustix::io::Errno) -> TreeError {
    if e == rustix::io::Errno::NOSPC || e == rustix::io::Errno::DQUOT {
        return TreeError::NoSpace(format!("{op} {path}"));
    }
    TreeError::Cas(CasError::Io {
        op,
        path: path.to_string(),
        source: e.into(),
    })
}

/// Opens `target`, refusing symlinks anywhere on the way and any target
/// outside `roots`.
pub fn open_target(target: &str, roots: &[std::path::PathBuf]) -> Result<OwnedFd, TreeError> {
    let p = Path::new(target);
    if !p.is_absolute()
        || p.components().any(|c| {
            matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::CurDir
            )
        })
    {
        return Err(TreeError::Invalid(format!(
            "target {target:?} must be an absolute, normalized path"
        )));
    }
    if !roots.iter().any(|r| p.starts_with(r) && p != r) {
        return Err(TreeError::Invalid(format!(
            "target {target:?} is not under a configured materialize root {roots:?}"
        )));
    }
    let fd = open_no_symlinks(p).map_err(|e| io("open target", target, e))?;
    let mut entries = rustix::fs::Dir::read_from(&fd).map_err(|e| io("list target", target, e))?;
    while let Some(Ok(e)) = entries.next() {
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            return Err(TreeError::Invalid(format!(
                "target {target:?} is not empty"
            )));
        }
    }
    Ok(fd)
}

/// Builds the tree rooted at `root` into the directory `target`.
pub fn materialize(
    store: &Arc<Store>,
    cache: &DirCache,
    f: DigestFunction,
    root: Digest,
    target: &OwnedFd,
    copy: bool,
) -> Result<Materialized, TreeError> {
    let Tree { dirs, missing, .. } = load_tree(store, cache, f, &[root], MAX_ENTRIES)?;
    if !missing.is_empty() {
        return Ok(Materialized {
            missing,
            ..Default::default()
        });
    }
    let (entries, bytes, depth) = measure(&dirs, f, root)?;
    if depth > MAX_DEPTH {
        return Err(TreeError::Invalid(format!(
            "input tree is {depth} levels deep; at most {MAX_DEPTH} are allowed"
        )));
    }
    if entries > MAX_ENTRIES {
        return Err(TreeError::Invalid(format!(
            "input tree expands to {entries} entries; at most {MAX_ENTRIES} are allowed"
        )));
    }
    let budget = store.policy().max_size;
    if bytes > budget {
        return Err(TreeError::Invalid(format!(
            "input tree holds {bytes} bytes, more than the store's {budget}"
        )));
    }
    let mut out = Materialized::default();
    match build(store, &dirs, f, root, target, copy, &mut out, "") {
        Ok(()) => {}
        // Vanished while the tree was built (evicted, removed as corrupt):
        // the client must upload it again, like any missing input.
        Err(TreeError::Cas(CasError::NotFound(d) | CasError::Corrupt(d))) => out.missing.push(d),
        Err(e) => return Err(e),
    }
    if !out.missing.is_empty() {
        out.missing.sort_by_key(Digest::hex);
        out.missing.dedup();
        return Ok(Materialized {
            missing: out.missing,
            ..Default::default()
        });
    }
    Ok(out)
}

/// The expanded size of a tree: entries, file bytes and depth, with
/// shared subtrees counted once per place they appear. Iterative, so a deep
/// tree cannot exhaust the stack here.
fn measure(
    dirs: &HashMap<Digest, Arc<Directory>>,
    f: DigestFunction,
    root: Digest,
) -> Result<(u64, u64, u32), TreeError> {
    let mut memo: HashMap<Digest, (u64, u64, u32)> = HashMap::new();
    let mut stack = vec![(root, false)];
    while let Some((d, expanded)) = stack.pop() {
        if memo.contains_key(&d) {
            continue;
        }
        let dir = dirs
            .get(&d)
            .ok_or_else(|| TreeError::Invalid(format!("directory {d} vanished")))?;
        let children: Vec<Digest> = dir
            .directories
            .iter()
            .map(|c| digest_of(f, c.digest.as_ref(), &c.name))
            .collect::<Result<_, _>>()?;
        if !expanded {
            stack.push((d, true));
            stack.extend(
                children
                    .iter()
                    .filter(|c| !memo.contains_key(*c))
                    .map(|c| (*c, false)),
            );
            if stack.len() > MAX_DIRECTORIES * 4 {
                return Err(TreeError::Invalid("input tree is too large to walk".into()));
            }
            continue;
        }
        let mut entries = (dir.files.len() + dir.symlinks.len() + dir.directories.len()) as u64;
        let mut bytes = dir
            .files
            .iter()
            .filter_map(|x| x.digest.as_ref())
            .map(|x| x.size_bytes.max(0) as u64)
            .fold(0u64, u64::saturating_add);
        let mut depth = 1u32;
        for c in &children {
            let (e, b, dp) = memo.get(c).copied().unwrap_or((0, 0, 0));
            entries = entries.saturating_add(e);
            bytes = bytes.saturating_add(b);
            depth = depth.max(dp.saturating_add(1));
        }
        memo.insert(d, (entries, bytes, depth));
    }
    Ok(memo.get(&root).copied().unwrap_or((0, 0, 0)))
}

#[allow(clippy::too_many_arguments)]
fn build(
    store: &Arc<Store>,
    dirs: &HashMap<Digest, Arc<Directory>>,
    f: DigestFunction,
    d: Digest,
    at: &OwnedFd,
    copy: bool,
    out: &mut Materialized,
    rel: &str,
) -> Result<(), TreeError> {
    let dir = dirs
        .get(&d)
        .ok_or_else(|| TreeError::Invalid(format!("directory {d} vanished")))?;
    for file in &dir.files {
        let fd = digest_of(f, file.digest.as_ref(), &file.name)?;
        let path = format!("{rel}{}", file.name);
        let placed = if copy || fd.is_empty_blob() {
            write_copy(store, fd, file.is_executable, at, &file.name, &path)
        } else {
            link_file(store, fd, file.is_executable, at, &file.name, &path)
        };
        match placed {
            Ok(()) => {}
            // Keep going: the client learns every vanished blob at once.
            Err(TreeError::Cas(CasError::NotFound(d) | CasError::Corrupt(d))) => {
                out.missing.push(d);
                continue;
            }
            Err(e) => return Err(e),
        }
        out.files += 1;
        out.bytes += fd.size;
    }
    for link in &dir.symlinks {
        if link.target.is_empty() || link.target.contains('\0') {
            return Err(TreeError::Invalid(format!(
                "symlink {:?} has an empty or invalid target",
                link.name
            )));
        }
        rustix::fs::symlinkat(link.target.as_str(), at.as_fd(), link.name.as_str())
            .map_err(|e| io("symlink", &format!("{rel}{}", link.name), e))?;
    }
    for sub in &dir.directories {
        let sd = digest_of(f, sub.digest.as_ref(), &sub.name)?;
        let path = format!("{rel}{}/", sub.name);
        rustix::fs::mkdirat(at.as_fd(), sub.name.as_str(), Mode::from_raw_mode(0o777))
            .map_err(|e| io("mkdir", &path, e))?;
        let child = rustix::fs::openat(
            at.as_fd(),
            sub.name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open", &path, e))?;
        // mkdir applies the umask; the action user needs to write here.
        rustix::fs::fchmod(&child, Mode::from_raw_mode(0o777))
            .map_err(|e| io("chmod", &path, e))?;
        out.directories += 1;
        build(store, dirs, f, sd, &child, copy, out, &path)?;
    }
    Ok(())
}

/// Times a link is retried when its source vanished under it while the
/// blob stayed indexed (a twin or blob re-created meanwhile).
const LINK_ATTEMPTS: u32 = 3;

/// Hard-links one input file from the store. Falls back to a copy when the
/// store inode has reached the file system's link limit (ext4: 65,000), so
/// one tree naming a blob that often cannot make other actions fail. A blob
/// that is gone is reported as [`CasError::NotFound`].
fn link_file(
    store: &Arc<Store>,
    d: Digest,
    executable: bool,
    at: &OwnedFd,
    name: &str,
    path: &str,
) -> Result<(), TreeError> {
    for _ in 0..LINK_ATTEMPTS {
        let src = if executable {
            store.exec_variant(&d)?
        } else {
            store.blob_path(&d)
        };
        match rustix::fs::linkat(CWD, &src, at.as_fd(), name, AtFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::MLINK) => {
                store.note_link_limit_copy();
                tracing::debug!(digest = %d, path, "hard-link limit reached; copying the input");
                return write_copy(store, d, executable, at, name, path);
            }
            // Resolved, then unlinked before the link: evicted (report it
            // missing) or replaced (link the new file).
            Err(rustix::io::Errno::NOENT) if store.is_indexed(&d) => continue,
            Err(rustix::io::Errno::NOENT) => return Err(CasError::NotFound(d).into()),
            Err(e) => return Err(io("link", path, e)),
        }
    }
    // Indexed but never linkable: a copy reads the file, and the reader
    // drops the blob from the index and says NotFound if it is gone.
    write_copy(store, d, executable, at, name, path)
}

fn write_copy(
    store: &Arc<Store>,
    d: Digest,
    executable: bool,
    at: &OwnedFd,
    name: &str,
    path: &str,
) -> Result<(), TreeError> {
    let mode = if executable { 0o555 } else { 0o444 };
    // Opened first, so a blob that is gone leaves no empty file behind.
    let mut reader = store.reader(d, 0, 0)?;
    let fd = rustix::fs::openat(
        at.as_fd(),
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map_err(|e| io("create", path, e))?;
    let mut file = std::fs::File::from(fd);
    while let Some(chunk) = reader.next_chunk(1 << 20)? {
        std::io::Write::write_all(&mut file, &chunk)
            .map_err(|e| TreeError::Cas(CasError::io("write", Path::new(path), e, Some(&d))))?;
    }
    Ok(())
}

/// Opens the directory at absolute `path` without following a symlink in
/// any component. `openat2(RESOLVE_NO_SYMLINKS)` does it in one call, but
/// systemd's `RestrictSUIDSGID=` makes `openat2` fail with `ENOSYS` (its
/// seccomp filter cannot see the mode inside `struct open_how`), so then
/// walk the path one `O_NOFOLLOW` component at a time.
fn open_no_symlinks(path: &Path) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    match rustix::fs::openat2(
        CWD,
        path,
        flags,
        Mode::empty(),
        rustix::fs::ResolveFlags::NO_SYMLINKS,
    ) {
        Err(rustix::io::Errno::NOSYS) => {}
        r => return r,
    }
    let mut dir = rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let comps: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let f = if last {
            flags
        } else {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
        };
        dir = rustix::fs::openat(&dir, *c, f | OFlags::NOFOLLOW, Mode::empty())?;
    }
    Ok(dir)
}
