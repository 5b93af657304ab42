//! registries.conf(5) as Podman reads it, from a file named by
//! `CONTAINERS_REGISTRIES_CONF`: `ghcr.io` mapped to the token-auth upstream,
//! mirrors tried in order with fallback to it (and podman resolving the same
//! digest from the same file), `mirror-by-digest-only`, `blocked`, short
//! names through `unqualified-search-registries` and `[aliases]`. Needs the
//! topology of `scripts/testenv.sh`, and podman for the comparison.

mod support;

use std::path::Path;
use std::process::Command;

use support::fake_registry::{FakeServer, Response};
use support::testenv::{Lazyimg, Run, TestEnv, build_layout, run, testenv, unique_image};
use support::tools::{PushOpts, push_layout};

/// `NAME:v1` pushed to the upstream (as if to ghcr.io), and its manifest digest.
fn upstream_image(env: &TestEnv, name: &str) -> String {
    let work = tempfile::tempdir().unwrap();
    let (layout, image) = build_layout(work.path(), &unique_image(name, 1), "v1");
    env.push_upstream(&layout.dir, "v1", &format!("{name}:v1"), false);
    image.manifest.digest
}

/// A `host:port` where nothing listens: a mirror that is down.
fn down_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `lazyimg ARGS` with `conf` as the only registries.conf (plus the
/// machine's drop-ins, as Podman would read them) and the test user's auth file.
fn lazyimg_with_conf(lazyimg: &Lazyimg, conf: &Path, args: &[&str]) -> Run {
    run(lazyimg
        .cmd()
        .env("CONTAINERS_REGISTRIES_CONF", conf)
        .env("REGISTRY_AUTH_FILE", testenv().auth_file())
        .args(args))
}

fn write_conf(dir: &Path, text: &str) -> std::path::PathBuf {
    let conf = dir.join("registries.conf");
    std::fs::write(&conf, text).unwrap();
    conf
}

/// The manifest digest podman resolves `reference` to with `conf`, in a
/// store of its own (vfs, so nothing needs mounting), trusting the test CA.
fn podman_digest(conf: &Path, store: &Path, reference: &str) -> String {
    let env = testenv();
    let podman = |args: &[&str]| {
        let out = Command::new("podman")
            .env("CONTAINERS_REGISTRIES_CONF", conf)
            .env("CONTAINERS_CONF", support::site::containers_conf())
            .arg("--root")
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .expect("podman runs");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let auth = env.auth_file();
    podman(&[
        "pull",
        "--quiet",
        "--authfile",
        auth.to_str().unwrap(),
        "--cert-dir",
        env.var("LAZYIMG_TEST_CERT_DIR"),
        reference,
    ]);
    podman(&["image", "inspect", "--format", "{{.Digest}}", reference])
}

/// Acceptance 1: `ghcr.io` maps to the upstream, whose first mirror is down:
/// the pull falls back to the upstream, and podman, reading the same file,
/// resolves the same digest. Keys neither uses are ignored.
#[test]
fn a_down_mirror_falls_back_to_the_location_as_podman_does() {
    let env = testenv();
    let digest = upstream_image(env, "regconf/fallback");
    let work = tempfile::tempdir().unwrap();
    let down = down_address();
    let conf = write_conf(
        work.path(),
        &format!(
            "some-future-key = true\n\
             [[registry]]\nprefix = \"ghcr.io\"\nlocation = {up:?}\nfuture-registry-key = 1\n\
             [[registry.mirror]]\nlocation = {down:?}\ninsecure = true\n",
            up = env.upstream()
        ),
    );
    let lazyimg = Lazyimg::new(env);
    let out = lazyimg_with_conf(&lazyimg, &conf, &["pull", "ghcr.io/regconf/fallback:v1"]);
    assert!(out.success(), "{}", out.stderr());
    assert_eq!(out.stdout().trim(), digest);
    assert!(
        out.stderr()
            .contains(&format!("mirror {down}: cannot reach {down}")),
        "the mirror was tried first: {}",
        out.stderr()
    );
    let store = tempfile::tempdir().unwrap();
    assert_eq!(
        podman_digest(&conf, store.path(), "ghcr.io/regconf/fallback:v1"),
        digest
    );
}

/// Mirrors in order: one answering 503 is passed over for the next, the
/// pull-through proxy, which then serves the image (the upstream is never
/// asked by lazyimg). A `mirror-by-digest-only` mirror is not asked for a tag.
#[test]
fn mirrors_are_tried_in_order_past_server_errors() {
    let env = testenv();
    let digest = upstream_image(env, "regconf/mirrors");
    let failing =
        FakeServer::start(|_| Response::Full(503, vec![], b"down for maintenance".to_vec()));
    let work = tempfile::tempdir().unwrap();
    let conf = write_conf(
        work.path(),
        &format!(
            "[[registry]]\nprefix = \"ghcr.io\"\nlocation = {up:?}\n\
             [[registry.mirror]]\nlocation = {failing:?}\ninsecure = true\n\
             [[registry.mirror]]\nlocation = {proxy:?}\ninsecure = true\n",
            up = env.upstream(),
            failing = failing.addr,
            proxy = env.proxy(),
        ),
    );
    let proxy_log = env.var("LAZYIMG_TEST_PROXY_LOG");
    let proxy_before = std::fs::metadata(proxy_log).unwrap().len() as usize;
    let lazyimg = Lazyimg::new(env);
    let out = lazyimg_with_conf(&lazyimg, &conf, &["pull", "ghcr.io/regconf/mirrors:v1"]);
    assert!(out.success(), "{}", out.stderr());
    assert_eq!(out.stdout().trim(), digest);
    assert!(
        failing
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/v2/")),
        "the first mirror was asked"
    );
    let proxy_log = std::fs::read(proxy_log).unwrap();
    let proxy_lines = String::from_utf8_lossy(&proxy_log[proxy_before..]).into_owned();
    assert!(
        proxy_lines.contains("/v2/regconf/mirrors/manifests/v1"),
        "the second mirror served the manifest:\n{proxy_lines}"
    );

    let by_digest_only = tempfile::tempdir().unwrap();
    let unused = FakeServer::start(|_| Response::Full(503, vec![], Vec::new()));
    let conf = write_conf(
        by_digest_only.path(),
        &format!(
            "[[registry]]\nprefix = \"ghcr.io\"\nlocation = {up:?}\nmirror-by-digest-only = true\n\
             [[registry.mirror]]\nlocation = {unused:?}\ninsecure = true\n",
            up = env.upstream(),
            unused = unused.addr,
        ),
    );
    let out = lazyimg_with_conf(&lazyimg, &conf, &["inspect", "ghcr.io/regconf/mirrors:v1"]);
    assert!(out.success(), "{}", out.stderr());
    assert!(unused.requests().is_empty(), "a tag never goes to it");
}

/// Acceptance 2: a short name two search registries hold is an error listing
/// both; an alias resolves it; a blocked prefix refuses its images.
#[test]
fn short_names_need_an_alias_when_several_registries_could_serve_them() {
    let env = testenv();
    upstream_image(env, "regconf/short");
    let work = tempfile::tempdir().unwrap();
    let (layout, image) = build_layout(work.path(), &unique_image("regconf-plain", 1), "v1");
    let plain_copy = format!("{}/regconf/short:v1", env.plain());
    let push = PushOpts {
        creds: None,
        cert_dir: None,
        tls_verify: false,
        format_v2s2: false,
    };
    push_layout(&layout.dir, "v1", &plain_copy, push).unwrap();
    let search = format!(
        "unqualified-search-registries = [{:?}, {:?}]\n",
        env.upstream(),
        env.plain()
    );
    let lazyimg = Lazyimg::new(env);

    let conf = write_conf(work.path(), &search);
    let out = lazyimg_with_conf(&lazyimg, &conf, &["inspect", "regconf/short:v1"]);
    assert!(!out.success());
    let stderr = out.stderr();
    for candidate in [env.upstream(), env.plain()] {
        assert!(
            stderr.contains(&format!("{candidate}/regconf/short")),
            "{candidate} listed: {stderr}"
        );
    }
    assert!(stderr.contains("hint: "), "{stderr}");

    let aliased = format!(
        "{search}[aliases]\n\"regconf/short\" = \"{}/regconf/short\"\n",
        env.plain()
    );
    let conf = write_conf(work.path(), &aliased);
    let out = lazyimg_with_conf(&lazyimg, &conf, &["inspect", "--json", "regconf/short:v1"]);
    assert!(out.success(), "{}", out.stderr());
    assert!(
        out.stdout().contains(&image.manifest.digest),
        "{}",
        out.stdout()
    );

    let blocked = format!(
        "{aliased}[[registry]]\nprefix = \"{}/regconf\"\nblocked = true\n",
        env.plain()
    );
    let conf = write_conf(work.path(), &blocked);
    let out = lazyimg_with_conf(&lazyimg, &conf, &["inspect", "regconf/short:v1"]);
    assert!(!out.success());
    assert!(out.stderr().contains("is blocked"), "{}", out.stderr());
}
