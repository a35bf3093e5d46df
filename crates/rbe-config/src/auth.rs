//! `[auth]` of frontend.toml: where the tokens are, roles and grants.
//!
//! Loading validates every name (roles, permissions, instances, clients)
//! so `--check-config` catches a typo; [`AuthSettings::load`] then reads
//! the tokens file and builds what the frontend checks requests with.

use crate::casd::check_instance_name;
use crate::common::check_absolute;
use crate::layer::Provenance;
use crate::{ConfigError, Origin};
use rbe_auth::tokens::{TokensError, TokensFile};
use rbe_auth::{Authenticator, Grant, Permission, Policy, PolicyError, PolicySpec, RoleUse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `[auth]`: who may do what. All of it applies on reload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthSettings {
    /// The tokens file (see `rbectl token`); a missing file holds no tokens.
    pub tokens: PathBuf,
    /// Role of every token or certificate identity on every instance.
    pub authenticated_role: String,
    /// Role of callers without credentials on loopback or the Unix socket.
    pub local_role: String,
    /// Role of callers without credentials from other hosts; empty refuses
    /// them with UNAUTHENTICATED.
    pub network_role: String,
    /// Roles beside the built-in ones, by name.
    pub roles: BTreeMap<String, RoleSettings>,
    /// Extra roles for some clients on some instances.
    pub grants: Vec<GrantSettings>,
}

/// `[auth.roles.NAME]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSettings {
    /// Permission names (`cas-read`, …), all valid.
    pub permissions: Vec<String>,
}

/// One `[[auth.grants]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSettings {
    /// Identity names, or `"*"` for every authenticated identity.
    pub clients: Vec<String>,
    /// Instance names; `""` is the default instance, `"*"` every one.
    pub instances: Vec<String>,
    /// A built-in or defined role.
    pub role: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        let spec = PolicySpec::default();
        AuthSettings {
            tokens: PathBuf::from(rbe_auth::tokens::DEFAULT_PATH),
            authenticated_role: spec.authenticated_role,
            local_role: spec.local_role,
            network_role: String::new(),
            roles: BTreeMap::new(),
            grants: Vec::new(),
        }
    }
}

impl AuthSettings {
    /// The policy's inputs, typed.
    pub fn policy_spec(&self) -> PolicySpec {
        PolicySpec {
            authenticated_role: self.authenticated_role.clone(),
            local_role: self.local_role.clone(),
            network_role: (!self.network_role.is_empty()).then(|| self.network_role.clone()),
            roles: self
                .roles
                .iter()
                .map(|(n, r)| {
                    let perms = r.permissions.iter().filter_map(|p| Permission::parse(p));
                    (n.clone(), perms.collect())
                })
                .collect(),
            grants: self
                .grants
                .iter()
                .map(|g| Grant {
                    clients: g.clients.clone(),
                    instances: g.instances.clone(),
                    role: g.role.clone(),
                })
                .collect(),
        }
    }

    /// Reads the tokens file and builds the authenticator and the policy:
    /// what the frontend calls at start and on every reload. A missing
    /// tokens file means no tokens; an unreadable or malformed one is an
    /// error naming the file (and line).
    pub fn load(&self) -> Result<(Authenticator, Policy), ConfigError> {
        let policy = Policy::new(&self.policy_spec())
            .map_err(|e| policy_error(&Provenance::default(), e))?;
        let file = TokensFile::load(&self.tokens).map_err(tokens_error)?;
        let auth = Authenticator::new(file.tokens(), !self.network_role.is_empty())
            .with_loopback_anonymous(!self.local_role.is_empty());
        Ok((auth, policy))
    }
}

/// A tokens-file error as a config error on that file.
fn tokens_error(e: TokensError) -> ConfigError {
    match e {
        TokensError::Parse { path, line, reason } => {
            ConfigError::new(Origin::File(path), None, reason).with_line(Some(line))
        }
        TokensError::Io { path, error } => ConfigError::new(
            Origin::File(path),
            None,
            format!("cannot read the tokens file named by [auth] tokens: {error}"),
        ),
        other => ConfigError::new(Origin::Default, Some("auth.tokens"), other.to_string()),
    }
}

fn policy_error(prov: &Provenance, e: PolicyError) -> ConfigError {
    let key = match &e {
        PolicyError::BuiltinRole(r) | PolicyError::InvalidRoleName { role: r, .. } => {
            let key = format!("auth.roles.{r}");
            let origin = prov.origin(&format!("{key}.permissions"));
            return ConfigError::new(origin, Some(&key), e.to_string());
        }
        PolicyError::UnknownRole { used_by, .. } => match used_by {
            RoleUse::Authenticated => "auth.authenticated_role".to_owned(),
            RoleUse::Local => "auth.local_role".to_owned(),
            RoleUse::Network => "auth.network_role".to_owned(),
            RoleUse::Grant(i) => {
                let key = format!("auth.grants[{i}].role");
                return ConfigError::new(prov.origin("auth.grants"), Some(&key), e.to_string());
            }
        },
    };
    prov.error(&key, e.to_string())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthFragment {
    tokens: Option<PathBuf>,
    authenticated_role: Option<String>,
    local_role: Option<String>,
    network_role: Option<String>,
    roles: Option<BTreeMap<String, RoleSettings>>,
    grants: Option<Vec<GrantSettings>>,
}

/// Identity names in grants: whatever a token, a certificate or a local
/// caller can be called, so only the obviously broken is refused.
fn check_client_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 256 {
        return Err(format!("client name {name:?} must be 1 to 256 bytes long"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("client name {name:?} contains control characters"));
    }
    Ok(())
}

impl AuthFragment {
    pub(crate) fn build(f: Option<Self>, prov: &Provenance) -> Result<AuthSettings, ConfigError> {
        let f = f.unwrap_or_default();
        let d = AuthSettings::default();
        let s = AuthSettings {
            tokens: f.tokens.unwrap_or(d.tokens),
            authenticated_role: f.authenticated_role.unwrap_or(d.authenticated_role),
            local_role: f.local_role.unwrap_or(d.local_role),
            network_role: f.network_role.unwrap_or(d.network_role),
            roles: f.roles.unwrap_or_default(),
            grants: f.grants.unwrap_or_default(),
        };
        check_absolute(prov, "auth.tokens", &s.tokens)?;
        for (name, role) in &s.roles {
            let key = format!("auth.roles.{name}.permissions");
            for p in &role.permissions {
                if Permission::parse(p).is_none() {
                    let known: Vec<_> = Permission::ALL.iter().map(|p| p.as_str()).collect();
                    return Err(prov.error(
                        &key,
                        format!("unknown permission {p:?} (known: {})", known.join(", ")),
                    ));
                }
            }
        }
        let grants_origin = prov.origin("auth.grants");
        for (i, g) in s.grants.iter().enumerate() {
            let err = |field: &str, reason: String| {
                ConfigError::new(
                    grants_origin.clone(),
                    Some(&format!("auth.grants[{i}].{field}")),
                    reason,
                )
            };
            if g.clients.is_empty() {
                return Err(err(
                    "clients",
                    "must name at least one client or \"*\"".into(),
                ));
            }
            for c in &g.clients {
                check_client_name(c).map_err(|r| err("clients", r))?;
            }
            if g.instances.is_empty() {
                return Err(err(
                    "instances",
                    "must name at least one instance (\"\" is the default one, \"*\" every one)"
                        .into(),
                ));
            }
            for n in g.instances.iter().filter(|n| *n != "*") {
                check_instance_name(n).map_err(|r| err("instances", r))?;
            }
        }
        // Resolving checks role names and that every role used exists.
        Policy::new(&s.policy_spec()).map_err(|e| policy_error(prov, e))?;
        Ok(s)
    }
}
