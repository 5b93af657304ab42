use super::*;

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn auth_json(entries: &[(&str, &str)]) -> String {
    let auths: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!({ "auth": b64(v) })))
        .collect();
    serde_json::json!({ "auths": auths }).to_string()
}

/// A helper that knows only `helper-user:helper-secret`, for `ghcr.io`, as `vault`.
fn fake_helper(name: &str, host: &str) -> Result<Option<Credentials>> {
    Ok((name == "vault" && host == "ghcr.io")
        .then(|| Credentials::password("helper-user", Secret::new("helper-secret"))))
}

fn find(text: &str, host: &str, repo: &str) -> Option<(String, String)> {
    lookup_in(text, Path::new("auth.json"), host, repo, &fake_helper)
        .unwrap()
        .map(|c| (c.username, c.secret.expose().to_string()))
}

#[test]
fn most_specific_key_wins() {
    let text = auth_json(&[
        ("ghcr.io", "a:1"),
        ("ghcr.io/lab", "b:2"),
        ("ghcr.io/lab/x", "c:3"),
    ]);
    assert_eq!(
        find(&text, "ghcr.io", "lab/x"),
        Some(("c".into(), "3".into()))
    );
    assert_eq!(
        find(&text, "ghcr.io", "lab/y"),
        Some(("b".into(), "2".into()))
    );
    assert_eq!(
        find(&text, "ghcr.io", "other/y"),
        Some(("a".into(), "1".into()))
    );
    assert_eq!(find(&text, "quay.io", "lab/x"), None);
}

#[test]
fn docker_legacy_keys_match_docker_hub() {
    let text = auth_json(&[("https://index.docker.io/v1/", "u:p:with:colons")]);
    assert_eq!(
        find(&text, "index.docker.io", "library/busybox"),
        Some(("u".into(), "p:with:colons".into()))
    );
}

/// containers-auth.json(5), DESCRIPTION: "the primary (read/write) file … or
/// the explicit override using an option of the calling application. If
/// credentials are not present, search in ${XDG_CONFIG_HOME}/containers/auth.json
/// (usually ~/.config/containers/auth.json), $HOME/.docker/config.json"; the
/// primary file is ${XDG_RUNTIME_DIR}/containers/auth.json; podman's
/// --authfile defaults to $REGISTRY_AUTH_FILE; docker reads $DOCKER_CONFIG.
#[test]
fn auth_files_are_searched_in_the_man_pages_order() {
    const HOME: (&str, &str) = ("HOME", "/home/u");
    const USER_FILES: [&str; 2] = [
        "/home/u/.config/containers/auth.json",
        "/home/u/.docker/config.json",
    ];
    struct Case {
        authfile: Option<&'static str>,
        vars: &'static [(&'static str, &'static str)],
        primary: &'static str,
        rest: [&'static str; 2],
    }
    let cases = [
        Case {
            authfile: Some("/cli.json"),
            vars: &[
                ("REGISTRY_AUTH_FILE", "/env.json"),
                ("XDG_RUNTIME_DIR", "/run/user/7"),
                HOME,
            ],
            primary: "/cli.json",
            rest: USER_FILES,
        },
        Case {
            authfile: None,
            vars: &[
                ("REGISTRY_AUTH_FILE", "/env.json"),
                ("XDG_RUNTIME_DIR", "/run/user/7"),
                HOME,
            ],
            primary: "/env.json",
            rest: USER_FILES,
        },
        Case {
            authfile: None,
            vars: &[
                ("REGISTRY_AUTH_FILE", ""),
                ("XDG_RUNTIME_DIR", "/run/user/7"),
                HOME,
            ],
            primary: "/run/user/7/containers/auth.json",
            rest: USER_FILES,
        },
        Case {
            authfile: None,
            vars: &[HOME],
            primary: "/run/containers/7/auth.json",
            rest: USER_FILES,
        },
        Case {
            authfile: None,
            vars: &[
                ("XDG_CONFIG_HOME", "/xdg"),
                ("DOCKER_CONFIG", "/dockercfg"),
                HOME,
            ],
            primary: "/run/containers/7/auth.json",
            rest: ["/xdg/containers/auth.json", "/dockercfg/config.json"],
        },
    ];
    for case in cases {
        let var = |name: &str| {
            case.vars
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        };
        let expected: Vec<PathBuf> = [case.primary]
            .into_iter()
            .chain(case.rest)
            .map(PathBuf::from)
            .collect();
        assert_eq!(
            auth_file_paths(case.authfile.map(Path::new), &var, 7),
            expected,
            "--authfile {:?}, environment {:?}",
            case.authfile,
            case.vars
        );
    }
}

/// Which file's credentials are used when several files hold some, and what
/// each holds: the first file with credentials for the host wins, even over a
/// more specific key in a later file; within a file a `credHelpers` entry
/// beats `auths`; a helper without credentials, or a `{}` entry, moves on.
#[test]
fn the_first_file_with_credentials_wins() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let primary = write("primary.json", auth_json(&[("quay.io", "q:1")]));
    let xdg = write("xdg.json", auth_json(&[("ghcr.io", "x:2")]));
    let docker = write("docker.json", auth_json(&[("ghcr.io/ns/app", "d:3")]));
    let with_helper = write(
        "helper.json",
        serde_json::json!({
            "auths": { "ghcr.io": { "auth": b64("h:4") } },
            "credHelpers": { "ghcr.io": "vault" },
        })
        .to_string(),
    );
    let helper_without = write(
        "helper-without.json",
        serde_json::json!({ "credHelpers": { "ghcr.io": "empty" } }).to_string(),
    );
    let store = write(
        "store.json",
        serde_json::json!({ "auths": { "ghcr.io": {} }, "credsStore": "vault" }).to_string(),
    );
    let marker = write(
        "marker.json",
        serde_json::json!({ "auths": { "ghcr.io/ns": {}, "ghcr.io": { "auth": b64("m:5") } } })
            .to_string(),
    );
    let token = write(
        "token.json",
        serde_json::json!({
            "auths": { "ghcr.io": { "auth": b64("t:"), "identitytoken": "refresh-6" } }
        })
        .to_string(),
    );
    let missing = dir.path().join("missing.json");
    /// Files in search order, and the user, secret and kind found.
    type Case<'a> = (&'a [&'a PathBuf], Option<(&'a str, &'a str, SecretKind)>);
    let cases: [Case; 8] = [
        (
            &[&primary, &xdg, &docker],
            Some(("x", "2", SecretKind::Password)),
        ),
        (
            &[&missing, &docker, &xdg],
            Some(("d", "3", SecretKind::Password)),
        ),
        (&[&primary], None),
        (
            &[&with_helper, &xdg],
            Some(("helper-user", "helper-secret", SecretKind::Password)),
        ),
        (
            &[&helper_without, &xdg],
            Some(("x", "2", SecretKind::Password)),
        ),
        (
            &[&store, &xdg],
            Some(("helper-user", "helper-secret", SecretKind::Password)),
        ),
        (&[&marker, &xdg], Some(("x", "2", SecretKind::Password))),
        (
            &[&token, &xdg],
            Some(("t", "refresh-6", SecretKind::IdentityToken)),
        ),
    ];
    for (files, expected) in cases {
        let files: Vec<PathBuf> = files.iter().map(|f| f.to_path_buf()).collect();
        let found = lookup_with(&files, "ghcr.io", "ns/app", &fake_helper)
            .unwrap()
            .map(|c| (c.username, c.secret.expose().to_string(), c.kind));
        let expected = expected.map(|(u, s, k)| (u.to_string(), s.to_string(), k));
        assert_eq!(found, expected, "files {files:?}");
    }
}

#[test]
fn malformed_files_name_the_file_and_hint_at_authfile() {
    let none = |_: &str, _: &str| Ok(None);
    let err = lookup_in("{not json", Path::new("/run/auth.json"), "h", "r", &none).unwrap_err();
    assert!(err.to_string().contains("/run/auth.json"), "{err}");
    // A value in the wrong place is never quoted: it may be the token.
    let text = r#"{"auths": {"h": "SUPERSECRET"}}"#;
    let err = lookup_in(text, Path::new("/a.json"), "h", "r", &none).unwrap_err();
    assert!(!err.to_string().contains("SUPERSECRET"), "{err}");
    assert!(err.to_string().contains("line 1"), "{err}");
    // The hint names the options that choose auth files, not the config's.
    assert!(
        err.hint().is_some_and(|h| h.contains("--authfile")),
        "{err}"
    );
    let text = r#"{"auths":{"ghcr.io":{"auth":"!!!"}}}"#;
    assert!(lookup_in(text, Path::new("a.json"), "ghcr.io", "r", &none).is_err());
}
