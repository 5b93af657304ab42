use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::remote::{REMOTE_LABEL, RemoteLayers, SNAPSHOT_REF_LABEL};
use super::state::{Kind, RemoteLayer};
use super::{Error, Snapshotter};

const SERVED: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const UNSERVED: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// Serves layer [`SERVED`] from a directory, nothing else.
struct OneLayer(PathBuf);

impl RemoteLayers for OneLayer {
    fn lower_dir(&self, layer: &RemoteLayer) -> Option<PathBuf> {
        (layer.layer.to_string() == SERVED).then(|| self.0.clone())
    }
}

fn open(root: &Path, lower: &Path) -> Snapshotter {
    Snapshotter::open(root, Box::new(OneLayer(lower.to_path_buf()))).unwrap()
}

/// The labels containerd's unpacker sends for a layer `ctr-remote rpull` pulls.
fn layer_labels(chain_id: &str, digest: &str) -> BTreeMap<String, String> {
    [
        (SNAPSHOT_REF_LABEL, chain_id),
        (
            "containerd.io/snapshot/remote/stargz.reference",
            "reg:5000/a/b:1",
        ),
        ("containerd.io/snapshot/remote/stargz.digest", digest),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn option<'a>(options: &'a [String], name: &str) -> &'a str {
    options
        .iter()
        .find_map(|o| o.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {options:?}"))
}

#[test]
fn a_served_layer_is_committed_under_its_chain_id_and_reported_as_existing() {
    let (root, lower) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = open(root.path(), lower.path());
    let err = s
        .prepare(
            "extract-1 sha256:c1",
            None,
            layer_labels("sha256:c1", SERVED),
        )
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
    let info = s.stat("sha256:c1").unwrap();
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(info.labels[REMOTE_LABEL], "true");
    assert!(matches!(
        s.stat("extract-1 sha256:c1"),
        Err(Error::NotFound(_))
    ));
    // The container above it reads the served tree as its lower layer.
    let mounts = s
        .prepare("ctr", Some("sha256:c1"), BTreeMap::new())
        .unwrap();
    assert_eq!(
        mounts[0].kind, "overlay",
        "a writable upper over the served tree"
    );
    assert_eq!(
        std::fs::canonicalize(option(&mounts[0].options, "lowerdir=")).unwrap(),
        std::fs::canonicalize(lower.path()).unwrap()
    );
    let view = s.view("v", Some("sha256:c1"), BTreeMap::new()).unwrap();
    assert_eq!(
        std::fs::canonicalize(&view[0].source).unwrap(),
        std::fs::canonicalize(lower.path()).unwrap()
    );
    // Asked again (another namespace pulling the same image): exists already.
    let again = s.prepare(
        "extract-2 sha256:c1",
        None,
        layer_labels("sha256:c1", SERVED),
    );
    assert!(matches!(again, Err(Error::AlreadyExists(_))));
}

#[test]
fn an_unserved_layer_is_unpacked_locally_and_stacked_as_overlayfs_does() {
    let (root, lower) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = open(root.path(), lower.path());
    let mounts = s
        .prepare(
            "extract-1 sha256:c1",
            None,
            layer_labels("sha256:c1", UNSERVED),
        )
        .unwrap();
    assert_eq!(mounts[0].kind, "bind");
    std::fs::write(Path::new(&mounts[0].source).join("f"), b"layer 1").unwrap();
    s.commit("sha256:c1", "extract-1 sha256:c1", BTreeMap::new())
        .unwrap();
    assert!(
        !s.stat("sha256:c1")
            .unwrap()
            .labels
            .contains_key(REMOTE_LABEL)
    );
    let err = s
        .prepare(
            "extract-2 sha256:c2",
            Some("sha256:c1"),
            layer_labels("sha256:c2", SERVED),
        )
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)));
    let mounts = s
        .prepare("ctr", Some("sha256:c2"), BTreeMap::new())
        .unwrap();
    assert_eq!(mounts[0].kind, "overlay");
    let lowers: Vec<&str> = option(&mounts[0].options, "lowerdir=").split(':').collect();
    assert_eq!(lowers.len(), 2);
    assert_eq!(
        std::fs::canonicalize(lowers[0]).unwrap(),
        std::fs::canonicalize(lower.path()).unwrap(),
        "the nearest parent, the served layer, comes first"
    );
    assert_eq!(
        std::fs::read(Path::new(lowers[1]).join("f")).unwrap(),
        b"layer 1"
    );
    assert!(Path::new(option(&mounts[0].options, "workdir=")).is_dir());
    assert!(s.usage("sha256:c1").unwrap().inodes >= 2);
    assert_eq!(
        s.usage("sha256:c2").unwrap().size,
        0,
        "a remote layer uses no disk"
    );
}

#[test]
fn misuse_gets_the_codes_containerd_expects() {
    let (root, lower) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = open(root.path(), lower.path());
    s.prepare("a", None, BTreeMap::new()).unwrap();
    assert!(matches!(
        s.prepare("a", None, BTreeMap::new()),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        s.prepare("b", Some("nope"), BTreeMap::new()),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        s.prepare("b", Some("a"), BTreeMap::new()),
        Err(Error::InvalidArgument(_))
    ));
    s.commit("base", "a", BTreeMap::new()).unwrap();
    assert!(matches!(
        s.commit("x", "base", BTreeMap::new()),
        Err(Error::FailedPrecondition(_))
    ));
    assert!(matches!(
        s.mounts("base"),
        Err(Error::FailedPrecondition(_))
    ));
    s.prepare("c", Some("base"), BTreeMap::new()).unwrap();
    assert!(matches!(
        s.commit("base", "c", BTreeMap::new()),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        s.remove("base"),
        Err(Error::FailedPrecondition(_))
    ));
    s.remove("c").unwrap();
    s.remove("base").unwrap();
    assert!(matches!(s.remove("base"), Err(Error::NotFound(_))));
    assert!(
        std::fs::read_dir(root.path().join("snapshots"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn labels_update_by_field_mask() {
    let (root, lower) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = open(root.path(), lower.path());
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    s.prepare("a", None, labels(&[("x", "1"), ("y", "2")]))
        .unwrap();
    let info = s
        .update(
            "a",
            labels(&[("x", "3")]),
            &["labels.x".into(), "labels.y".into()],
        )
        .unwrap();
    assert_eq!(
        info.labels,
        labels(&[("x", "3")]),
        "y was in the mask, not the labels: deleted"
    );
    let info = s.update("a", labels(&[("z", "4")]), &[]).unwrap();
    assert_eq!(info.labels, labels(&[("z", "4")]));
    assert!(matches!(
        s.update("a", labels(&[]), &["parent".into()]),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_restarted_snapshotter_has_every_snapshot_and_cleans_orphans() {
    let (root, lower) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let before = {
        let s = open(root.path(), lower.path());
        let _ = s.prepare("extract sha256:c1", None, layer_labels("sha256:c1", SERVED));
        s.prepare("ctr", Some("sha256:c1"), BTreeMap::new())
            .unwrap();
        s.list()
    };
    // A directory a crash left before its record was saved.
    std::fs::create_dir(root.path().join("snapshots/99")).unwrap();
    let s = open(root.path(), lower.path());
    assert_eq!(s.list(), before);
    assert_eq!(s.mounts("ctr").unwrap()[0].kind, "overlay");
    s.cleanup().unwrap();
    assert!(!root.path().join("snapshots/99").exists());
    assert_eq!(s.list(), before);
    // Ids are not reused after a restart.
    s.prepare("new", None, BTreeMap::new()).unwrap();
    assert!(root.path().join("snapshots/3/fs").is_dir());
}
