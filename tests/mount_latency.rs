//! Mount latency (issue 10), end to end with a real registry and real FUSE:
//! a mount of a cached image makes no registry request before it is live
//! (read from the registry's own access log), contents it lacks still arrive
//! on first read, and `lazyimg mount -v` prints a timeline naming every phase.
//! No timing is asserted: `scripts/bench-mount-latency.sh` measures.

mod support;

use std::time::Duration;

use support::image::*;
use support::registry::{Registry, RegistryOpts};
use support::testenv::{Lazyimg, Mounted, authed, build_layout, nonce, testenv};
use support::tools::push_layout;

/// A plain-HTTP registry that logs every request, holding a fresh gzip image
/// with a lazyimg index pushed beside it: every layer mounts lazily.
/// Returns the registry, the reference, the config for it and the file
/// `data/big.bin`'s first bytes (unique to this run).
fn indexed_image() -> (Registry, String, String, String) {
    let registry = Registry::start_with(&RegistryOpts {
        access_log: true,
        ..Default::default()
    })
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let n = nonce();
    let spec = ImageSpec::new(vec![LayerSpec::new(vec![
        dir("data"),
        dir("data/deep"),
        dir("data/deep/er"),
        file("data/deep/er/small.txt", format!("latency {n}\n")),
        file(
            "data/big.bin",
            [n.as_bytes(), &prng_bytes(11, 2 << 20)].concat(),
        ),
    ])]);
    let (layout, _) = build_layout(&work.path().join("img"), &spec, "latency");
    let reference = registry.reference(&format!("latency/img-{n}:1"));
    push_layout(&layout.dir, "latency", &reference, registry.push_opts()).unwrap();
    let config = format!(
        "[[registry]]\nprefix = {:?}\ninsecure = true\n",
        registry.addr
    );
    let indexer = Lazyimg::with_config(testenv(), &config);
    authed(&indexer, &["index", "--push", &reference]).ok();
    (registry, reference, config, n)
}

/// The requests in an access log (Apache combined format: `"METHOD PATH …"`).
fn requests(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("\"GET /") || l.contains("\"HEAD /"))
        .collect()
}

#[test]
fn a_cached_mount_asks_the_registry_nothing_until_a_read_needs_content() {
    let (registry, reference, config, n) = indexed_image();
    let lazyimg = Lazyimg::with_config(testenv(), &config);
    // The first mount caches metadata and the index, and reads no content.
    drop(Mounted::new(&lazyimg, &reference, &[]));

    let before = registry.log().len();
    let mounted = Mounted::new(&lazyimg, &reference, &[]);
    let tree = std::fs::read_dir(mounted.path.join("data/deep/er"))
        .unwrap()
        .count();
    assert_eq!(tree, 1);
    // The registry logs a request once it has answered it: give a late line
    // time to show. Nothing reads contents meanwhile (no prefetch list).
    std::thread::sleep(Duration::from_millis(500));
    let log = registry.log();
    let early = requests(&log[before..]);
    assert!(
        early.is_empty(),
        "requests before any content was read: {early:#?}"
    );

    let read = std::fs::read(mounted.path.join("data/big.bin")).unwrap();
    assert!(read.starts_with(n.as_bytes()));
    assert_eq!(read.len(), n.len() + (2 << 20));
    let log = registry.log();
    let on_demand = requests(&log[before..]);
    assert!(
        on_demand.iter().any(|l| l.contains("/blobs/sha256:")),
        "the first read fetched no blob: {on_demand:#?}"
    );
}

#[test]
fn mount_v_prints_a_timeline_naming_every_phase() {
    let (_registry, reference, config, _) = indexed_image();
    let lazyimg = Lazyimg::with_config(testenv(), &config);
    let dir = tempfile::tempdir().unwrap();
    let cold = authed(
        &lazyimg,
        &["-v", "mount", &reference, dir.path().to_str().unwrap()],
    );
    let _mounted = Mounted {
        path: dir.path().to_path_buf(),
    };
    let stderr = cold.ok().stderr();
    let timeline: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split_once("timeline: ").map(|(_, t)| t))
        .collect();
    let phase = |name: &str| timeline.iter().find(|l| l.starts_with(name)).copied();
    for name in ["config", "credentials", "policy", "daemon"] {
        assert!(phase(name).is_some(), "no {name} phase in {timeline:#?}");
    }
    for name in [
        "config",
        "credentials",
        "policy",
        "cache lookup",
        "manifest",
        "index discovery",
        "index blobs",
        "index check",
        "tables of contents",
        "chunk maps stored",
        "whole layers",
        "layer maps",
        "tree load",
        "fuse mount",
    ] {
        let name = format!("daemon: {name}");
        assert!(phase(&name).is_some(), "no {name} phase in {timeline:#?}");
    }
    // Network phases say what they asked: the manifest (and auth) at least.
    let manifest = phase("daemon: manifest").unwrap();
    assert!(manifest.contains(" requests, "), "{manifest}");
    assert!(
        timeline.last().unwrap().starts_with("live after "),
        "{timeline:#?}"
    );
}
