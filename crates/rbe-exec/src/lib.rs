//! Running one REAPI action in a sandbox, and collecting its outputs.
//!
//! No gRPC types here: the worker daemon maps REAPI `Command`/`Action` to
//! [`ActionSpec`] and the results back.
//!
//! # Process design
//!
//! Forking a multithreaded tokio process is only safe if the child does
//! nothing but async-signal-safe system calls until `exec`. So the runner
//! uses `std::process::Command` with a `pre_exec` hook, builds every string
//! (paths, uid maps) before spawning, and inside the hook makes raw system
//! calls only (through `rustix` and `libc`; no allocation). Three processes
//! result:
//!
//! ```text
//! runner (tokio)
//!  └─ stage 1 "keeper"  (host pid ns)  unshare(user?|mnt|pid|ipc|uts|net?), writes the uid map,
//!      │                               waits for init, exits; the runner waits on this pid
//!      └─ stage 2 "init" (pid 1)       setsid, new session keyring, mounts (private /dev,
//!          │                           /sys, sized tmpfs), hostname, lo up, reaps; when the
//!          │                           command exits it reports the wait status on a pipe
//!          │                           and exits, so the kernel kills everything left in
//!          │                           the namespace
//!          └─ stage 3 command (pid 2)  drops uid/gid, no_new_privs, chdir, seccomp, exec
//! ```
//!
//! The keeper first closes every descriptor but stdio and its two pipes
//! (another action's pipes, inherited because the runner forks from many
//! threads, must not be held open; std's exec-error pipe closing tells std
//! the spawn is done, so `spawn` returns at once). With a [`Confinement`]
//! it then waits at a gate until the runner has placed it (a systemd
//! scope), and once init is reaped it waits again until the runner has
//! read the confinement's figures. The command stage makes its own
//! `execve` with arguments prepared before the fork, and reports a failure
//! on the report pipe.
//!
//! `unshare(CLONE_NEWPID)` only puts the *children* of the caller in the new
//! namespace, hence the keeper. The command is not pid 1 itself because pid 1
//! ignores every signal it has no handler for, which would change how actions
//! behave (`kill $$`, `abort()`); a tiny init keeps normal semantics and
//! reaps orphans.
//!
//! Ending: init carries `PR_SET_PDEATHSIG(SIGKILL)`, so timeout and
//! cancellation just `SIGKILL` the keeper; init dies, and with it the whole
//! pid namespace. (A pipe closes the window between fork and `prctl`.) A
//! daemon the action forked cannot outlive init, so it cannot hold stdout open.
//! If the runner itself dies (SIGKILL, a crash), the keeper sees EOF on the
//! gate pipe, whose write end only the runner holds, and kills init: no
//! action outlives its worker, scope or not. (`PR_SET_PDEATHSIG` on the
//! keeper would not do: it fires when the forking *thread* exits, and the
//! runner forks from pooled threads.)
//!
//! Privilege: as root the sandbox uses plain namespaces and switches to
//! [`Sandbox::uid`]/[`Sandbox::gid`] with `setgroups([])` before `exec`;
//! otherwise it adds a user namespace mapping the caller's uid and gid to
//! themselves, so files the action creates are owned by the caller.
//!
//! Output size: stdout and stderr are pipes read by the runner, which writes
//! the first `max_output_bytes` to the files and drains and discards the
//! rest. `RLIMIT_FSIZE` would kill the action with `SIGXFSZ` instead, and a
//! file truncated now and then can still grow between truncations.
#![warn(missing_docs)]

mod child;
mod output;
pub mod remove;
mod run;
mod seccomp;
mod sys;
mod tree_walk;

pub use output::{
    collect_output, open_output, prepare_output_dirs, Collected, CollectedEntry, Output, OutputKind,
};
pub use run::{
    run, run_confined, ActionSpec, Confinement, Rlimits, RunOutcome, Sandbox, Unconfined,
    DEFAULT_TMPFS_SIZE,
};
pub use tree_walk::{OutputLimits, TreeEvent, TreeWalk, OPEN_LEVELS};

use std::io;

/// Everything that can go wrong preparing, running or collecting an action.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A directory entry name that is not a single path component.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A working directory or output path that is not a clean relative path.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The working directory does not exist inside the root or leaves it.
    #[error("working directory {dir:?}: {source}")]
    BadWorkingDir {
        /// The working directory, relative to the root.
        dir: String,
        /// Why it cannot be used.
        source: io::Error,
    },
    /// `argv` was empty.
    #[error("the command has no arguments")]
    EmptyArgv,
    /// `argv[0]` was not found.
    #[error("program {program:?} not found (searched PATH {path:?})")]
    NotFound {
        /// `argv[0]`.
        program: String,
        /// The PATH searched, from the action's environment.
        path: String,
    },
    /// `execve` failed.
    #[error("cannot execute {program:?}: {source}")]
    Exec {
        /// The resolved program.
        program: String,
        /// The `execve` error.
        source: io::Error,
    },
    /// A step of the sandbox setup failed.
    #[error("sandbox setup failed at {step}: {source}")]
    Setup {
        /// The failing step.
        step: &'static str,
        /// The system call error.
        source: io::Error,
    },
    /// An output path exists but is a FIFO, socket or device.
    #[error("output {path:?} is a {kind}, not a file, directory or symlink")]
    SpecialFile {
        /// The path relative to the working directory.
        path: String,
        /// "fifo", "socket", "character device", ...
        kind: &'static str,
    },
    /// An output path leads out of the action root through a symlink.
    #[error("output {path:?} resolves outside the action root: {source}")]
    Escape {
        /// The path relative to the working directory.
        path: String,
        /// The resolution error (`EXDEV`, `ELOOP`).
        source: io::Error,
    },
    /// An output directory crossed one of the `[outputs]` limits.
    #[error("output {path:?} is over the limit {limit} = {value}")]
    OutputLimit {
        /// The entry's path relative to the working directory (its start,
        /// when very long).
        path: String,
        /// The setting, like `outputs.max_depth`.
        limit: &'static str,
        /// Its value.
        value: u64,
    },
    /// Any other I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
    /// The sandbox could not be placed in its confinement (a systemd
    /// scope); nothing ran.
    #[error("could not confine the action: {0}")]
    Confinement(String),
    /// The sandbox ended without reporting the command's status.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ExecError {
    /// Whether this is the worker's disk (or quota) running full: a fault
    /// of the host, not of the action, to report as RESOURCE_EXHAUSTED so
    /// a client may retry instead of taking it as a broken action.
    pub fn is_no_space(&self) -> bool {
        let source = match self {
            ExecError::Io { source, .. }
            | ExecError::Setup { source, .. }
            | ExecError::BadWorkingDir { source, .. } => source,
            _ => return false,
        };
        matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
    }

    pub(crate) fn io(context: impl Into<String>, source: impl Into<io::Error>) -> Self {
        ExecError::Io {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Checks a REAPI directory entry name: one path component.
pub fn validate_name(name: &str) -> Result<(), ExecError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "'.' and '..' are not names"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(ExecError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// Checks a working directory or output path: relative, made of valid names.
///
/// `""` (the root itself) is allowed; `"."`, `".."`, empty components
/// (`"a//b"`, `"a/"`) and a leading `/` are not.
pub fn validate_relative_path(p: &str) -> Result<(), ExecError> {
    if p.is_empty() {
        return Ok(());
    }
    let reason = if p.starts_with('/') {
        "absolute"
    } else if p.contains('\0') {
        "contains NUL"
    } else if p.split('/').any(|c| c == "..") {
        "contains '..'"
    } else if p.split('/').any(|c| c.is_empty() || c == ".") {
        "empty or '.' component"
    } else {
        return Ok(());
    };
    Err(ExecError::InvalidPath {
        path: p.to_owned(),
        reason,
    })
}

/// `a` joined with `b` as relative paths, where `""` is the root.
pub(crate) fn join_rel(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}/{b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("a.txt").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn relative_paths() {
        for ok in ["", "a", "a/b", "a/.b", "..a/b"] {
            assert!(validate_relative_path(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "/a", "a/../b", "..", "../..", "a//b", "a/", "./a", "a/.", "a\0b",
        ] {
            assert!(validate_relative_path(bad).is_err(), "{bad:?}");
        }
    }
}
