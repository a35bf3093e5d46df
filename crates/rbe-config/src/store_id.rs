//! The identity of a backing store, as hosts of a cluster compare it: two
//! hosts whose casds stand in front of the same store move no blobs
//! between each other (the executor's casd fetches inputs through, the
//! origin's fetches outputs through). The id is gossiped, so it must be the
//! same on every host and in every version: a fixed hash (FNV-1a, 64 bits)
//! of the store's normalized address and instance name, or of the
//! `backing.store_id` string an admin sets for hosts that reach one store
//! by different URLs. A wrong match would make an executor run without its
//! inputs (INPUTS_MISSING, never wrong bytes: casd verifies every blob),
//! so the normalization only folds spellings that are the same store.

use std::path::{Component, Path};

use crate::backing::{Backing, BackingAddress, BackingMode};

/// Most bytes `backing.store_id` may hold.
pub const MAX_STORE_ID_BYTES: usize = 200;

/// FNV-1a, 64 bits: stable across builds and platforms (std's hasher is
/// not), and plenty for telling a handful of stores apart.
fn fnv1a64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        // A separator no part can hold, so ("ab", "c") != ("a", "bc").
        let sep: &[u8] = if i == 0 { b"" } else { b"\0" };
        for &b in sep.iter().chain(p.as_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // 0 means "no shared store" on the wire.
    h.max(1)
}

/// `backing.store_id`'s checks: set (`""` is unset), it must say
/// something printable.
pub(crate) fn check_store_id(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("must not be blank (leave it out to derive the id from backing.url)".into());
    }
    if s.len() > MAX_STORE_ID_BYTES {
        return Err(format!("is over {MAX_STORE_ID_BYTES} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err("must hold printable characters only".into());
    }
    Ok(())
}

/// The address as one string, the same for every spelling of one store:
/// scheme and host in lower case, a default port dropped, a socket path
/// without `.`, doubled or trailing slashes.
pub fn normalized_address(b: &Backing, addr: &BackingAddress) -> String {
    match addr {
        BackingAddress::Grpc { authority } => format!("grpc://{}", authority.to_lowercase()),
        BackingAddress::Grpcs { authority } => format!("grpcs://{}", authority.to_lowercase()),
        BackingAddress::Unix { path } => format!("unix:{}", clean_path(path)),
        BackingAddress::S3 { bucket, prefix } => {
            let endpoint = b.endpoint.trim_end_matches('/').to_lowercase();
            format!("s3://{bucket}/{prefix} endpoint={endpoint}")
        }
        BackingAddress::Http { url } => {
            let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
            let scheme = scheme.to_lowercase();
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            let mut host = host.to_lowercase();
            let default = if scheme == "https" { ":443" } else { ":80" };
            if let Some(h) = host.strip_suffix(default) {
                host = h.to_owned();
            }
            format!("{scheme}://{host}/{path}")
        }
    }
}

fn clean_path(p: &Path) -> String {
    let mut out = String::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => {
                out.push('/');
                out.push_str(&s.to_string_lossy());
            }
            Component::ParentDir => out.push_str("/.."),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

impl Backing {
    /// This casd's backing store as the cluster compares it; 0 without
    /// one (`mode = "none"`).
    pub fn store_id(&self) -> u64 {
        if self.mode == BackingMode::None {
            return 0;
        }
        if !self.store_id.is_empty() {
            return fnv1a64(&["rbe-store-id/1", "name", &self.store_id]);
        }
        match self.address() {
            Some(a) => fnv1a64(&[
                "rbe-store-id/1",
                "url",
                &normalized_address(self, &a),
                &self.instance_name,
            ]),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing(url: &str, instance: &str) -> Backing {
        Backing {
            mode: BackingMode::Cache,
            url: url.into(),
            instance_name: instance.into(),
            ..Backing::default()
        }
    }

    #[test]
    fn the_id_is_fixed_across_builds() {
        // Gossiped between hosts of different versions: these values must
        // never change.
        assert_eq!(fnv1a64(&[""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(&["a"]), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a64(&["ab", "c"]), fnv1a64(&["a", "bc"]));
        let b = backing("grpc://cas:8980", "");
        assert_eq!(b.store_id(), b.clone().store_id());
        assert_ne!(b.store_id(), 0);
    }

    #[test]
    fn spellings_of_one_store_share_an_id() {
        let same = |a: &Backing, b: &Backing| assert_eq!(a.store_id(), b.store_id(), "{a:?} {b:?}");
        same(
            &backing("grpc://CAS.example:8980", "main"),
            &backing("grpc://cas.example:8980/", "main"),
        );
        same(
            &backing("unix:/run/rbe/cas.sock", ""),
            &backing("unix:///run//rbe/./cas.sock", ""),
        );
        same(
            &backing("http://DAV.example:80/cache/", ""),
            &backing("http://dav.example/cache", ""),
        );
        same(
            &backing("https://dav.example:443/cache", ""),
            &backing("https://dav.example/cache", ""),
        );
        let s3 = |endpoint: &str| Backing {
            endpoint: endpoint.into(),
            ..backing("s3://bkt/ci/", "")
        };
        same(&s3("http://127.0.0.1:9000/"), &s3("http://127.0.0.1:9000"));
    }

    #[test]
    fn different_stores_differ() {
        let ids: Vec<u64> = [
            backing("grpc://cas:8980", ""),
            backing("grpc://cas:8980", "other"),
            backing("grpc://cas:8981", ""),
            backing("grpcs://cas:8980", ""),
            backing("unix:/run/a.sock", ""),
            backing("unix:/run/b.sock", ""),
            backing("http://dav.example/a", ""),
            backing("http://dav.example:8080/a", ""),
            backing("https://dav.example/a", ""),
            backing("s3://bkt/a", ""),
            backing("s3://bkt/b", ""),
            Backing {
                endpoint: "http://127.0.0.1:9000".into(),
                ..backing("s3://bkt/a", "")
            },
        ]
        .iter()
        .map(Backing::store_id)
        .collect();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{ids:x?}");
        assert_eq!(Backing::default().store_id(), 0, "no backing store");
    }

    #[test]
    fn a_named_store_id_overrides_the_address() {
        let named = |url: &str| Backing {
            store_id: "team-cas".into(),
            ..backing(url, "")
        };
        // Two hosts reaching one store by different addresses.
        assert_eq!(
            named("grpc://10.0.0.5:8980").store_id(),
            named("grpc://cas.internal:8980").store_id()
        );
        assert_ne!(
            named("grpc://10.0.0.5:8980").store_id(),
            backing("grpc://10.0.0.5:8980", "").store_id()
        );
        // Without a backing store there is nothing to share, name or not.
        let none = Backing {
            mode: BackingMode::None,
            ..named("grpc://h:1")
        };
        assert_eq!(none.store_id(), 0);
    }

    #[test]
    fn bad_store_ids_are_refused() {
        for bad in ["   ", "a\nb", "tab\there", &"x".repeat(201)] {
            assert!(check_store_id(bad).is_err(), "{bad:?}");
        }
        for good in ["team-cas", "shared store #2", "ünïcode"] {
            assert!(check_store_id(good).is_ok(), "{good:?}");
        }
    }
}
