//! Removing directory trees an action made, whatever it made: any depth,
//! any width, read-only directories, symlinks to anywhere, FIFOs, sockets.
//!
//! `std::fs::remove_dir_all` recurses once per level, so a deep enough
//! chain (60,000 levels fit in any action's disk quota) overflows a 2 MiB
//! thread stack and aborts the whole daemon. This walk is a loop: it never
//! recurses, every step is relative to a directory descriptor
//! (`openat`/`unlinkat`), directories are opened with
//! `O_NOFOLLOW | O_DIRECTORY` (a symlink is unlinked, never followed), and
//! it holds at most [`RemoveLimits::max_open_dirs`] directory streams.
//!
//! # Deeper than the descriptor window
//!
//! Below the window, the shallowest held directory is closed. Coming back
//! up to it, the walk opens `..` of the directory it just emptied and reads
//! that parent again from its start (what was already removed is gone, so
//! the second read only sees what is left). Memory and descriptors stay
//! bounded; the work is linear in the number of entries.
//!
//! `..` is safe to climb because nothing can move a directory of the tree
//! outside it: the action sees its root only through a bind mount, and
//! `rename` across mounts fails (`EXDEV`). By the time a tree is removed the
//! action's pid namespace is gone, so normally nothing moves at all; the
//! walk still guards against a writer it cannot rule out (a process that
//! was handed a descriptor into the tree, or the last instants of a killed
//! sandbox): every climb checks the device, never climbs more levels than
//! it descended, stops at the top's identity, and anything unexpected ends
//! the removal with an error instead of guessing.
//!
//! # When a tree cannot be removed
//!
//! Any error (an immutable file, a mount point, a changing tree) or the
//! step budget running out ends the walk with [`RemoveError`]; what was
//! removed stays removed. [`Quarantine`] then renames the tree aside, so the
//! caller is never stuck on it, and [`Quarantine::clean`] retries later.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Bounds of one removal.
#[derive(Debug, Clone)]
pub struct RemoveLimits {
    /// Directory streams held open at once (at least 2).
    pub max_open_dirs: usize,
    /// System calls allowed (roughly: one per entry, open and climb); the
    /// removal gives up past it.
    pub max_steps: u64,
    /// Set to stop a removal early (daemon shutdown).
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for RemoveLimits {
    fn default() -> Self {
        RemoveLimits {
            max_open_dirs: 32,
            // Several million entries: far more than an action directory
            // holds, far less than a tree an action keeps growing.
            max_steps: 50_000_000,
            stop: None,
        }
    }
}

/// What a removal did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Files, symlinks and directories removed (the top included).
    pub entries: u64,
    /// Deepest level reached below the top.
    pub max_depth: u64,
    /// Steps taken.
    pub steps: u64,
}

/// Why a tree could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// A system call failed on an entry.
    #[error("{op} {name:?} at depth {depth}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The entry's name (not its path: paths are not kept).
        name: String,
        /// Its level below the top.
        depth: u64,
        /// The error.
        source: io::Error,
    },
    /// More steps than [`RemoveLimits::max_steps`].
    #[error("gave up after {steps} steps (the limit)")]
    Budget {
        /// Steps taken.
        steps: u64,
    },
    /// The tree changed shape under the walk in a way it does not follow.
    #[error("the tree changed during removal: {0}")]
    Changed(&'static str),
    /// [`RemoveLimits::stop`] was set.
    #[error("stopped")]
    Stopped,
}

impl RemoveError {
    /// What was removed before the error, when known.
    fn io(op: &'static str, name: &CStr, depth: u64, e: Errno) -> Self {
        RemoveError::Io {
            op,
            name: name.to_string_lossy().into_owned(),
            depth,
            source: e.into(),
        }
    }
}

/// A directory being read.
struct Frame {
    dir: Dir,
    /// The subdirectory this walk went down into from here, removed on the
    /// way back up.
    child: Option<CString>,
    /// Whether the fd was already made writable (chmod u+rwx).
    opened_up: bool,
    dev: u64,
    ino: u64,
}

impl Frame {
    fn new(fd: OwnedFd) -> Result<Frame, Errno> {
        let st = rustix::fs::fstat(&fd)?;
        Ok(Frame {
            dir: Dir::new(fd)?,
            child: None,
            opened_up: false,
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// The stream's descriptor (`Dir::fd` cannot fail on Linux).
    fn fd(&self) -> Result<BorrowedFd<'_>, Errno> {
        self.dir.fd()
    }

    fn unlink(&self, name: &CStr, flags: AtFlags) -> Result<(), Errno> {
        rustix::fs::unlinkat(self.fd()?, name, flags)
    }

    fn open(&self, name: &CStr) -> Result<OwnedFd, Errno> {
        open_dir(self.fd()?, name)
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens `name` below `dir` as a directory, never following a symlink.
fn open_dir(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())
}

/// chmod u+rwx on the directory `name` below `dir`, which cannot be opened
/// or searched: through an `O_PATH` descriptor (no permission needed, never
/// a symlink) and its `/proc/self/fd` name.
fn open_up_child(dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    let p = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&p)?;
    let mode = Mode::from_raw_mode((st.st_mode & 0o7777) | 0o700);
    rustix::fs::chmod(format!("/proc/self/fd/{}", p.as_raw_fd()), mode)
}

/// chmod u+rwx on an open directory we must unlink in.
fn open_up(f: &mut Frame) -> Result<(), Errno> {
    if f.opened_up {
        return Err(Errno::ACCESS);
    }
    f.opened_up = true;
    let fd = f.fd()?;
    let st = rustix::fs::fstat(fd)?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode((st.st_mode & 0o7777) | 0o700))
}

fn denied(e: Errno) -> bool {
    e == Errno::ACCESS || e == Errno::PERM
}

/// The walk's state: the window of open directories and the counters.
struct Walk<'a> {
    limits: &'a RemoveLimits,
    frames: std::collections::VecDeque<Frame>,
    top: (u64, u64),
    depth: u64,
    done: Removed,
}

enum Next {
    Continue,
    Finished,
}

impl Walk<'_> {
    fn step(&mut self) -> Result<(), RemoveError> {
        self.done.steps += 1;
        if self.done.steps > self.limits.max_steps {
            return Err(RemoveError::Budget {
                steps: self.done.steps - 1,
            });
        }
        if self
            .limits
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            return Err(RemoveError::Stopped);
        }
        Ok(())
    }

    fn current(&mut self) -> Result<&mut Frame, RemoveError> {
        self.frames
            .back_mut()
            .ok_or(RemoveError::Changed("no directory left to read"))
    }

    /// Goes down into `fd`, closing the shallowest stream past the window.
    fn descend(&mut self, name: &CStr, fd: OwnedFd) -> Result<(), RemoveError> {
        let depth = self.depth;
        let f = Frame::new(fd).map_err(|e| RemoveError::io("stat", name, depth + 1, e))?;
        self.current()?.child = Some(name.to_owned());
        self.frames.push_back(f);
        if self.frames.len() > self.limits.max_open_dirs.max(2) {
            self.frames.pop_front();
        }
        self.depth += 1;
        self.done.max_depth = self.done.max_depth.max(self.depth);
        Ok(())
    }

    /// Removes the subdirectory `name` of the current directory, or goes
    /// down into it when it is not empty.
    fn dir_entry(&mut self, name: &CStr, tries: u32) -> Result<(), RemoveError> {
        let depth = self.depth;
        if tries > 4 {
            return Err(RemoveError::Changed("an entry keeps changing type"));
        }
        let f = self.current()?;
        match f.unlink(name, AtFlags::REMOVEDIR) {
            Ok(()) => {
                self.done.entries += 1;
                return Ok(());
            }
            Err(Errno::NOENT) => return Ok(()),
            Err(Errno::NOTEMPTY | Errno::EXIST) => {}
            Err(Errno::NOTDIR) => return self.other_entry(name, tries + 1),
            Err(e) if denied(e) => {
                open_up(f).map_err(|_| RemoveError::io("rmdir", name, depth, e))?;
                return self.dir_entry(name, tries + 1);
            }
            Err(e) => return Err(RemoveError::io("rmdir", name, depth, e)),
        }
        self.step()?;
        let f = self.current()?;
        let fd = match f.open(name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            // Replaced by a symlink or a file meanwhile: not followed.
            Err(Errno::NOTDIR | Errno::LOOP) => return self.other_entry(name, tries + 1),
            Err(e) if denied(e) => {
                f.fd()
                    .and_then(|fd| open_up_child(fd, name))
                    .map_err(|_| RemoveError::io("open", name, depth + 1, e))?;
                f.open(name)
                    .map_err(|e| RemoveError::io("open", name, depth + 1, e))?
            }
            Err(e) => return Err(RemoveError::io("open", name, depth + 1, e)),
        };
        self.descend(name, fd)
    }

    /// Unlinks a file, symlink, FIFO, socket or device.
    fn other_entry(&mut self, name: &CStr, tries: u32) -> Result<(), RemoveError> {
        let depth = self.depth;
        if tries > 4 {
            return Err(RemoveError::Changed("an entry keeps changing type"));
        }
        let f = self.current()?;
        let mut r = f.unlink(name, AtFlags::empty());
        if matches!(r, Err(e) if denied(e)) && open_up(f).is_ok() {
            r = f.unlink(name, AtFlags::empty());
        }
        match r {
            Ok(()) => {
                self.done.entries += 1;
                Ok(())
            }
            Err(Errno::NOENT) => Ok(()),
            // A directory after all (the type was stale).
            Err(Errno::ISDIR) => self.dir_entry(name, tries + 1),
            Err(e) => Err(RemoveError::io("unlink", name, depth, e)),
        }
    }

    /// The current directory is read to its end: remove it from its parent,
    /// which is the next frame, or `..` when past the window.
    fn finish_dir(&mut self) -> Result<Next, RemoveError> {
        let Some(done) = self.frames.pop_back() else {
            return Err(RemoveError::Changed("no directory left to read"));
        };
        if (done.dev, done.ino) == self.top {
            return Ok(Next::Finished);
        }
        if self.depth == 0 {
            // Back at level 0 but not at the top: something moved.
            return Err(RemoveError::Changed("climbed more levels than descended"));
        }
        self.depth -= 1;
        let depth = self.depth;
        if let Some(parent) = self.frames.back_mut() {
            let Some(name) = parent.child.take() else {
                return Err(RemoveError::Changed("lost the name of a subdirectory"));
            };
            drop(done);
            // Not empty (a writer added to it): read it again.
            return self.dir_entry(&name, 0).map(|()| Next::Continue);
        }
        // Past the window: climb, then read the parent again from its start
        // (the directory just emptied is removed when met there).
        self.step()?;
        let up = done
            .open(c"..")
            .map_err(|e| RemoveError::io("open", c"..", depth, e))?;
        let parent = Frame::new(up).map_err(|e| RemoveError::io("stat", c"..", depth, e))?;
        if parent.dev != done.dev {
            return Err(RemoveError::Changed("climbed onto another filesystem"));
        }
        if (parent.dev, parent.ino) == (done.dev, done.ino) {
            return Err(RemoveError::Changed("climbed to the filesystem root"));
        }
        if (parent.dev, parent.ino) == self.top {
            self.depth = 0;
        } else if self.depth == 0 {
            return Err(RemoveError::Changed("climbed more levels than descended"));
        }
        self.frames.push_back(parent);
        Ok(Next::Continue)
    }

    fn run(&mut self) -> Result<(), RemoveError> {
        loop {
            self.step()?;
            let depth = self.depth;
            let f = self.current()?;
            let Some(ent) = f.dir.read() else {
                match self.finish_dir()? {
                    Next::Continue => continue,
                    Next::Finished => return Ok(()),
                }
            };
            let ent = ent.map_err(|e| RemoveError::io("read", c".", depth, e))?;
            let name = ent.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let name = name.to_owned();
            let kind = match ent.file_type() {
                FileType::Unknown => {
                    let st = f
                        .fd()
                        .and_then(|fd| rustix::fs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW));
                    match st {
                        Ok(st) => FileType::from_raw_mode(st.st_mode),
                        Err(Errno::NOENT) => continue,
                        Err(e) => return Err(RemoveError::io("stat", &name, depth, e)),
                    }
                }
                t => t,
            };
            if kind == FileType::Directory {
                self.dir_entry(&name, 0)?;
            } else {
                self.other_entry(&name, 0)?;
            }
        }
    }
}

/// Removes `name` below the directory `parent` and everything in it.
///
/// A missing `name` is not an error; a `name` that is not a directory is
/// simply unlinked. On error, what was removed stays removed.
pub fn remove_tree(
    parent: impl AsFd,
    name: &CStr,
    limits: &RemoveLimits,
) -> Result<Removed, RemoveError> {
    let parent = parent.as_fd();
    let top = match open_dir(parent, name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Removed::default()),
        Err(Errno::NOTDIR | Errno::LOOP) => {
            return match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
                Ok(()) => Ok(Removed {
                    entries: 1,
                    ..Removed::default()
                }),
                Err(Errno::NOENT) => Ok(Removed::default()),
                Err(e) => Err(RemoveError::io("unlink", name, 0, e)),
            };
        }
        Err(e) if denied(e) => {
            open_up_child(parent, name).map_err(|_| RemoveError::io("open", name, 0, e))?;
            open_dir(parent, name).map_err(|e| RemoveError::io("open", name, 0, e))?
        }
        Err(e) => return Err(RemoveError::io("open", name, 0, e)),
    };
    let first = Frame::new(top).map_err(|e| RemoveError::io("stat", name, 0, e))?;
    let mut walk = Walk {
        limits,
        top: (first.dev, first.ino),
        frames: std::collections::VecDeque::from([first]),
        depth: 0,
        done: Removed::default(),
    };
    walk.run()?;
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) => walk.done.entries += 1,
        Err(Errno::NOENT) => {}
        Err(e) => return Err(RemoveError::io("rmdir", name, 0, e)),
    }
    Ok(walk.done)
}

/// [`remove_tree`] for a path.
pub fn remove_tree_at(path: &Path, limits: &RemoveLimits) -> Result<Removed, RemoveError> {
    let (parent, name) = split(path)?;
    let dir = rustix::fs::open(&parent, DIR_FLAGS, Mode::empty()).map_err(|e| RemoveError::Io {
        op: "open",
        name: parent.display().to_string(),
        depth: 0,
        source: e.into(),
    })?;
    remove_tree(&dir, &name, limits)
}

fn cstring(s: &std::ffi::OsStr) -> Result<CString, RemoveError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(s.as_bytes()).map_err(|_| RemoveError::Io {
        op: "name",
        name: s.to_string_lossy().into_owned(),
        depth: 0,
        source: io::ErrorKind::InvalidInput.into(),
    })
}

fn split(path: &Path) -> Result<(PathBuf, CString), RemoveError> {
    let name = path.file_name().ok_or_else(|| RemoveError::Io {
        op: "name",
        name: path.display().to_string(),
        depth: 0,
        source: io::ErrorKind::InvalidInput.into(),
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, cstring(name)?))
}

/// Where trees that could not be removed wait: `.quarantine` in a work
/// directory (same filesystem, so moving a tree there is one `rename`).
pub struct Quarantine {
    base: OwnedFd,
    path: PathBuf,
}

/// The quarantine's name inside the work directory.
pub const QUARANTINE: &str = ".quarantine";

/// What became of a tree given to [`Quarantine::dispose`].
#[derive(Debug)]
pub enum Disposal {
    /// Gone.
    Removed(Removed),
    /// Renamed into the quarantine as `name`, after `error`.
    Quarantined {
        /// Why it could not be removed now.
        error: RemoveError,
        /// Its name in the quarantine.
        name: String,
    },
    /// Neither removed nor moved: it stays where it is.
    Stuck {
        /// Why it could not be removed.
        error: RemoveError,
        /// Why it could not be moved.
        rename: io::Error,
    },
}

impl Quarantine {
    /// The quarantine of the work directory `base` (created on first use).
    pub fn open(base: &Path) -> io::Result<Quarantine> {
        let fd = rustix::fs::open(base, DIR_FLAGS, Mode::empty())?;
        Ok(Quarantine {
            base: fd,
            path: base.join(QUARANTINE),
        })
    }

    /// The quarantine's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn dir(&self) -> io::Result<OwnedFd> {
        match rustix::fs::mkdirat(&self.base, QUARANTINE, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        match open_dir(self.base.as_fd(), c".quarantine") {
            Ok(fd) => Ok(fd),
            Err(Errno::NOTDIR | Errno::LOOP) => {
                // Not ours: out of the way, then ours.
                rustix::fs::unlinkat(&self.base, QUARANTINE, AtFlags::empty())?;
                rustix::fs::mkdirat(&self.base, QUARANTINE, Mode::from_raw_mode(0o700))?;
                Ok(open_dir(self.base.as_fd(), c".quarantine")?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Moves `name` (an entry of the work directory) into the quarantine
    /// under a fresh name, which it returns.
    pub fn quarantine(&self, name: &str) -> io::Result<String> {
        let q = self.dir()?;
        for n in 0u32.. {
            let to = if n == 0 {
                name.to_owned()
            } else {
                format!("{name}.{n}")
            };
            match rustix::fs::renameat_with(
                &self.base,
                name,
                &q,
                to.as_str(),
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) => return Ok(to),
                Err(Errno::EXIST) if n < 1000 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::ErrorKind::AlreadyExists.into())
    }

    /// Removes the work directory's entry `name`; when that fails, moves
    /// what is left into the quarantine.
    pub fn dispose(&self, name: &str, limits: &RemoveLimits) -> Disposal {
        let c = match CString::new(name) {
            Ok(c) => c,
            Err(_) => {
                return Disposal::Stuck {
                    error: RemoveError::Changed("a name with NUL"),
                    rename: io::ErrorKind::InvalidInput.into(),
                }
            }
        };
        let error = match remove_tree(&self.base, &c, limits) {
            Ok(r) => return Disposal::Removed(r),
            Err(e) => e,
        };
        match self.quarantine(name) {
            Ok(name) => Disposal::Quarantined { error, name },
            Err(rename) => Disposal::Stuck { error, rename },
        }
    }

    /// Names in the quarantine.
    pub fn entries(&self) -> io::Result<Vec<String>> {
        let q = match open_dir(self.base.as_fd(), c".quarantine") {
            Ok(q) => q,
            Err(Errno::NOENT) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut names = Vec::new();
        for e in Dir::new(q)? {
            let e = e?;
            let n = e.file_name();
            if n != c"." && n != c".." {
                names.push(n.to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    /// Tries to remove everything in the quarantine; returns the names
    /// still there with why, and how many were removed.
    pub fn clean(&self, limits: &RemoveLimits) -> (u64, Vec<(String, RemoveError)>) {
        let mut left = Vec::new();
        let mut removed = 0;
        let q = match open_dir(self.base.as_fd(), c".quarantine") {
            Ok(q) => q,
            Err(Errno::NOENT) => return (0, left),
            Err(e) => {
                left.push((
                    QUARANTINE.to_owned(),
                    RemoveError::io("open", c".quarantine", 0, e),
                ));
                return (0, left);
            }
        };
        let names = match self.entries() {
            Ok(n) => n,
            Err(e) => {
                left.push((
                    QUARANTINE.to_owned(),
                    RemoveError::Io {
                        op: "read",
                        name: QUARANTINE.to_owned(),
                        depth: 0,
                        source: e,
                    },
                ));
                return (0, left);
            }
        };
        for n in names {
            let Ok(c) = CString::new(n.as_bytes()) else {
                continue;
            };
            match remove_tree(&q, &c, limits) {
                Ok(_) => removed += 1,
                Err(e) => left.push((n, e)),
            }
        }
        (removed, left)
    }
}
