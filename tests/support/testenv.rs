//! The shared local registry topology (`scripts/testenv.sh`) and a sandboxed
//! `lazyimg` command per test: its own cache, config and (empty) auth files.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::image::{ImageSpec, OciLayout};
use super::layer::{LayerSpec, dir, file};
use super::tools::{PushOpts, push_layout};

/// Addresses and secrets of the running topology, from `$STATE/env`.
pub struct TestEnv {
    vars: HashMap<String, String>,
}

/// Starts the topology once per test binary (`testenv.sh up` is idempotent and
/// safe to run from several test binaries at once).
pub fn testenv() -> &'static TestEnv {
    static ENV: OnceLock<TestEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/testenv.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("up")
            .stdin(Stdio::null())
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "scripts/testenv.sh up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("bash")
            .arg(&script)
            .arg("env")
            .output()
            .expect("bash runs");
        let vars = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches(['"', '\'']).to_string()))
            .collect();
        TestEnv { vars }
    })
}

impl TestEnv {
    pub fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("testenv.sh env does not define {name}"))
    }

    /// `127.0.0.1:15443`: HTTPS with token auth, plays ghcr.io.
    pub fn upstream(&self) -> &str {
        self.var("LAZYIMG_TEST_UPSTREAM")
    }

    /// `127.0.0.1:15000`: plain HTTP, no auth (the site proxy in push mode).
    pub fn plain(&self) -> &str {
        self.var("LAZYIMG_TEST_PLAIN")
    }

    /// `127.0.0.1:15002`: pull-through cache of the upstream.
    pub fn proxy(&self) -> &str {
        self.var("LAZYIMG_TEST_PROXY")
    }

    pub fn ca(&self) -> PathBuf {
        self.var("LAZYIMG_TEST_CA").into()
    }

    pub fn auth_file(&self) -> PathBuf {
        self.var("LAZYIMG_TEST_AUTH_FILE").into()
    }

    pub fn user(&self) -> &str {
        self.var("LAZYIMG_TEST_USER")
    }

    pub fn token(&self) -> &str {
        self.var("LAZYIMG_TEST_TOKEN")
    }

    /// Pushes `tag` of `layout` to `upstream/repo_tag` with the test user.
    pub fn push_upstream(&self, layout: &Path, tag: &str, repo_tag: &str, format_v2s2: bool) {
        let opts = PushOpts {
            creds: Some((self.user().into(), self.token().into())),
            cert_dir: Some(self.var("LAZYIMG_TEST_CERT_DIR").into()),
            tls_verify: true,
            format_v2s2,
        };
        let dest = format!("{}/{repo_tag}", self.upstream());
        push_layout(layout, tag, &dest, opts).unwrap_or_else(|e| panic!("push to {dest}: {e}"));
    }

    /// Where the upstream registry keeps the bytes of blob `digest` on disk.
    pub fn upstream_blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        Path::new(self.var("LAZYIMG_TEST_UPSTREAM_DATA"))
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

/// An image no other test, and no earlier run, shares a blob with: registries
/// store blobs once per digest, so a test that corrupts one must not meet that
/// content again (re-pushing an existing blob is skipped, corruption and all).
pub fn unique_image(label: &str, layers: usize) -> ImageSpec {
    let label = format!("{label} {}", nonce());
    let layers = (0..layers)
        .map(|i| {
            LayerSpec::new(vec![
                dir(&format!("layer{i}")),
                file(
                    &format!("layer{i}/label.txt"),
                    format!("{label} layer {i}\n"),
                ),
                file(
                    &format!("layer{i}/data.bin"),
                    super::torture::prng_bytes(i as u64 + 7, 64 << 10),
                ),
            ])
        })
        .collect();
    ImageSpec::new(layers).cmd(&["/bin/sh"])
}

/// Builds `spec` into a fresh layout tagged `tag`; returns the layout and image.
pub fn build_layout(
    dir: &Path,
    spec: &ImageSpec,
    tag: &str,
) -> (OciLayout, super::image::BuiltImage) {
    let mut layout = OciLayout::create(dir);
    let image = layout.add_image(spec);
    layout.tag(tag, &image.manifest);
    (layout, image)
}

/// [`build_layout`] from layers already built (eStargz, crafted ones).
pub fn build_layout_from_layers(
    dir: &Path,
    spec: &ImageSpec,
    layers: &[super::layer::BuiltLayer],
    tag: &str,
) -> (OciLayout, super::image::BuiltImage) {
    let mut layout = OciLayout::create(dir);
    let image = layout.add_image_from_layers(spec, layers);
    layout.tag(tag, &image.manifest);
    (layout, image)
}

/// Unique per test run and process: for repositories and blobs nobody else has.
pub fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// One test's `lazyimg`: a private cache and config, and no credentials unless given.
pub struct Lazyimg {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

pub struct Run {
    pub output: Output,
    pub elapsed: Duration,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn success(&self) -> bool {
        self.output.status.success()
    }

    /// Panics with both streams unless the command succeeded.
    pub fn ok(self) -> Run {
        assert!(
            self.success(),
            "lazyimg failed ({}):\n{}",
            self.output.status,
            self.stderr()
        );
        self
    }
}

impl Lazyimg {
    /// Trusts the upstream's CA and talks plain HTTP to the proxy and push registries.
    pub fn new(env: &TestEnv) -> Lazyimg {
        Self::with_config(env, "")
    }

    /// Like [`Lazyimg::new`], also reaching the throwaway plain-HTTP `registry`.
    pub fn for_registry(registry: &super::registry::Registry) -> Lazyimg {
        let config = format!(
            "[[registry]]\nprefix = {:?}\ninsecure = true\n",
            registry.addr
        );
        Lazyimg::with_config(testenv(), &config)
    }

    /// Like [`Lazyimg::new`], with `extra` TOML (e.g. more `[[registry]]` tables).
    pub fn with_config(env: &TestEnv, extra: &str) -> Lazyimg {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.toml");
        let text = format!(
            "cache_dir = {cache:?}\n{extra}\n\
             [[registry]]\nprefix = {up:?}\nca_file = {ca:?}\n\
             [[registry]]\nprefix = {plain:?}\ninsecure = true\n\
             [[registry]]\nprefix = {proxy:?}\ninsecure = true\n",
            cache = dir.path().join("cache"),
            up = env.upstream(),
            ca = env.ca(),
            plain = env.plain(),
            proxy = env.proxy(),
        );
        std::fs::write(&config, text).expect("write config");
        Lazyimg { dir, config }
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// `lazyimg --config CONFIG`, isolated from the caller's auth files: HOME
    /// and XDG_RUNTIME_DIR are the sandbox, the other auth-file variables unset.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lazyimg"));
        cmd.arg("--config")
            .arg(&self.config)
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("DOCKER_CONFIG")
            .env_remove("LAZYIMG_CONFIG")
            .env_remove("LAZYIMG_LOG")
            .env("HOME", self.dir.path())
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run(self.cmd().args(args))
    }

    /// Runs with the token on standard input (`--password-stdin`).
    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Run {
        use std::io::Write;
        let start = Instant::now();
        let mut child = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lazyimg starts");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let output = child.wait_with_output().expect("lazyimg finishes");
        Run {
            output,
            elapsed: start.elapsed(),
        }
    }

    /// Digests (`sha256:…`) of every blob in this sandbox's cache.
    pub fn cached_blobs(&self) -> Vec<String> {
        let dir = self.cache().join("blobs/sha256");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut blobs: Vec<String> = entries
            .flatten()
            .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
            .collect();
        blobs.sort();
        blobs
    }

    /// `lazyimg stats --json` of `mounted`.
    pub fn stats(&self, mounted: &Mounted) -> serde_json::Value {
        let out = self
            .run(&["stats", "--json", mounted.path.to_str().unwrap()])
            .ok();
        serde_json::from_str(&out.stdout()).expect("stats JSON")
    }

    /// Files left in the cache's download area (must be none after any command).
    pub fn leftover_downloads(&self) -> usize {
        std::fs::read_dir(self.cache().join("tmp")).map_or(0, |d| d.count())
    }
}

/// `lazyimg` with the test user's auth file.
pub fn authed(lazyimg: &Lazyimg, args: &[&str]) -> Run {
    run(lazyimg
        .cmd()
        .env("REGISTRY_AUTH_FILE", testenv().auth_file())
        .args(args))
}

/// A mount made by a test, unmounted (even on panic) when dropped.
pub struct Mounted {
    pub path: PathBuf,
}

impl Mounted {
    /// `lazyimg mount [extra] REFERENCE DIR` with the test user's credentials.
    pub fn new(lazyimg: &Lazyimg, reference: &str, extra: &[&str]) -> Mounted {
        Self::at(lazyimg, reference, "mnt", extra)
    }

    /// [`Mounted::new`] on `name` under the sandbox, so one cache can serve
    /// several mounts at once.
    pub fn at(lazyimg: &Lazyimg, reference: &str, name: &str, extra: &[&str]) -> Mounted {
        Self::mount(lazyimg, reference, name, extra).0
    }

    /// [`Mounted::new`], and the daemon serving it.
    pub fn with_daemon(lazyimg: &Lazyimg, reference: &str, extra: &[&str]) -> (Mounted, Daemon) {
        let (mounted, run) = Self::mount(lazyimg, reference, "mnt", extra);
        (mounted, Daemon::from_message(&run.stderr()))
    }

    fn mount(lazyimg: &Lazyimg, reference: &str, name: &str, extra: &[&str]) -> (Mounted, Run) {
        let path = lazyimg.dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        let mut args = vec!["mount"];
        args.extend_from_slice(extra);
        args.push(reference);
        args.push(path.to_str().unwrap());
        let run = authed(lazyimg, &args).ok();
        (Mounted { path }, run)
    }
}

/// A mount daemon, as `lazyimg mount` reports it.
pub struct Daemon {
    pub pid: i32,
    /// Its log file.
    pub log: PathBuf,
}

impl Daemon {
    /// From `lazyimg mount`'s message: "mounted REF at DIR (daemon pid PID, log PATH)".
    pub fn from_message(message: &str) -> Daemon {
        let (pid, log) = message
            .split_once("(daemon pid ")
            .and_then(|(_, rest)| rest.split_once(", log "))
            .and_then(|(pid, rest)| Some((pid.parse().ok()?, rest.trim_end().strip_suffix(')')?)))
            .unwrap_or_else(|| panic!("no daemon pid and log in: {message}"));
        Daemon {
            pid,
            log: PathBuf::from(log),
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its peak resident memory (VmHWM), in bytes; the daemon must be running.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_else(|e| panic!("daemon {} is gone: {e}", self.pid));
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in /proc/{}/status:\n{status}", self.pid));
        kib << 10
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Found before the unmount ends them.
        let daemons = daemons_serving(&self.path);
        // Usually unmounted already; then fusermount3's complaint is noise.
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.path)
            .stderr(std::process::Stdio::null())
            .status();
        // fuser 0.18 unmounts a session's path once more as the session ends
        // after an external unmount (cberner/fuser#703): a test's next mount
        // on the same path must not be made before the daemon is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        for pid in daemons {
            while is_running(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The processes with `path` as one of their arguments: the daemons of
/// `lazyimg mount … PATH` (which keep their command line).
fn daemons_serving(path: &Path) -> Vec<i32> {
    let wanted = path.as_os_str().as_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|&b| b == 0).any(|arg| arg == wanted))
        })
        .collect()
}

/// Whether process `pid` exists and is not a zombie waiting to be reaped.
fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

pub fn run(cmd: &mut Command) -> Run {
    let start = Instant::now();
    let output = cmd.output().expect("command starts");
    Run {
        output,
        elapsed: start.elapsed(),
    }
}
