//! What an identity may do on an instance: roles and grants.
//!
//! Every identity starts with a base role on every instance, picked by how
//! it called: `authenticated_role` for token and certificate identities,
//! `local_role` for callers on this host without credentials,
//! `network_role` for other callers without credentials. Grants add roles
//! for named clients (or `*`, every authenticated identity) on named
//! instances (or `*`). Permissions only add up; nothing takes one away.
//!
//! To add a built-in role, extend [`BUILTIN_ROLES`] and the table in
//! rbe.toml(5).

use crate::{Identity, Permission, PermissionSet, Via};
use std::collections::{BTreeMap, HashSet};
use std::fmt;

use Permission::*;

/// The roles every config has, and that config cannot redefine.
pub const BUILTIN_ROLES: [(&str, PermissionSet); 5] = {
    const READER: u8 = bits(&[CasRead, AcRead]);
    const DEVELOPER: u8 = READER | bits(&[CasWrite, Execute]);
    const CI: u8 = DEVELOPER | bits(&[AcWrite]);
    [
        ("none", PermissionSet::EMPTY),
        ("reader", PermissionSet::from_bits(READER)),
        ("developer", PermissionSet::from_bits(DEVELOPER)),
        ("ci", PermissionSet::from_bits(CI)),
        ("admin", PermissionSet::ALL),
    ]
};

const fn bits(ps: &[Permission]) -> u8 {
    let mut b = 0;
    let mut i = 0;
    while i < ps.len() {
        b |= 1 << ps[i] as u8;
        i += 1;
    }
    b
}

/// The permissions of a built-in role.
pub fn builtin_role(name: &str) -> Option<PermissionSet> {
    BUILTIN_ROLES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, p)| p)
}

/// Checks the name of a role defined in config.
pub fn check_role_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err("may contain only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// One `[[auth.grants]]` entry, as written in config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Identity names, or `*` for every token or certificate identity.
    pub clients: Vec<String>,
    /// Instance names; `""` is the default instance, `*` every instance.
    pub instances: Vec<String>,
    /// The role granted.
    pub role: String,
}

/// Where an undefined role was named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleUse {
    /// `[auth] authenticated_role`
    Authenticated,
    /// `[auth] local_role`
    Local,
    /// `[auth] network_role`
    Network,
    /// The grant at this index of `[[auth.grants]]`.
    Grant(usize),
}

/// A policy that cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A config role with the name of a built-in one.
    #[error("role {0:?} is built in and cannot be redefined")]
    BuiltinRole(String),
    /// A config role with an unusable name.
    #[error("invalid role name {role:?}: {reason}")]
    InvalidRoleName {
        /// The name.
        role: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A role name that is neither built in nor defined.
    #[error("undefined role {role:?} (built in: none, reader, developer, ci, admin; define others under [auth.roles.NAME])")]
    UnknownRole {
        /// The name.
        role: String,
        /// Where it was used.
        used_by: RoleUse,
    },
}

/// What a policy is built from; [`Default`] is the built-in configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    /// Base role of token and certificate identities.
    pub authenticated_role: String,
    /// Base role of callers on this host without credentials.
    pub local_role: String,
    /// Base role of callers from elsewhere without credentials; `None`
    /// refuses them (see [`crate::Authenticator::new`]).
    pub network_role: Option<String>,
    /// Roles defined in config, beside the built-in ones.
    pub roles: BTreeMap<String, PermissionSet>,
    /// Extra roles for some clients on some instances.
    pub grants: Vec<Grant>,
}

impl Default for PolicySpec {
    fn default() -> Self {
        PolicySpec {
            authenticated_role: "developer".to_owned(),
            local_role: "ci".to_owned(),
            network_role: None,
            roles: BTreeMap::new(),
            grants: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Match {
    Any,
    Names(HashSet<String>),
}

impl Match {
    fn new(names: &[String]) -> Self {
        if names.iter().any(|n| n == "*") {
            Match::Any
        } else {
            Match::Names(names.iter().cloned().collect())
        }
    }
    fn matches(&self, name: &str) -> bool {
        match self {
            Match::Any => true,
            Match::Names(n) => n.contains(name),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ResolvedGrant {
    clients: Match,
    instances: Match,
    permissions: PermissionSet,
}

/// Roles and grants, resolved. Immutable; rebuilt on reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    roles: BTreeMap<String, PermissionSet>,
    authenticated: PermissionSet,
    local: PermissionSet,
    network: PermissionSet,
    grants: Vec<ResolvedGrant>,
}

impl Default for Policy {
    /// The built-in configuration: no grants, developers over the network
    /// with credentials, ci on this host, nobody anonymous from elsewhere.
    fn default() -> Self {
        // The default spec names only built-in roles.
        Policy::new(&PolicySpec::default()).unwrap_or_else(|_| Policy {
            roles: BTreeMap::new(),
            authenticated: PermissionSet::EMPTY,
            local: PermissionSet::EMPTY,
            network: PermissionSet::EMPTY,
            grants: Vec::new(),
        })
    }
}

impl Policy {
    /// Resolves `spec`: checks role names and that every role used exists.
    pub fn new(spec: &PolicySpec) -> Result<Self, PolicyError> {
        let mut roles: BTreeMap<String, PermissionSet> = BUILTIN_ROLES
            .iter()
            .map(|&(n, p)| (n.to_owned(), p))
            .collect();
        for (name, &perms) in &spec.roles {
            if builtin_role(name).is_some() {
                return Err(PolicyError::BuiltinRole(name.clone()));
            }
            check_role_name(name).map_err(|reason| PolicyError::InvalidRoleName {
                role: name.clone(),
                reason,
            })?;
            roles.insert(name.clone(), perms);
        }
        let role = |name: &str, used_by| {
            roles
                .get(name)
                .copied()
                .ok_or_else(|| PolicyError::UnknownRole {
                    role: name.to_owned(),
                    used_by,
                })
        };
        let authenticated = role(&spec.authenticated_role, RoleUse::Authenticated)?;
        // "" refuses loopback callers without credentials (the
        // authenticator does that); Unix-socket peers then hold nothing.
        let local = match spec.local_role.as_str() {
            "" => PermissionSet::EMPTY,
            n => role(n, RoleUse::Local)?,
        };
        let network = match &spec.network_role {
            Some(n) => role(n, RoleUse::Network)?,
            None => PermissionSet::EMPTY,
        };
        let grants = spec
            .grants
            .iter()
            .enumerate()
            .map(|(i, g)| {
                Ok(ResolvedGrant {
                    clients: Match::new(&g.clients),
                    instances: Match::new(&g.instances),
                    permissions: role(&g.role, RoleUse::Grant(i))?,
                })
            })
            .collect::<Result<_, PolicyError>>()?;
        Ok(Policy {
            roles,
            authenticated,
            local,
            network,
            grants,
        })
    }

    /// The permissions of a role, built in or defined in config.
    pub fn role(&self, name: &str) -> Option<PermissionSet> {
        self.roles.get(name).copied()
    }

    /// Every role and its permissions, by name.
    pub fn roles(&self) -> impl Iterator<Item = (&str, PermissionSet)> {
        self.roles.iter().map(|(n, &p)| (n.as_str(), p))
    }

    /// Everything `who` may do on `instance`: its base role's permissions
    /// plus those of every grant naming it (or `*`, if it authenticated)
    /// and the instance (or `*`).
    pub fn permissions(&self, who: &Identity, instance: &str) -> PermissionSet {
        let (base, authenticated) = match who.via() {
            Via::Token | Via::Certificate => (self.authenticated, true),
            Via::Local => (self.local, false),
            Via::Anonymous => (self.network, false),
        };
        self.grants
            .iter()
            .filter(|g| g.instances.matches(instance))
            .filter(|g| match &g.clients {
                // "*" means every authenticated identity, never a caller
                // without credentials.
                Match::Any => authenticated,
                Match::Names(n) => n.contains(who.name()),
            })
            .fold(base, |acc, g| acc.union(g.permissions))
    }

    /// Whether `who` may do `p` on `instance`.
    pub fn check(&self, who: &Identity, instance: &str, p: Permission) -> Result<(), Denied> {
        if self.permissions(who, instance).contains(p) {
            return Ok(());
        }
        Err(Denied {
            client: who.clone(),
            instance: instance.to_owned(),
            permission: p,
            roles_with_it: self
                .roles
                .iter()
                .filter(|(_, ps)| ps.contains(p))
                .map(|(n, _)| n.clone())
                .collect(),
        })
    }

    /// Whether `who` may see ([`Permission::OperationsRead`]) or cancel
    /// ([`Permission::OperationsCancel`]) an operation that `owner`
    /// created on `instance`. Its creator always may (identities are
    /// compared by name, so one client's token and certificate are one
    /// creator; all anonymous network callers are one, `anonymous`);
    /// anyone else needs `p` there.
    pub fn check_operation(
        &self,
        who: &Identity,
        instance: &str,
        owner: &Identity,
        p: Permission,
    ) -> Result<(), Denied> {
        if who.name() == owner.name() {
            return Ok(());
        }
        self.check(who, instance, p)
    }
}

/// A refused permission; the frontend answers PERMISSION_DENIED with
/// [`Denied::message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    client: Identity,
    instance: String,
    permission: Permission,
    roles_with_it: Vec<String>,
}

impl Denied {
    /// Who was refused.
    pub fn client(&self) -> &Identity {
        &self.client
    }
    /// On which instance.
    pub fn instance(&self) -> &str {
        &self.instance
    }
    /// What it may not do.
    pub fn permission(&self) -> Permission {
        self.permission
    }
    /// The one-line message for the client and the journal.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.permission;
        write!(
            f,
            "client {:?} may not {p} on instance {:?}; ",
            self.client.name(),
            self.instance
        )?;
        if matches!(self.client.via(), Via::Anonymous | Via::Local) {
            f.write_str("authenticate with a token or client certificate, or ")?;
        }
        write!(
            f,
            "ask an admin for a grant of a role with {p} ({}; see [auth] in rbe.toml(5))",
            self.roles_with_it.join(", ")
        )
    }
}

impl std::error::Error for Denied {}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
