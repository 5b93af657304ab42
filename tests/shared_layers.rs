//! Layers shared between images, with one cache: a layer's chunk map is kept
//! once per layer digest and reused by every image holding that layer, so it
//! must work whichever image (repository, registry) reads it, and a tree must
//! never meet a map of another byte layout. Real registries, real FUSE mounts,
//! every file compared (content sha256 included) against an independent
//! unpack by umoci.

mod support;

use std::path::Path;

use support::estargz::{NO_PREFETCH_LANDMARK, TOC_NAME, build_estargz_layer};
use support::image::*;
use support::listing::{diff_listings, listing};
use support::registry::Registry;
use support::testenv::{Lazyimg, Mounted, authed, nonce, testenv};
use support::tools::{push_layout, unpack_with_umoci};

/// eStargz chunk size in these tests: small, so files span several chunks.
const ESTARGZ_CHUNK: usize = 64 << 10;

/// An image pushed to a registry, with what umoci unpacks from it.
struct Published {
    reference: String,
    oracle: Vec<String>,
    image: BuiltImage,
}

/// A base layer worth sharing: a file of incompressible bytes spanning
/// several gzip checkpoints, then small files. `base/a-late.txt` comes last
/// in the tar but first in the listing: read before the spans ahead of it, it
/// inflates from a checkpoint whose window must come from the lazyimg index's
/// windows blob (a sequential reader takes each window from the span before).
/// `n` makes the layer unique to this test and run.
fn base_layer(n: &str) -> LayerSpec {
    LayerSpec::new(vec![
        dir("base"),
        file("base/id.txt", format!("base {n}\n")),
        file(
            "base/big.bin",
            [n.as_bytes(), &prng_bytes(91, 4 << 20)].concat(),
        ),
        file("base/a-late.txt", format!("late {n}\n")),
        symlink("base/link", "id.txt"),
    ])
}

/// `base` with a small layer of `label`'s own on top.
fn image_on(base: &LayerSpec, label: &str, n: &str) -> ImageSpec {
    let own = LayerSpec::new(vec![
        dir(label),
        file(&format!("{label}/own.txt"), format!("{label} {n}\n")),
    ]);
    ImageSpec::new(vec![base.clone(), own])
}

/// Builds `layers` of `spec` into a layout under `work`, unpacks it with umoci
/// for the oracle, and pushes it with `push` (given the layout and its tag).
fn publish(
    work: &Path,
    spec: &ImageSpec,
    layers: &[BuiltLayer],
    label: &str,
    push: impl FnOnce(&Path, &str) -> String,
) -> Published {
    let mut layout = OciLayout::create(&work.join(label));
    let image = layout.add_image_from_layers(spec, layers);
    layout.tag(label, &image.manifest);
    let rootfs = unpack_with_umoci(&layout.dir, label, &work.join(format!("{label}-bundle")))
        .expect("umoci unpack");
    Published {
        reference: push(&layout.dir, label),
        oracle: listing(&rootfs).expect("listing of the umoci unpack"),
        image,
    }
}

/// Pushes to the shared HTTPS + token registry as `repo_tag`.
fn to_upstream(repo_tag: String) -> impl FnOnce(&Path, &str) -> String {
    move |layout, tag| {
        let env = testenv();
        env.push_upstream(layout, tag, &repo_tag, false);
        format!("{}/{repo_tag}", env.upstream())
    }
}

fn gzip_layers(spec: &ImageSpec) -> Vec<BuiltLayer> {
    spec.layers.iter().map(build_layer).collect()
}

/// `lazyimg index --push REFERENCE` with a cache of its own.
fn push_index(lazyimg_config: &str, reference: &str) {
    authed(
        &Lazyimg::with_config(testenv(), lazyimg_config),
        &["index", "--push", reference],
    )
    .ok();
}

/// Image B (indexed, in its own repository) and image A (another repository,
/// no index) on one base layer, both on the shared upstream registry.
fn indexed_b_and_plain_a(work: &Path) -> (Published, Published) {
    let n = nonce();
    let base = base_layer(&n);
    let b_spec = image_on(&base, "b", &n);
    let a_spec = image_on(&base, "a", &n);
    let b = publish(
        work,
        &b_spec,
        &gzip_layers(&b_spec),
        "b",
        to_upstream(format!("shared/b-{n}:1")),
    );
    let a = publish(
        work,
        &a_spec,
        &gzip_layers(&a_spec),
        "a",
        to_upstream(format!("shared/a-{n}:1")),
    );
    assert_eq!(
        a.image.layers[0].digest, b.image.layers[0].digest,
        "the base layer is shared"
    );
    push_index("", &b.reference);
    (b, a)
}

/// Every file of the mount at `root` reads, and the tree equals `oracle`.
fn assert_tree(root: &Path, oracle: &[String], what: &str) {
    let tree = listing(root).unwrap_or_else(|e| panic!("{what}: a file does not read: {e}"));
    let diffs = diff_listings(oracle, &tree);
    assert!(
        diffs.is_empty(),
        "{what} differs from umoci:\n{}",
        diffs.join("\n")
    );
}

#[test]
fn image_a_reads_every_file_after_indexed_image_b_with_its_base_layer_was_mounted() {
    let work = tempfile::tempdir().unwrap();
    let (b, a) = indexed_b_and_plain_a(work.path());
    let lazyimg = Lazyimg::new(testenv());
    // B's mount keeps its chunk maps; nothing of the base layer is read, so
    // A has to fetch all of it (windows included) itself.
    let mounted = Mounted::new(&lazyimg, &b.reference, &[]);
    assert!(mounted.path.join("base/big.bin").exists());
    drop(mounted);
    let mounted = Mounted::new(&lazyimg, &a.reference, &[]);
    assert_tree(&mounted.path, &a.oracle, "image A");
    // Lazily: the windows came from B's repository, which holds them.
    let base = &a.image.layers[0].digest;
    assert!(
        !lazyimg.cached_blobs().contains(base),
        "the base layer {base} was read whole"
    );
}

#[test]
fn indexed_image_b_reads_every_file_after_image_a_with_its_base_layer_was_mounted() {
    let work = tempfile::tempdir().unwrap();
    let (b, a) = indexed_b_and_plain_a(work.path());
    let lazyimg = Lazyimg::new(testenv());
    let mounted = Mounted::new(&lazyimg, &a.reference, &[]);
    assert!(mounted.path.join("base/big.bin").exists());
    drop(mounted);
    let mounted = Mounted::new(&lazyimg, &b.reference, &[]);
    assert_tree(&mounted.path, &b.oracle, "image B");
    drop(mounted);
    let mounted = Mounted::new(&lazyimg, &a.reference, &[]);
    assert_tree(&mounted.path, &a.oracle, "image A, mounted again");
}

#[test]
fn images_a_and_b_sharing_a_base_layer_mounted_at_once_read_every_file() {
    let work = tempfile::tempdir().unwrap();
    let (b, a) = indexed_b_and_plain_a(work.path());
    let lazyimg = Lazyimg::new(testenv());
    let mounted_b = Mounted::at(&lazyimg, &b.reference, "b", &[]);
    let mounted_a = Mounted::at(&lazyimg, &a.reference, "a", &[]);
    // A first: reading both at once would let B's daemon store the shared
    // layer's windows before A's asks for them, hiding where A fetches them.
    assert_tree(&mounted_a.path, &a.oracle, "image A");
    assert_tree(&mounted_b.path, &b.oracle, "image B");
}

#[test]
fn a_windows_blob_out_of_reach_falls_back_to_reading_the_shared_layer_whole() {
    // B, indexed, lives on another registry than A: the windows blob of B's
    // index is not in A's repository, and B's registry is gone by the time A
    // reads.
    let registry = Registry::start().unwrap();
    let config = format!(
        "[[registry]]\nprefix = {:?}\ninsecure = true\n",
        registry.addr
    );
    let work = tempfile::tempdir().unwrap();
    let n = nonce();
    let base = base_layer(&n);
    let b_spec = image_on(&base, "b", &n);
    let a_spec = image_on(&base, "a", &n);
    let b = publish(
        work.path(),
        &b_spec,
        &gzip_layers(&b_spec),
        "b",
        |layout, tag| {
            let reference = registry.reference(&format!("shared/b-{n}:1"));
            push_layout(layout, tag, &reference, registry.push_opts()).unwrap();
            reference
        },
    );
    let a = publish(
        work.path(),
        &a_spec,
        &gzip_layers(&a_spec),
        "a",
        to_upstream(format!("shared/a-{n}:1")),
    );
    push_index(&config, &b.reference);

    let lazyimg = Lazyimg::with_config(testenv(), &config);
    drop(Mounted::new(&lazyimg, &b.reference, &[]));
    drop(registry);
    let mounted = Mounted::new(&lazyimg, &a.reference, &[]);
    assert_tree(&mounted.path, &a.oracle, "image A");
    let base_digest = &a.image.layers[0].digest;
    assert!(
        lazyimg.cached_blobs().contains(base_digest),
        "the base layer {base_digest} was read whole"
    );
}

/// The listing without eStargz's own entries: the table of contents hides
/// them (as stargz-snapshotter does), while a lazyimg index of the same blob
/// and umoci, reading it as the plain tar it also is, show them.
fn without_estargz_bookkeeping(listing: &[String]) -> Vec<String> {
    let bookkeeping = [TOC_NAME, NO_PREFETCH_LANDMARK].map(|name| format!("{name:?} "));
    listing
        .iter()
        .filter(|line| !bookkeeping.iter().any(|b| line.starts_with(b.as_str())))
        .cloned()
        .collect()
}

fn assert_estargz_tree(root: &Path, oracle: &[String], what: &str) {
    let tree = listing(root).unwrap_or_else(|e| panic!("{what}: a file does not read: {e}"));
    let diffs = diff_listings(
        &without_estargz_bookkeeping(oracle),
        &without_estargz_bookkeeping(&tree),
    );
    assert!(
        diffs.is_empty(),
        "{what} differs from umoci:\n{}",
        diffs.join("\n")
    );
}

#[test]
fn two_images_sharing_an_estargz_layer_through_its_toc_and_a_lazyimg_index_first_mounted_at_once_read_every_file()
 {
    let work = tempfile::tempdir().unwrap();
    let n = nonce();
    let base = base_layer(&n);
    let toc_spec = image_on(&base, "toc", &n);
    let indexed_spec = image_on(&base, "indexed", &n);
    let estargz = |spec: &ImageSpec| -> Vec<BuiltLayer> {
        spec.layers
            .iter()
            .map(|l| build_estargz_layer(l, ESTARGZ_CHUNK))
            .collect()
    };
    let by_toc = publish(
        work.path(),
        &toc_spec,
        &estargz(&toc_spec),
        "toc",
        to_upstream(format!("shared/toc-{n}:1")),
    );
    let by_index = publish(
        work.path(),
        &indexed_spec,
        &estargz(&indexed_spec),
        "indexed",
        to_upstream(format!("shared/indexed-{n}:1")),
    );
    push_index("", &by_index.reference);

    // Which map of the shared layer each mount meets depends on who stores
    // it last: several fresh caches, each mounted twice (the second time
    // from the cache: saved maps and trees).
    for round in 0..3 {
        let lazyimg = Lazyimg::new(testenv());
        for pass in ["first", "second"] {
            // A mount point of its own per mount: fuser 0.18 unmounts a session's
            // path again when its session ends after an external unmount (its
            // already-unmounted check reads POLLERR the wrong way round), which
            // can take down a new mount made at once on the same path.
            let (toc_dir, indexed_dir) = (
                format!("toc-{round}-{pass}"),
                format!("indexed-{round}-{pass}"),
            );
            let (toc, indexed) = std::thread::scope(|scope| {
                let toc = scope.spawn(|| Mounted::at(&lazyimg, &by_toc.reference, &toc_dir, &[]));
                let indexed =
                    scope.spawn(|| Mounted::at(&lazyimg, &by_index.reference, &indexed_dir, &[]));
                (toc.join().unwrap(), indexed.join().unwrap())
            });
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    let what = format!("round {round}, {pass} mount through the TOC");
                    assert_estargz_tree(&toc.path, &by_toc.oracle, &what);
                });
                scope.spawn(|| {
                    let what = format!("round {round}, {pass} mount through the index");
                    assert_estargz_tree(&indexed.path, &by_index.oracle, &what);
                });
            });
        }
    }
}
