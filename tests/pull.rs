//! `lazyimg pull` / `inspect` / `cache` against real registries on 127.0.0.1:
//! an HTTPS upstream with token auth that plays ghcr.io, and a plain registry.

mod support;

use std::net::TcpListener;
use std::time::Duration;

use support::image::OciLayout;
use support::testenv::{Lazyimg, build_layout, testenv, unique_image};
use support::tools::skopeo_inspect;

fn skopeo_digest(env: &support::testenv::TestEnv, repo_tag: &str) -> String {
    let image = format!("docker://{}/{repo_tag}", env.upstream());
    let cert_dir = env.var("LAZYIMG_TEST_CERT_DIR").to_string();
    let creds = format!("{}:{}", env.user(), env.token());
    let info = skopeo_inspect(&image, &["--cert-dir", &cert_dir, "--creds", &creds])
        .expect("skopeo inspect");
    info["Digest"].as_str().expect("Digest").to_string()
}

#[test]
fn pull_with_auth_file_matches_skopeo_and_caches_every_blob() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let (layout, image) = build_layout(work.path(), &unique_image("auth-file", 3), "v1");
    env.push_upstream(&layout.dir, "v1", "pull/auth-file:v1", false);

    let lazyimg = Lazyimg::new(env);
    let auth_file = env.auth_file();
    let run = lazyimg
        .cmd()
        .env("REGISTRY_AUTH_FILE", &auth_file)
        .args(["pull", &format!("{}/pull/auth-file:v1", env.upstream())])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let printed = String::from_utf8_lossy(&run.stdout).trim().to_string();
    assert_eq!(printed, skopeo_digest(env, "pull/auth-file:v1"));
    assert_eq!(printed, image.manifest.digest);

    let cached = lazyimg.cached_blobs();
    for blob in image
        .layers
        .iter()
        .map(|l| &l.digest)
        .chain([&image.config.digest, &image.manifest.digest])
    {
        assert!(
            cached.contains(blob),
            "{blob} missing from cache {cached:?}"
        );
    }
    assert_eq!(lazyimg.leftover_downloads(), 0);

    // A second pull fetches nothing and `cache verify` finds every blob intact.
    let mut again = lazyimg.cmd();
    again.env("REGISTRY_AUTH_FILE", &auth_file);
    let again = support::testenv::run(
        again.args(["pull", &format!("{}/pull/auth-file:v1", env.upstream())]),
    )
    .ok();
    assert!(again.stderr().contains("0 B fetched"), "{}", again.stderr());
    let verify = lazyimg.run(&["cache", "verify"]).ok();
    assert!(verify.stderr().contains("0 corrupt"), "{}", verify.stderr());
}

#[test]
fn wrong_token_fails_fast_with_a_clear_message_and_caches_nothing() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let (layout, _) = build_layout(work.path(), &unique_image("wrong-token", 1), "v1");
    env.push_upstream(&layout.dir, "v1", "pull/wrong-token:v1", false);
    let reference = format!("{}/pull/wrong-token:v1", env.upstream());

    let lazyimg = Lazyimg::new(env);
    let run = lazyimg.run_with_stdin(
        &[
            "pull",
            "--username",
            env.user(),
            "--password-stdin",
            &reference,
        ],
        "not-the-token\n",
    );
    assert!(!run.success());
    assert!(
        run.elapsed < Duration::from_secs(10),
        "took {:?}",
        run.elapsed
    );
    let stderr = run.stderr();
    assert!(
        stderr.contains(&format!("authentication to {} failed", env.upstream())),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
    assert!(
        !stderr.contains("not-the-token"),
        "the token must never be printed: {stderr}"
    );
    assert!(
        lazyimg.cached_blobs().is_empty(),
        "{:?}",
        lazyimg.cached_blobs()
    );

    // No credentials at all: the same clear failure, saying none were found.
    let anonymous = lazyimg.run(&["pull", &reference]);
    assert!(!anonymous.success());
    assert!(
        anonymous.stderr().contains("no credentials were found"),
        "{}",
        anonymous.stderr()
    );
}

#[test]
fn credentials_without_access_are_reported_as_denied() {
    let env = testenv();
    let lazyimg = Lazyimg::new(env);
    let reference = format!("{}/pull/auth-file:v1", env.upstream());
    // `nopkg` authenticates but is granted nothing, like a token lacking read:packages.
    let run = lazyimg.run_with_stdin(
        &[
            "pull",
            "--username",
            "nopkg",
            "--password-stdin",
            &reference,
        ],
        "nopkgtoken",
    );
    assert!(!run.success());
    assert!(run.stderr().contains("denied"), "{}", run.stderr());
    assert!(lazyimg.cached_blobs().is_empty());
}

#[test]
fn a_corrupted_registry_blob_is_refused_and_never_cached() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let (layout, image) = build_layout(work.path(), &unique_image("corrupt-blob", 2), "v1");
    env.push_upstream(&layout.dir, "v1", "pull/corrupt:v1", false);
    let victim = &image.layers[1].digest;
    let path = env.upstream_blob_file(victim);
    let mut bytes = std::fs::read(&path).expect("blob in registry storage");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let lazyimg = Lazyimg::new(env);
    let run = support::testenv::run(
        lazyimg
            .cmd()
            .env("REGISTRY_AUTH_FILE", env.auth_file())
            .args(["pull", &format!("{}/pull/corrupt:v1", env.upstream())]),
    );
    assert!(!run.success());
    let stderr = run.stderr();
    assert!(
        stderr.contains("digest mismatch") && stderr.contains(victim.as_str()),
        "{stderr}"
    );
    assert!(!lazyimg.cached_blobs().contains(victim));
    assert_eq!(lazyimg.leftover_downloads(), 0);
}

#[test]
fn multi_arch_index_resolves_to_the_host_or_the_requested_platform() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(work.path());
    let amd64 = layout.add_image(&unique_image("multi-amd64", 1).platform("linux", "amd64", None));
    let arm64 =
        layout.add_image(&unique_image("multi-arm64", 1).platform("linux", "arm64", Some("v8")));
    let index = layout.add_index(&[
        ("linux", "amd64", None, &amd64),
        ("linux", "arm64", Some("v8"), &arm64),
    ]);
    layout.tag("multi", &index);
    env.push_upstream(&layout.dir, "multi", "pull/multi:1", false);
    let reference = format!("{}/pull/multi:1", env.upstream());

    let lazyimg = Lazyimg::new(env);
    let inspect = |extra: &[&str]| {
        let mut args = vec!["inspect", "--json"];
        args.extend_from_slice(extra);
        args.push(&reference);
        let run = support::testenv::run(
            lazyimg
                .cmd()
                .env("REGISTRY_AUTH_FILE", env.auth_file())
                .args(&args),
        )
        .ok();
        serde_json::from_str::<serde_json::Value>(&run.stdout())
            .expect("inspect --json prints JSON")
    };
    let host = inspect(&[]);
    assert_eq!(host["digest"], index.digest.as_str());
    assert_eq!(host["manifest"], amd64.manifest.digest.as_str());
    assert_eq!(host["platform"], "linux/amd64");
    let arm = inspect(&["--platform", "linux/arm64"]);
    assert_eq!(arm["manifest"], arm64.manifest.digest.as_str());
    assert_eq!(arm["platform"], "linux/arm64/v8");

    let pull = support::testenv::run(
        lazyimg
            .cmd()
            .env("REGISTRY_AUTH_FILE", env.auth_file())
            .args(["pull", "--platform", "linux/arm64", &reference]),
    )
    .ok();
    assert_eq!(pull.stdout().trim(), index.digest);
    assert!(lazyimg.cached_blobs().contains(&arm64.layers[0].digest));
    assert!(!lazyimg.cached_blobs().contains(&amd64.layers[0].digest));

    // A single-platform arm64 image: used anyway, with Podman's warning.
    layout.tag("arm-only", &arm64.manifest);
    env.push_upstream(&layout.dir, "arm-only", "pull/arm-only:1", false);
    let single = support::testenv::run(
        lazyimg
            .cmd()
            .env("REGISTRY_AUTH_FILE", env.auth_file())
            .args(["pull", "--platform", "linux/amd64"])
            .arg(format!("{}/pull/arm-only:1", env.upstream())),
    )
    .ok();
    assert!(
        single.stderr().contains(
            "image platform (linux/arm64/v8) does not match the expected platform (linux/amd64)"
        ),
        "{}",
        single.stderr()
    );
}

#[test]
fn docker_schema2_images_and_prefix_mapping_work() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let (layout, _) = build_layout(work.path(), &unique_image("docker-v2s2", 2), "v1");
    env.push_upstream(&layout.dir, "v1", "lab/v2s2:v1", true);
    let expected = skopeo_digest(env, "lab/v2s2:v1");

    // Users name the image as on ghcr.io; the config sends it to the upstream.
    let mapping = format!(
        "[[registry]]\nprefix = \"ghcr.io\"\nlocation = {:?}\n",
        env.upstream()
    );
    let lazyimg = Lazyimg::with_config(env, &mapping);
    let run = support::testenv::run(
        lazyimg
            .cmd()
            .env("REGISTRY_AUTH_FILE", env.auth_file())
            .args(["pull", "ghcr.io/lab/v2s2:v1"]),
    )
    .ok();
    assert_eq!(run.stdout().trim(), expected);
    let inspect = support::testenv::run(
        lazyimg
            .cmd()
            .env("REGISTRY_AUTH_FILE", env.auth_file())
            .args(["inspect", "ghcr.io/lab/v2s2:v1"]),
    )
    .ok();
    assert!(
        inspect
            .stdout()
            .contains("application/vnd.docker.distribution.manifest.v2+json")
    );
    assert!(
        inspect
            .stdout()
            .contains(&format!("Fetched as: {}/lab/v2s2:v1", env.upstream()))
    );
    let ls = lazyimg.run(&["cache", "ls"]).ok();
    assert!(
        ls.stdout().contains("ghcr.io/lab/v2s2:v1"),
        "{}",
        ls.stdout()
    );
}

#[test]
fn a_registry_that_never_answers_fails_within_the_configured_timeout() {
    let env = testenv();
    // Accepts connections and then says nothing: a hung registry.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let config = format!(
        "[network]\nread_timeout = 2\nattempts = 2\n[[registry]]\nprefix = {addr:?}\ninsecure = true\n"
    );
    let lazyimg = Lazyimg::with_config(env, &config);
    let run = lazyimg.run(&["pull", &format!("{addr}/hung/image:1")]);
    assert!(!run.success());
    assert!(
        run.elapsed < Duration::from_secs(15),
        "took {:?}",
        run.elapsed
    );
    assert!(
        run.stderr().contains(&format!("cannot reach {addr}")),
        "{}",
        run.stderr()
    );
}

#[test]
fn configuration_mistakes_name_the_key_and_the_file() {
    let env = testenv();
    let lazyimg = Lazyimg::with_config(env, "cache_dri = \"/tmp/x\"\n");
    let run = lazyimg.run(&["cache", "ls"]);
    assert!(!run.success());
    let stderr = run.stderr();
    assert!(
        stderr.contains("cache_dri") && stderr.contains(lazyimg.config.to_str().unwrap()),
        "{stderr}"
    );

    let bad_ref = Lazyimg::new(env).run(&["pull", "ghcr.io/a/b@sha256:1234"]);
    assert!(!bad_ref.success());
    assert!(
        bad_ref.stderr().contains("invalid image reference"),
        "{}",
        bad_ref.stderr()
    );
}
