use super::*;

/// containers-registries.conf.d(5), CONFIGURATION PRECEDENCE: the main file,
/// then /etc/containers/registries.conf.d, then the user's drop-ins; with the
/// user's main file, only the user's drop-ins. CONTAINERS_REGISTRIES_CONF
/// replaces the main file only (containers/image's `newConfigWrapper`).
#[test]
fn files_are_read_in_containers_images_order() {
    const HOME: (&str, &str) = ("HOME", "/home/u");
    const USER_FILE: &str = "/home/u/.config/containers/registries.conf";
    let drop_ins = |dir: &Path| match dir.to_str().unwrap() {
        SYSTEM_DROP_INS => vec![PathBuf::from("/etc/containers/registries.conf.d/a.conf")],
        "/home/u/.config/containers/registries.conf.d" | "/xdg/containers/registries.conf.d" => {
            vec![dir.join("b.conf")]
        }
        _ => Vec::new(),
    };
    /// Environment, files that exist, files read in order.
    type Case = (
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
        &'static [&'static str],
    );
    let cases: [Case; 4] = [
        (
            &[HOME],
            &[],
            &[
                SYSTEM_FILE,
                "/etc/containers/registries.conf.d/a.conf",
                "/home/u/.config/containers/registries.conf.d/b.conf",
            ],
        ),
        (
            &[HOME],
            &[USER_FILE],
            &[
                USER_FILE,
                "/home/u/.config/containers/registries.conf.d/b.conf",
            ],
        ),
        (
            &[("CONTAINERS_REGISTRIES_CONF", "/test.conf"), HOME],
            &[USER_FILE],
            &[
                "/test.conf",
                "/etc/containers/registries.conf.d/a.conf",
                "/home/u/.config/containers/registries.conf.d/b.conf",
            ],
        ),
        (
            &[("XDG_CONFIG_HOME", "/xdg"), HOME],
            &["/xdg/containers/registries.conf"],
            &[
                "/xdg/containers/registries.conf",
                "/xdg/containers/registries.conf.d/b.conf",
            ],
        ),
    ];
    for (vars, existing, expected) in cases {
        let var = |name: &str| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        };
        let exists = |path: &Path| existing.iter().any(|e| Path::new(e) == path);
        let expected: Vec<PathBuf> = expected.iter().map(PathBuf::from).collect();
        assert_eq!(
            conf_files(&var, &exists, &drop_ins),
            expected,
            "{vars:?}, {existing:?}"
        );
    }
}

/// containers-registries.conf.d(5): "Specified fields in a conf file will
/// overwrite any previous setting … The [[registry]] tables merged by
/// overwriting existing items if the prefixes are identical while new ones
/// are added"; containers-registries.conf(5): an empty alias erases it.
#[test]
fn later_files_override_earlier_ones() {
    let mut conf = RegistriesConf::default();
    conf.merge(
        r#"
        unqualified-search-registries = ["a.io", "b.io"]
        short-name-mode = "enforcing"
        unknown-future-key = 1
        [aliases]
        "tool" = "a.io/lab/tool"
        "old" = "a.io/lab/old"
        [[registry]]
        prefix = "ghcr.io"
        location = "first.example:5000"
        some-new-key = true
        [[registry]]
        location = "b.io"
        insecure = true
        "#,
        Path::new("/etc/containers/registries.conf"),
    )
    .unwrap();
    conf.merge(
        r#"
        [aliases]
        "old" = ""
        "new" = "b.io/new"
        [[registry]]
        prefix = "ghcr.io"
        location = "second.example:5000"
        "#,
        Path::new("/etc/containers/registries.conf.d/site.conf"),
    )
    .unwrap();
    assert_eq!(conf.search, Some(vec!["a.io".into(), "b.io".into()]));
    let aliases: Vec<(&str, &str)> = conf
        .aliases
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(aliases, [("new", "b.io/new"), ("tool", "a.io/lab/tool")]);
    let tables: Vec<(&str, Option<&str>)> = conf
        .registries
        .iter()
        .map(|r| (r.prefix.as_str(), r.location.as_deref()))
        .collect();
    assert_eq!(
        tables,
        [
            ("ghcr.io", Some("second.example:5000")),
            ("b.io", Some("b.io"))
        ]
    );
    assert!(conf.registries[1].insecure);
    assert_eq!(conf.files.len(), 2);

    let err = conf
        .merge("[[registry]]\ninsecure = true\n", Path::new("/x.conf"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/x.conf") && err.contains("prefix"), "{err}");
}
