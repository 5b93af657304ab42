//! Signed lazyimg indexes: a node that trusts the site's key mounts lazily
//! through an index the seeding step signed, and ignores (reading the layer
//! whole, verified) an index that is unsigned, signed by another key, or a
//! rogue one that maps file names to other files' bytes.

mod support;

use std::path::PathBuf;
use std::process::Command;

use lazyimg::config::Config;
use lazyimg::image::Descriptor;
use lazyimg::layer::EntryKind;
use lazyimg::lazy::index_artifact;
use lazyimg::reference::ImageRef;
use lazyimg::registry::{ClientOptions, RegistryClient};
use lazyimg::store::Store;
use support::image::*;
use support::registry::Registry;
use support::site::ces_pull;
use support::testenv::{Lazyimg, Mounted, build_layout, nonce, run, testenv};
use support::tools::push_layout;

/// Size of the big file: a small read fetches one ~1 MiB gzip span of it,
/// under 3 % of the layer.
const BIG: usize = 48 << 20;

/// Two files of one size and different content (a rogue index swaps them),
/// and a big one so that a lazy mount's fetch is a small part of the layer.
fn spec() -> ImageSpec {
    ImageSpec::new(vec![LayerSpec::new(vec![
        dir("data"),
        file("data/a.txt", b"A".repeat(5000)),
        file("data/b.txt", b"B".repeat(5000)),
        file("data/big.bin", prng_bytes(7, BIG)),
    ])])
}

struct Site {
    registry: Registry,
    reference: String,
    keys: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let registry = Registry::start().unwrap();
        let work = tempfile::tempdir().unwrap();
        let (layout, _) = build_layout(&work.path().join("img"), &spec(), "1");
        let reference = registry.reference("trust/image:1");
        push_layout(&layout.dir, "1", &reference, registry.push_opts()).unwrap();
        let keys = tempfile::tempdir().unwrap();
        for name in ["site", "other"] {
            lazyimg(&registry, "")
                .run(&["key", "generate", keys.path().join(name).to_str().unwrap()])
                .ok();
        }
        Site {
            registry,
            reference,
            keys,
        }
    }

    fn key(&self, name: &str, file: &str) -> PathBuf {
        self.keys.path().join(name).join(file)
    }

    /// `lazyimg index --push`, signed by key `name` (or unsigned).
    fn push_index(&self, signed_by: Option<&str>) {
        let extra = signed_by.map_or(String::new(), |name| {
            format!(
                "[index_signing]\nkey_file = {:?}\n",
                self.key(name, "index.key")
            )
        });
        lazyimg(&self.registry, &extra)
            .run(&["index", "--push", &self.reference])
            .ok();
    }

    /// A node that trusts the site key.
    fn trusting_node(&self) -> Lazyimg {
        let extra = format!(
            "trusted_index_keys = [{:?}]\n",
            self.key("site", "index.pub")
        );
        lazyimg(&self.registry, &extra)
    }
}

/// `extra` goes first in the file, so top-level keys stay top-level.
fn lazyimg(registry: &Registry, extra: &str) -> Lazyimg {
    let config = format!(
        "{extra}\n[[registry]]\nprefix = {:?}\ninsecure = true\n",
        registry.addr
    );
    Lazyimg::with_config(testenv(), &config)
}

fn read(mounted: &Mounted, path: &str) -> Vec<u8> {
    std::fs::read(mounted.path.join(path)).unwrap()
}

fn layer_cached_whole(node: &Lazyimg) -> bool {
    // The image has one layer; a blob over 6 MiB can only be the layer.
    node.cached_blobs().iter().any(|digest| {
        let path = node
            .cache()
            .join("blobs/sha256")
            .join(&digest["sha256:".len()..]);
        std::fs::metadata(path).is_ok_and(|m| m.len() > 6 << 20)
    })
}

#[test]
fn generated_keys_are_openssl_pem() {
    let keys = tempfile::tempdir().unwrap();
    let registry = Registry::start().unwrap();
    let dir = keys.path().join("k");
    lazyimg(&registry, "")
        .run(&["key", "generate", dir.to_str().unwrap()])
        .ok();
    let public = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(dir.join("index.key")))
    .ok();
    assert_eq!(
        public.stdout(),
        std::fs::read_to_string(dir.join("index.pub")).unwrap()
    );
    let again = lazyimg(&registry, "").run(&["key", "generate", dir.to_str().unwrap()]);
    assert!(!again.success(), "an existing key was overwritten");
}

#[test]
fn a_signed_index_is_used_lazily_by_a_node_that_trusts_its_key() {
    let site = Site::new();
    site.push_index(Some("site"));
    let node = site.trusting_node();
    let (mounted, daemon) = Mounted::with_daemon(&node, &site.reference, &[]);
    assert_eq!(read(&mounted, "data/a.txt"), b"A".repeat(5000));
    let stats = node.stats(&mounted);
    assert!(
        stats["bytes_fetched"].as_u64().unwrap() < (BIG as u64) * 3 / 100,
        "{stats}"
    );
    assert!(!layer_cached_whole(&node));
    assert!(
        !daemon.log().contains("ignoring its lazyimg index"),
        "{}",
        daemon.log()
    );
}

#[test]
fn unsigned_and_foreign_signed_indexes_are_ignored_and_the_layer_read_whole() {
    let site = Site::new();
    for (signed_by, reason) in [
        (None, "carries no signature"),
        (Some("other"), "which is not in trusted_index_keys"),
    ] {
        site.push_index(signed_by);
        let node = site.trusting_node();
        let (mounted, daemon) = Mounted::with_daemon(&node, &site.reference, &[]);
        assert_eq!(read(&mounted, "data/b.txt"), b"B".repeat(5000));
        assert!(
            layer_cached_whole(&node),
            "{signed_by:?}: the layer was not read whole"
        );
        let log = daemon.log();
        assert!(
            log.contains("ignoring its lazyimg index") && log.contains(reason),
            "{log}"
        );
    }
}

/// Pushes, unsigned, an index of the image whose entry table swaps the
/// contents of `data/a.txt` and `data/b.txt`: chunk digests all check out, so
/// only the signature can tell it from the real one.
fn push_rogue_index(site: &Site) {
    let node = lazyimg(&site.registry, "");
    node.run(&["pull", &site.reference]).ok();
    let config = Config::from_file(&node_config(&node)).unwrap();
    let store = Store::open(&node.cache(), u64::MAX).unwrap();
    let image = ImageRef::parse(&site.reference, &config).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = RegistryClient::new(&image.endpoint, None, &ClientOptions::default()).unwrap();
    let manifest_bytes = runtime
        .block_on(client.fetch_manifest(&image.source))
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let layer: Descriptor = serde_json::from_value(manifest["layers"][0].clone()).unwrap();
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(store.require(&config_digest).unwrap().bytes()).unwrap();
    let diff_id = config["rootfs"]["diff_ids"][0]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut built = index_artifact::build_layer(&store, &layer, &diff_id)
        .unwrap()
        .unwrap();
    let entries = &mut built.file.chunked.table.entries;
    let offset = |entries: &[lazyimg::layer::TarEntry], name: &str| {
        entries
            .iter()
            .position(|e| e.path.to_str() == Some(name))
            .unwrap()
    };
    let (a, b) = (offset(entries, "data/a.txt"), offset(entries, "data/b.txt"));
    let (EntryKind::Regular { offset: at_a, .. }, EntryKind::Regular { offset: at_b, .. }) =
        (entries[a].kind.clone(), entries[b].kind.clone())
    else {
        panic!("a.txt and b.txt are regular files");
    };
    let set = |entry: &mut lazyimg::layer::TarEntry, to: u64| {
        if let EntryKind::Regular { offset, .. } = &mut entry.kind {
            *offset = to;
        }
    };
    set(&mut entries[a], at_b);
    set(&mut entries[b], at_a);
    let subject = lazyimg::image::descriptor(
        manifest["mediaType"].as_str().unwrap(),
        &lazyimg::digest::Digest::of(&manifest_bytes),
        manifest_bytes.len() as u64,
        Default::default(),
    );
    runtime
        .block_on(index_artifact::push(
            &store,
            &client,
            &image,
            &subject,
            &[built],
            None,
            None,
        ))
        .unwrap();
}

fn node_config(node: &Lazyimg) -> PathBuf {
    node.cache().parent().unwrap().join("config.toml")
}

#[test]
fn a_rogue_index_serves_no_wrong_byte_on_a_node_that_trusts_the_site_key() {
    let site = Site::new();
    push_rogue_index(&site);

    // The rogue index is what an unchecking node would use: a.txt shows B.
    let unchecking = lazyimg(&site.registry, "");
    let (mounted, _) = Mounted::with_daemon(&unchecking, &site.reference, &[]);
    assert_eq!(
        read(&mounted, "data/a.txt"),
        b"B".repeat(5000),
        "the rogue index took no effect"
    );
    drop(mounted);

    let node = site.trusting_node();
    let (mounted, daemon) = Mounted::with_daemon(&node, &site.reference, &[]);
    assert_eq!(read(&mounted, "data/a.txt"), b"A".repeat(5000));
    assert_eq!(read(&mounted, "data/b.txt"), b"B".repeat(5000));
    assert!(layer_cached_whole(&node));
    assert!(
        daemon.log().contains("carries no signature"),
        "{}",
        daemon.log()
    );
}

/// `lazyimg stats --json MNT`: its report, and whether it exited 0.
fn stats(node: &Lazyimg, mounted: &Mounted) -> (serde_json::Value, bool) {
    let run = node.run(&["stats", "--json", mounted.path.to_str().unwrap()]);
    (serde_json::from_str(&run.stdout()).unwrap(), run.success())
}

/// Waits (60 s at most) until the daemon's log holds `line`.
fn wait_for_log(daemon: &support::testenv::Daemon, line: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !daemon.log().contains(line) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {line:?} in the log:\n{}",
            daemon.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_rogue_index_is_caught_by_the_background_whole_layer_check_on_a_node_without_keys() {
    let site = Site::new();
    push_rogue_index(&site);
    let node = lazyimg(&site.registry, "");
    let (mounted, daemon) = Mounted::with_daemon(&node, &site.reference, &["--background-fetch"]);
    wait_for_log(&daemon, "failed its whole-layer check");
    // b.txt was never read: nothing of the bad layer is served any more.
    let err = std::fs::read(mounted.path.join("data/b.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let (report, ok) = stats(&node, &mounted);
    assert_eq!(report["bad_layers"], 1, "{report}");
    assert!(!ok, "stats exits non-zero with a bad layer");
    let log = daemon.log();
    assert!(log.contains("places files differently"), "{log}");
    // The next mount reads the layer whole from the verified blob the check stored.
    drop(mounted);
    let (mounted, _) = Mounted::with_daemon(&node, &site.reference, &[]);
    assert_eq!(read(&mounted, "data/a.txt"), b"A".repeat(5000));
    assert_eq!(read(&mounted, "data/b.txt"), b"B".repeat(5000));
}

#[test]
fn an_honest_index_passes_the_background_whole_layer_check() {
    let site = Site::new();
    site.push_index(None);
    let node = lazyimg(&site.registry, "");
    let (mounted, daemon) = Mounted::with_daemon(&node, &site.reference, &["--background-fetch"]);
    wait_for_log(&daemon, "background fetch done");
    assert!(
        daemon.log().contains("whole-layer check passed"),
        "{}",
        daemon.log()
    );
    let (report, ok) = stats(&node, &mounted);
    assert_eq!(report["bad_layers"], 0, "{report}");
    assert!(ok);
    assert_eq!(read(&mounted, "data/b.txt"), b"B".repeat(5000));
    assert_eq!(
        read(&mounted, "data/big.bin"),
        prng_bytes(7, BIG),
        "the spans filled after the check are the layer's"
    );
}

/// An approved list whose rule for the image pins `pin` (`index_digest`).
fn pinned_node(site: &Site, dir: &std::path::Path, pin: &str) -> Lazyimg {
    let list = dir.join("approved.toml");
    let repository = site.reference.rsplit_once(':').unwrap().0;
    std::fs::write(
        &list,
        format!("[[image]]\nrepository = {repository:?}\nindex_digest = {pin:?}\n"),
    )
    .unwrap();
    let extra = format!(
        "approved_images = {list:?}\ntrusted_index_keys = [{:?}]\n",
        site.key("site", "index.pub")
    );
    lazyimg(&site.registry, &extra)
}

#[test]
fn an_index_pinned_by_the_approved_list_needs_no_signature_and_is_the_only_one_used() {
    let site = Site::new();
    let unsigned = lazyimg(&site.registry, "")
        .run(&["index", "--push", &site.reference])
        .ok()
        .stdout()
        .trim()
        .to_string();
    let lists = tempfile::tempdir().unwrap();

    // Pinned: used lazily although unsigned (the node trusts a key too).
    let node = pinned_node(&site, lists.path(), &unsigned);
    let (mounted, _) = Mounted::with_daemon(&node, &site.reference, &[]);
    assert_eq!(read(&mounted, "data/a.txt"), b"A".repeat(5000));
    assert!(!layer_cached_whole(&node));
    drop(mounted);

    // Another pin: even a correctly signed index is ignored.
    site.push_index(Some("site"));
    let other = format!("sha256:{}", "0".repeat(64));
    let node = pinned_node(&site, lists.path(), &other);
    let (mounted, daemon) = Mounted::with_daemon(&node, &site.reference, &[]);
    assert_eq!(read(&mounted, "data/a.txt"), b"A".repeat(5000));
    assert!(layer_cached_whole(&node));
    assert!(
        daemon.log().contains("not the index_digest"),
        "{}",
        daemon.log()
    );
}

/// A gzip layer whose uncompressed bytes miss the config's diff_id is refused
/// by `lazyimg index` with the same digest-mismatch error as `pull`, and a
/// mount of the image (no index can exist for it) fails the same way: a lazy
/// mount is never the one path that accepts it (issue 14, acceptance 6).
#[test]
fn a_layer_missing_its_diff_id_is_refused_by_index_pull_and_mount_alike() {
    let registry = Registry::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let spec = ImageSpec::new(vec![LayerSpec::new(vec![
        dir("data"),
        file("data/a.txt", b"A".repeat(5000)),
    ])]);
    let mut layers: Vec<BuiltLayer> = spec.layers.iter().map(build_layer).collect();
    let true_diff_id = layers[0].diff_id.clone();
    let wrong = format!("sha256:{}", sha256_hex(b"another tar"));
    layers[0].diff_id = wrong.clone();
    let (layout, _) =
        support::testenv::build_layout_from_layers(&work.path().join("img"), &spec, &layers, "1");
    let reference = registry.reference("trust/bad-diff-id:1");
    push_layout(&layout.dir, "1", &reference, registry.push_opts()).unwrap();

    let mismatch = |what: &str, args: &[&str]| {
        let node = lazyimg(&registry, "");
        let run = node.run(args);
        let stderr = run.stderr();
        assert!(!run.success(), "{what} accepted the image:\n{stderr}");
        assert!(
            stderr.contains("digest mismatch")
                && stderr.contains(&wrong)
                && stderr.contains(&true_diff_id),
            "{what}: {stderr}"
        );
        stderr
    };
    mismatch("index", &["index", "--push", &reference]);
    mismatch("pull", &["pull", &reference]);
    let mountpoint = work.path().join("mnt");
    std::fs::create_dir_all(&mountpoint).unwrap();
    mismatch(
        "mount",
        &["mount", &reference, mountpoint.to_str().unwrap()],
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(mountpoint.to_str().unwrap()), "{mounts}");
}

/// Bytes of blob `digest` a distribution registry sent, from the access-log
/// lines (`"GET /v2/…/blobs/DIGEST HTTP/1.1" STATUS BYTES …`) after byte `from`.
fn blob_bytes_served(log: &str, from: usize, digest: &str) -> u64 {
    let request = format!("/blobs/{digest} HTTP/");
    log[from..]
        .lines()
        .filter(|l| l.contains("\"GET /v2/") && l.contains(&request))
        .filter_map(|l| {
            let after = l.split("\" ").nth(1)?;
            after.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Issue 14, acceptance 7: a site proxy that is a pull-through cache takes
/// no pushes, so `ces-pull` puts the signed index in the `[index_store]`,
/// and a GPU node mounting the proxy name finds it there and reads lazily.
#[test]
fn a_pull_through_site_reads_lazily_through_the_signed_index_in_the_index_store() {
    let env = testenv();
    let repo = format!("trust/pull-through-{}", nonce());
    let work = tempfile::tempdir().unwrap();
    let (layout, image) = build_layout(&work.path().join("img"), &spec(), "1");
    env.push_upstream(&layout.dir, "1", &format!("{repo}:1"), false);
    let keys = tempfile::tempdir().unwrap();
    let keys_dir = keys.path().join("site");
    Lazyimg::new(env)
        .run(&["key", "generate", keys_dir.to_str().unwrap()])
        .ok();
    let index_store = format!(
        "[index_store]\nlocation = \"{}/lazyimg-indexes\"\n",
        env.plain()
    );

    let seeding = Lazyimg::with_config(
        env,
        &format!(
            "[index_signing]\nkey_file = {:?}\n{index_store}\
             [seed]\ntarget = {:?}\nmode = \"pull-through\"\n\
             [[registry]]\nprefix = \"ghcr.io\"\nlocation = {:?}\nca_file = {:?}\n",
            keys_dir.join("index.key"),
            env.proxy(),
            env.upstream(),
            env.ca(),
        ),
    );
    let pulled = ces_pull(
        &seeding,
        &[
            "charliecloud",
            env.user(),
            env.token(),
            &format!("ghcr.io/{repo}:1"),
        ],
        None,
    )
    .ok();
    assert!(
        pulled
            .stderr()
            .contains("1 lazyimg index(es) pushed to the index store"),
        "{}",
        pulled.stderr()
    );

    // The proxy commits what it served in the background; until then it
    // answers ranges with the whole blob (FACTS.md).
    let layer = image.layers[0].digest.as_str();
    let hex = layer.strip_prefix("sha256:").unwrap();
    let stored = std::path::Path::new(env.var("LAZYIMG_TEST_PROXY_DATA"))
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !stored.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{layer} never reached the proxy's storage"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let node = Lazyimg::with_config(
        env,
        &format!(
            "trusted_index_keys = [{:?}]\n{index_store}",
            keys_dir.join("index.pub")
        ),
    );
    let proxy_log = std::path::Path::new(env.var("LAZYIMG_TEST_PROXY_LOG"));
    let from = std::fs::read_to_string(proxy_log).unwrap().len();
    let (mounted, daemon) = Mounted::with_daemon(&node, &format!("{}/{repo}:1", env.proxy()), &[]);
    assert_eq!(read(&mounted, "data/a.txt"), b"A".repeat(5000));
    let served = blob_bytes_served(&std::fs::read_to_string(proxy_log).unwrap(), from, layer);
    let size = image.layers[0].size;
    assert!(
        served > 0 && served * 100 < size * 3,
        "the proxy served {served} bytes of the {size}-byte layer:\n{}",
        daemon.log()
    );
    assert!(!layer_cached_whole(&node));
}
