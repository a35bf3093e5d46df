//! Who is calling, and what they may do: the one place the frontend's
//! services ask. The services read the caller with [`caller`] and ask
//! [`may`] before acting on another client's operation; nothing else here
//! knows how identities are proven or permissions granted.

use rbe_auth::{Identity, Permission};

use crate::exec::Exec;

/// The identity a request runs as: what the authentication layer put in
/// its extensions, or anonymous.
pub fn caller<T>(req: &tonic::Request<T>) -> Identity {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .unwrap_or_else(Identity::anonymous)
}

/// Whether `who` holds `p` on `instance`. Asked for another client's
/// operation only, sometimes under the scheduler's lock: it must answer
/// from memory and take none of `Exec`'s locks. Not every `false` is a
/// refusal (ListOperations then lists the caller's own operations): the
/// refusals are the PERMISSION_DENIED statuses the services return.
pub fn may(exec: &Exec, who: &Identity, instance: &str, p: Permission) -> bool {
    // lead: replace with Policy::check
    let _ = (exec, who, instance);
    !matches!(p, Permission::OperationsRead | Permission::OperationsCancel)
}
