//! `lazyimg diff` against a real registry: an image and a rebuild that
//! changes entries every way a layer can (content, metadata, both, type,
//! whiteouts, an opaque directory) give exactly those changes; eStargz and
//! zstd:chunked images compare without fetching content, and `--no-fetch`
//! marks what only reading could tell.

mod support;

use std::path::Path;

use support::estargz::build_estargz_layer;
use support::image::*;
use support::registry::Registry;
use support::testenv::{Lazyimg, build_layout_from_layers};
use support::tools::push_layout;
use support::zstd_chunked::convert_to_zstd_chunked;

/// The layer both images start with.
fn base() -> LayerSpec {
    LayerSpec::new(vec![
        dir("dev"),
        char_dev("dev/null", 1, 3),
        dir("dir2file"),
        file("dir2file/inner", "i"),
        dir("etc"),
        file("etc/both", "bb"),
        file("etc/caps", "c"),
        file("etc/content", "aaaa"),
        file("etc/gone", "x"),
        file("etc/keep", "same"),
        file("etc/meta", "m"),
        file("etc/mtime", "t"),
        file("etc/owned", "o"),
        file("file2dir", "f"),
        file("file2link", "l"),
        symlink("link2file", "etc/keep"),
        dir("opq"),
        file("opq/kept", "k"),
        file("opq/old", "o"),
        symlink("retarget", "etc/keep"),
    ])
}

/// The rebuild's own layer, over [`base`].
fn rebuild() -> LayerSpec {
    LayerSpec::new(vec![
        char_dev("dev/null", 1, 5),
        whiteout("dir2file"),
        file("dir2file", "d"),
        file("etc/both", "bbb").mode(0o600),
        file("etc/caps", "c").xattr("security.capability", [1, 0, 0, 2]),
        file("etc/content", "bbbb"),
        whiteout("etc/gone"),
        file("etc/meta", "m").mode(0o600),
        file("etc/mtime", "t").mtime(5),
        file("etc/owned", "o").owner(1000, 1000),
        whiteout("file2dir"),
        dir("file2dir"),
        file("file2dir/x", "x"),
        whiteout("file2link"),
        symlink("file2link", "etc/keep"),
        whiteout("link2file"),
        file("link2file", "z"),
        dir("new"),
        file("new/file", "n"),
        opaque("opq"),
        file("opq/kept", "k"),
        symlink("retarget", "etc/meta"),
    ])
}

/// Every change from [`base`] to the rebuild, and nothing else.
const CHANGES: &[&str] = &[
    "M /dev/null (device)",
    "M /dir2file (type, mode)",
    "D /dir2file/inner",
    "M /etc/both (mode, size, content)",
    "M /etc/caps (xattrs)",
    "M /etc/content (content)",
    "D /etc/gone",
    "M /etc/meta (mode)",
    "T /etc/mtime (mtime)",
    "M /etc/owned (owner)",
    "M /file2dir (type, mode)",
    "A /file2dir/x",
    "M /file2link (type, mode)",
    "M /link2file (type, mode)",
    "A /new",
    "A /new/file",
    "D /opq/old",
    "M /retarget (target)",
];

/// Two images on a logging registry: `a` of the base layer alone, `b` of
/// it and the rebuild's layer, and every layer blob's digest.
struct Pair {
    registry: Registry,
    a: String,
    b: String,
    layers: Vec<String>,
}

/// How a pair's layers are stored.
#[derive(Clone, Copy, PartialEq)]
enum Form {
    /// gzip, with a lazyimg index pushed for each image.
    GzipIndexed,
    /// eStargz, chunks of at most 4 bytes.
    Estargz,
    /// Converted to zstd:chunked by skopeo.
    ZstdChunked,
}

fn push_pair(work: &Path, form: Form) -> Pair {
    let build = |spec: LayerSpec| match form {
        Form::Estargz => build_estargz_layer(&spec, 4),
        _ => build_layer(&spec.compression(Compression::Gzip)),
    };
    let (base, top) = (build(base()), build(rebuild()));
    let registry = Registry::start_logging().unwrap();
    let mut refs = Vec::new();
    let mut layers = Vec::new();
    for (tag, built) in [("a", vec![base.clone()]), ("b", vec![base, top])] {
        let spec = ImageSpec::new(Vec::new());
        let (layout, image) = build_layout_from_layers(&work.join(tag), &spec, &built, tag);
        let (dir, digests) = match form {
            Form::ZstdChunked => {
                let converted =
                    convert_to_zstd_chunked(&layout.dir, tag, &work.join(format!("{tag}-zstd")))
                        .unwrap();
                let digests = converted.layers.iter().map(|l| l.digest.clone()).collect();
                (converted.layout_dir, digests)
            }
            _ => (
                layout.dir,
                image.layers.iter().map(|l| l.digest.clone()).collect(),
            ),
        };
        layers.extend::<Vec<String>>(digests);
        let reference = registry.reference(&format!("diff/img:{tag}"));
        push_layout(&dir, tag, &reference, registry.push_opts()).unwrap();
        if form == Form::GzipIndexed {
            Lazyimg::for_registry(&registry)
                .run(&["index", "--push", &reference])
                .ok();
        }
        refs.push(reference);
    }
    // The base layer is both images'.
    layers.sort();
    layers.dedup();
    let b = refs.pop().unwrap();
    let a = refs.pop().unwrap();
    Pair {
        registry,
        a,
        b,
        layers,
    }
}

fn lines(stdout: &str) -> Vec<&str> {
    stdout.lines().collect()
}

/// Layer blob requests in the registry's log after `mark` bytes.
fn layer_gets(pair: &Pair, mark: usize) -> Vec<String> {
    pair.layers
        .iter()
        .flat_map(|digest| pair.registry.blob_gets(digest, mark))
        .collect()
}

#[test]
fn diff_of_a_rebuild_lists_every_change_and_nothing_else() {
    let work = tempfile::tempdir().unwrap();
    let pair = push_pair(work.path(), Form::GzipIndexed);
    let lazyimg = Lazyimg::for_registry(&pair.registry);
    let out = lazyimg.run(&["diff", &pair.a, &pair.b]).ok();
    assert_eq!(lines(&out.stdout()), CHANGES);

    // The same, one JSON object per line; b→a reverses additions and removals.
    let json = lazyimg.run(&["diff", "--json", &pair.a, &pair.b]).ok();
    let objects: Vec<serde_json::Value> = json
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), CHANGES.len());
    let both = &objects[3];
    assert_eq!(both["path"], "/etc/both");
    assert_eq!(both["status"], "M");
    assert_eq!(
        both["changes"],
        serde_json::json!(["mode", "size", "content"])
    );
    assert_eq!(
        (both["a"]["mode"].as_u64(), both["b"]["mode"].as_u64()),
        (Some(0o644), Some(0o600))
    );
    assert!(objects[2]["b"].is_null() && objects[2]["a"]["type"] == "file");
    let back = lazyimg.run(&["diff", &pair.b, &pair.a]).ok();
    let flipped: Vec<String> = CHANGES
        .iter()
        .map(|l| match l.split_at(2) {
            ("A ", path) => format!("D {path}"),
            ("D ", path) => format!("A {path}"),
            _ => l.to_string(),
        })
        .collect();
    assert_eq!(lines(&back.stdout()), flipped);

    // Under a path, and without fetching: files of the rebuild's layer
    // compare only by reading (gzip spans are cut anywhere), so they are
    // "maybe changed"; files of the shared layer are the same unread.
    let mark = pair.registry.log().len();
    let fresh = Lazyimg::for_registry(&pair.registry);
    let out = fresh
        .run(&["diff", "--no-fetch", &pair.a, &pair.b, "etc"])
        .ok();
    assert_eq!(
        lines(&out.stdout()),
        [
            "M /etc/both (mode, size, content)",
            "M /etc/caps (xattrs, content?)",
            "? /etc/content (content?)",
            "D /etc/gone",
            "M /etc/meta (mode, content?)",
            "? /etc/mtime (content?; mtime)",
            "M /etc/owned (owner, content?)",
        ]
    );
    assert_eq!(layer_gets(&pair, mark), Vec::<String>::new());
}

/// For images whose layers carry chunk digests (eStargz, zstd:chunked) the
/// diff reads no content: the same changes with or without `--no-fetch`, and
/// no layer blob request once the tables of contents are cached.
fn diff_fetches_no_content(form: Form) {
    let work = tempfile::tempdir().unwrap();
    let pair = push_pair(work.path(), form);
    let lazyimg = Lazyimg::for_registry(&pair.registry);
    // Tables of contents are metadata, read from the blobs' ends: fetch
    // them first, so that what the diff asks for afterwards is its own.
    let before = pair.registry.log().len();
    for reference in [&pair.a, &pair.b] {
        lazyimg.run(&["ls", "-R", reference]).ok();
    }
    assert!(
        !layer_gets(&pair, before).is_empty(),
        "the log shows the TOC reads"
    );
    let mark = pair.registry.log().len();
    let out = lazyimg.run(&["diff", &pair.a, &pair.b]).ok();
    assert_eq!(lines(&out.stdout()), CHANGES);
    // Chunk digests told every file apart: not one is left to reading.
    let unread = lazyimg.run(&["diff", "--no-fetch", &pair.a, &pair.b]).ok();
    assert_eq!(lines(&unread.stdout()), CHANGES);
    assert_eq!(layer_gets(&pair, mark), Vec::<String>::new());
}

#[test]
fn diff_of_estargz_images_fetches_no_content() {
    diff_fetches_no_content(Form::Estargz);
}

#[test]
fn diff_of_zstd_chunked_images_fetches_no_content() {
    diff_fetches_no_content(Form::ZstdChunked);
}
