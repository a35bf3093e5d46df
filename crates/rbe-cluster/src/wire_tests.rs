use super::*;
use rand::{Rng, SeedableRng};

fn key(b: u8) -> ClusterKey {
    ClusterKey::from_bytes([b; 32])
}

/// A key other than `of` whose id byte is the same (ids are 8 bits, so a
/// few hundred tries find one).
fn twin(of: &ClusterKey) -> ClusterKey {
    (0u32..100_000)
        .map(|i| {
            let mut b = [9u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            ClusterKey::from_bytes(b)
        })
        .find(|k| k.id() == of.id() && k != of)
        .expect("a twin within 100k tries")
}

fn pair(name: &str, k: &Keyring) -> (Wire, Wire) {
    (Wire::new(name, k.clone()), Wire::new(name, k.clone()))
}

fn open_copy(w: &mut Wire, d: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut d = d.to_vec();
    w.open(&mut d).map(|p| p.to_vec())
}

#[test]
fn sealed_datagrams_open_once() {
    let (mut a, mut b) = pair("prod", &Keyring::new(key(1)));
    let d = a.seal(b"hello").expect("seal");
    assert_eq!(d.len(), 5 + OVERHEAD);
    assert_eq!(open_copy(&mut b, &d).as_deref(), Ok(&b"hello"[..]));
    assert_eq!(open_copy(&mut b, &d), Err(WireError::Replayed));
    assert_eq!(b.tracked_sessions(), 1);
}

#[test]
fn forged_truncated_and_oversized_datagrams_are_refused() {
    let (mut a, mut b) = pair("prod", &Keyring::new(key(1)));
    let d = a.seal(b"payload").expect("seal");
    // Any flipped bit, in the header (AAD), the body or the tag.
    for i in 0..d.len() {
        let mut f = d.clone();
        f[i] ^= 0x40;
        let got = open_copy(&mut b, &f);
        assert!(
            matches!(
                got,
                Err(WireError::AuthFailed
                    | WireError::UnknownKey(_)
                    | WireError::UnknownVersion(_))
            ),
            "byte {i}: {got:?}"
        );
    }
    for cut in 0..OVERHEAD {
        assert_eq!(open_copy(&mut b, &d[..cut]), Err(WireError::Truncated(cut)));
    }
    // A truncated tail is a forgery.
    assert_eq!(
        open_copy(&mut b, &d[..d.len() - 1]),
        Err(WireError::AuthFailed)
    );
    let big = vec![VERSION; MAX_DATAGRAM + 1];
    assert_eq!(
        open_copy(&mut b, &big),
        Err(WireError::Oversized(MAX_DATAGRAM + 1))
    );
    assert!(matches!(
        a.seal(&[0u8; MAX_PAYLOAD + 1]),
        Err(WireError::Oversized(_))
    ));
    assert!(a.seal(&[0u8; MAX_PAYLOAD]).is_ok());
    // Nothing forged was tracked; the original still opens.
    assert_eq!(b.tracked_sessions(), 0);
    assert!(open_copy(&mut b, &d).is_ok());
}

#[test]
fn another_cluster_name_or_key_fails_authentication() {
    let k = Keyring::new(key(1));
    let mut a = Wire::new("prod", k.clone());
    let mut other_cluster = Wire::new("staging", k);
    let d = a.seal(b"x").expect("seal");
    assert_eq!(
        open_copy(&mut other_cluster, &d),
        Err(WireError::AuthFailed)
    );

    // A different key with the same id byte (searched for) is tried and
    // fails; a key of another id is unknown.
    let id = key(1).id();
    let mut twin_wire = Wire::new("prod", Keyring::new(twin(&key(1))));
    assert_eq!(open_copy(&mut twin_wire, &d), Err(WireError::AuthFailed));
    let stranger = (2u8..=255)
        .map(key)
        .find(|k| k.id() != id)
        .expect("some other id");
    let mut stranger_wire = Wire::new("prod", Keyring::new(stranger));
    assert_eq!(
        open_copy(&mut stranger_wire, &d),
        Err(WireError::UnknownKey(id))
    );
}

#[test]
fn two_keys_sharing_an_id_both_work() {
    let twin = twin(&key(1));
    let mut rx = Wire::new("prod", Keyring::new(key(1)).with_old([twin.clone()]));
    let mut tx = Wire::new("prod", Keyring::new(twin));
    let d = tx.seal(b"via the old key").expect("seal");
    assert_eq!(
        open_copy(&mut rx, &d).as_deref(),
        Ok(&b"via the old key"[..])
    );
}

#[test]
fn rotation_old_keys_are_accepted_new_keys_only_after_reload() {
    let old = key(1);
    let new = (2u8..=255)
        .map(key)
        .find(|k| k.id() != old.id())
        .expect("key");
    let mut a = Wire::new("prod", Keyring::new(old.clone()));
    let mut b = Wire::new("prod", Keyring::new(old.clone()));
    // a switches first: b does not know the new key yet.
    a.reload(Keyring::new(new.clone()).with_old([old.clone()]));
    let d = a.seal(b"new").expect("seal");
    assert_eq!(open_copy(&mut b, &d), Err(WireError::UnknownKey(new.id())));
    // b learns it as an old key: accepted; b still sends with the old one,
    // which a accepts.
    b.reload(Keyring::new(old.clone()).with_old([new.clone()]));
    assert!(open_copy(&mut b, &d).is_ok());
    let back = b.seal(b"old").expect("seal");
    assert!(open_copy(&mut a, &back).is_ok());
    // Once a drops the old key, b's old-key datagrams are refused.
    a.reload(Keyring::new(new));
    let back2 = b.seal(b"old").expect("seal");
    assert_eq!(
        open_copy(&mut a, &back2),
        Err(WireError::UnknownKey(old.id()))
    );
}

#[test]
fn a_new_primary_starts_a_new_session() {
    let mut a = Wire::new("prod", Keyring::new(key(1)));
    let s = a.session();
    a.reload(Keyring::new(key(1)).with_old([key(2)]));
    assert_eq!(a.session(), s, "same primary, same session");
    a.reload(Keyring::new(key(2)));
    assert_ne!(a.session(), s);
}

#[test]
fn replay_window_takes_reordering_and_refuses_repeats_and_the_too_old() {
    let (mut a, mut b) = pair("prod", &Keyring::new(key(1)));
    let ds: Vec<Vec<u8>> = (0..100)
        .map(|i| a.seal(&[i as u8]).expect("seal"))
        .collect();
    // Newest first, then within the window backwards.
    assert!(open_copy(&mut b, &ds[99]).is_ok());
    for d in ds[36..99].iter().rev() {
        assert!(open_copy(&mut b, d).is_ok());
    }
    // Counter 36 is 64 behind 100: outside the window.
    assert_eq!(open_copy(&mut b, &ds[35]), Err(WireError::Replayed));
    for d in &ds[36..100] {
        assert_eq!(open_copy(&mut b, d), Err(WireError::Replayed));
    }
}

#[test]
fn the_session_table_is_bounded() {
    let k = Keyring::new(key(1));
    let mut rx = Wire::new("prod", k.clone());
    let mut first = Wire::new("prod", k.clone());
    let d = first.seal(b"first").expect("seal");
    assert!(open_copy(&mut rx, &d).is_ok());
    for _ in 0..MAX_SESSIONS + 10 {
        let mut w = Wire::new("prod", k.clone());
        let d = w.seal(b"x").expect("seal");
        assert!(open_copy(&mut rx, &d).is_ok());
    }
    assert_eq!(rx.tracked_sessions(), MAX_SESSIONS);
    // Forged sessions never reach the table.
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut rx2 = Wire::new("prod", k);
    for _ in 0..2000 {
        let mut d = vec![VERSION, key(1).id()];
        d.extend((0..rng.random_range(40..300)).map(|_| rng.random::<u8>()));
        assert_eq!(open_copy(&mut rx2, &d), Err(WireError::AuthFailed));
    }
    assert_eq!(rx2.tracked_sessions(), 0);
}

#[test]
fn key_text_formats_and_errors_name_the_file() {
    let raw = [7u8; 32];
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let hx = hex::encode(raw);
    for text in [
        b64.clone(),
        format!("  {b64}\n"),
        b64.trim_end_matches('=').to_owned(),
        hx.clone(),
        hx.to_uppercase(),
        format!("\n{hx}\n\n"),
    ] {
        assert_eq!(
            ClusterKey::parse(&text),
            Ok(ClusterKey::from_bytes(raw)),
            "{text:?}"
        );
    }
    for bad in ["", "short", &hex::encode([1u8; 31]), &"A".repeat(44), "!!!"] {
        assert!(ClusterKey::parse(bad).is_err(), "{bad:?}");
    }
    assert!(ClusterKey::parse(&hex::encode([0u8; 32])).is_err());

    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("cluster.key");
    std::fs::write(&p, "not a key").expect("write");
    let e = ClusterKey::load(&p).expect_err("bad");
    assert!(e.to_string().contains("cluster.key"), "{e}");
    let missing = dir.path().join("nope.key");
    let e = ClusterKey::load(&missing).expect_err("missing");
    assert!(e.to_string().contains("nope.key"), "{e}");
    std::fs::write(&p, format!("{b64}\n")).expect("write");
    assert_eq!(
        ClusterKey::load(&p).expect("ok"),
        ClusterKey::from_bytes(raw)
    );
    // Debug never shows the key.
    assert!(!format!("{:?}", ClusterKey::from_bytes(raw)).contains("7, 7"));
}

#[test]
fn a_keyring_loads_from_files_and_names_the_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let primary = write("cluster.key", &hex::encode([3u8; 32]));
    let old = write("old.key", &hex::encode([4u8; 32]));
    let bad = write("broken.key", "nope");
    let ring = Keyring::load(&primary, std::slice::from_ref(&old)).expect("load");
    assert_eq!(ring, Keyring::new(key(3)).with_old([key(4)]));
    let e = Keyring::load(&primary, &[old, bad]).expect_err("bad");
    assert!(e.to_string().contains("broken.key"), "{e}");
}
