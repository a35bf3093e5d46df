//! Least privilege without relying on the unit: as root, rbe-workerd keeps
//! only the capabilities the sandbox needs (the same set as
//! `CapabilityBoundingSet=` in rbe-workerd.service), so a worker started by
//! hand or by `rbectl local` as root is held to it too.
//!
//! Capabilities belong to threads, and new threads copy their creator's:
//! this must run before the async runtime or any other thread exists.

use std::collections::HashSet;

use caps::{CapSet, Capability};

/// What the sandbox uses: namespaces, mounts and hostnames
/// (`CAP_SYS_ADMIN`), the action's uid and gid, chowning action roots,
/// cleaning up work directories the action's user wrote into, killing
/// actions, bringing up loopback in an action's network namespace,
/// `pivot_root`/`chroot`.
pub const KEEP: [Capability; 10] = [
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_CHOWN,
    Capability::CAP_FOWNER,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_KILL,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_SYS_CHROOT,
];

/// Drops every other capability from the bounding, permitted, effective,
/// inheritable and ambient sets of the calling thread. Returns how many
/// were dropped from the bounding set; does nothing unless running as root.
pub fn drop_unneeded() -> Result<usize, caps::errors::CapsError> {
    if !rustix::process::geteuid().is_root() {
        return Ok(0);
    }
    let keep: HashSet<Capability> = KEEP.into_iter().collect();
    // Needs CAP_SETPCAP, so before permitted and effective lose it.
    let mut dropped = 0;
    for c in caps::runtime::thread_all_supported() {
        if !keep.contains(&c) && caps::has_cap(None, CapSet::Bounding, c)? {
            caps::drop(None, CapSet::Bounding, c)?;
            dropped += 1;
        }
    }
    // Ambient only exists since Linux 4.3; nothing to clear before that.
    let _ = caps::clear(None, CapSet::Ambient);
    caps::set(None, CapSet::Inheritable, &HashSet::new())?;
    let permitted: HashSet<Capability> = caps::read(None, CapSet::Permitted)?
        .intersection(&keep)
        .copied()
        .collect();
    caps::set(None, CapSet::Effective, &permitted)?;
    caps::set(None, CapSet::Permitted, &permitted)?;
    Ok(dropped)
}
