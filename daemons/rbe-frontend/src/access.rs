//! Who is calling: the identity the authentication layer attached to a
//! request.

use rbe_auth::Identity;

/// The caller of `req`. Every request through the public listeners has
/// one; a request without (only possible if the layer is missing) runs as
/// the anonymous network caller, which holds no permissions by default.
pub fn identity<T>(req: &tonic::Request<T>) -> Identity {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .unwrap_or_else(Identity::anonymous)
}
