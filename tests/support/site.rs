//! The site in tests: `ces-pull` and `lazyimg seed` against the local topology, the
//! busybox demo image, podman on this host, and the plain registry's log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::image::OciLayout;
use super::layer::{Compression, LayerSpec, dir, file};
use super::testenv::{Lazyimg, Run, TestEnv, build_layout, nonce, run, testenv, unique_image};
use super::tools::skopeo_inspect;
pub const DEMO_TAG: &str = "v1";
pub const DEMO_FILE: (&str, &str) = ("/hello.txt", "hello from lazyimg\n");

/// The busybox demo image (scripts/build-demo-image.sh) as an OCI layout in `dir`.
pub fn demo_layout(dir: &Path) -> PathBuf {
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
pub fn containers_conf() -> &'static str {
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
pub fn site(env: &TestEnv, extra: &str) -> Lazyimg {
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
pub fn ces_pull(lazyimg: &Lazyimg, args: &[&str], stdin: Option<&str>) -> Run {
    ces_pull_with(lazyimg, args, stdin, &[])
}

/// [`ces_pull`] with more environment variables (e.g. podman's
/// `CONTAINERS_STORAGE_CONF`).
pub fn ces_pull_with(
    lazyimg: &Lazyimg,
    args: &[&str],
    stdin: Option<&str>,
    vars: &[(&str, &std::ffi::OsStr)],
) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ces-pull"));
    cmd.envs(vars.iter().copied());
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

pub fn upstream_digest(env: &TestEnv, repo_tag: &str) -> String {
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

pub fn plain_digest(env: &TestEnv, repo_tag: &str) -> String {
    let info = skopeo_inspect(
        &format!("docker://{}/{repo_tag}", env.plain()),
        &["--tls-verify=false"],
    )
    .expect("skopeo inspect plain");
    info["Digest"].as_str().unwrap().to_string()
}

/// The raw manifest bytes at `host/repo_ref` (skopeo inspect --raw).
pub fn raw_manifest(image: &str, extra: &[&str]) -> Vec<u8> {
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
pub fn plain_tags(env: &TestEnv, repo: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", &format!("http://{}/v2/{repo}/tags/list", env.plain())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn assert_nothing_pushed(env: &TestEnv, repo: &str) {
    let tags = plain_tags(env, repo);
    assert!(
        tags.contains("NAME_UNKNOWN"),
        "{repo} exists on the plain registry: {tags}"
    );
}

/// Removes podman images by name when dropped.
pub struct PodmanImages(pub Vec<String>);

impl Drop for PodmanImages {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .env("CONTAINERS_CONF", containers_conf())
            .args(["rmi", "-f"])
            .args(&self.0)
            .output();
    }
}

pub fn podman(args: &[&str]) -> String {
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

pub fn plain_log_since(env: &TestEnv, from: u64) -> Vec<String> {
    let bytes = std::fs::read(env.var("LAZYIMG_TEST_PLAIN_LOG")).unwrap();
    String::from_utf8_lossy(&bytes[(from as usize).min(bytes.len())..])
        .lines()
        .filter(|l| l.starts_with("127.0.0.1 - - ["))
        .map(str::to_string)
        .collect()
}

pub fn plain_log_len(env: &TestEnv) -> u64 {
    std::fs::metadata(env.var("LAZYIMG_TEST_PLAIN_LOG"))
        .unwrap()
        .len()
}

/// Upload requests (PUT/PATCH of an upload session) for `repo` in `lines`.
pub fn uploads<'a>(lines: &'a [String], repo: &str) -> Vec<&'a String> {
    lines
        .iter()
        .filter(|l| {
            l.contains(&format!("\"PUT /v2/{repo}/blobs/uploads/"))
                || l.contains(&format!("\"PATCH /v2/{repo}/blobs/uploads/"))
        })
        .collect()
}

pub fn plain_has_blob(env: &TestEnv, repo: &str, digest: &str) -> bool {
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

pub fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}
