//! Walking an output directory one entry at a time, within limits.
//!
//! The caller pulls events ([`TreeWalk::next_event`]): a directory's entries come
//! between its `Enter` and its `Leave`, so a Tree can be built bottom-up
//! (each Directory message is complete at its `Leave`) and each file
//! uploaded as it comes. Nothing per file outlives its event: no full paths
//! are kept, only one level per directory on the current path (its name,
//! the names not yet visited, its identity), so memory does not grow with
//! depth times width. Limits ([`OutputLimits`]) bound depth, entries and
//! path length, and name the limit when crossed.
//!
//! At most [`OPEN_LEVELS`] directory descriptors are held. A directory
//! whose descriptor was closed is reopened as `..` of its child when the
//! walk comes back to it, and must be the same inode (device and inode
//! number kept per level): the action is dead, so nothing moves; if
//! something did, the walk fails rather than read another directory.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, Dir, FileType};

use crate::output::{file_entry, kind_name, name_str, open_dir, read_link, CollectedEntry};
use crate::{join_rel, ExecError, OutputKind};

/// Directory descriptors a walk holds at most.
pub const OPEN_LEVELS: usize = 16;

/// Bounds of output collection (`[outputs]` in workerd.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// Directory levels below an output directory.
    pub max_depth: u64,
    /// Files, directories and symlinks in the action's output directories.
    pub max_entries: u64,
    /// Bytes in the path of any output entry, relative to the working
    /// directory.
    pub max_path_bytes: u64,
}

impl OutputLimits {
    /// No limits (tests, tools).
    pub const UNLIMITED: OutputLimits = OutputLimits {
        max_depth: u64::MAX,
        max_entries: u64::MAX,
        max_path_bytes: u64::MAX,
    };
}

/// One step of a walk.
#[derive(Debug)]
pub enum TreeEvent {
    /// A directory begins; its entries follow until the matching
    /// [`TreeEvent::Leave`]. `None` for the output directory itself,
    /// otherwise the directory as an entry of its parent.
    Enter(Option<CollectedEntry>),
    /// A file or symlink of the current directory (`rel_path` is its name).
    Entry(CollectedEntry),
    /// The directory last entered is complete.
    Leave,
}

#[derive(Debug)]
struct Level {
    /// The directory's name in its parent (`""` for the top).
    name: String,
    /// Entries not visited yet.
    pending: Vec<CString>,
    fd: Option<Arc<OwnedFd>>,
    dev: u64,
    ino: u64,
    /// Bytes of this directory's path relative to the working directory.
    path_len: u64,
}

/// A walk over one output directory (see the module docs).
#[derive(Debug)]
pub struct TreeWalk {
    levels: Vec<Level>,
    limits: OutputLimits,
    out_path: String,
    entries: u64,
    /// Names read from directories so far (each becomes an entry).
    listed: u64,
    started: bool,
}

/// The names in `fd`, counted into `listed`: a directory of millions of
/// entries is refused while it is read, before its names fill memory.
fn list(
    fd: &OwnedFd,
    shown: &str,
    listed: &mut u64,
    limits: &OutputLimits,
) -> Result<Vec<CString>, ExecError> {
    let err = |e| ExecError::io(format!("reading output directory {shown:?}"), e);
    let mut names = Vec::new();
    for ent in Dir::read_from(fd).map_err(err)? {
        let ent = ent.map_err(err)?;
        let name = ent.file_name();
        if name != c"." && name != c".." {
            *listed += 1;
            if *listed > limits.max_entries {
                return Err(ExecError::OutputLimit {
                    path: shown.to_owned(),
                    limit: "outputs.max_entries",
                    value: limits.max_entries,
                });
            }
            names.push(name.to_owned());
        }
    }
    // Popped from the end: visit in the order read.
    names.reverse();
    Ok(names)
}

impl TreeWalk {
    /// Starts a walk at `dir`, the output `out_path` (relative to the
    /// working directory).
    pub(crate) fn new(
        dir: OwnedFd,
        out_path: &str,
        limits: OutputLimits,
    ) -> Result<TreeWalk, ExecError> {
        let st = rustix::fs::fstat(&dir)
            .map_err(|e| ExecError::io(format!("stat output {out_path:?}"), e))?;
        let mut listed = 0;
        let pending = list(&dir, out_path, &mut listed, &limits)?;
        Ok(TreeWalk {
            levels: vec![Level {
                name: String::new(),
                pending,
                fd: Some(Arc::new(dir)),
                dev: st.st_dev,
                ino: st.st_ino,
                path_len: out_path.len() as u64,
            }],
            limits,
            out_path: out_path.to_owned(),
            entries: 0,
            listed,
            started: false,
        })
    }

    /// Entries seen so far (the output directory itself not counted).
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The path of `name` in the current directory, for messages.
    fn shown(&self, name: &str) -> String {
        let mut p = self.out_path.clone();
        for l in self.levels.iter().skip(1) {
            p = join_rel(&p, &l.name);
        }
        let p = join_rel(&p, name);
        // A path over the length limit is shown by its start.
        match p.char_indices().nth(240) {
            Some((i, _)) => format!("{}...", &p[..i]),
            None => p,
        }
    }

    fn over(&self, name: &str, limit: &'static str, value: u64) -> ExecError {
        ExecError::OutputLimit {
            path: self.shown(name),
            limit,
            value,
        }
    }

    /// The next event, or `None` after the output directory's `Leave`.
    pub fn next_event(&mut self) -> Result<Option<TreeEvent>, ExecError> {
        if !self.started {
            self.started = true;
            return Ok(Some(TreeEvent::Enter(None)));
        }
        let depth = self.levels.len() as u64;
        let Some(level) = self.levels.last_mut() else {
            return Ok(None);
        };
        let Some(cname) = level.pending.pop() else {
            self.leave()?;
            return Ok(Some(TreeEvent::Leave));
        };
        let parent_len = level.path_len;
        let Some(fd) = level.fd.clone() else {
            return Err(ExecError::Internal("output walk lost a directory".into()));
        };
        let name = name_str(&cname, &self.shown(""))?;
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(self.over(&name, "outputs.max_entries", self.limits.max_entries));
        }
        let path_len = parent_len + u64::from(parent_len > 0) + name.len() as u64;
        if path_len > self.limits.max_path_bytes {
            return Err(self.over(&name, "outputs.max_path_bytes", self.limits.max_path_bytes));
        }
        let st = rustix::fs::statat(fd.as_ref(), &cname, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| ExecError::io(format!("stat output {:?}", self.shown(&name)), e))?;
        let entry = |kind| CollectedEntry::new(name.clone(), kind, &fd, cname.clone(), &st);
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Ok(Some(TreeEvent::Entry(file_entry(
                name.clone(),
                &fd,
                cname.clone(),
                &st,
            )))),
            FileType::Symlink => {
                let target = read_link(&fd, &cname, &self.shown(&name))?;
                Ok(Some(TreeEvent::Entry(entry(OutputKind::Symlink {
                    target,
                }))))
            }
            FileType::Directory => {
                if depth > self.limits.max_depth {
                    return Err(self.over(&name, "outputs.max_depth", self.limits.max_depth));
                }
                let shown = self.shown(&name);
                let sub = open_dir(&fd, &cname, &shown)?;
                let pending = list(&sub, &shown, &mut self.listed, &self.limits)?;
                let e = entry(OutputKind::Directory);
                self.levels.push(Level {
                    name,
                    pending,
                    fd: Some(Arc::new(sub)),
                    dev: st.st_dev,
                    ino: st.st_ino,
                    path_len,
                });
                // Past the window, the shallowest open level lets go.
                let n = self.levels.len();
                if n > OPEN_LEVELS {
                    self.levels[n - 1 - OPEN_LEVELS].fd = None;
                }
                Ok(Some(TreeEvent::Enter(Some(e))))
            }
            ft => Err(ExecError::SpecialFile {
                path: self.shown(&name),
                kind: kind_name(ft),
            }),
        }
    }

    /// Leaves the current directory; reopens its parent if the window had
    /// closed it.
    fn leave(&mut self) -> Result<(), ExecError> {
        let Some(done) = self.levels.pop() else {
            return Ok(());
        };
        let shown = self.shown("");
        let Some(parent) = self.levels.last_mut() else {
            return Ok(());
        };
        if parent.fd.is_some() {
            return Ok(());
        }
        let Some(fd) = done.fd else {
            return Err(ExecError::Internal("output walk lost a directory".into()));
        };
        let up = open_dir(&fd, c"..", &shown)?;
        let st = rustix::fs::fstat(&up)
            .map_err(|e| ExecError::io(format!("stat output {shown:?}"), e))?;
        if (st.st_dev, st.st_ino) != (parent.dev, parent.ino) {
            return Err(ExecError::io(
                format!("output directory {shown:?}"),
                std::io::Error::other("moved during collection"),
            ));
        }
        parent.fd = Some(Arc::new(up));
        Ok(())
    }
}
