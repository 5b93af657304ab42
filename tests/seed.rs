//! `lazyimg seed` against the real local topology: the HTTPS+token upstream is the
//! source, the plain registry the push target, the pull-through cache the
//! pull-through target.
//!
//! Needs root. A missing tool makes these tests fail, never skip.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::image::OciLayout;
use support::layer::{Compression, LayerSpec, dir, file};
use support::site::*;
use support::testenv::{build_layout, nonce, run, testenv, unique_image};

#[test]
fn pull_through_mode_leaves_every_blob_in_the_proxys_own_storage() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let repo = format!("seed/pull-through-{}", nonce());
    let (layout, image) = build_layout(work.path(), &unique_image("pull-through", 3), "v1");
    env.push_upstream(&layout.dir, "v1", &format!("{repo}:v1"), false);
    let stored = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap();
        Path::new(env.var("LAZYIMG_TEST_PROXY_DATA"))
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    };
    let blobs: Vec<&str> = image
        .layers
        .iter()
        .map(|l| l.digest.as_str())
        .chain([image.config.digest.as_str(), image.manifest.digest.as_str()])
        .collect();
    for blob in &blobs {
        assert!(!stored(blob).exists(), "{blob} was in the proxy before");
    }

    let lazyimg = site(env, "");
    let run = run(lazyimg
        .cmd()
        .env("REGISTRY_AUTH_FILE", env.auth_file())
        .args([
            "seed",
            "--mode",
            "pull-through",
            "--to",
            env.proxy(),
            "--json",
            &format!("ghcr.io/{repo}:v1"),
        ]))
    .ok();
    let report: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(report["digest"], image.manifest.digest.as_str());
    assert_eq!(report["mode"], "pull-through");
    assert_eq!(report["blobs_copied"], 4);
    assert_eq!(
        report["target"],
        format!("{}/{repo}:v1", env.proxy()).as_str()
    );

    // The proxy commits what it served in the background (distribution fetches a
    // cold blob a second time for its storage): wait for that, briefly. Stopping
    // the shared upstream to prove it would break the tests running alongside.
    let deadline = Instant::now() + Duration::from_secs(30);
    for blob in &blobs {
        while !stored(blob).exists() {
            assert!(
                Instant::now() < deadline,
                "{blob} never reached the proxy's storage"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let bytes = std::fs::read(stored(blob)).unwrap();
        assert_eq!(support::layer::sha256_digest(&bytes), *blob);
    }
}

#[test]
fn an_interrupted_push_resumes_without_resending_or_redownloading_finished_blobs() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let id = nonce();
    let repo = format!("seed/resume-{id}");
    // Eight 8 MiB uncompressed layers of unique data, one at a time (--jobs 1).
    let layers = (0..8)
        .map(|i| {
            let seed = std::process::id() as u64 * 1000 + i + id.len() as u64;
            LayerSpec::new(vec![
                dir("data"),
                file(&format!("data/{i}.txt"), format!("{id} {i}\n")),
                file(
                    &format!("data/{i}.bin"),
                    support::torture::prng_bytes(seed ^ nanos(), 8 << 20),
                ),
            ])
            .compression(Compression::None)
        })
        .collect();
    let spec = support::image::ImageSpec::new(layers).cmd(&["/bin/sh"]);
    let (layout, image) = build_layout(work.path(), &spec, "v1");
    env.push_upstream(&layout.dir, "v1", &format!("{repo}:v1"), false);
    let reference = format!("ghcr.io/{repo}:v1");
    let lazyimg = site(env, "");
    let seed_cmd = || {
        let mut cmd = lazyimg.cmd();
        cmd.env("REGISTRY_AUTH_FILE", env.auth_file())
            .args(["seed", "--jobs", "1", "--json", &reference]);
        cmd
    };

    // First run: SIGKILL once three blob uploads have completed and the next one is
    // under way (its session opened, its PUT not answered yet).
    let log_start = plain_log_len(env);
    let mut first = seed_cmd()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lines = plain_log_since(env, log_start);
        let puts = uploads(&lines, &repo)
            .iter()
            .filter(|l| l.contains("\" 201 "))
            .count();
        let posts = lines
            .iter()
            .filter(|l| l.contains(&format!("\"POST /v2/{repo}/blobs/uploads/")))
            .count();
        if puts >= 3 && posts > puts {
            first.kill().unwrap();
            break;
        }
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first seed ended before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "no upload completed in time");
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = first.wait().unwrap();
    assert!(!status.success(), "the first run was not interrupted");
    assert!(
        !plain_tags(env, &repo).contains("\"v1\""),
        "the tag arrived anyway"
    );

    let all: Vec<(String, u64)> = image
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.size))
        .chain([(image.config.digest.clone(), image.config.size)])
        .collect();
    let finished: Vec<&(String, u64)> = all
        .iter()
        .filter(|(d, _)| plain_has_blob(env, &repo, d))
        .collect();
    assert!(
        !finished.is_empty() && finished.len() < all.len(),
        "{finished:?}"
    );
    let cached = lazyimg.cached_blobs();
    eprintln!(
        "interrupted with {}/{} blobs at the target, {} in the cache",
        finished.len(),
        all.len(),
        all.iter().filter(|(d, _)| cached.contains(d)).count()
    );
    let not_cached: u64 = all
        .iter()
        .filter(|(d, _)| !cached.contains(d))
        .map(|(_, size)| size)
        .sum();

    // Second run: completes, sends only what was missing, downloads only what the
    // cache lacked.
    // SIGKILL leaves the blob it was downloading in the cache's tmp/ (the store
    // clears such leftovers after a day); the re-run must add none.
    let leftovers = lazyimg.leftover_downloads();
    let log_rerun = plain_log_len(env);
    let rerun = run(&mut seed_cmd()).ok();
    let report: serde_json::Value = serde_json::from_str(&rerun.stdout()).unwrap();
    assert_eq!(report["digest"], image.manifest.digest.as_str());
    assert_eq!(report["blobs_skipped"], finished.len());
    assert_eq!(report["blobs_copied"], all.len() - finished.len());
    assert_eq!(report["bytes_downloaded"], not_cached);
    let lines = plain_log_since(env, log_rerun);
    let sent = uploads(&lines, &repo);
    for (digest, _) in &finished {
        let hex = digest.strip_prefix("sha256:").unwrap();
        let resent: Vec<_> = sent.iter().filter(|l| l.contains(hex)).collect();
        assert!(resent.is_empty(), "{digest} was sent again: {resent:?}");
    }
    // The lazyimg index is uploaded too; count the image's own blobs.
    let image_blobs_sent = sent
        .iter()
        .filter(|l| {
            all.iter()
                .any(|(d, _)| l.contains(d.strip_prefix("sha256:").unwrap()))
        })
        .count();
    assert_eq!(image_blobs_sent, all.len() - finished.len(), "{sent:#?}");
    assert_eq!(
        plain_digest(env, &format!("{repo}:v1")),
        image.manifest.digest
    );
    assert!(lazyimg.leftover_downloads() <= leftovers);
}

#[test]
fn multi_platform_images_copy_whole_and_a_second_repository_mounts_the_blobs() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let id = nonce();
    let mut layout = OciLayout::create(work.path());
    let amd64 = layout.add_image(&unique_image("seed-amd64", 2).platform("linux", "amd64", None));
    let arm64 =
        layout.add_image(&unique_image("seed-arm64", 2).platform("linux", "arm64", Some("v8")));
    let index = layout.add_index(&[
        ("linux", "amd64", None, &amd64),
        ("linux", "arm64", Some("v8"), &arm64),
    ]);
    layout.tag("multi", &index);
    let repo = format!("seed/multi-{id}");
    env.push_upstream(&layout.dir, "multi", &format!("{repo}:1"), false);

    let lazyimg = site(env, "");
    let seed = |to: &str| {
        let run = run(lazyimg
            .cmd()
            .env("REGISTRY_AUTH_FILE", env.auth_file())
            .args(["seed", "--json", "--to", to, &format!("ghcr.io/{repo}:1")]))
        .ok();
        serde_json::from_str::<serde_json::Value>(&run.stdout()).unwrap()
    };
    let first = seed(env.plain());
    assert_eq!(first["digest"], index.digest.as_str());
    assert_eq!(first["manifests"], 3);
    assert_eq!(first["blobs"], 6);
    assert_eq!(first["blobs_copied"], 6);
    assert_eq!(
        first["lazy_indexes"].as_array().unwrap().len(),
        2,
        "{first}"
    );

    // GPU nodes reach only the proxy: its copy carries a lazyimg index per platform.
    let inspect = run(lazyimg
        .cmd()
        .args(["inspect", &format!("{}/{repo}:1", env.plain())]))
    .ok();
    let lazy_layers = inspect.stdout().matches("lazy: lazyimg index").count();
    assert_eq!(lazy_layers, 2, "{}", inspect.stdout());

    // skopeo --all semantics: the index and every platform, byte for byte.
    let tls = ["--tls-verify=false"];
    let upstream_creds = format!("{}:{}", env.user(), env.token());
    let upstream = [
        "--cert-dir",
        env.var("LAZYIMG_TEST_CERT_DIR"),
        "--creds",
        &upstream_creds,
    ];
    assert_eq!(
        raw_manifest(&format!("docker://{}/{repo}:1", env.plain()), &tls),
        raw_manifest(&format!("docker://{}/{repo}:1", env.upstream()), &upstream)
    );
    for platform in [&amd64, &arm64] {
        let digest = &platform.manifest.digest;
        assert_eq!(
            raw_manifest(&format!("docker://{}/{repo}@{digest}", env.plain()), &tls),
            platform.manifest_json
        );
        for layer in &platform.layers {
            assert!(plain_has_blob(env, &repo, &layer.digest));
        }
    }

    // The same image under a prefix: every blob is mounted from the first copy.
    let log = plain_log_len(env);
    let second = seed(&format!("{}/mirror", env.plain()));
    assert_eq!(second["blobs_mounted"], 6, "{second}");
    assert_eq!(second["bytes_downloaded"], 0);
    // Only the lazyimg indexes (new to this repository) are uploaded, no image blob.
    let since = plain_log_since(env, log);
    let uploaded = uploads(&since, &format!("mirror/{repo}"));
    for platform in [&amd64, &arm64] {
        for layer in &platform.layers {
            assert!(
                !uploaded.iter().any(|l| l.contains(&layer.digest)),
                "{uploaded:?}"
            );
        }
    }
    assert_eq!(plain_digest(env, &format!("mirror/{repo}:1")), index.digest);

    // Seeding again from a machine with an empty cache: the target has every
    // blob (none copied), and the indexes are still made (from the target's
    // blobs) and pushed.
    let fresh = site(env, "");
    let again = run(fresh
        .cmd()
        .env("REGISTRY_AUTH_FILE", env.auth_file())
        .args([
            "seed",
            "--json",
            "--to",
            env.plain(),
            &format!("ghcr.io/{repo}:1"),
        ]))
    .ok();
    let again: serde_json::Value = serde_json::from_str(&again.stdout()).unwrap();
    assert_eq!(again["blobs_skipped"], 6, "{again}");
    assert_eq!(
        again["lazy_indexes"].as_array().unwrap().len(),
        2,
        "{again}"
    );
}

#[test]
fn a_corrupted_source_blob_is_never_completed_at_the_target() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let id = nonce();
    let repo = format!("seed/corrupt-{id}");
    // Big enough to be uploaded while it downloads (the riskier path).
    let spec = support::image::ImageSpec::new(vec![
        LayerSpec::new(vec![
            dir("data"),
            file("data/id.txt", format!("{id}\n")),
            file(
                "data/big.bin",
                support::torture::prng_bytes(nanos(), 3 << 20),
            ),
        ])
        .compression(Compression::None),
    ])
    .cmd(&["/bin/sh"]);
    let (layout, image) = build_layout(work.path(), &spec, "v1");
    env.push_upstream(&layout.dir, "v1", &format!("{repo}:v1"), false);
    let victim = &image.layers[0].digest;
    let path = env.upstream_blob_file(victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // the very last byte: everything before it streams out first
    std::fs::write(&path, &bytes).unwrap();

    let lazyimg = site(env, "");
    let log = plain_log_len(env);
    let run = run(lazyimg
        .cmd()
        .env("REGISTRY_AUTH_FILE", env.auth_file())
        .args(["seed", &format!("ghcr.io/{repo}:v1")]));
    assert!(!run.success());
    // The upload runs alongside the download and is cut before its last byte.
    // (The registry logs a request once it notices the client went away.)
    let hex = victim.strip_prefix("sha256:").unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let puts = loop {
        let lines = plain_log_since(env, log);
        let puts: Vec<String> = uploads(&lines, &repo)
            .into_iter()
            .filter(|l| l.contains(hex))
            .cloned()
            .collect();
        if !puts.is_empty() || Instant::now() > deadline {
            break puts;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // (If verification failed before the upload got going, there is no PUT at all.)
    assert!(puts.iter().all(|l| !l.contains("\" 201 ")), "{puts:?}");
    assert!(
        run.stderr().contains("digest mismatch") && run.stderr().contains(victim.as_str()),
        "{}",
        run.stderr()
    );
    assert!(!plain_has_blob(env, &repo, victim));
    assert!(!plain_tags(env, &repo).contains("\"v1\""));
    assert!(!lazyimg.cached_blobs().contains(victim));
    assert_eq!(lazyimg.leftover_downloads(), 0);
}
