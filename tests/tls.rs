//! TLS as containers-certs.d(5) and containers-registries.conf(5) set it up,
//! against the HTTPS upstream of `scripts/testenv.sh`, whose certificate is
//! signed by a CA of its own (not in the system store): untrusted, it fails
//! with a TLS error naming the host and a hint; a CA in a certs.d directory,
//! `insecure = true` or `--tls-verify=false` make it work.

mod support;

use std::path::Path;

use support::testenv::{Lazyimg, Run, TestEnv, build_layout, run, testenv, unique_image};

/// An image on the upstream, pushed once per test binary.
fn upstream_image(env: &TestEnv) -> String {
    static PUSHED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PUSHED
        .get_or_init(|| {
            let work = tempfile::tempdir().unwrap();
            let (layout, _) = build_layout(work.path(), &unique_image("tls", 1), "v1");
            env.push_upstream(&layout.dir, "v1", "tls/image:v1", false);
            format!("{}/tls/image:v1", env.upstream())
        })
        .clone()
}

/// A sandboxed lazyimg whose configuration is exactly `config` (plus its
/// cache): the upstream's CA is trusted only if `config` or a certs.d
/// directory says so.
fn lazyimg_with(config: &str) -> Lazyimg {
    let lazyimg = Lazyimg::new(testenv());
    let text = format!("cache_dir = {:?}\n{config}", lazyimg.cache());
    std::fs::write(&lazyimg.config, text).unwrap();
    lazyimg
}

/// `lazyimg inspect [args] IMAGE` with the test user's credentials.
fn inspect(lazyimg: &Lazyimg, args: &[&str]) -> Run {
    let env = testenv();
    run(lazyimg
        .cmd()
        .env("REGISTRY_AUTH_FILE", env.auth_file())
        .arg("inspect")
        .args(args)
        .arg(upstream_image(env)))
}

/// `[network] certs_d = [dir]`, so the host's own /etc/containers/certs.d
/// plays no part.
fn certs_d(dir: &Path) -> String {
    format!("[network]\ncerts_d = [{dir:?}]\n")
}

/// Puts the test CA in `base/HOST/ca.crt`.
fn install_ca(base: &Path, host: &str) {
    let dir = base.join(host);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(testenv().ca(), dir.join("ca.crt")).unwrap();
}

#[test]
fn an_untrusted_certificate_fails_naming_the_host_with_a_hint() {
    let env = testenv();
    let empty = tempfile::tempdir().unwrap();
    let out = inspect(&lazyimg_with(&certs_d(empty.path())), &[]);
    assert!(!out.success());
    let stderr = out.stderr();
    assert!(
        stderr.contains(&format!("TLS connection to {} failed", env.upstream())),
        "{stderr}"
    );
    assert!(stderr.contains("hint: trust the registry's CA"), "{stderr}");
    assert!(stderr.contains("certs.d"), "{stderr}");
    assert_eq!(stderr.lines().count(), 2, "one line plus a hint: {stderr}");
}

#[test]
fn a_ca_in_the_hosts_certs_d_directory_is_trusted_for_that_host_only() {
    let env = testenv();
    let base = tempfile::tempdir().unwrap();
    install_ca(base.path(), env.upstream());
    let out = inspect(&lazyimg_with(&certs_d(base.path())), &[]);
    assert!(out.success(), "{}", out.stderr());

    let elsewhere = tempfile::tempdir().unwrap();
    install_ca(elsewhere.path(), "127.0.0.1:1");
    let out = inspect(&lazyimg_with(&certs_d(elsewhere.path())), &[]);
    assert!(!out.success(), "a CA for another host must not count");
    assert!(
        out.stderr().contains("TLS connection to"),
        "{}",
        out.stderr()
    );

    // containers/image reads one HOST directory: the first certs.d that has one.
    let both = format!(
        "[network]\ncerts_d = [{:?}, {:?}]\n",
        elsewhere.path(),
        base.path()
    );
    assert!(inspect(&lazyimg_with(&both), &[]).success());
}

#[test]
fn the_per_user_certs_d_directory_is_searched_by_default() {
    let env = testenv();
    let lazyimg = lazyimg_with("");
    let user_certs = lazyimg.dir.path().join(".config/containers/certs.d");
    // HOME is the sandbox: without the file, the default directories hold no CA
    // for the test upstream (unless this host installed one in /etc).
    let system_has_it = ["/etc/containers/certs.d", "/etc/docker/certs.d"]
        .iter()
        .any(|d| Path::new(d).join(env.upstream()).exists());
    if !system_has_it {
        assert!(!inspect(&lazyimg, &[]).success());
    }
    install_ca(&user_certs, env.upstream());
    let out = inspect(&lazyimg, &[]);
    assert!(out.success(), "{}", out.stderr());
}

#[test]
fn insecure_registries_and_tls_verify_false_skip_verification() {
    let env = testenv();
    let empty = tempfile::tempdir().unwrap();
    let none = certs_d(empty.path());
    let insecure = format!(
        "{none}[[registry]]\nprefix = {:?}\ninsecure = true\n",
        env.upstream()
    );
    let out = inspect(&lazyimg_with(&insecure), &[]);
    assert!(out.success(), "{}", out.stderr());
    let out = inspect(&lazyimg_with(&none), &["--tls-verify=false"]);
    assert!(out.success(), "{}", out.stderr());
    // Still HTTPS: the token-auth upstream answers nothing over plain HTTP.
    let out = inspect(&lazyimg_with(&none), &["--tls-verify=true"]);
    assert!(!out.success());
}

#[test]
fn insecure_still_reaches_plain_http_registries() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let (layout, _) = build_layout(work.path(), &unique_image("tls-plain", 1), "v1");
    let reference = format!("{}/tls/plain:v1", env.plain());
    support::tools::push_layout(
        &layout.dir,
        "v1",
        &reference,
        support::tools::PushOpts {
            creds: None,
            cert_dir: None,
            tls_verify: false,
            format_v2s2: false,
        },
    )
    .unwrap();
    let insecure = format!(
        "[[registry]]\nprefix = {:?}\ninsecure = true\n",
        env.plain()
    );
    let out = lazyimg_with(&insecure).run(&["inspect", &reference]);
    assert!(out.success(), "{}", out.stderr());
    let out = lazyimg_with("").run(&["inspect", "--tls-verify=false", &reference]);
    assert!(out.success(), "{}", out.stderr());
    let out = lazyimg_with("").run(&["inspect", &reference]);
    assert!(!out.success(), "plain HTTP only when insecure");
}
