//! Output collection and output parent creation, dirfd-relative: nothing
//! here follows a symlink out of the action root.
//!
//! Parent components of an output path are resolved with `openat2`
//! (`RESOLVE_BENEATH`): a symlink inside the root is fine, `..` above the
//! root or an absolute symlink is refused. The output itself and everything
//! below an output directory is looked at with `AT_SYMLINK_NOFOLLOW` and
//! opened with `O_NOFOLLOW` relative to its (pinned) parent directory.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use crate::tree_walk::{OutputLimits, TreeEvent, TreeWalk};
use crate::{join_rel, validate_relative_path, ExecError};

/// What an output entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    /// A regular file.
    File {
        /// Any execute bit is set.
        executable: bool,
    },
    /// A directory.
    Directory,
    /// A symlink, never followed.
    Symlink {
        /// The target exactly as stored.
        target: String,
    },
}

/// One collected file, directory or symlink.
///
/// Files are not opened during the walk (a large tree would exhaust the
/// descriptor limit); instead each entry pins its parent directory's
/// descriptor and [`CollectedEntry::open`] opens the one name below it with
/// `O_NOFOLLOW`, so no path is resolved again.
#[derive(Debug)]
pub struct CollectedEntry {
    /// Path relative to the output path given (`""` for the output itself).
    pub rel_path: String,
    /// What it is.
    pub kind: OutputKind,
    /// Size in bytes (files; 0 otherwise).
    pub size: u64,
    parent: Arc<OwnedFd>,
    name: CString,
    dev: u64,
    ino: u64,
}

impl CollectedEntry {
    /// Opens a file entry for reading, checking it is still the same inode.
    pub fn open(&self) -> Result<File, ExecError> {
        let err = |e: io::Error| ExecError::io(format!("opening output {:?}", self.rel_path), e);
        if !matches!(self.kind, OutputKind::File { .. }) {
            return Err(err(io::Error::from(io::ErrorKind::InvalidInput)));
        }
        // O_NONBLOCK: should a FIFO have replaced the file, do not hang.
        let fd = rustix::fs::openat(
            self.parent.as_ref(),
            self.name.as_c_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| err(e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| err(e.into()))?;
        if st.st_dev != self.dev || st.st_ino != self.ino {
            return Err(err(io::Error::other("file replaced after collection")));
        }
        let file = File::from(fd);
        // Back to blocking reads for the caller.
        rustix::fs::fcntl_setfl(&file, OFlags::RDONLY).map_err(|e| err(e.into()))?;
        Ok(file)
    }
}

/// A collected output path.
#[derive(Debug)]
pub enum Collected {
    /// A regular file (`rel_path` is `""`).
    File(CollectedEntry),
    /// A symlink, returned as such, never followed.
    Symlink {
        /// The target exactly as stored.
        target: String,
    },
    /// A directory: every entry below it, parents before children, sorted
    /// by path; symlinks inside are kept as symlinks.
    Directory(Vec<CollectedEntry>),
}

pub(crate) fn kind_name(ft: FileType) -> &'static str {
    match ft {
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "special file",
    }
}

pub(crate) fn name_str(name: &CStr, path: &str) -> Result<String, ExecError> {
    name.to_str().map(str::to_owned).map_err(|_| {
        ExecError::io(
            format!("output {path:?}"),
            io::Error::new(io::ErrorKind::InvalidData, "name is not UTF-8"),
        )
    })
}

pub(crate) fn read_link(dir: &OwnedFd, name: &CStr, path: &str) -> Result<String, ExecError> {
    let target = rustix::fs::readlinkat(dir, name, Vec::new())
        .map_err(|e| ExecError::io(format!("reading symlink {path:?}"), e))?;
    name_str(&target, path)
}

fn open_root(root: &Path) -> Result<OwnedFd, ExecError> {
    rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ExecError::io(format!("opening action root {}", root.display()), e))
}

/// Opens one output path (relative to the working directory): `None` if
/// it does not exist (or a parent is not a directory). A directory is
/// returned as a walk, bounded by `limits`.
///
/// FIFOs, sockets and devices are errors naming the path; a parent that
/// leads out of the root through a symlink is [`ExecError::Escape`].
pub fn open_output(
    root: &Path,
    working_dir: &str,
    path: &str,
    limits: OutputLimits,
) -> Result<Option<Output>, ExecError> {
    validate_relative_path(working_dir)?;
    validate_relative_path(path)?;
    let root_fd = open_root(root)?;
    let full = join_rel(working_dir, path);
    let (parent_rel, name) = match full.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None if full.is_empty() => {
            // The root itself as an output directory.
            return TreeWalk::new(root_fd, path, limits).map(|w| Some(Output::Directory(w)));
        }
        None => (".", full.as_str()),
    };
    let parent = match rustix::fs::openat2(
        &root_fd,
        parent_rel,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR) => return Ok(None),
        Err(e @ (Errno::XDEV | Errno::LOOP)) => {
            return Err(ExecError::Escape {
                path: path.to_owned(),
                source: e.into(),
            })
        }
        Err(e) => {
            return Err(ExecError::io(
                format!("opening the parent of output {path:?}"),
                e,
            ))
        }
    };
    let name = CString::new(name).map_err(|_| ExecError::InvalidPath {
        path: path.to_owned(),
        reason: "contains NUL",
    })?;
    let st = match rustix::fs::statat(&parent, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(ExecError::io(format!("stat output {path:?}"), e)),
    };
    let parent = Arc::new(parent);
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(Some(Output::File(file_entry(
            String::new(),
            &parent,
            name,
            &st,
        )))),
        FileType::Symlink => Ok(Some(Output::Symlink {
            target: read_link(&parent, &name, path)?,
        })),
        FileType::Directory => {
            let dir = open_dir(&parent, &name, path)?;
            TreeWalk::new(dir, path, limits).map(|w| Some(Output::Directory(w)))
        }
        ft => Err(ExecError::SpecialFile {
            path: path.to_owned(),
            kind: kind_name(ft),
        }),
    }
}

/// One output, as found by [`open_output`].
#[derive(Debug)]
pub enum Output {
    /// A regular file (`rel_path` is `""`).
    File(CollectedEntry),
    /// A symlink, returned as such, never followed.
    Symlink {
        /// The target exactly as stored.
        target: String,
    },
    /// A directory, to walk.
    Directory(TreeWalk),
}

/// Collects one output path (relative to the working directory): `None` if
/// it does not exist (or a parent is not a directory).
///
/// FIFOs, sockets and devices are errors naming the path; a parent that
/// leads out of the root through a symlink is [`ExecError::Escape`].
/// Without limits and keeping every entry: for tools and tests; the worker
/// uses [`open_output`].
pub fn collect_output(
    root: &Path,
    working_dir: &str,
    path: &str,
) -> Result<Option<Collected>, ExecError> {
    Ok(
        match open_output(root, working_dir, path, OutputLimits::UNLIMITED)? {
            None => None,
            Some(Output::File(e)) => Some(Collected::File(e)),
            Some(Output::Symlink { target }) => Some(Collected::Symlink { target }),
            Some(Output::Directory(w)) => Some(Collected::Directory(collect_all(w)?)),
        },
    )
}

pub(crate) fn file_entry(
    rel_path: String,
    parent: &Arc<OwnedFd>,
    name: CString,
    st: &Stat,
) -> CollectedEntry {
    let kind = OutputKind::File {
        executable: st.st_mode & 0o111 != 0,
    };
    CollectedEntry {
        size: st.st_size as u64,
        ..CollectedEntry::new(rel_path, kind, parent, name, st)
    }
}

pub(crate) fn open_dir(parent: &OwnedFd, name: &CStr, path: &str) -> Result<OwnedFd, ExecError> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ExecError::io(format!("opening output directory {path:?}"), e))
}

/// Every entry below `dir`, with full relative paths, sorted (for tools
/// and tests; the worker streams a [`TreeWalk`] instead).
fn collect_all(mut w: TreeWalk) -> Result<Vec<CollectedEntry>, ExecError> {
    let mut prefix: Vec<String> = Vec::new();
    let mut entries = Vec::new();
    let full = |prefix: &[String], name: &str| join_rel(&prefix.join("/"), name);
    while let Some(ev) = w.next_event()? {
        match ev {
            TreeEvent::Enter(None) => {}
            TreeEvent::Enter(Some(mut e)) => {
                let name = std::mem::take(&mut e.rel_path);
                e.rel_path = full(&prefix, &name);
                prefix.push(name);
                entries.push(e);
            }
            TreeEvent::Entry(mut e) => {
                e.rel_path = full(&prefix, &e.rel_path);
                entries.push(e);
            }
            TreeEvent::Leave => {
                prefix.pop();
            }
        }
    }
    entries.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    Ok(entries)
}

impl CollectedEntry {
    pub(crate) fn new(
        rel_path: String,
        kind: OutputKind,
        parent: &Arc<OwnedFd>,
        name: CString,
        st: &Stat,
    ) -> CollectedEntry {
        CollectedEntry {
            rel_path,
            kind,
            size: 0,
            parent: Arc::clone(parent),
            name,
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// Creates the parent directories of every output path (relative to the
/// working directory), one component at a time below the root, refusing
/// any component that is a symlink or not a directory.
///
/// New directories get mode 0755 and, when running as root, the owner of
/// the action root, so an action running as that uid can write into them.
pub fn prepare_output_dirs(
    root: &Path,
    working_dir: &str,
    paths: &[String],
) -> Result<(), ExecError> {
    validate_relative_path(working_dir)?;
    let root_fd = open_root(root)?;
    let owner = rustix::fs::fstat(&root_fd)
        .map_err(|e| ExecError::io(format!("stat action root {}", root.display()), e))?;
    let as_root = rustix::process::geteuid().is_root();
    for path in paths {
        validate_relative_path(path)?;
        let full = join_rel(working_dir, path);
        let Some((parents, _)) = full.rsplit_once('/') else {
            continue;
        };
        let mut cur: Option<OwnedFd> = None;
        for comp in parents.split('/') {
            let dir = cur.as_ref().unwrap_or(&root_fd);
            let ctx = || format!("creating parent {comp:?} of output {path:?}");
            match rustix::fs::mkdirat(dir, comp, Mode::from_raw_mode(0o755)) {
                Ok(()) if as_root => {
                    rustix::fs::chownat(
                        dir,
                        comp,
                        Some(rustix::fs::Uid::from_raw(owner.st_uid)),
                        Some(rustix::fs::Gid::from_raw(owner.st_gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| ExecError::io(ctx(), e))?;
                }
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(ExecError::io(ctx(), e)),
            }
            let next = rustix::fs::openat(
                dir,
                comp,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                Errno::LOOP | Errno::NOTDIR => ExecError::Escape {
                    path: path.clone(),
                    source: e.into(),
                },
                e => ExecError::io(ctx(), e),
            })?;
            cur = Some(next);
        }
    }
    Ok(())
}
