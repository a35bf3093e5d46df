use super::*;

fn tok(name: &str) -> Identity {
    Identity::new(name, Via::Token)
}

fn perms(names: &[Permission]) -> PermissionSet {
    PermissionSet::of(names)
}

fn grant(clients: &[&str], instances: &[&str], role: &str) -> Grant {
    Grant {
        clients: clients.iter().map(|s| s.to_string()).collect(),
        instances: instances.iter().map(|s| s.to_string()).collect(),
        role: role.to_owned(),
    }
}

#[test]
fn builtin_roles() {
    let r = |n| builtin_role(n).unwrap();
    assert!(r("none").is_empty());
    assert_eq!(r("reader"), perms(&[CasRead, AcRead]));
    assert_eq!(r("developer"), perms(&[CasRead, AcRead, CasWrite, Execute]));
    assert_eq!(
        r("ci"),
        perms(&[CasRead, AcRead, CasWrite, Execute, AcWrite])
    );
    assert_eq!(r("admin"), PermissionSet::ALL);
    assert_eq!(builtin_role("root"), None);
}

#[test]
fn defaults_by_how_the_caller_came() {
    let p = Policy::default();
    assert_eq!(
        p.permissions(&tok("bob"), ""),
        builtin_role("developer").unwrap()
    );
    let cert = Identity::new("bob", Via::Certificate);
    assert_eq!(
        p.permissions(&cert, "x"),
        builtin_role("developer").unwrap()
    );
    let local = Identity::new("local", Via::Local);
    assert_eq!(p.permissions(&local, ""), builtin_role("ci").unwrap());
    let uid = Identity::new("uid:1000", Via::Local);
    assert!(p.check(&uid, "any", AcWrite).is_ok());
    assert!(p.permissions(&Identity::anonymous(), "").is_empty());
    assert!(p.check(&tok("bob"), "", AcRead).is_ok());
    assert!(p.check(&tok("bob"), "", Execute).is_ok());
    assert!(p.check(&tok("bob"), "", AcWrite).is_err());
    assert!(p.check(&tok("bob"), "", OperationsRead).is_err());
}

#[test]
fn denial_names_client_instance_and_permission() {
    let e = Policy::default()
        .check(&tok("bob"), "", AcWrite)
        .unwrap_err();
    assert_eq!(
        e.message(),
        "client \"bob\" may not ac-write on instance \"\"; ask an admin for a grant of a role \
         with ac-write (admin, ci; see [auth] in rbe.toml(5))"
    );
    assert_eq!(
        (e.client().name(), e.instance(), e.permission()),
        ("bob", "", AcWrite)
    );
    let spec = PolicySpec {
        network_role: Some("reader".into()),
        ..PolicySpec::default()
    };
    let e = Policy::new(&spec)
        .unwrap()
        .check(&Identity::anonymous(), "main", Execute)
        .unwrap_err();
    assert!(
        e.message().starts_with(
            "client \"anonymous\" may not execute on instance \"main\"; authenticate with a token"
        ),
        "{e}"
    );
}

#[test]
fn custom_role_and_grants_by_instance() {
    let spec = PolicySpec {
        authenticated_role: "reader".into(),
        local_role: "none".into(),
        network_role: Some("none".into()),
        roles: [("cache-writer".to_owned(), perms(&[AcWrite]))].into(),
        grants: vec![
            grant(&["ci-main"], &["", "release"], "ci"),
            grant(&["alice", "bob"], &["team/a"], "cache-writer"),
            grant(&["ops"], &["*"], "admin"),
            grant(&["*"], &["scratch"], "developer"),
            grant(&["uid:1000"], &[""], "developer"),
        ],
    };
    let p = Policy::new(&spec).unwrap();
    assert_eq!(p.role("cache-writer"), Some(perms(&[AcWrite])));
    assert_eq!(p.roles().count(), 6);

    let ci = tok("ci-main");
    assert_eq!(p.permissions(&ci, ""), builtin_role("ci").unwrap());
    assert_eq!(p.permissions(&ci, "release"), builtin_role("ci").unwrap());
    assert_eq!(p.permissions(&ci, "other"), builtin_role("reader").unwrap());
    // Instance names match exactly: no prefixes.
    assert_eq!(
        p.permissions(&ci, "release/x"),
        builtin_role("reader").unwrap()
    );

    let alice = tok("alice");
    assert!(p.check(&alice, "team/a", AcWrite).is_ok());
    assert!(
        p.check(&alice, "team/a", Execute).is_err(),
        "roles add up, nothing more"
    );
    assert!(p.check(&alice, "team/b", AcWrite).is_err());

    let ops = Identity::new("ops", Via::Certificate);
    for i in ["", "x", "team/a"] {
        assert_eq!(p.permissions(&ops, i), PermissionSet::ALL, "{i}");
    }

    // "*" is every authenticated identity, and only those.
    assert!(p.check(&tok("zed"), "scratch", Execute).is_ok());
    assert!(p.check(&tok("zed"), "", Execute).is_err());
    assert!(p.permissions(&Identity::anonymous(), "scratch").is_empty());
    let local = Identity::new("local", Via::Local);
    assert!(p.permissions(&local, "scratch").is_empty());

    // Local callers can be granted by their names.
    let uid = Identity::new("uid:1000", Via::Local);
    assert_eq!(p.permissions(&uid, ""), builtin_role("developer").unwrap());
    assert!(p.permissions(&uid, "x").is_empty());
}

#[test]
fn bad_specs() {
    let with = |f: &dyn Fn(&mut PolicySpec)| {
        let mut s = PolicySpec::default();
        f(&mut s);
        Policy::new(&s).unwrap_err()
    };
    assert_eq!(
        with(&|s| {
            s.roles.insert("ci".into(), PermissionSet::ALL);
        }),
        PolicyError::BuiltinRole("ci".into())
    );
    assert!(matches!(
        with(&|s| {
            s.roles.insert("a b".into(), PermissionSet::ALL);
        }),
        PolicyError::InvalidRoleName { .. }
    ));
    for (f, used_by) in [
        (
            &(|s: &mut PolicySpec| s.authenticated_role = "dev".into()) as &dyn Fn(&mut PolicySpec),
            RoleUse::Authenticated,
        ),
        (
            &|s: &mut PolicySpec| s.local_role = "x".into(),
            RoleUse::Local,
        ),
        (
            &|s: &mut PolicySpec| s.network_role = Some("".into()),
            RoleUse::Network,
        ),
        (
            &|s: &mut PolicySpec| {
                s.grants = vec![grant(&["a"], &[""], "ci"), grant(&["a"], &[""], "writer")]
            },
            RoleUse::Grant(1),
        ),
    ] {
        match with(f) {
            PolicyError::UnknownRole { used_by: u, .. } => assert_eq!(u, used_by),
            e => panic!("{e}"),
        }
    }
    let e = with(&|s| s.local_role = "dev".into());
    assert!(e.to_string().contains("undefined role \"dev\""), "{e}");
}

#[test]
fn operations_of_others_need_the_operations_permissions() {
    let spec = PolicySpec {
        grants: vec![grant(&["ops"], &["*"], "admin")],
        ..PolicySpec::default()
    };
    let p = Policy::new(&spec).unwrap();
    let alice = tok("alice");
    let alice_cert = Identity::new("alice", Via::Certificate);
    for op in [OperationsRead, OperationsCancel] {
        assert!(p.check_operation(&alice, "", &alice, op).is_ok());
        assert!(p.check_operation(&alice_cert, "", &alice, op).is_ok());
        let e = p.check_operation(&tok("bob"), "", &alice, op).unwrap_err();
        assert_eq!((e.client().name(), e.permission()), ("bob", op));
        assert!(p.check_operation(&tok("ops"), "x", &alice, op).is_ok());
    }
}
