//! What a caller may do: one [`Permission`], and sets of them.

use std::fmt;

/// One thing a caller may be allowed to do on an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Read blobs: FindMissingBlobs, BatchReadBlobs, GetTree, ByteStream Read.
    CasRead,
    /// Write blobs: BatchUpdateBlobs, ByteStream Write.
    CasWrite,
    /// Look up action results (GetActionResult).
    AcRead,
    /// Write action results (UpdateActionResult).
    AcWrite,
    /// Run actions (Execute), and see and cancel one's own operations.
    Execute,
    /// See every client's operations (GetOperation, ListOperations, WaitExecution).
    OperationsRead,
    /// Cancel every client's operations.
    OperationsCancel,
}

impl Permission {
    /// Every permission, in the order of the config names.
    pub const ALL: [Permission; 7] = [
        Permission::CasRead,
        Permission::CasWrite,
        Permission::AcRead,
        Permission::AcWrite,
        Permission::Execute,
        Permission::OperationsRead,
        Permission::OperationsCancel,
    ];

    /// The name used in config files and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::CasRead => "cas-read",
            Permission::CasWrite => "cas-write",
            Permission::AcRead => "ac-read",
            Permission::AcWrite => "ac-write",
            Permission::Execute => "execute",
            Permission::OperationsRead => "operations-read",
            Permission::OperationsCancel => "operations-cancel",
        }
    }

    /// Parses a config name.
    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Permission`]s: a small bitset, `Copy`, ordered as
/// [`Permission::ALL`].
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PermissionSet(u8);

impl PermissionSet {
    /// No permission at all.
    pub const EMPTY: PermissionSet = PermissionSet(0);
    /// Every permission.
    pub const ALL: PermissionSet = PermissionSet((1 << Permission::ALL.len()) - 1);

    pub(crate) const fn from_bits(bits: u8) -> Self {
        PermissionSet(bits & Self::ALL.0)
    }

    fn bit(p: Permission) -> u8 {
        1 << (p as u8)
    }

    /// The set holding exactly `ps`.
    pub fn of(ps: &[Permission]) -> Self {
        ps.iter().fold(Self::EMPTY, |s, &p| s.with(p))
    }

    /// This set plus `p`.
    #[must_use]
    pub fn with(self, p: Permission) -> Self {
        PermissionSet(self.0 | Self::bit(p))
    }

    /// Everything in either set.
    #[must_use]
    pub fn union(self, other: PermissionSet) -> Self {
        PermissionSet(self.0 | other.0)
    }

    /// Whether `p` is in the set.
    pub fn contains(self, p: Permission) -> bool {
        self.0 & Self::bit(p) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The permissions in the set, in the order of [`Permission::ALL`].
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |&p| self.contains(p))
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        iter.into_iter().fold(Self::EMPTY, PermissionSet::with)
    }
}

/// `{cas-read, ac-read}`
impl fmt::Debug for PermissionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Permission::as_str))
            .finish()
    }
}

/// `cas-read, ac-read`, or `nothing`
impl fmt::Display for PermissionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing");
        }
        for (i, p) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(p.as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
        assert_eq!(Permission::parse("cas_read"), None);
    }

    #[test]
    fn sets() {
        let s = PermissionSet::of(&[Permission::AcRead, Permission::CasRead]);
        assert!(s.contains(Permission::CasRead) && s.contains(Permission::AcRead));
        assert!(!s.contains(Permission::AcWrite));
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [Permission::CasRead, Permission::AcRead]
        );
        assert_eq!(s.to_string(), "cas-read, ac-read");
        assert_eq!(PermissionSet::EMPTY.to_string(), "nothing");
        assert_eq!(PermissionSet::ALL.iter().count(), Permission::ALL.len());
        assert_eq!(
            Permission::ALL.into_iter().collect::<PermissionSet>(),
            PermissionSet::ALL
        );
    }
}
