use super::*;
use crate::tokens::{self, NewFileOwner, Secret, TokensFile};
use std::time::{Duration, UNIX_EPOCH};

const NOW: u64 = 1_796_221_504;

struct Fixture {
    _dir: tempfile::TempDir,
    alice: Secret,
    short: Secret,
    auth: Authenticator,
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn fixture_at(now: u64, network_anonymous: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let o = NewFileOwner::default();
    let (alice, _) = tokens::create(&path, "alice", None, at(NOW), o).unwrap();
    let day = Duration::from_secs(86_400);
    let (short, _) = tokens::create(&path, "short", Some(day), at(NOW), o).unwrap();
    let file = TokensFile::load(&path).unwrap();
    let auth =
        Authenticator::new(file.tokens(), network_anonymous).with_clock(Arc::new(move || at(now)));
    Fixture {
        _dir: dir,
        alice,
        short,
        auth,
    }
}

fn fixture() -> Fixture {
    fixture_at(NOW, false)
}

fn remote() -> PeerAddr {
    PeerAddr::Tcp("192.0.2.7:40000".parse().unwrap())
}

fn with_header(h: &[u8]) -> Credentials<'_> {
    Credentials {
        peer: remote(),
        certificate: None,
        authorization: Some(h),
    }
}

fn header(tok: &Secret) -> String {
    format!("Bearer {}", tok.expose())
}

#[test]
fn bearer_token_names_its_identity() {
    let f = fixture();
    let id = f
        .auth
        .authenticate(&with_header(header(&f.alice).as_bytes()))
        .unwrap();
    assert_eq!(id, Identity::new("alice", Via::Token));
    assert_eq!(f.auth.token_count(), 2);
}

#[test]
fn scheme_case_and_surrounding_whitespace_are_accepted() {
    let f = fixture();
    let t = f.alice.expose();
    for h in [
        format!("bearer {t}"),
        format!("BEARER {t}"),
        format!("Bearer {t} "),
        format!("Bearer {t}\t"),
        format!("  Bearer   {t}  "),
        format!("Bearer\t{t}"),
    ] {
        let id = f.auth.authenticate(&with_header(h.as_bytes()));
        assert_eq!(id.unwrap().name(), "alice", "{h:?}");
    }
}

#[test]
fn wrong_token_is_unknown_and_not_echoed() {
    let f = fixture();
    let mut wrong = f.alice.expose().to_owned();
    let last = if wrong.ends_with('A') { "B" } else { "A" };
    wrong.replace_range(wrong.len() - 1.., last);
    let h = format!("Bearer {wrong}");
    let e = f.auth.authenticate(&with_header(h.as_bytes())).unwrap_err();
    assert_eq!(e, AuthError::UnknownToken);
    assert!(!e.message().contains(&wrong));
    assert!(!e.message().contains(&wrong[4..20]));
}

#[test]
fn malformed_headers() {
    let f = fixture();
    let t = f.alice.expose();
    let long_scheme = format!("{} {t}", "x".repeat(40));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "empty"),
        (b"   ".to_vec(), "empty"),
        (b"Bearer".to_vec(), "no token after Bearer"),
        (b"Bearer   ".to_vec(), "no token after Bearer"),
        (t.as_bytes().to_vec(), "lacks the \"Bearer \""),
        (
            format!("Basic {t}").into_bytes(),
            "the scheme \"Basic\" is not Bearer",
        ),
        (long_scheme.into_bytes(), "the scheme is not Bearer"),
        (
            format!("Bearer {t} extra").into_bytes(),
            "more than one word",
        ),
        (format!("Bearer {t}\n").into_bytes(), "visible ASCII"),
        (format!("Bearer {t}\r\n").into_bytes(), "visible ASCII"),
        ("Bearer rbe_é".as_bytes().to_vec(), "visible ASCII"),
        (b"Bearer \xff\xfe".to_vec(), "visible ASCII"),
        (b"Bearer \0".to_vec(), "visible ASCII"),
    ];
    for (h, needle) in cases {
        let e = f.auth.authenticate(&with_header(&h)).unwrap_err();
        assert_eq!(e.kind(), "malformed-header", "{h:?}: {e}");
        let m = e.message();
        assert!(m.contains(needle), "{h:?}: {m}");
        assert!(!m.contains(t), "{h:?}: token echoed: {m}");
    }
}

#[test]
fn tokens_of_another_shape_are_not_rbe_tokens() {
    let f = fixture();
    let t = f.alice.expose();
    for bad in [
        format!("Bearer {}", &t[..t.len() - 1]),
        format!("Bearer {t}x"),
        format!("Bearer RBE_{}", &t[4..]),
        format!("Bearer {}=", &t[..t.len() - 1]),
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc".to_owned(),
    ] {
        let e = f
            .auth
            .authenticate(&with_header(bad.as_bytes()))
            .unwrap_err();
        assert_eq!(e, AuthError::NotAnRbeToken, "{bad}");
    }
}

#[test]
fn huge_header_is_refused_before_anything_else() {
    let f = fixture();
    let mut h = header(&f.alice).into_bytes();
    h.resize(MAX_HEADER_BYTES + 1, b' ');
    let e = f.auth.authenticate(&with_header(&h)).unwrap_err();
    assert_eq!(e, AuthError::HeaderTooLong { len: 4097 });
    assert!(
        e.message().contains("4097 bytes, over the limit of 4096"),
        "{e}"
    );
    // Even a value that is not ASCII at all is measured first.
    let e = f
        .auth
        .authenticate(&with_header(&[0xff; 1 << 20]))
        .unwrap_err();
    assert_eq!(e.kind(), "header-too-long");
    // At the limit, only the form matters.
    h.truncate(MAX_HEADER_BYTES);
    assert_eq!(
        f.auth.authenticate(&with_header(&h)).unwrap().name(),
        "alice"
    );
}

#[test]
fn expiry_is_checked_against_the_clock() {
    let day = 86_400;
    let before = fixture_at(NOW + day - 1, false);
    let h = header(&before.short);
    assert_eq!(
        before
            .auth
            .authenticate(&with_header(h.as_bytes()))
            .unwrap()
            .name(),
        "short"
    );
    for now in [NOW + day, NOW + 400 * day] {
        let f = fixture_at(now, false);
        let h = header(&f.short);
        let e = f.auth.authenticate(&with_header(h.as_bytes())).unwrap_err();
        assert_eq!(e.kind(), "expired-token");
        assert_eq!(
            e.message(),
            "the bearer token \"short\" expired at 2026-12-03T14:25:04Z; ask an admin for a new one"
        );
        // A token without expiry goes on working.
        let h = header(&f.alice);
        assert!(f.auth.authenticate(&with_header(h.as_bytes())).is_ok());
    }
}

#[test]
fn certificate_alone_and_with_a_matching_token() {
    let f = fixture();
    let mut c = Credentials {
        peer: remote(),
        certificate: Some("alice"),
        authorization: None,
    };
    assert_eq!(
        f.auth.authenticate(&c).unwrap(),
        Identity::new("alice", Via::Certificate)
    );
    let h = header(&f.alice);
    c.authorization = Some(h.as_bytes());
    assert_eq!(
        f.auth.authenticate(&c).unwrap(),
        Identity::new("alice", Via::Certificate)
    );
}

#[test]
fn certificate_and_token_of_different_identities_are_refused() {
    let f = fixture();
    let h = header(&f.alice);
    let c = Credentials {
        peer: remote(),
        certificate: Some("build-bot"),
        authorization: Some(h.as_bytes()),
    };
    let e = f.auth.authenticate(&c).unwrap_err();
    assert_eq!(
        e,
        AuthError::IdentityMismatch {
            certificate: "build-bot".into(),
            token: "alice".into()
        }
    );
    // A bad token next to a good certificate is still an error.
    let c = Credentials {
        authorization: Some(b"Bearer nope"),
        ..c
    };
    assert_eq!(
        f.auth.authenticate(&c).unwrap_err(),
        AuthError::NotAnRbeToken
    );
}

#[test]
fn reserved_certificate_names_are_refused() {
    let f = fixture();
    for name in ["local", "anonymous", "uid:0", "*", "", "a\nb"] {
        let c = Credentials {
            peer: remote(),
            certificate: Some(name),
            authorization: None,
        };
        let e = f.auth.authenticate(&c).unwrap_err();
        assert_eq!(e.kind(), "bad-certificate-name", "{name:?}");
    }
}

#[test]
fn network_anonymous_is_refused_unless_configured() {
    let f = fixture();
    let c = Credentials {
        peer: remote(),
        certificate: None,
        authorization: None,
    };
    let e = f.auth.authenticate(&c).unwrap_err();
    assert_eq!(e.kind(), "credentials-required");
    let m = e.message();
    assert!(m.contains("192.0.2.7:40000"), "{m}");
    assert!(
        m.contains("--remote_header=authorization=Bearer <token>"),
        "{m}"
    );
    assert!(m.contains("client certificate"), "{m}");
    for peer in ["10.1.2.3:1", "[2001:db8::1]:1", "[::ffff:10.0.0.1]:1"] {
        let c = Credentials {
            peer: PeerAddr::Tcp(peer.parse().unwrap()),
            ..c
        };
        assert_eq!(
            f.auth.authenticate(&c).unwrap_err().kind(),
            "credentials-required"
        );
    }
    let open = fixture_at(NOW, true);
    assert!(open.auth.allows_network_anonymous());
    assert_eq!(open.auth.authenticate(&c).unwrap(), Identity::anonymous());
}

#[test]
fn local_callers_without_credentials_are_let_in() {
    let f = fixture();
    let none = |peer| Credentials {
        peer,
        certificate: None,
        authorization: None,
    };
    for a in ["127.0.0.1:5", "[::1]:5", "[::ffff:127.0.0.1]:5"] {
        let id = f
            .auth
            .authenticate(&none(PeerAddr::Tcp(a.parse().unwrap())))
            .unwrap();
        assert_eq!(id, Identity::new("local", Via::Local), "{a}");
    }
    let id = f
        .auth
        .authenticate(&none(PeerAddr::Local { uid: 1000 }))
        .unwrap();
    assert_eq!(id, Identity::new("uid:1000", Via::Local));
    // A local caller that sends a bad token learns so.
    let c = Credentials {
        authorization: Some(b"Bearer rbe_x"),
        ..none(PeerAddr::Local { uid: 1000 })
    };
    assert_eq!(
        f.auth.authenticate(&c).unwrap_err(),
        AuthError::NotAnRbeToken
    );
}

#[test]
fn default_authenticator_knows_no_token() {
    let a = Authenticator::default();
    let f = fixture();
    let h = header(&f.alice);
    assert_eq!(
        a.authenticate(&with_header(h.as_bytes())).unwrap_err(),
        AuthError::UnknownToken
    );
    assert!(format!("{a:?}").contains("tokens: 0"));
}

#[test]
fn loopback_callers_can_be_made_to_authenticate() {
    let a = Authenticator::new(std::iter::empty(), false).with_loopback_anonymous(false);
    let loopback = Credentials {
        peer: PeerAddr::Tcp("127.0.0.1:9".parse().unwrap()),
        certificate: None,
        authorization: None,
    };
    assert!(matches!(
        a.authenticate(&loopback),
        Err(AuthError::CredentialsRequired { .. })
    ));
    // The local socket's peers are still let in (the worker hub is there).
    let unix = Credentials {
        peer: PeerAddr::Local { uid: 0 },
        ..loopback
    };
    assert_eq!(a.authenticate(&unix).unwrap().name(), "uid:0");
}
