//! The seccomp filter every action runs under: system calls builds never
//! need fail with `EPERM`, compiled once per process with `seccompiler` and
//! installed by the command stage as its last step before `execve` (after
//! `no_new_privs`, which lets an unprivileged process install it).
//!
//! What is denied and why (see ARCHITECTURE.md, "The action sandbox"):
//! - keyrings (`keyctl`, `add_key`, `request_key`): the user keyring of
//!   the action uid is shared by every action run as that uid, a covert
//!   channel between clients; builds never use keys;
//! - kernel attack surface builds never need: `bpf`, `perf_event_open`,
//!   `userfaultfd`, `open_by_handle_at`, `syslog`;
//! - system administration, which the missing capabilities deny already
//!   (the filter holds even if a capability were kept by mistake):
//!   modules, `kexec_*`, `reboot`, `swapon`/`swapoff`, `acct`, `quotactl*`,
//!   `iopl`/`ioperm`, the old and new mount APIs, `pivot_root`, `setns`;
//! - new user namespaces (`unshare`/`clone` with `CLONE_NEWUSER`), in which
//!   an action would hold every capability again; `clone3`, whose flags sit
//!   in memory a filter cannot read, fails `ENOSYS` so that libc falls back
//!   to `clone`, whose flags it can;
//! - `ioctl` `TIOCSTI` and `TIOCLINUX` (typing into a terminal);
//! - on x86_64, x32 system calls (`ENOSYS`): same architecture tag,
//!   different numbers, so they would slip past the list.
//!
//! `ptrace` stays allowed: sanitizers (LeakSanitizer stops the world with
//! it) and debuggers in tests need it, and the pid namespace leaves only
//! the action's own processes to trace (init runs as another uid, or with
//! capabilities the command lacks, so it cannot be attached to either).
//!
//! Other architectures than x86_64, aarch64 and riscv64: the filter cannot
//! be built and actions fail with a setup error rather than run unfiltered.
//! Programs of another ABI (32-bit x86) are killed by the architecture
//! check: their system call numbers differ, so the list would not hold.

use std::collections::BTreeMap;
use std::io;
use std::sync::OnceLock;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// The two programs, installed in this order.
pub(crate) struct Filters {
    /// The deny list (`EPERM`).
    deny: BpfProgram,
    /// `clone3` and x32 calls (`ENOSYS`).
    nosys: BpfProgram,
}

/// System calls denied whatever their arguments.
fn unconditional() -> Vec<libc::c_long> {
    let mut v = vec![
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_open_by_handle_at,
        libc::SYS_syslog,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_setns,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([libc::SYS_iopl, libc::SYS_ioperm]);
    v
}

fn arch() -> Result<(TargetArch, u32), String> {
    // The audit tags of <linux/audit.h>.
    match std::env::consts::ARCH {
        "x86_64" => Ok((TargetArch::x86_64, 62 | 0xC000_0000)),
        "aarch64" => Ok((TargetArch::aarch64, 183 | 0xC000_0000)),
        "riscv64" => Ok((TargetArch::riscv64, 243 | 0xC000_0000)),
        other => Err(format!(
            "no seccomp filter for architecture {other}: actions cannot run here"
        )),
    }
}

fn build() -> Result<Filters, String> {
    let (target, audit) = arch()?;
    let e = |e: seccompiler::BackendError| format!("building the seccomp filter: {e}");
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = unconditional()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    // Flags and ioctl requests are compared on their low 32 bits, where
    // the kernel reads them; garbage in the upper half changes nothing.
    let newuser = SeccompRule::new(vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::CLONE_NEWUSER as u64),
        libc::CLONE_NEWUSER as u64,
    )
    .map_err(e)?])
    .map_err(e)?;
    rules.insert(libc::SYS_unshare, vec![newuser.clone()]);
    rules.insert(libc::SYS_clone, vec![newuser]);
    let ioctl = [libc::TIOCSTI, libc::TIOCLINUX]
        .into_iter()
        .map(|req| {
            let c = SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                u64::from(req as u32),
            )
            .map_err(e)?;
            SeccompRule::new(vec![c]).map_err(e)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target,
    )
    .map_err(e)?;
    let deny: BpfProgram = filter
        .try_into()
        .map_err(|err: seccompiler::BackendError| e(err))?;
    Ok(Filters {
        deny,
        nosys: nosys_program(audit),
    })
}

/// By hand, as seccompiler matches exact numbers only: on this
/// architecture, `clone3` and every number with the x32 bit fail `ENOSYS`
/// (other architectures are left to the deny list's check, which kills).
fn nosys_program(audit: u32) -> BpfProgram {
    // BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_JMP|BPF_JGE|BPF_K,
    // BPF_RET|BPF_K.
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        ins(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        ins(JEQ_K, 0, 4, audit),
        ins(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        ins(JGE_K, 1, 0, 0x4000_0000),
        ins(JEQ_K, 0, 1, libc::SYS_clone3 as u32),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// The filters, built on first use.
pub(crate) fn filters() -> Result<&'static Filters, String> {
    static FILTERS: OnceLock<Result<Filters, String>> = OnceLock::new();
    FILTERS.get_or_init(build).as_ref().map_err(Clone::clone)
}

impl Filters {
    /// Installs both filters on the calling thread. Async-signal-safe: two
    /// `prctl`/`seccomp` calls on programs built before the fork.
    pub(crate) fn install(&self) -> io::Result<()> {
        for p in [&self.nosys, &self.deny] {
            seccompiler::apply_filter(p).map_err(|e| match e {
                seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
                _ => io::Error::from_raw_os_error(libc::EINVAL),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_for_this_architecture() {
        let f = filters().expect("filters");
        assert!(f.deny.len() > 40 && f.deny.len() < 4096, "{}", f.deny.len());
        assert_eq!(f.nosys.len(), 7);
    }
}
