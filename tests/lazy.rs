//! Lazy mounts end to end, against the real HTTPS + token registry: the tree
//! appears before any layer blob is fetched, file contents arrive by Range
//! requests and are verified, and the result equals an independent unpack.
//! All three sources are covered: a lazyimg index pushed beside a plain gzip
//! image, eStargz layers (written by tests/support), zstd:chunked (by skopeo).
//! Then the failure cases: a changed byte, a registry that hangs or dies, and
//! many readers of one cold file.

mod support;

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use support::estargz::build_estargz_layer;
use support::image::*;
use support::listing::{diff_listings, listing};
use support::registry::Registry;
use support::testenv::{
    Lazyimg, Mounted, TestEnv, authed, build_layout, build_layout_from_layers, nonce, testenv,
    unique_image,
};
use support::tools::{push_layout, unpack_with_umoci};
use support::zstd_chunked::convert_to_zstd_chunked;

/// eStargz chunk size in tests: small, so bigger files span several chunks.
const ESTARGZ_CHUNK: usize = 64 << 10;

/// The umoci unpack of the gzip torture image: the oracle for every format
/// (their layers hold the same tars).
fn torture_oracle(work: &Path) -> Vec<String> {
    let (layout, _) = build_layout(
        &work.join("oracle"),
        &torture_image(Compression::Gzip),
        "gz",
    );
    let rootfs = unpack_with_umoci(&layout.dir, "gz", &work.join("bundle")).expect("umoci unpack");
    listing(&rootfs).expect("listing of the umoci unpack")
}

fn push(env: &TestEnv, layout_dir: &Path, tag: &str, repo_tag: &str) -> String {
    env.push_upstream(layout_dir, tag, repo_tag, false);
    format!("{}/{repo_tag}", env.upstream())
}

/// Mounts `reference` with an empty cache and checks the lazy contract: the
/// tree is served before any layer blob is fetched, no layer is fetched whole,
/// every chunk verifies, and the tree equals `oracle`.
fn assert_mounts_lazily(reference: &str, layers: &[String], oracle: &[String]) {
    let lazyimg = Lazyimg::new(testenv());
    let mounted = Mounted::new(&lazyimg, reference, &[]);
    let cached = lazyimg.cached_blobs();
    for layer in layers {
        assert!(
            !cached.contains(layer),
            "layer {layer} was fetched at mount"
        );
    }
    assert_eq!(lazyimg.stats(&mounted)["bytes_fetched"], 0);

    let tree = listing(&mounted.path).unwrap();
    let diffs = diff_listings(oracle, &tree);
    assert!(
        diffs.is_empty(),
        "lazy mount differs from umoci:\n{}",
        diffs.join("\n")
    );

    let after = lazyimg.stats(&mounted);
    assert!(after["chunks_fetched"].as_u64().unwrap() > 0, "{after}");
    assert_eq!(after["verification_failures"], 0, "{after}");
    assert_eq!(after["whole_blob_fallbacks"], 0, "{after}");
    let cached = lazyimg.cached_blobs();
    for layer in layers {
        assert!(!cached.contains(layer), "layer {layer} was fetched whole");
    }
}

fn layer_digests(image: &BuiltImage) -> Vec<String> {
    image.layers.iter().map(|l| l.digest.clone()).collect()
}

#[test]
fn a_gzip_image_with_a_pushed_lazyimg_index_mounts_lazily_and_matches_umoci() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let (layout, image) = build_layout(
        &work.path().join("img"),
        &torture_image(Compression::Gzip),
        "gz",
    );
    let reference = push(
        env,
        &layout.dir,
        "gz",
        &format!("lazy/torture-gzip-{}:1", nonce()),
    );

    // Without an index the layers are fetched whole, and the user is told why.
    let before = Lazyimg::new(env);
    let inspect = authed(&before, &["inspect", &reference]).ok();
    assert!(
        inspect
            .stdout()
            .contains("`lazyimg index --push` makes it lazy"),
        "{}",
        inspect.stdout()
    );

    let indexer = Lazyimg::new(env);
    let pushed = authed(&indexer, &["index", "--push", &reference]).ok();
    assert!(
        pushed.stdout().trim().starts_with("sha256:"),
        "{}",
        pushed.stderr()
    );
    let inspect = authed(&before, &["inspect", &reference]).ok();
    assert_eq!(
        inspect.stdout().matches("lazy: lazyimg index").count(),
        image.layers.len()
    );

    assert_mounts_lazily(
        &reference,
        &layer_digests(&image),
        &torture_oracle(work.path()),
    );
}

#[test]
fn an_estargz_image_mounts_lazily_and_matches_umoci() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let spec = torture_image(Compression::Gzip);
    let layers: Vec<BuiltLayer> = spec
        .layers
        .iter()
        .map(|l| build_estargz_layer(l, ESTARGZ_CHUNK))
        .collect();
    let mut layout = OciLayout::create(&work.path().join("esgz"));
    let image = layout.add_image_from_layers(&spec, &layers);
    layout.tag("esgz", &image.manifest);
    let reference = push(env, &layout.dir, "esgz", "lazy/torture-estargz:1");
    assert_mounts_lazily(
        &reference,
        &layer_digests(&image),
        &torture_oracle(work.path()),
    );
}

#[test]
fn a_zstd_chunked_image_mounts_lazily_and_matches_umoci_of_the_gzip_build() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let (gzip, _) = build_layout(
        &work.path().join("gz"),
        &torture_image(Compression::Gzip),
        "t",
    );
    let converted = convert_to_zstd_chunked(&gzip.dir, "t", &work.path().join("zstd")).unwrap();
    let reference = push(
        env,
        &converted.layout_dir,
        "t",
        "lazy/torture-zstd-chunked:1",
    );
    let layers: Vec<String> = converted.layers.iter().map(|l| l.digest.clone()).collect();
    assert_mounts_lazily(&reference, &layers, &torture_oracle(work.path()));
}

/// An eStargz image whose content no other test shares, with a victim file
/// and a bystander file in one layer.
fn unique_estargz_image(work: &Path, label: &str) -> (OciLayout, BuiltImage) {
    let n = nonce();
    let spec = ImageSpec::new(vec![LayerSpec::new(vec![
        dir("data"),
        file(
            "data/victim.bin",
            [n.as_bytes(), &prng_bytes(41, 300 << 10)].concat(),
        ),
        file("data/bystander.txt", format!("{label} {n}\n")),
    ])]);
    let layers = vec![build_estargz_layer(&spec.layers[0], ESTARGZ_CHUNK)];
    build_layout_from_layers(&work.join(label), &spec, &layers, label)
}

fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[test]
fn a_changed_byte_in_the_registry_fails_that_file_with_eio_every_time() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let (layout, image) = unique_estargz_image(work.path(), "corrupt");
    let reference = push(
        env,
        &layout.dir,
        "corrupt",
        &format!("lazy/corrupt:{}", nonce()),
    );
    // Flip one byte in the middle of the layer, inside the victim's chunks.
    let blob = env.upstream_blob_file(&image.layers[0].digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&blob, bytes).unwrap();

    let lazyimg = Lazyimg::new(env);
    let mounted = Mounted::new(&lazyimg, &reference, &[]);
    let victim = mounted.path.join("data/victim.bin");
    for trial in 0..5 {
        let err = read_file(&victim).expect_err("a corrupted file must not read");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "trial {trial}: {err}");
        let bystander = std::fs::read_to_string(mounted.path.join("data/bystander.txt")).unwrap();
        assert!(bystander.starts_with("corrupt "), "{bystander}");
    }
    let report = lazyimg.stats(&mounted);
    assert!(
        report["verification_failures"].as_u64().unwrap() >= 5,
        "{report}"
    );
    let log = daemon_log(&lazyimg);
    assert!(
        log.contains("failed verification") && log.contains(&image.layers[0].digest),
        "the log names the layer digest:\n{log}"
    );
    // `lazyimg cat` (no mount, a cache of its own) reads through the same
    // engine: the same verification error, on stderr, and no bytes out.
    let cat = authed(&Lazyimg::new(env), &["cat", &reference, "/data/victim.bin"]);
    assert!(!cat.success(), "cat of a corrupted file succeeded");
    assert!(cat.stdout().is_empty(), "unverified bytes went out");
    let stderr = cat.stderr();
    assert!(
        stderr.contains("failed verification") && stderr.contains(&image.layers[0].digest),
        "{stderr}"
    );
    let bystander = authed(
        &Lazyimg::new(env),
        &["cat", &reference, "/data/bystander.txt"],
    )
    .ok();
    assert!(bystander.stdout().starts_with("corrupt "));
}

fn daemon_log(lazyimg: &Lazyimg) -> String {
    let logs = lazyimg.cache().join("logs");
    std::fs::read_dir(logs)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

#[test]
fn a_registry_that_hangs_or_dies_gives_eio_in_time_and_reads_recover() {
    let mut registry = Registry::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (layout, _) = unique_estargz_image(work.path(), "outage");
    let reference = registry.reference("lazy/outage:1");
    push_layout(&layout.dir, "outage", &reference, registry.push_opts()).unwrap();
    let config = format!(
        "[network]\nread_timeout = 3\nattempts = 1\n\
         [[registry]]\nprefix = {:?}\ninsecure = true\n",
        registry.addr
    );
    let lazyimg = Lazyimg::with_config(testenv(), &config);
    let mounted = Mounted::new(&lazyimg, &reference, &[]);
    let victim = mounted.path.join("data/victim.bin");
    let bystander = mounted.path.join("data/bystander.txt");
    assert!(read_file(&bystander).unwrap().starts_with(b"outage "));

    // Frozen: connections open but nothing answers.
    registry.signal(libc::SIGSTOP);
    let started = Instant::now();
    let err = read_file(&victim).expect_err("no registry, no bytes");
    let waited = started.elapsed();
    registry.signal(libc::SIGCONT);
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(waited < Duration::from_secs(15), "EIO took {waited:?}");
    assert!(
        read_file(&victim).is_ok(),
        "reads work once the registry answers"
    );

    // Killed: refused connections, then the registry comes back.
    let lazyimg2 = Lazyimg::with_config(testenv(), &config);
    let mounted2 = Mounted::new(&lazyimg2, &reference, &[]);
    let victim2 = mounted2.path.join("data/victim.bin");
    registry.signal(libc::SIGKILL);
    let started = Instant::now();
    let err = read_file(&victim2).expect_err("no registry, no bytes");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "EIO took {:?}",
        started.elapsed()
    );
    registry.restart().unwrap();
    assert_eq!(read_file(&victim2).unwrap(), read_file(&victim).unwrap());
}

#[test]
fn sixty_four_readers_of_one_cold_300_mib_file_get_identical_bytes_and_each_chunk_once() {
    const SIZE: usize = 300 << 20;
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let content = prng_bytes(64, SIZE);
    let spec = ImageSpec::new(vec![
        LayerSpec::new(vec![dir("big"), file("big/file.bin", content.clone())])
            .compression(Compression::Gzip),
    ]);
    let (layout, image) = build_layout(&work.path().join("big"), &spec, "big");
    let reference = push(env, &layout.dir, "big", "lazy/readers:1");
    let indexer = Lazyimg::new(env);
    authed(&indexer, &["index", "--push", &reference]).ok();

    let lazyimg = Lazyimg::new(env);
    let mounted = Mounted::new(&lazyimg, &reference, &[]);
    let path = mounted.path.join("big/file.bin");
    let start = std::sync::Barrier::new(64);
    std::thread::scope(|scope| {
        for reader in 0..64usize {
            let (path, content, start) = (&path, &content, &start);
            scope.spawn(move || {
                let mut file = std::fs::File::open(path).unwrap();
                let mut buf = vec![0u8; 1 << 20];
                let mut at = 0;
                start.wait();
                loop {
                    let n = file.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    assert!(
                        buf[..n] == content[at..at + n],
                        "reader {reader}: wrong bytes at {at}"
                    );
                    at += n;
                }
                assert_eq!(at, SIZE, "reader {reader}");
            });
        }
    });
    let report = lazyimg.stats(&mounted);
    // Each span and each window fetched once: no more bytes than the layer
    // and its windows blob (about 32 KiB per span) hold.
    let layer_size = image.layers[0].size;
    let windows_allowance = (layer_size >> 20) * (32 << 10) + (1 << 20);
    let fetched = report["bytes_fetched"].as_u64().unwrap();
    assert!(fetched >= layer_size, "{report}");
    assert!(
        fetched <= layer_size + windows_allowance,
        "a chunk was fetched twice: {report}"
    );
    assert_eq!(report["verification_failures"], 0, "{report}");
    assert_eq!(report["fetch_failures"], 0, "{report}");
}

#[test]
fn record_then_prefetch_and_background_fetch_keep_the_image_working_offline() {
    let registry = Registry::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (layout, _) = unique_estargz_image(work.path(), "prefetch");
    let reference = registry.reference("lazy/prefetch:1");
    push_layout(&layout.dir, "prefetch", &reference, registry.push_opts()).unwrap();
    let config = format!(
        "[[registry]]\nprefix = {:?}\ninsecure = true\n",
        registry.addr
    );

    // A run that reads some files, recorded in the order first read.
    let list = work.path().join("prefetch.list");
    let recording = Lazyimg::with_config(testenv(), &config);
    let mounted = Mounted::new(
        &recording,
        &reference,
        &["--record", list.to_str().unwrap()],
    );
    read_file(&mounted.path.join("data/bystander.txt")).unwrap();
    read_file(&mounted.path.join("data/victim.bin")).unwrap();
    read_file(&mounted.path.join("data/bystander.txt")).unwrap();
    drop(mounted);
    assert_eq!(
        std::fs::read_to_string(&list).unwrap(),
        "/data/bystander.txt\n/data/victim.bin\n"
    );

    // Replayed first (only the small file, so the big one must come from the
    // background fetch), then everything else, with nothing read by hand.
    std::fs::write(&list, "/data/bystander.txt\n/no/such/file\n").unwrap();
    let lazyimg = Lazyimg::with_config(testenv(), &config);
    let flags = ["--prefetch", list.to_str().unwrap(), "--background-fetch"];
    let mounted = Mounted::new(&lazyimg, &reference, &flags);
    let mut last = u64::MAX;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let fetched = lazyimg.stats(&mounted)["bytes_fetched"].as_u64().unwrap();
        if fetched > 0 && fetched == last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the background fetch did not settle"
        );
        last = fetched;
    }
    drop(registry);
    let offline = listing(&mounted.path).expect("every file reads with the registry gone");
    assert!(offline.iter().any(|line| line.contains("victim.bin")));
    assert_eq!(lazyimg.stats(&mounted)["fetch_failures"], 0);
}

#[test]
fn a_prefetch_list_pushed_with_the_index_is_fetched_at_every_mount() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let (layout, _) = build_layout(&work.path().join("img"), &unique_image("prefetch", 2), "p");
    let reference = push(
        env,
        &layout.dir,
        "p",
        &format!("lazy/prefetch-{}:1", nonce()),
    );
    let list = work.path().join("list");
    std::fs::write(&list, "/layer1/data.bin\n").unwrap();
    let indexer = Lazyimg::new(env);
    authed(
        &indexer,
        &[
            "index",
            "--push",
            "--prefetch",
            list.to_str().unwrap(),
            &reference,
        ],
    )
    .ok();

    let lazyimg = Lazyimg::new(env);
    let mounted = Mounted::new(&lazyimg, &reference, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let fetched = loop {
        let fetched = lazyimg.stats(&mounted)["bytes_fetched"].as_u64().unwrap();
        if fetched > 0 {
            break fetched;
        }
        assert!(Instant::now() < deadline, "nothing was prefetched");
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(500));
    let data = read_file(&mounted.path.join("layer1/data.bin")).unwrap();
    assert_eq!(data, prng_bytes(8, 64 << 10));
    let after = lazyimg.stats(&mounted);
    assert_eq!(
        after["bytes_fetched"], fetched,
        "the listed file came from the cache: {after}"
    );
}
