//! Credentials as containers-auth.json(5) finds them, against the token-auth
//! upstream: each auth-file location, their precedence, credential helpers on
//! PATH (`credHelpers`, `credsStore`), and `identitytoken` entries exchanged
//! at a token service. Needs the topology of `scripts/testenv.sh`.

mod support;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use support::testenv::{Lazyimg, Run, TestEnv, build_layout, run, testenv, unique_image};
use support::token_server::TokenRegistry;
use support::tools::{PushOpts, push_layout};

/// An image on the upstream, pushed once per test binary.
fn upstream_image(env: &TestEnv) -> String {
    static PUSHED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PUSHED
        .get_or_init(|| {
            let work = tempfile::tempdir().unwrap();
            let (layout, _) = build_layout(work.path(), &unique_image("auth-files", 1), "v1");
            env.push_upstream(&layout.dir, "v1", "auth/files:v1", false);
            format!("{}/auth/files:v1", env.upstream())
        })
        .clone()
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// What a test auth file holds for the upstream.
#[derive(Clone, Copy, Debug)]
enum Holds {
    /// The test user's token.
    Good,
    /// The test user with a wrong token.
    Bad,
    /// `{"auths": {}}`: nothing for any registry.
    Nothing,
}

fn auth_json(host: &str, holds: Holds) -> String {
    let entry = |auth: &str| serde_json::json!({ "auths": { host: { "auth": b64(auth) } } });
    match holds {
        Holds::Good => entry("testuser:testtoken"),
        Holds::Bad => entry("testuser:wrong-token"),
        Holds::Nothing => serde_json::json!({ "auths": {} }),
    }
    .to_string()
}

/// The places of containers-auth.json(5), highest precedence first. HOME and
/// XDG_RUNTIME_DIR are the sandbox (see [`Lazyimg::cmd`]).
#[derive(Clone, Copy, Debug)]
enum Place {
    /// `--authfile FILE`
    AuthfileOption,
    /// `$REGISTRY_AUTH_FILE`
    RegistryAuthFile,
    /// `$XDG_RUNTIME_DIR/containers/auth.json`
    RuntimeDir,
    /// `$XDG_CONFIG_HOME/containers/auth.json`
    XdgConfigHome,
    /// `~/.config/containers/auth.json` (XDG_CONFIG_HOME unset)
    HomeConfig,
    /// `$DOCKER_CONFIG/config.json`
    DockerConfig,
    /// `~/.docker/config.json` (DOCKER_CONFIG unset)
    HomeDocker,
}

impl Place {
    fn file(self, home: &Path) -> PathBuf {
        home.join(match self {
            Place::AuthfileOption => "option.json",
            Place::RegistryAuthFile => "env.json",
            Place::RuntimeDir => "containers/auth.json",
            Place::XdgConfigHome => "xdg/containers/auth.json",
            Place::HomeConfig => ".config/containers/auth.json",
            Place::DockerConfig => "dockercfg/config.json",
            Place::HomeDocker => ".docker/config.json",
        })
    }

    /// Points `cmd` at this place's file, where that takes more than the file.
    fn select(self, cmd: &mut std::process::Command, home: &Path) {
        match self {
            Place::AuthfileOption => {
                cmd.arg("--authfile").arg(self.file(home));
            }
            Place::RegistryAuthFile => {
                cmd.env("REGISTRY_AUTH_FILE", self.file(home));
            }
            Place::XdgConfigHome => {
                cmd.env("XDG_CONFIG_HOME", home.join("xdg"));
            }
            Place::DockerConfig => {
                cmd.env("DOCKER_CONFIG", home.join("dockercfg"));
            }
            Place::RuntimeDir | Place::HomeConfig | Place::HomeDocker => {}
        }
    }
}

/// `lazyimg inspect IMAGE` with `files` written and selected, plus `selected`
/// places selected without a file of theirs.
fn inspect_with(env: &TestEnv, files: &[(Place, Holds)], selected: &[Place]) -> Run {
    let image = upstream_image(env);
    let lazyimg = Lazyimg::new(env);
    let home = lazyimg.dir.path();
    let mut cmd = lazyimg.cmd();
    cmd.arg("inspect");
    for &(place, holds) in files {
        let file = place.file(home);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, auth_json(env.upstream(), holds)).unwrap();
        place.select(&mut cmd, home);
    }
    for place in selected {
        place.select(&mut cmd, home);
    }
    run(cmd.arg(&image))
}

/// containers-auth.json(5): "the following files will be read in sequence
/// until the valid credential is found: first reading the primary
/// (read/write) file [${XDG_RUNTIME_DIR}/containers/auth.json], or the
/// explicit override using an option of the calling application. If
/// credentials are not present, search in ${XDG_CONFIG_HOME}/containers/auth.json
/// (usually ~/.config/containers/auth.json), $HOME/.docker/config.json".
/// podman-pull(1): --authfile defaults to $REGISTRY_AUTH_FILE.
/// docker: $DOCKER_CONFIG replaces ~/.docker.
#[test]
fn auth_files_are_found_in_each_place_and_searched_in_the_man_pages_order() {
    use Holds::*;
    use Place::*;
    let env = testenv();
    /// Files written, places selected without a file, whether it authenticates.
    type Row = (&'static [(Place, Holds)], &'static [Place], bool);
    let table: &[Row] = &[
        // Each place alone.
        (&[(AuthfileOption, Good)], &[], true),
        (&[(RegistryAuthFile, Good)], &[], true),
        (&[(RuntimeDir, Good)], &[], true),
        (&[(XdgConfigHome, Good)], &[], true),
        (&[(HomeConfig, Good)], &[], true),
        (&[(DockerConfig, Good)], &[], true),
        (&[(HomeDocker, Good)], &[], true),
        // The primary file: --authfile over $REGISTRY_AUTH_FILE over the
        // runtime dir, each replacing the next (never searched after it).
        (
            &[(AuthfileOption, Bad), (RegistryAuthFile, Good)],
            &[],
            false,
        ),
        (&[(AuthfileOption, Nothing), (RuntimeDir, Good)], &[], false),
        (
            &[(RegistryAuthFile, Nothing), (RuntimeDir, Good)],
            &[],
            false,
        ),
        (
            &[(RegistryAuthFile, Bad), (XdgConfigHome, Good)],
            &[],
            false,
        ),
        // Without credentials in the primary file, the next files in order.
        (
            &[(RegistryAuthFile, Nothing), (XdgConfigHome, Good)],
            &[],
            true,
        ),
        (&[(RuntimeDir, Nothing), (HomeConfig, Good)], &[], true),
        (&[(XdgConfigHome, Bad), (HomeDocker, Good)], &[], false),
        (&[(XdgConfigHome, Nothing), (DockerConfig, Good)], &[], true),
        (&[(HomeConfig, Good), (HomeDocker, Bad)], &[], true),
        // $XDG_CONFIG_HOME and $DOCKER_CONFIG replace their defaults.
        (&[(HomeConfig, Good)], &[XdgConfigHome], false),
        (&[(HomeDocker, Good)], &[DockerConfig], false),
    ];
    for (files, selected, authenticates) in table {
        let out = inspect_with(env, files, selected);
        assert_eq!(
            out.success(),
            *authenticates,
            "files {files:?}, also selected {selected:?}:\n{}",
            out.stderr()
        );
        if !authenticates {
            assert!(
                out.stderr()
                    .contains(&format!("authentication to {} failed", env.upstream())),
                "{}",
                out.stderr()
            );
        }
        assert!(!out.stderr().contains("testtoken"), "{}", out.stderr());
    }
}

#[test]
fn a_missing_authfile_is_an_error_naming_it() {
    let env = testenv();
    let lazyimg = Lazyimg::new(env);
    let missing = lazyimg.dir.path().join("no-such-auth.json");
    let out = lazyimg.run(&[
        "inspect",
        "--authfile",
        missing.to_str().unwrap(),
        &upstream_image(env),
    ]);
    assert!(!out.success());
    assert!(
        out.stderr().contains("no-such-auth.json"),
        "{}",
        out.stderr()
    );
}

/// Writes `docker-credential-NAME` into `bin`: it records its arguments,
/// environment and standard input under `bin/NAME.*`, then answers with
/// `answer` (a JSON object) for `host`, else "credentials not found".
fn write_helper(bin: &Path, name: &str, host: &str, answer: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(bin).unwrap();
    let record = bin.join(name);
    let script = format!(
        "#!/bin/sh\n\
         read -r host\n\
         printf '%s\\n' \"$*\" >> '{r}.args'\n\
         printf '%s\\n' \"$host\" >> '{r}.stdin'\n\
         env >> '{r}.env'\n\
         if [ \"$host\" = '{host}' ]; then printf '%s' '{answer}'; exit 0; fi\n\
         echo 'credentials not found in native keychain'\n\
         exit 1\n",
        r = record.display(),
    );
    let program = bin.join(format!("docker-credential-{name}"));
    std::fs::write(&program, script).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// PATH with `bin` first.
fn path_with(bin: &Path) -> std::ffi::OsString {
    let mut paths = vec![bin.to_path_buf()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).unwrap()
}

#[test]
fn credential_helpers_on_path_speak_the_docker_protocol() {
    let env = testenv();
    let image = upstream_image(env);
    let host = env.upstream();
    let lazyimg = Lazyimg::new(env);
    let bin = lazyimg.dir.path().join("bin");
    let good = r#"{"ServerURL":"x","Username":"testuser","Secret":"testtoken"}"#;
    write_helper(&bin, "lazyimgtest", host, good);
    write_helper(&bin, "empty", "no.such.host", good);
    let auth = lazyimg.dir.path().join("auth.json");
    let docker = lazyimg.dir.path().join(".docker/config.json");
    std::fs::create_dir_all(docker.parent().unwrap()).unwrap();
    let inspect = |primary: serde_json::Value, docker_file: Option<Holds>| {
        std::fs::write(&auth, primary.to_string()).unwrap();
        match docker_file {
            Some(holds) => std::fs::write(&docker, auth_json(host, holds)).unwrap(),
            None => {
                let _ = std::fs::remove_file(&docker);
            }
        }
        run(lazyimg
            .cmd()
            .env("PATH", path_with(&bin))
            .args(["-v", "inspect", "--authfile"])
            .arg(&auth)
            .arg(&image))
    };
    let wrong = serde_json::json!({ "auth": b64("testuser:wrong-token") });

    // credHelpers beats the same file's auths (which are wrong here).
    let out = inspect(
        serde_json::json!({ "auths": { host: wrong }, "credHelpers": { host: "lazyimgtest" } }),
        None,
    );
    assert!(out.success(), "{}", out.stderr());
    // credsStore answers for every host; the `{}` beside it is docker's marker.
    let out = inspect(
        serde_json::json!({ "auths": { host: {} }, "credsStore": "lazyimgtest" }),
        None,
    );
    assert!(out.success(), "{}", out.stderr());
    // A helper without credentials for the host sends the search on.
    let out = inspect(
        serde_json::json!({ "credHelpers": { host: "empty" } }),
        Some(Holds::Good),
    );
    assert!(out.success(), "{}", out.stderr());
    let out = inspect(
        serde_json::json!({ "credHelpers": { host: "empty" } }),
        Some(Holds::Bad),
    );
    assert!(!out.success(), "the next file's wrong token is used");

    // The helper got `get` as its only argument and the host on stdin; the
    // token never reached its arguments or environment, nor lazyimg's log.
    let read = |suffix: &str| std::fs::read_to_string(bin.join(suffix)).unwrap();
    assert_eq!(read("lazyimgtest.args"), "get\nget\n");
    assert_eq!(read("lazyimgtest.stdin"), format!("{host}\n{host}\n"));
    assert!(!read("lazyimgtest.env").contains("testtoken"));
    assert!(!out.stderr().contains("testtoken"), "{}", out.stderr());

    // A helper that prints its answer, secret included, and fails anyway:
    // the failure is reported without quoting that answer.
    let leaky = bin.join("docker-credential-leaky");
    std::fs::write(&leaky, format!("#!/bin/sh\nprintf '%s' '{good}'\nexit 1\n")).unwrap();
    std::fs::set_permissions(&leaky, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = inspect(
        serde_json::json!({ "credHelpers": { host: "leaky" } }),
        None,
    );
    assert!(!out.success());
    assert!(
        out.stderr().contains("docker-credential-leaky failed"),
        "{}",
        out.stderr()
    );
    assert!(!out.stderr().contains("testtoken"), "{}", out.stderr());

    // A helper that is not on PATH: named, with the way to check it.
    let out = inspect(
        serde_json::json!({ "credHelpers": { host: "nosuchhelper" } }),
        Some(Holds::Good),
    );
    assert!(!out.success());
    assert!(
        out.stderr()
            .contains("credential helper docker-credential-nosuchhelper failed"),
        "{}",
        out.stderr()
    );
    assert!(out.stderr().contains("hint: "), "{}", out.stderr());
}

/// An `identitytoken` (an OAuth2 refresh token, as `docker login` stores
/// for some registries) is exchanged at the token service with
/// `grant_type=refresh_token`, from an auth file or from a helper's
/// `<token>` answer. Against a token service of this checkout's own: the
/// shared one may predate refresh tokens.
#[test]
fn identity_tokens_are_exchanged_for_access_tokens() {
    let env = testenv();
    let guarded = TokenRegistry::start(env);
    let work = tempfile::tempdir().unwrap();
    let (layout, _) = build_layout(work.path(), &unique_image("identity-token", 1), "v1");
    let image = guarded.registry.reference("auth/identity:v1");
    let push = PushOpts {
        creds: Some((env.user().into(), env.token().into())),
        cert_dir: None,
        tls_verify: false,
        format_v2s2: false,
    };
    push_layout(&layout.dir, "v1", &image, push).expect("push with the test user");
    let refresh = guarded.refresh_token(env, env.user(), env.token());
    let config = format!(
        "[[registry]]\nprefix = {:?}\ninsecure = true\nca_file = {:?}\n",
        guarded.registry.addr,
        env.ca()
    );
    let lazyimg = Lazyimg::with_config(env, &config);
    let auth = lazyimg.dir.path().join("auth.json");
    let host = guarded.registry.addr.as_str();
    let inspect = |entry: serde_json::Value| {
        std::fs::write(&auth, entry.to_string()).unwrap();
        let bin = lazyimg.dir.path().join("bin");
        run(lazyimg
            .cmd()
            .env("PATH", path_with(&bin))
            .arg("inspect")
            .arg("--authfile")
            .arg(&auth)
            .arg(&image))
    };

    let exchanged = |log: &str| log.matches("via=refresh_token").count();
    let out = inspect(serde_json::json!({ "auths": { host: { "identitytoken": refresh } } }));
    assert!(out.success(), "{}", out.stderr());
    assert_eq!(exchanged(&guarded.log()), 1, "{}", guarded.log());
    assert!(!out.stderr().contains(&refresh));

    let bin = lazyimg.dir.path().join("bin");
    let answer = format!(r#"{{"ServerURL":"{host}","Username":"<token>","Secret":"{refresh}"}}"#);
    write_helper(&bin, "idtoken", host, &answer);
    let out = inspect(serde_json::json!({ "credHelpers": { host: "idtoken" } }));
    assert!(out.success(), "{}", out.stderr());
    assert_eq!(exchanged(&guarded.log()), 2, "{}", guarded.log());

    let out =
        inspect(serde_json::json!({ "auths": { host: { "identitytoken": "forged.token" } } }));
    assert!(!out.success());
    assert!(
        out.stderr().contains("refused the identity token"),
        "{}",
        out.stderr()
    );
}
