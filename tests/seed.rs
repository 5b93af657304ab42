//! `ces-pull` and `lazyimg seed` against the real local topology: the HTTPS+token
//! upstream plays ghcr.io (`[[registry]] prefix = "ghcr.io"` maps it there), the
//! plain registry plays the site proxy in push mode, the pull-through cache plays
//! it in pull-through mode. Podman and Charliecloud are the real ones.
//!
//! Needs root (podman, FUSE). A missing tool makes these tests fail, never skip.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::image::OciLayout;
use support::layer::{Compression, LayerSpec, dir, file};
use support::testenv::{Lazyimg, Run, TestEnv, build_layout, run, testenv, unique_image};
use support::tools::skopeo_inspect;

const DEMO_TAG: &str = "v1";
const DEMO_FILE: (&str, &str) = ("/hello.txt", "hello from lazyimg\n");

/// Unique per test run and process: repositories and blobs nobody else has.
fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// The busybox demo image (scripts/build-demo-image.sh) as an OCI layout in `dir`.
fn demo_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("oci");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-demo-image.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(&layout)
        .arg(DEMO_TAG)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-demo-image.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    layout
}

/// `CONTAINERS_CONF` for podman on this host (scripts/setup-runtimes.sh).
fn containers_conf() -> &'static str {
    static CONF: OnceLock<String> = OnceLock::new();
    CONF.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-runtimes.sh");
        let out = Command::new("bash").arg(script).output().unwrap();
        assert!(
            out.status.success(),
            "setup-runtimes.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("export CONTAINERS_CONF="))
            .expect("setup-runtimes.sh prints CONTAINERS_CONF")
            .to_string()
    })
}

/// A sandboxed lazyimg whose config sends `ghcr.io` to the upstream and seeds into
/// the plain registry, plus `extra` TOML (top-level keys only).
fn site(env: &TestEnv, extra: &str) -> Lazyimg {
    Lazyimg::with_config(
        env,
        &format!(
            "{extra}\n[seed]\ntarget = {plain:?}\n\
             [[registry]]\nprefix = \"ghcr.io\"\nlocation = {up:?}\nca_file = {ca:?}\n",
            plain = env.plain(),
            up = env.upstream(),
            ca = env.ca(),
        ),
    )
}

/// `ces-pull ARGS` from this sandbox, with the token (if any) on standard input.
fn ces_pull(lazyimg: &Lazyimg, args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ces-pull"));
    cmd.arg("--config")
        .arg(&lazyimg.config)
        .args(args)
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("LAZYIMG_CONFIG")
        .env_remove("LAZYIMG_LOG")
        .env("HOME", lazyimg.dir.path())
        .env("CONTAINERS_CONF", containers_conf())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("ces-pull starts");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    Run {
        output,
        elapsed: start.elapsed(),
    }
}

fn upstream_digest(env: &TestEnv, repo_tag: &str) -> String {
    let creds = format!("{}:{}", env.user(), env.token());
    let info = skopeo_inspect(
        &format!("docker://{}/{repo_tag}", env.upstream()),
        &[
            "--cert-dir",
            env.var("LAZYIMG_TEST_CERT_DIR"),
            "--creds",
            &creds,
        ],
    )
    .expect("skopeo inspect upstream");
    info["Digest"].as_str().unwrap().to_string()
}

fn plain_digest(env: &TestEnv, repo_tag: &str) -> String {
    let info = skopeo_inspect(
        &format!("docker://{}/{repo_tag}", env.plain()),
        &["--tls-verify=false"],
    )
    .expect("skopeo inspect plain");
    info["Digest"].as_str().unwrap().to_string()
}

/// The raw manifest bytes at `host/repo_ref` (skopeo inspect --raw).
fn raw_manifest(image: &str, extra: &[&str]) -> Vec<u8> {
    let mut args = vec!["inspect", "--raw"];
    args.extend_from_slice(extra);
    args.push(image);
    let out = Command::new("skopeo").args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `GET /v2/REPO/tags/list` on the plain registry (no auth), body as text.
fn plain_tags(env: &TestEnv, repo: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", &format!("http://{}/v2/{repo}/tags/list", env.plain())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_nothing_pushed(env: &TestEnv, repo: &str) {
    let tags = plain_tags(env, repo);
    assert!(
        tags.contains("NAME_UNKNOWN"),
        "{repo} exists on the plain registry: {tags}"
    );
}

/// Removes podman images by name when dropped.
struct PodmanImages(Vec<String>);

impl Drop for PodmanImages {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .env("CONTAINERS_CONF", containers_conf())
            .args(["rmi", "-f"])
            .args(&self.0)
            .output();
    }
}

fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .env("CONTAINERS_CONF", containers_conf())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ces_pull_podman_copies_the_exact_image_and_podman_knows_both_names() {
    let env = testenv();
    let repo = format!("seed/podman-{}", nonce());
    let work = tempfile::tempdir().unwrap();
    let layout = demo_layout(work.path());
    env.push_upstream(&layout, DEMO_TAG, &format!("{repo}:v1"), false);
    let expected = upstream_digest(env, &format!("{repo}:v1"));

    // An approved list that allows it, so the happy path goes through the policy too.
    let lazyimg = site(env, "approved_images = \"approved.toml\"");
    std::fs::write(
        lazyimg.dir.path().join("approved.toml"),
        "[[image]]\nrepository = \"ghcr.io/seed/**\"\nnote = \"seed tests\"\n",
    )
    .unwrap();
    let ghcr = format!("ghcr.io/{repo}:v1");
    let proxy = format!("{}/{repo}:v1", env.plain());
    let _cleanup = PodmanImages(vec![ghcr.clone(), proxy.clone()]);

    let run = ces_pull(&lazyimg, &["podman", env.user(), env.token(), &ghcr], None).ok();
    assert_eq!(plain_digest(env, &format!("{repo}:v1")), expected);

    let images = podman(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    let id_of = |name: &str| {
        images
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("podman images lacks {name}:\n{images}"))
            .to_string()
    };
    assert_eq!(id_of(&ghcr), id_of(&proxy), "{images}");
    let out = podman(&["run", "--rm", &proxy, "cat", DEMO_FILE.0]);
    assert_eq!(out, DEMO_FILE.1);
    assert!(run.stderr().contains("podman has"), "{}", run.stderr());
    assert!(!run.stderr().contains(env.token()) && !run.stdout().contains(env.token()));
}

#[test]
fn ces_pull_charliecloud_prints_the_run_command_and_writes_a_squashfs_ch_run_accepts() {
    let env = testenv();
    let repo = format!("seed/charliecloud-{}", nonce());
    let work = tempfile::tempdir().unwrap();
    let layout = demo_layout(work.path());
    env.push_upstream(&layout, DEMO_TAG, &format!("{repo}:v1"), false);
    let lazyimg = site(env, "");
    let ghcr = format!("ghcr.io/{repo}:v1");
    let proxy = format!("{}/{repo}:v1", env.plain());
    let sqfs = lazyimg.dir.path().join("image.sqfs");
    let sqfs_text = sqfs.display().to_string();

    let pulled = ces_pull(
        &lazyimg,
        &[
            "charliecloud",
            env.user(),
            "-",
            &ghcr,
            "--squashfs",
            &sqfs_text,
        ],
        Some(&format!("{}\n", env.token())),
    )
    .ok();
    let command = format!("lazyimg run --runtime charliecloud {proxy} -- ");
    assert!(pulled.stdout().contains(&command), "{}", pulled.stdout());
    assert!(
        pulled.stdout().contains(&format!("ch-run {sqfs_text} -- ")),
        "{}",
        pulled.stdout()
    );

    let out =
        run(Command::new("ch-run")
            .env("USER", "root")
            .arg(&sqfs)
            .args(["--", "cat", DEMO_FILE.0]));
    assert!(out.success(), "ch-run {sqfs_text}: {}", out.stderr());
    assert_eq!(out.stdout(), DEMO_FILE.1);

    // The printed command works as printed (from the proxy, through the cache).
    let run_it = lazyimg
        .run(&[
            "run",
            "--runtime",
            "charliecloud",
            &proxy,
            "--",
            "cat",
            DEMO_FILE.0,
        ])
        .ok();
    assert_eq!(run_it.stdout(), DEMO_FILE.1);

    // Apptainer (not installable on Debian 12): the same copy, and the command to use.
    let apptainer = ces_pull(
        &lazyimg,
        &["apptainer", env.user(), "-", &ghcr],
        Some(env.token()),
    )
    .ok();
    assert!(
        apptainer
            .stdout()
            .contains(&format!("lazyimg run --runtime apptainer {proxy} -- ")),
        "{}",
        apptainer.stdout()
    );
    assert!(
        apptainer.stderr().contains("skipped as already there"),
        "{}",
        apptainer.stderr()
    );
}

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
fn refusals_are_clear_and_leave_nothing_in_the_proxy() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let id = nonce();
    let (layout, image) = build_layout(work.path(), &unique_image("refusals", 1), "v1");
    let approved = format!("seed/refused-approved-{id}");
    let unapproved = format!("seed/refused-unapproved-{id}");
    let pinned = format!("seed/refused-pinned-{id}");
    for repo in [&approved, &unapproved, &pinned] {
        env.push_upstream(&layout.dir, "v1", &format!("{repo}:v1"), false);
    }
    let lazyimg = site(env, "approved_images = \"approved.toml\"");
    let list = lazyimg.dir.path().join("approved.toml");
    let other_digest = format!("sha256:{}", "0".repeat(64));
    std::fs::write(
        &list,
        format!(
            "[[image]]\nrepository = \"ghcr.io/{approved}\"\n\n\
             [[image]]\nrepository = \"ghcr.io/{pinned}\"\ndigest = \"{other_digest}\"\n"
        ),
    )
    .unwrap();
    let pull = |repo: &str, token: &str| {
        ces_pull(
            &lazyimg,
            &[
                "charliecloud",
                env.user(),
                "-",
                &format!("ghcr.io/{repo}:v1"),
            ],
            Some(token),
        )
    };

    let refused = pull(&unapproved, env.token());
    assert!(!refused.success());
    assert!(
        refused.stderr().contains("is not on the approved list"),
        "{}",
        refused.stderr()
    );
    assert_nothing_pushed(env, &unapproved);

    let refused = pull(&pinned, env.token());
    assert!(!refused.success());
    assert!(
        refused.stderr().contains(&image.manifest.digest)
            && refused.stderr().contains(&other_digest),
        "{}",
        refused.stderr()
    );
    assert_nothing_pushed(env, &pinned);

    let wrong = pull(&approved, "not-the-token");
    assert!(!wrong.success());
    assert!(
        wrong
            .stderr()
            .contains(&format!("authentication to {} failed", env.upstream())),
        "{}",
        wrong.stderr()
    );
    assert!(!wrong.stderr().contains("not-the-token"));
    assert_nothing_pushed(env, &approved);

    // `nopkg` authenticates but may read nothing (a token without read:packages).
    let denied = ces_pull(
        &lazyimg,
        &[
            "charliecloud",
            "nopkg",
            "-",
            &format!("ghcr.io/{approved}:v1"),
        ],
        Some("nopkgtoken"),
    );
    assert!(!denied.success());
    assert!(denied.stderr().contains("denied"), "{}", denied.stderr());
    assert_nothing_pushed(env, &approved);

    std::fs::write(&list, "[[image]]\nrepo = \"ghcr.io/seed/x\"\n").unwrap();
    let malformed = pull(&approved, env.token());
    assert!(!malformed.success());
    assert!(
        malformed.stderr().contains("approved-image list") && malformed.stderr().contains("repo"),
        "{}",
        malformed.stderr()
    );
    assert_nothing_pushed(env, &approved);
}

/// Access-log lines of the plain registry (written after each response) from byte `from`.
fn plain_log_since(env: &TestEnv, from: u64) -> Vec<String> {
    let bytes = std::fs::read(env.var("LAZYIMG_TEST_PLAIN_LOG")).unwrap();
    String::from_utf8_lossy(&bytes[(from as usize).min(bytes.len())..])
        .lines()
        .filter(|l| l.starts_with("127.0.0.1 - - ["))
        .map(str::to_string)
        .collect()
}

fn plain_log_len(env: &TestEnv) -> u64 {
    std::fs::metadata(env.var("LAZYIMG_TEST_PLAIN_LOG"))
        .unwrap()
        .len()
}

/// Upload requests (PUT/PATCH of an upload session) for `repo` in `lines`.
fn uploads<'a>(lines: &'a [String], repo: &str) -> Vec<&'a String> {
    lines
        .iter()
        .filter(|l| {
            l.contains(&format!("\"PUT /v2/{repo}/blobs/uploads/"))
                || l.contains(&format!("\"PATCH /v2/{repo}/blobs/uploads/"))
        })
        .collect()
}

fn plain_has_blob(env: &TestEnv, repo: &str, digest: &str) -> bool {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-I",
            &format!("http://{}/v2/{repo}/blobs/{digest}", env.plain()),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout) == "200"
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
    assert_eq!(sent.len(), all.len() - finished.len(), "{sent:#?}");
    assert_eq!(
        plain_digest(env, &format!("{repo}:v1")),
        image.manifest.digest
    );
    assert!(lazyimg.leftover_downloads() <= leftovers);
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn the_token_never_shows_in_ps_logs_or_files() {
    let env = testenv();
    let repo = format!("seed/token-{}", nonce());
    let work = tempfile::tempdir().unwrap();
    let (layout, _) = build_layout(work.path(), &unique_image("token", 2), "v1");
    env.push_upstream(&layout.dir, "v1", &format!("{repo}:v1"), false);
    let lazyimg = site(env, "");
    let token = env.token();

    let mut child = Command::new(env!("CARGO_BIN_EXE_ces-pull"))
        .arg("--config")
        .arg(&lazyimg.config)
        .args([
            "-v",
            "charliecloud",
            env.user(),
            "-",
            &format!("ghcr.io/{repo}:v1"),
        ])
        .env_remove("REGISTRY_AUTH_FILE")
        .env("HOME", lazyimg.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Our child and its children (other tests push with the same token via skopeo).
    let scan = || {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if p != pid && ppid != Some(pid) {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
            for (what, bytes) in [("cmdline", cmdline), ("environ", environ)] {
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(token),
                    "the token is in /proc/{p}/{what}"
                );
            }
        }
    };
    // The token trickles in slowly while we look at the process table.
    let mut stdin = child.stdin.take().unwrap();
    for byte in token.bytes() {
        scan();
        stdin.write_all(&[byte]).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    stdin.write_all(b"\n").unwrap();
    drop(stdin);
    while child.try_wait().unwrap().is_none() {
        scan();
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains(token), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains(token));

    let grep = Command::new("grep")
        .args(["-r", "-l", "-a", "-F", token])
        .arg(lazyimg.dir.path())
        .output()
        .unwrap();
    assert_eq!(
        grep.status.code(),
        Some(1),
        "the token is written in: {}",
        String::from_utf8_lossy(&grep.stdout)
    );
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
    assert!(uploads(&plain_log_since(env, log), &format!("mirror/{repo}")).is_empty());
    assert_eq!(plain_digest(env, &format!("mirror/{repo}:1")), index.digest);
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
