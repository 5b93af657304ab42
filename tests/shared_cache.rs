//! `shared_cache_dir` between nodes, against a real registry and real mounts:
//! a first wave of nodes fills the shared directory, a second wave with empty
//! local caches reads everything from it (no layer byte from the registry),
//! a damaged chunk there is refetched, and a read-only one still serves.

mod support;

use std::path::Path;

use support::image::*;
use support::registry::Registry;
use support::testenv::{Lazyimg, Mounted, build_layout, testenv};
use support::tools::push_layout;

struct Site {
    registry: Registry,
    reference: String,
    layer: String,
    files: Vec<(String, Vec<u8>)>,
}

/// A gzip image of a few files on a logging registry, with its index pushed.
fn site() -> Site {
    let registry = Registry::start_logging().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("data/f{i}.bin"), prng_bytes(40 + i, 3 << 20)))
        .collect();
    let mut entries = vec![dir("data")];
    entries.extend(files.iter().map(|(p, c)| file(p, c.clone())));
    let work = tempfile::tempdir().unwrap();
    let (layout, image) = build_layout(
        &work.path().join("img"),
        &ImageSpec::new(vec![LayerSpec::new(entries)]),
        "1",
    );
    let reference = registry.reference("shared/app:1");
    push_layout(&layout.dir, "1", &reference, registry.push_opts()).unwrap();
    node(&registry, None)
        .run(&["index", "--push", &reference])
        .ok();
    Site {
        layer: image.layers[0].digest.clone(),
        registry,
        reference,
        files,
    }
}

/// A node with its own empty cache, sharing `shared` if given.
fn node(registry: &Registry, shared: Option<&Path>) -> Lazyimg {
    let shared = shared.map_or(String::new(), |dir| format!("shared_cache_dir = {dir:?}\n"));
    Lazyimg::with_config(
        testenv(),
        &format!(
            "{shared}[[registry]]\nprefix = {:?}\ninsecure = true\n",
            registry.addr
        ),
    )
}

/// Mounts on `node`, reads every file, checks its bytes; returns the stats.
fn read_all(site: &Site, node: &Lazyimg) -> serde_json::Value {
    let mounted = Mounted::new(node, &site.reference, &[]);
    for (path, content) in &site.files {
        assert!(
            std::fs::read(mounted.path.join(path)).unwrap() == *content,
            "{path}: wrong bytes"
        );
    }
    node.stats(&mounted)
}

fn chunk_files(shared: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(shared.join("blobs/sha256"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Waits until the shared directory holds `count` files: chunks are written
/// there by each node's background writer, after they were served.
fn wait_for_chunks(shared: &Path, count: usize) {
    for _ in 0..200 {
        if chunk_files(shared).len() >= count {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("the shared cache holds {} files", chunk_files(shared).len());
}

#[test]
fn a_second_wave_reads_everything_from_the_shared_cache() {
    let site = site();
    let shared = tempfile::tempdir().unwrap();
    let first = read_all(&site, &node(&site.registry, Some(shared.path())));
    let chunks = first["chunks_fetched"].as_u64().unwrap() as usize;
    assert!(chunks > 0, "{first}");
    wait_for_chunks(shared.path(), chunks);

    let mark = site.registry.log().len();
    for _ in 0..2 {
        let stats = read_all(&site, &node(&site.registry, Some(shared.path())));
        assert_eq!(stats["bytes_fetched"], 0, "{stats}");
        assert!(stats["shared_cache_hits"].as_u64().unwrap() > 0, "{stats}");
    }
    assert!(
        site.registry.blob_gets(&site.layer, mark).is_empty(),
        "the second wave fetched layer bytes from the registry"
    );
}

#[test]
fn a_damaged_shared_chunk_is_refetched_and_a_read_only_cache_still_serves() {
    let site = site();
    let shared = tempfile::tempdir().unwrap();
    let first = read_all(&site, &node(&site.registry, Some(shared.path())));
    let chunks = first["chunks_fetched"].as_u64().unwrap() as usize;
    wait_for_chunks(shared.path(), chunks);

    let victim = chunk_files(shared.path()).remove(0);
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&victim, bytes).unwrap();
    let mark = site.registry.log().len();
    let stats = read_all(&site, &node(&site.registry, Some(shared.path())));
    assert!(stats["bytes_fetched"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["verification_failures"], 0, "{stats}");
    assert!(
        !site.registry.blob_gets(&site.layer, mark).is_empty(),
        "the damaged chunk was not refetched"
    );
    // The refetched chunk went back into the shared cache, intact.
    wait_for_chunks(shared.path(), chunks);

    // Read-only: a file where a write would create its directory makes every
    // write fail, root or not; reads still hit.
    let read_only = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(read_only.path().join("blobs")).unwrap();
    let copied = read_only.path().join("blobs/sha256");
    std::fs::create_dir(&copied).unwrap();
    for chunk in chunk_files(shared.path()) {
        std::fs::copy(&chunk, copied.join(chunk.file_name().unwrap())).unwrap();
    }
    let status = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&copied)
        .status();
    let immutable = status.is_ok_and(|s| s.success());
    let mark = site.registry.log().len();
    let stats = read_all(&site, &node(&site.registry, Some(read_only.path())));
    if immutable {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&copied)
            .status();
    }
    assert_eq!(stats["bytes_fetched"], 0, "{stats}");
    assert!(site.registry.blob_gets(&site.layer, mark).is_empty());
}
