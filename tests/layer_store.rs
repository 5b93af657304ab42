//! `lazyimg layer-store` as Podman 4.3.1's additional layer store: the real
//! Podman (runc, CONTAINERS_CONF from scripts/setup-runtimes.sh) pulls from
//! the local plain registry with the store configured, and must take every
//! layer from the store instead of the registry, then run the image.
//!
//! Needs root (podman, FUSE). A missing tool makes these tests fail, never skip.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::estargz::build_estargz_layer;
use support::image::{Compression, ImageSpec, LayerSpec, build_layer, dir, file, opaque, whiteout};
use support::pushed::{
    busybox_layer, diff_ids, layer_sizes, layers, lazyimg_fetched, push_image, reference_dir, sh,
    sh_out, sha256_file, toc_digests,
};
use support::site::{
    DEMO_FILE, DEMO_TAG, ces_pull_with, containers_conf, demo_layout, plain_log_len,
    plain_log_since, site,
};
use support::testenv::{Daemon, Lazyimg, authed, build_layout_from_layers, nonce, testenv};
use support::zstd_chunked::convert_to_zstd_chunked;

/// A running `lazyimg layer-store DIR`; stopped with SIGTERM when dropped.
/// Borrows the sandbox whose cache and config the daemon uses, so they
/// outlive it.
struct LayerStore<'a> {
    dir: tempfile::TempDir,
    daemon: Daemon,
    _sandbox: &'a Lazyimg,
}

impl<'a> LayerStore<'a> {
    fn start(lazyimg: &'a Lazyimg) -> LayerStore<'a> {
        let dir = tempfile::Builder::new()
            .prefix("lazyimg-als-")
            .tempdir_in("/tmp")
            .unwrap();
        let started = lazyimg
            .run(&["layer-store", dir.path().to_str().unwrap()])
            .ok();
        LayerStore {
            daemon: Daemon::from_message(&started.stderr()),
            dir,
            _sandbox: lazyimg,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Sends SIGTERM and waits for the daemon to unmount and exit.
    fn stop(&self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.daemon.pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{}", self.daemon.pid)).exists() {
            assert!(Instant::now() < deadline, "the layer store did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LayerStore<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Podman with its own store in `root`, using `als` as its additional layer store.
struct Podman {
    root: tempfile::TempDir,
    als: PathBuf,
}

impl Podman {
    fn new(als: &Path) -> Podman {
        Podman {
            root: tempfile::tempdir().unwrap(),
            als: als.to_path_buf(),
        }
    }

    /// A storage.conf for the same store, for podman run by other programs:
    /// the lines `lazyimg layer-store --print-config` gives, after the store's
    /// location.
    fn storage_conf(&self, lazyimg: &Lazyimg) -> PathBuf {
        let printed = lazyimg
            .run(&["layer-store", "--print-config", self.als.to_str().unwrap()])
            .ok()
            .stdout();
        let conf = self.root.path().join("storage.conf");
        let root = self.root.path().display();
        std::fs::write(
            &conf,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{root}/root\"\nrunroot = \"{root}/run\"\n{printed}"
            ),
        )
        .unwrap();
        conf
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .env("CONTAINERS_CONF", containers_conf())
            .arg("--root")
            .arg(self.root.path().join("root"))
            .arg("--runroot")
            .arg(self.root.path().join("run"))
            .args(["--storage-driver", "overlay", "--storage-opt"])
            .arg(format!(
                "overlay.additionallayerstore={}:ref",
                self.als.display()
            ))
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "podman {args:?}:\n{stdout}\n{stderr}");
        (stdout, stderr)
    }

    /// Pulls `reference`; every one of `layers` must come from the store:
    /// Podman skips it as present and links its `diff` into the store.
    /// Returns Podman's debug log.
    fn pull_from_store(&self, reference: &str, layers: &[String]) -> String {
        let (_, pulled) = self.ok(&["--log-level=debug", "pull", "--tls-verify=false", reference]);
        for layer in layers {
            assert!(
                pulled.contains(&format!("Skipping blob {layer} (already present)")),
                "Podman did not reuse {layer} from the layer store:\n{pulled}"
            );
        }
        for link in self.diff_links() {
            assert!(link.starts_with(&self.als), "{link:?}");
        }
        pulled
    }

    /// Where each layer's `diff` in Podman's own store points.
    fn diff_links(&self) -> Vec<PathBuf> {
        let layers = self.root.path().join("root/overlay");
        std::fs::read_dir(&layers)
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path().join("diff")).ok())
            .collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rmi", "--all", "--force"]);
    }
}

/// Podman's GETs of `blob` in the registry log lines `lines`.
fn podman_gets<'a>(lines: &'a [String], blob: &str) -> Vec<&'a String> {
    lines
        .iter()
        .filter(|l| l.contains(&format!("/blobs/{blob} ")) && l.contains("containers/"))
        .collect()
}

#[test]
fn podman_takes_every_layer_of_an_indexed_gzip_image_from_the_store_and_runs_it() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let (reference, label) = push_image(env, work.path());
    let layers = layers(&reference);
    assert!(layers.len() >= 2, "{layers:?}");
    authed(&Lazyimg::new(env), &["index", "--push", &reference]).ok();

    // A fresh cache: the store fetches what it needs on Podman's first lookup.
    let lazyimg = Lazyimg::new(env);
    let store = LayerStore::start(&lazyimg);
    let podman = Podman::new(store.path());
    let log_start = plain_log_len(env);
    podman.pull_from_store(&reference, &layers);
    assert_eq!(podman.diff_links().len(), layers.len());

    // Inside, the image's user, workdir and env; file contents read lazily.
    let (out, _) = podman.ok(&[
        "run",
        "--rm",
        "--runtime",
        "runc",
        &reference,
        "sh",
        "-c",
        "id -u; id -g; pwd; echo $GREETING; cat label.txt; busybox | head -c 7",
    ]);
    assert_eq!(
        out,
        format!("1000\n1000\n/work\n{label}\n{label}\nBusyBox"),
        "{}",
        store.daemon.log()
    );
    // A 4 KiB slice of the 256 MiB file costs a small part of its layer.
    let (slice, _) = podman.ok(&[
        "run",
        "--rm",
        "--runtime",
        "runc",
        &reference,
        "sh",
        "-c",
        "dd if=big.bin bs=4096 skip=40000 count=1 2>/dev/null | sha256sum",
    ]);
    let (big_layer, big_size) = layer_sizes(&reference).pop().unwrap();
    let fetched = lazyimg_fetched(&plain_log_since(env, log_start), &big_layer);
    eprintln!("4 KiB slice of big.bin: lazyimg fetched {fetched} of {big_size} bytes of its layer");
    assert!(
        fetched * 50 < big_size,
        "read 4 KiB, fetched {fetched} of {big_size} bytes of {big_layer}"
    );
    let expected = sh_out(&format!(
        "umoci unpack --image {}:v1 {} >/dev/null && dd if={}/rootfs/work/big.bin bs=4096 skip=40000 count=1 2>/dev/null | sha256sum",
        work.path().join("oci").display(),
        work.path().join("check").display(),
        work.path().join("check").display(),
    ));
    assert_eq!(slice, expected);
    let lines = plain_log_since(env, log_start);
    for layer in &layers {
        let gets = podman_gets(&lines, layer);
        assert!(gets.is_empty(), "Podman fetched layer {layer}: {gets:#?}");
    }

    // podman save reads each layer's `blob` (downloaded whole, verified);
    // its archive holds the layers under the registry config's DiffIDs.
    let saved = work.path().join("saved.tar");
    podman.ok(&["save", "-o", saved.to_str().unwrap(), &reference]);
    let unpacked = work.path().join("saved");
    std::fs::create_dir(&unpacked).unwrap();
    sh(&format!(
        "tar -xf {} -C {}",
        saved.display(),
        unpacked.display()
    ));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("manifest.json")).unwrap()).unwrap();
    let saved_layers: Vec<String> = manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| sha256_file(&unpacked.join(l.as_str().unwrap())))
        .collect();
    assert_eq!(saved_layers, diff_ids(&reference));
    assert!(store.daemon.log().contains("whole for Podman"));

    podman.ok(&["rmi", &reference]);
    let log = store.daemon.log();
    assert!(log.contains("Podman released layer"), "{log}");
    // (fuser logs "Failed to send FUSE reply" at ERROR for requests the
    // kernel dropped meanwhile, e.g. of a process that exited: not ours.)
    for failure in ["ERROR layer store", "reading file content failed"] {
        assert!(!log.contains(failure), "{log}");
    }

    store.stop();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(store.path().to_str().unwrap()),
        "still mounted after SIGTERM"
    );
}

#[test]
fn a_plain_zstd_layer_is_absent_and_podman_pulls_it_itself() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let label = format!("als-zstd-{}", nonce());
    let layers = [
        busybox_layer(work.path()),
        build_layer(&LayerSpec::new(vec![
            dir("work"),
            file("work/label.txt", format!("{label}\n")),
        ])),
        build_layer(
            &LayerSpec::new(vec![file("work/top.txt", format!("zstd {label}\n"))])
                .compression(Compression::Zstd),
        ),
    ];
    let mut spec = ImageSpec::new(Vec::new()).env(&["PATH=/bin", &format!("GREETING={label}")]);
    spec.working_dir = Some("/work".into());
    let (layout, _) = build_layout_from_layers(&work.path().join("img"), &spec, &layers, "v1");
    let reference = format!("{}/als/{label}:v1", env.plain());
    sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:v1 docker://{reference}",
        layout.dir.display()
    ));
    authed(&Lazyimg::new(env), &["index", "--push", &reference]).ok();

    let lazyimg = Lazyimg::new(env);
    let store = LayerStore::start(&lazyimg);
    let podman = Podman::new(store.path());
    let log_start = plain_log_len(env);
    let (lazy, zstd) = (&layers[..2], &layers[2]);
    let lazy: Vec<String> = lazy.iter().map(|l| l.digest.clone()).collect();
    let pulled = podman.pull_from_store(&reference, &lazy);
    assert!(
        !pulled.contains(&format!("Skipping blob {}", zstd.digest)),
        "{pulled}"
    );
    let absent = store
        .path()
        .join(reference_dir(&reference))
        .join(&zstd.digest);
    let err = std::fs::metadata(&absent).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{absent:?}");
    // Podman fetched the zstd layer itself; lazyimg did not.
    let lines = plain_log_since(env, log_start);
    assert_eq!(podman_gets(&lines, &zstd.digest).len(), 1, "{lines:#?}");
    assert!(!lazyimg.cached_blobs().contains(&zstd.digest));
    assert_eq!(podman.diff_links().len(), 2);

    let (out, _) = podman.ok(&[
        "run",
        "--rm",
        "--runtime",
        "runc",
        &reference,
        "sh",
        "-c",
        "pwd; echo $GREETING; cat label.txt top.txt",
    ]);
    assert_eq!(out, format!("/work\n{label}\n{label}\nzstd {label}\n"));
    podman.ok(&["rmi", &reference]);
}

#[test]
fn an_unapproved_image_is_absent_and_podman_pulls_it_itself() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let layout = demo_layout(work.path());
    let reference = format!("{}/als/unapproved-{}:v1", env.plain(), nonce());
    sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:v1 docker://{reference}",
        layout.display()
    ));
    let lazyimg = Lazyimg::with_config(env, "approved_images = \"approved.toml\"");
    std::fs::write(
        lazyimg.dir.path().join("approved.toml"),
        "[[image]]\nrepository = \"ghcr.io/someone-else/*\"\n",
    )
    .unwrap();
    let store = LayerStore::start(&lazyimg);
    let entry = store.path().join(reference_dir(&reference));
    let err = std::fs::metadata(&entry).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    assert!(
        store.daemon.log().contains("not serving"),
        "{}",
        store.daemon.log()
    );

    let podman = Podman::new(store.path());
    let (_, pulled) = podman.ok(&[
        "--log-level=debug",
        "pull",
        "--tls-verify=false",
        &reference,
    ]);
    assert!(!pulled.contains("Skipping blob"), "{pulled}");
    assert!(podman.diff_links().is_empty());
    let (out, _) = podman.ok(&[
        "run",
        "--rm",
        "--runtime",
        "runc",
        &reference,
        "cat",
        "/hello.txt",
    ]);
    assert_eq!(out, "hello from lazyimg\n");
}

#[test]
fn ces_pull_podman_with_the_store_configured_fetches_no_layer_blob() {
    let env = testenv();
    let repo = format!("als/ces-{}", nonce());
    let work = tempfile::tempdir().unwrap();
    let layout = demo_layout(work.path());
    env.push_upstream(&layout, DEMO_TAG, &format!("{repo}:v1"), false);

    let lazyimg = Lazyimg::new(env);
    let store = LayerStore::start(&lazyimg);
    let podman = Podman::new(store.path());
    let site_lazyimg = site(env, "");
    let conf = podman.storage_conf(&site_lazyimg);
    let ghcr = format!("ghcr.io/{repo}:v1");
    let proxy = format!("{}/{repo}:v1", env.plain());
    let log_start = plain_log_len(env);
    let vars = [("CONTAINERS_STORAGE_CONF", conf.as_os_str())];
    ces_pull_with(
        &site_lazyimg,
        &["podman", env.user(), env.token(), &ghcr],
        None,
        &vars,
    )
    .ok();

    // ces-pull seeded the proxy and pushed an index; Podman's pull of the
    // proxy name took every layer from the store.
    let lines = plain_log_since(env, log_start);
    for layer in layers(&proxy) {
        assert!(
            podman_gets(&lines, &layer).is_empty(),
            "{lines:#?}\n{}",
            store.daemon.log()
        );
    }
    let links = podman.diff_links();
    assert!(
        !links.is_empty() && links.iter().all(|l| l.starts_with(store.path())),
        "{links:?}"
    );
    let podman_env = || {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", containers_conf())
            .env("CONTAINERS_STORAGE_CONF", &conf);
        cmd
    };
    let images = podman_env()
        .args(["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"])
        .output()
        .unwrap();
    let images = String::from_utf8_lossy(&images.stdout);
    let id_of = |name: &str| {
        images
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("podman images lacks {name}:\n{images}"))
            .to_string()
    };
    assert_eq!(id_of(&ghcr), id_of(&proxy), "{images}");
    let out = podman_env()
        .args(["run", "--rm", &proxy, "cat", DEMO_FILE.0])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), DEMO_FILE.1);
}

/// Rootless Podman (the unprivileged test user) with the store started
/// inside `podman unshare`, as rootless Podman needs it: its overlay mounts
/// use `userxattr`, so an opaque directory only works if the store marks
/// it `user.overlay.opaque`.
#[test]
fn rootless_podman_uses_a_store_started_inside_podman_unshare() {
    let env = testenv();
    containers_conf(); // creates the test user
    let work = tempfile::tempdir().unwrap();
    let label = format!("als-rootless-{}", nonce());
    let layers = [
        busybox_layer(work.path()),
        build_layer(&LayerSpec::new(vec![
            dir("work"),
            file("work/old.txt", "old\n"),
            file("work/gone.txt", "gone\n"),
            dir("work/sub"),
            file("work/sub/x", "x\n"),
        ])),
        build_layer(&LayerSpec::new(vec![
            opaque("work/sub"),
            file("work/sub/y", format!("{label}\n")),
            whiteout("work/gone.txt"),
        ])),
    ];
    let spec = ImageSpec::new(Vec::new()).env(&["PATH=/bin"]);
    let (layout, _) = build_layout_from_layers(&work.path().join("img"), &spec, &layers, "v1");
    let reference = format!("{}/als/{label}:v1", env.plain());
    sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:v1 docker://{reference}",
        layout.dir.display()
    ));
    authed(&Lazyimg::new(env), &["index", "--push", &reference]).ok();

    // Everything the user needs, in a directory it owns.
    let home = tempfile::Builder::new()
        .prefix("lazyimg-als-rootless-")
        .tempdir_in("/tmp")
        .unwrap();
    let w = home.path().display().to_string();
    std::fs::copy(containers_conf(), home.path().join("containers.conf")).unwrap();
    std::fs::write(
        home.path().join("config.toml"),
        format!(
            "cache_dir = \"{w}/cache\"\n[[registry]]\nprefix = \"{}\"\ninsecure = true\n",
            env.plain()
        ),
    )
    .unwrap();
    sh(&format!("chown -R {USER}: {w}"));
    let lazyimg = env!("CARGO_BIN_EXE_lazyimg");
    let script = format!(
        r#"set -e
export CONTAINERS_CONF={w}/containers.conf
mkdir {w}/als
podman unshare sh -c '{lazyimg} --config {w}/config.toml layer-store --foreground {w}/als >{w}/store.log 2>&1 & echo $! >{w}/store.pid'
for i in $(seq 100); do
  podman unshare grep -q " {w}/als " /proc/self/mountinfo && break
  sleep 0.1
done
P="podman --root {w}/root --runroot {w}/run --storage-driver overlay --storage-opt overlay.additionallayerstore={w}/als:ref"
$P --log-level=debug pull --tls-verify=false {reference} 2>{w}/pull.log >/dev/null
$P run --rm --network host {reference} sh -c 'ls /work /work/sub; cat /work/sub/y'
$P rmi {reference} >/dev/null
"#
    );
    // The user's namespaces (podman's pause process) may be created here, as
    // a copy of our mounts: in a mount namespace of its own without FUSE
    // mounts, or its copies would keep other tests' FUSE daemons serving
    // after they unmount.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "awk '$3 ~ /^fuse/ {print $2}' /proc/self/mounts | xargs -r -n1 umount -l; \
             exec su - \"$0\" -c \"$1\"",
        )
        .args([USER, &script])
        .output()
        .unwrap();
    let read = |name: &str| std::fs::read_to_string(home.path().join(name)).unwrap_or_default();
    let store_pid: i32 = read("store.pid").trim().parse().unwrap_or(0);
    if store_pid > 0 {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(store_pid, libc::SIGTERM) };
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nstore log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        read("store.log")
    );
    let pulled = read("pull.log");
    for layer in &layers {
        assert!(
            pulled.contains(&format!("Skipping blob {} (already present)", layer.digest)),
            "{pulled}"
        );
    }
    assert_eq!(
        stdout,
        format!("/work:\nold.txt\nsub\n\n/work/sub:\ny\n{label}\n")
    );
    assert!(read("store.log").contains("Podman released layer"));
}

/// The unprivileged user scripts/setup-runtimes.sh creates.
const USER: &str = "lazyimg-test";

#[test]
fn podman_takes_estargz_and_zstd_chunked_layers_from_the_store() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let label = format!("als-toc-{}", nonce());
    let data = support::image::prng_bytes(11, 300 << 10);
    let files = LayerSpec::new(vec![
        dir("work"),
        file("work/label.txt", format!("{label}\n")),
        file("work/data.bin", data.clone()),
    ]);
    let busybox = busybox_layer(work.path());
    let mut spec = ImageSpec::new(Vec::new()).env(&["PATH=/bin"]);
    spec.working_dir = Some("/work".into());
    let push = |layout: &Path, name: &str| {
        let reference = format!("{}/als/{label}-{name}:v1", env.plain());
        sh(&format!(
            "skopeo copy --quiet --dest-tls-verify=false oci:{}:v1 docker://{reference}",
            layout.display()
        ));
        reference
    };
    // eStargz files over the busybox layer (gzip, made lazy by an index).
    let estargz = [busybox.clone(), build_estargz_layer(&files, 64 << 10)];
    let (layout, _) = build_layout_from_layers(&work.path().join("esgz"), &spec, &estargz, "v1");
    let estargz_ref = push(&layout.dir, "estargz");
    authed(&Lazyimg::new(env), &["index", "--push", &estargz_ref]).ok();
    // Both layers zstd:chunked, converted by skopeo.
    let gzip = [busybox, build_layer(&files)];
    let (layout, _) = build_layout_from_layers(&work.path().join("gz"), &spec, &gzip, "v1");
    let converted = convert_to_zstd_chunked(&layout.dir, "v1", &work.path().join("zstd")).unwrap();
    let chunked_ref = push(&converted.layout_dir, "zstd-chunked");

    let lazyimg = Lazyimg::new(env);
    let store = LayerStore::start(&lazyimg);
    let podman = Podman::new(store.path());
    let data_sum = support::layer::sha256_hex(&data);
    for reference in [&estargz_ref, &chunked_ref] {
        let log_start = plain_log_len(env);
        let layers = layers(reference);
        podman.pull_from_store(reference, &layers);
        let (out, _) = podman.ok(&[
            "run",
            "--rm",
            "--runtime",
            "runc",
            reference,
            "sh",
            "-c",
            "cat label.txt; sha256sum data.bin",
        ]);
        assert_eq!(
            out,
            format!("{label}\n{data_sum}  data.bin\n"),
            "{reference}"
        );
        // Podman ≥ 5.1 would look the TOC layer up by its TOC digest.
        for toc in toc_digests(reference) {
            let dir = store.path().join(reference_dir(reference)).join(&toc);
            assert!(dir.join("diff").is_dir(), "{reference}: no {dir:?}");
        }
        // The tar sizes are unknown here (no annotation): listing still works.
        podman.ok(&["images"]);
        let lines = plain_log_since(env, log_start);
        for layer in &layers {
            assert!(
                podman_gets(&lines, layer).is_empty(),
                "{reference}: {lines:#?}"
            );
        }
    }
}

#[test]
fn print_config_gives_the_storage_conf_lines() {
    let lazyimg = Lazyimg::new(testenv());
    let out = lazyimg
        .run(&["layer-store", "--print-config", "/var/lib/lazyimg/als"])
        .ok();
    assert_eq!(
        out.stdout(),
        "[storage.options]\nadditionallayerstores = [\"/var/lib/lazyimg/als:ref\"]\n"
    );
}

/// Issue 11, acceptance 3: the torture image's root as Podman's own overlay
/// mount of a container presents it (`podman mount`, the rootfs runc would
/// start in, every layer from the store) lists exactly like umoci's unpack.
#[test]
fn a_torture_image_from_the_store_lists_like_umocis_unpack_in_podmans_rootfs() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let spec = support::image::torture_image(Compression::Gzip);
    let built: Vec<_> = spec.layers.iter().map(build_layer).collect();
    let (layout, _) = build_layout_from_layers(&work.path().join("t"), &spec, &built, "v1");
    let reference = format!("{}/als/torture-{}:v1", env.plain(), nonce());
    sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:v1 docker://{reference}",
        layout.dir.display()
    ));
    authed(&Lazyimg::new(env), &["index", "--push", &reference]).ok();
    let oracle =
        support::tools::unpack_with_umoci(&layout.dir, "v1", &work.path().join("bundle")).unwrap();
    let oracle = support::listing::listing(&oracle).unwrap();

    let lazyimg = Lazyimg::new(env);
    let store = LayerStore::start(&lazyimg);
    let podman = Podman::new(store.path());
    let digests: Vec<String> = built.iter().map(|l| l.digest.clone()).collect();
    podman.pull_from_store(&reference, &digests);
    let (id, _) = podman.ok(&["create", &reference, "/none"]);
    let (rootfs, _) = podman.ok(&["mount", id.trim()]);
    let got = support::listing::listing(Path::new(rootfs.trim()));
    podman.ok(&["umount", id.trim()]);
    podman.ok(&["rm", id.trim()]);
    let differences = support::listing::diff_listings(&oracle, &got.unwrap());
    assert!(
        differences.is_empty(),
        "Podman's rootfs vs umoci:\n{}\n{}",
        differences.join("\n"),
        store.daemon.log()
    );
}
