//! The store's namespace without a mount: names, nodes, `info`.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::error::Error;
use crate::layer::test_tar::TestTar;
use crate::rootfs::{ContentReader, View};
use crate::tree::{ContentLocation, OverlayXattrs, layer_dir_name};

const REFERENCE: &str = "127.0.0.1:5000/ns/app:1";

fn digest(n: u8) -> Digest {
    Digest::of(&[n])
}

struct NoContent;

impl ContentReader for NoContent {
    fn read(&self, _: &ContentLocation, _: u64, _: usize) -> Result<Bytes> {
        Err(Error::NotCached(digest(0)))
    }
}

struct NoBlobs;

impl BlobReader for NoBlobs {
    fn read(&self, digest: &Digest, _: u64, _: u64, _: usize) -> Result<Bytes> {
        Err(Error::NotCached(*digest))
    }
}

/// Serves a two-layer image for [`REFERENCE`] only, counting resolutions.
struct TwoLayers(Arc<AtomicUsize>);

impl ImageResolver for TwoLayers {
    fn resolve(&self, reference: &str) -> Result<StoreImage> {
        self.0.fetch_add(1, Ordering::SeqCst);
        // Long enough for concurrent lookups to meet.
        std::thread::sleep(std::time::Duration::from_millis(20));
        if reference != REFERENCE {
            return Err(Error::NotCachedImage {
                image: reference.to_string(),
            });
        }
        let tables = [
            TestTar::new().dir("etc").file("etc/a", b"a").index(),
            TestTar::new().file("etc/b", b"bb").index(),
        ];
        let tree = View::Layers(OverlayXattrs::Trusted)
            .build(&tables)
            .expect("views");
        let layers = (0..2u8)
            .map(|n| StoreLayer {
                digest: digest(n),
                // The top layer has a table of contents.
                toc_digest: (n == 1).then(|| digest(20)),
                size: 100 + u64::from(n),
                view: tree
                    .lookup(ROOT_INO, &layer_dir_name(n.into()))
                    .expect("view"),
                info: LayerInfo::new(
                    &digest(n),
                    100,
                    Compression::Gzip,
                    &digest(10 + n),
                    None,
                    None,
                )
                .to_json(),
            })
            .collect();
        Ok(StoreImage {
            rootfs: Arc::new(RootFs {
                tree,
                content: Arc::new(NoContent),
                stats: None,
            }),
            layers,
            blobs: Arc::new(NoBlobs),
        })
    }
}

fn store() -> (LayerStore, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    (
        LayerStore::new(Box::new(TwoLayers(Arc::clone(&count)))),
        count,
    )
}

fn walk(store: &LayerStore, path: &[&str]) -> Option<Node> {
    path.iter().try_fold(Node::Root, |node, name| {
        store.lookup(node, OsStr::new(name))
    })
}

#[test]
fn reference_directories_are_padded_standard_base64() {
    // containers/storage overlay.go: base64.StdEncoding.EncodeToString.
    assert_eq!(reference_dir("a/b:c?"), "YS9iOmM/");
    assert_eq!(reference_dir("ab"), "YWI=");
    assert_eq!(reference_of(OsStr::new("YWI=")).as_deref(), Some("ab"));
    assert_eq!(reference_of(OsStr::new("not base64!")), None);
}

#[test]
fn info_is_the_containers_storage_layer_record() {
    let info = LayerInfo::new(
        &digest(1),
        1234,
        Compression::Gzip,
        &digest(2),
        Some(5120),
        Some(&digest(3)),
    );
    let json: serde_json::Value = serde_json::from_slice(&info.to_json()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "compressed-diff-digest": digest(1).to_string(),
            "compressed-size": 1234,
            "diff-digest": digest(2).to_string(),
            "diff-size": 5120,
            "toc-digest": digest(3).to_string(),
            "compression": 2,
        })
    );
    assert_eq!(
        LayerInfo::new(&digest(1), 1, Compression::Zstd, &digest(2), None, None).compression,
        4
    );
}

#[test]
fn inode_numbers_round_trip() {
    for node in [
        Node::Root,
        Node::Image(0),
        Node::Image(7),
        Node::Layer(0, 0),
        Node::Info(3, 5),
        Node::Blob(3, 5),
        Node::Tree(0, 1),
        Node::Tree(9, 123_456),
    ] {
        assert_eq!(Node::of(node.ino()), Some(node), "{node:?}");
    }
    assert_eq!(Node::of(0), None);
    assert_eq!(Node::of(2), None);
}

#[test]
fn a_layer_directory_holds_diff_info_and_blob() {
    let (store, count) = store();
    let dir = reference_dir(REFERENCE);
    let layer = digest(1).to_string();
    let diff = walk(&store, &[&dir, &layer, "diff"]).expect("diff");
    assert_eq!(store.parent(diff), walk(&store, &[&dir, &layer]));
    // The layer's own entries only, in overlay form.
    let etc = store.lookup(diff, OsStr::new("etc")).expect("etc");
    let names: Vec<_> = store
        .children(etc)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["b"]);
    let info = walk(&store, &[&dir, &layer, "info"]).unwrap();
    let bytes = store.read(info, 0, 4096).unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["diff-digest"], digest(11).to_string());
    assert!(matches!(store.kind(info), Some(NodeKind::File(n)) if n == bytes.len() as u64));
    let blob = walk(&store, &[&dir, &layer, "blob"]).unwrap();
    assert!(matches!(store.kind(blob), Some(NodeKind::File(101))));
    // The reference was resolved once for all those lookups.
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let listed: Vec<_> = store.children(Node::Root).unwrap();
    assert_eq!(listed, [(OsString::from(dir), Node::Image(0))]);
}

#[test]
fn unknown_names_are_absent_and_failed_references_are_retried() {
    let (store, count) = store();
    let dir = reference_dir(REFERENCE);
    assert_eq!(walk(&store, &[&dir, &digest(9).to_string()]), None);
    assert_eq!(walk(&store, &[&dir, "sha256:nothex"]), None);
    assert_eq!(
        walk(&store, &[&dir, &digest(0).to_string(), USE_FILE]),
        None
    );
    let other = reference_dir("127.0.0.1:5000/ns/other:1");
    assert_eq!(walk(&store, &[&other]), None);
    assert_eq!(walk(&store, &[&other]), None);
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[test]
fn concurrent_lookups_of_a_new_reference_resolve_it_once() {
    let (store, count) = store();
    let dir = reference_dir(REFERENCE);
    std::thread::scope(|scope| {
        let lookups: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| walk(&store, &[&dir])))
            .collect();
        for lookup in lookups {
            assert_eq!(lookup.join().unwrap(), Some(Node::Image(0)));
        }
    });
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn a_layer_with_a_table_of_contents_is_also_found_by_its_toc_digest() {
    let (store, _) = store();
    let dir = reference_dir(REFERENCE);
    let by_toc = walk(&store, &[&dir, &digest(20).to_string()]);
    assert_eq!(by_toc, walk(&store, &[&dir, &digest(1).to_string()]));
    assert!(by_toc.is_some());
    let image = walk(&store, &[&dir]).unwrap();
    let names: Vec<_> = store
        .children(image)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [digest(0), digest(1), digest(20)].map(|d| OsString::from(d.to_string()))
    );
}
