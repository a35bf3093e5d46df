use super::*;
use std::time::UNIX_EPOCH;

const H1: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const H2: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

fn parse(text: &str) -> Result<TokensFile, TokensError> {
    TokensFile::parse(Path::new("/etc/rbe/tokens"), text.as_bytes())
}

fn err_at(text: &str) -> (usize, String) {
    match parse(text) {
        Err(TokensError::Parse { line, reason, .. }) => (line, reason),
        other => panic!("expected a parse error for {text:?}, got {other:?}"),
    }
}

#[test]
fn good_file_with_comments_and_blank_lines() {
    let text = format!(
        "# header comment\n\n{HEADER}\n  # indented comment\n\
         ci {H1} 2026-12-02T14:35:04Z never\n\n\
         alice\t{H2}   2026-12-02T14:35:04Z 2027-01-01T00:00:00Z  \n"
    );
    let f = parse(&text).unwrap();
    let t: Vec<_> = f.tokens().collect();
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].name(), "ci");
    assert_eq!(t[0].expires(), None);
    assert_eq!(t[0].created_str(), "2026-12-02T14:35:04Z");
    assert_eq!(t[1].name(), "alice");
    assert_eq!(t[1].expires_str(), "2027-01-01T00:00:00Z");
    assert_eq!(t[1].hash().short(), "2c26b46b");
    assert!(t[1].is_expired(t[1].expires().unwrap()));
    assert!(!t[0].is_expired(UNIX_EPOCH + Duration::from_secs(u32::MAX.into())));
    // Comments survive a rewrite; token lines come out normalised.
    let out = f.render();
    assert!(out.starts_with("# header comment\n\nrbe-tokens v1\n  # indented comment\n"));
    assert!(out.contains(&format!(
        "alice {H2} 2026-12-02T14:35:04Z 2027-01-01T00:00:00Z\n"
    )));
    assert_eq!(parse(&out).unwrap().tokens().count(), 2);
}

#[test]
fn empty_and_comment_only_files_have_no_tokens() {
    assert_eq!(parse("").unwrap().tokens().count(), 0);
    assert_eq!(parse("# nothing yet\n\n").unwrap().tokens().count(), 0);
    let rendered = parse("").unwrap().render();
    assert!(rendered.contains(HEADER), "{rendered}");
    assert_eq!(parse(&rendered).unwrap().tokens().count(), 0);
}

#[test]
fn bad_lines_name_their_line() {
    let ok = format!("{HEADER}\nci {H1} 2026-12-02T14:35:04Z never\n");
    for (text, line, needle) in [
        (
            format!("ci {H1} 2026-12-02T14:35:04Z never\n"),
            1,
            "version line",
        ),
        ("# c\nrbe-tokens v2\n".to_owned(), 2, "unsupported version"),
        (
            format!("{ok}bob {H2} 2026-12-02T14:35:04Z\n"),
            3,
            "expected 4 fields",
        ),
        (
            format!("{ok}bob {H2} 2026-12-02T14:35:04Z never x\n"),
            3,
            "found 5",
        ),
        (
            format!("{ok}b/b {H2} 2026-12-02T14:35:04Z never\n"),
            3,
            "may contain only",
        ),
        (
            format!("{ok}local {H2} 2026-12-02T14:35:04Z never\n"),
            3,
            "callers without",
        ),
        (
            format!("{ok}bob {} 2026-12-02T14:35:04Z never\n", &H2[1..]),
            3,
            "64 lowercase hex",
        ),
        (
            format!("{ok}bob {} 2026-12-02T14:35:04Z never\n", H2.to_uppercase()),
            3,
            "64 lowercase hex",
        ),
        (
            format!("{ok}bob {H2} 2026-12-02 never\n"),
            3,
            "creation time",
        ),
        (
            format!("{ok}bob {H2} 2026-12-02T14:35:04Z tomorrow\n"),
            3,
            "expiry",
        ),
        (
            format!("{ok}\nci {H2} 2026-12-02T14:35:04Z never\n"),
            4,
            "a second token named \"ci\"",
        ),
        (
            format!("{ok}bob {H1} 2026-12-02T14:35:04Z never\n"),
            3,
            "same hash",
        ),
    ] {
        let (l, reason) = err_at(&text);
        assert_eq!(l, line, "{text:?}: {reason}");
        assert!(reason.contains(needle), "{text:?}: {reason}");
    }
    let e = TokensFile::parse(Path::new("/x/tokens"), b"rbe-tokens v1\n\xff\n").unwrap_err();
    assert_eq!(e.to_string(), "/x/tokens:2: not UTF-8");
}

#[test]
fn names() {
    for ok in [
        "a",
        "ci-main",
        "alice@example.com",
        "A.b_c-9",
        &"x".repeat(64),
    ] {
        check_name(ok).unwrap();
    }
    for bad in [
        "",
        "a b",
        "a:b",
        "é",
        "*",
        "anonymous",
        "local",
        &"x".repeat(65),
    ] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn base64url_matches_rfc4648() {
    for (input, want) in [
        (&b""[..], ""),
        (b"f", "Zg"),
        (b"fo", "Zm8"),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg"),
        (b"\xfb\xff", "-_8"),
    ] {
        assert_eq!(base64url(input), want);
    }
}

#[test]
fn generated_tokens_have_the_documented_form() {
    let a = generate().unwrap();
    let b = generate().unwrap();
    assert_ne!(a.expose(), b.expose());
    assert_eq!(a.expose().len(), TOKEN_LEN);
    assert!(a.expose().starts_with(TOKEN_PREFIX));
    assert!(a.expose()[TOKEN_PREFIX.len()..]
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    assert_eq!(format!("{a:?}"), "Secret(…)");
    let h = TokenHash::of(a.expose().as_bytes());
    assert!(!format!("{h:?}").contains(&hex::encode(h.0)));
}

#[test]
fn create_list_revoke_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let now = UNIX_EPOCH + Duration::from_secs(1_796_221_504);
    let (secret, rec) = create(&path, "ci", None, now, NewFileOwner::default()).unwrap();
    assert_eq!(rec.name(), "ci");
    assert_eq!(rec.hash(), &TokenHash::of(secret.expose().as_bytes()));
    let mode = fs::metadata(&path).unwrap().mode() & 0o7777;
    assert_eq!(mode, NEW_FILE_MODE);

    // An admin tightens the mode and comments the file; both survive.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let mut text = fs::read_to_string(&path).unwrap();
    text.push_str("# rotated every quarter\n");
    fs::write(&path, text).unwrap();

    let week = Duration::from_secs(7 * 86_400);
    let (secret2, rec2) = create(&path, "alice", Some(week), now, NewFileOwner::default()).unwrap();
    assert_eq!(rec2.expires(), Some(now + week));
    assert!(matches!(
        create(&path, "ci", None, now, NewFileOwner::default()),
        Err(TokensError::NameTaken(n)) if n == "ci"
    ));
    for far in [Duration::from_secs(9000 * 365 * 86_400), Duration::MAX] {
        assert!(matches!(
            create(&path, "far", Some(far), now, NewFileOwner::default()),
            Err(TokensError::ExpiryTooFar)
        ));
    }
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);

    let text = fs::read_to_string(&path).unwrap();
    for s in [&secret, &secret2] {
        assert!(!text.contains(s.expose()), "plaintext in the file");
        assert!(!text.contains(&s.expose()[TOKEN_PREFIX.len()..]));
    }
    assert!(text.contains("# rotated every quarter\n"));

    let names: Vec<_> = list(&path).unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["ci", "alice"]);
    assert_eq!(list(&path).unwrap()[0], rec);

    assert_eq!(revoke(&path, "ci").unwrap(), rec);
    assert!(matches!(
        revoke(&path, "ci"),
        Err(TokensError::UnknownName(_))
    ));
    let left: Vec<_> = list(&path).unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(left, ["alice"]);
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
    // No temporary files are left behind.
    let entries: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
}

#[test]
fn missing_file_is_empty_but_unreadable_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(list(&dir.path().join("none")).unwrap().is_empty());
    let e = list(dir.path()).unwrap_err();
    assert!(matches!(e, TokensError::Io { .. }), "{e}");
    assert!(e.to_string().starts_with(&dir.path().display().to_string()));
}

#[test]
fn owner_is_kept_across_rewrites_and_a_new_file_gets_the_group() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP: changing a file's owner needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let now = UNIX_EPOCH + Duration::from_secs(1_796_221_504);
    create(&path, "a", None, now, NewFileOwner { gid: Some(4321) }).unwrap();
    let m = fs::metadata(&path).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (0, 4321, NEW_FILE_MODE)
    );
    std::os::unix::fs::chown(&path, Some(1234), Some(5678)).unwrap();
    create(&path, "b", None, now, NewFileOwner { gid: Some(4321) }).unwrap();
    revoke(&path, "a").unwrap();
    let m = fs::metadata(&path).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (1234, 5678, NEW_FILE_MODE)
    );
}
