//! Which layers containerd need not download: the labels that name a
//! layer's image, and the layer store that serves it lazily.
//!
//! containerd's unpacker (unpacker.go, 1.6) prepares each layer with the
//! layer descriptor's annotations under `containerd.io/snapshot/` as labels,
//! plus `containerd.io/snapshot.ref` = the layer's chain ID. Two peers put the
//! image there (containerd docs/snapshotters/remote-snapshotter.md):
//! - CRI, with `disable_snapshot_annotations = false`:
//!   `containerd.io/snapshot/cri.image-ref` and `…/cri.layer-digest`
//!   (pkg/snapshotters/annotations.go);
//! - `ctr-remote image rpull`: `containerd.io/snapshot/remote/stargz.reference`
//!   and `…/remote/stargz.digest` (stargz-snapshotter fs/source/source.go).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::state::RemoteLayer;
use crate::rootfs::layer_store::reference_dir;

/// The label containerd sets to the chain ID a prepared layer will be
/// committed as (snapshots.go `labelSnapshotRef`).
pub const SNAPSHOT_REF_LABEL: &str = "containerd.io/snapshot.ref";

/// (image reference label, layer digest label) pairs, in order of preference.
const IMAGE_LABELS: [(&str, &str); 2] = [
    (
        "containerd.io/snapshot/cri.image-ref",
        "containerd.io/snapshot/cri.layer-digest",
    ),
    (
        "containerd.io/snapshot/remote/stargz.reference",
        "containerd.io/snapshot/remote/stargz.digest",
    ),
];

/// The label lazyimg adds to the snapshots it serves lazily; `ctr snapshots
/// info` shows it.
pub const REMOTE_LABEL: &str = "containerd.io/snapshot/lazyimg.remote";

/// The layer `labels` name, if they name one: the first pair of
/// [`IMAGE_LABELS`] present with a well-formed sha256 digest.
pub fn requested_layer(labels: &BTreeMap<String, String>) -> Option<RemoteLayer> {
    IMAGE_LABELS.iter().find_map(|(image, digest)| {
        Some(RemoteLayer {
            reference: labels.get(*image)?.clone(),
            layer: labels.get(*digest)?.parse().ok()?,
        })
    })
}

/// Where remote layers come from.
pub trait RemoteLayers: Send + Sync + 'static {
    /// The directory holding `layer` of `reference` as an overlayfs lower
    /// layer, when it can be served lazily; `None` when it cannot (unapproved
    /// image, no table of contents or lazyimg index, registry unreachable),
    /// and containerd then downloads and unpacks the layer itself. May block
    /// for as long as resolving the image takes.
    fn lower_dir(&self, layer: &RemoteLayer) -> Option<PathBuf>;
}

/// Podman's additional layer store, served by `lazyimg layer-store DIR`, as
/// the source of remote layers: `DIR/<base64 ref>/<digest>/diff` is the
/// layer's own tree in overlayfs lower format. Looking it up makes the store
/// resolve the image (approved list, manifest, chunk maps), and the store
/// answers ENOENT for any layer it cannot serve lazily.
pub struct LayerStoreDir(pub PathBuf);

impl LayerStoreDir {
    /// The path of `layer`'s tree in the store.
    pub fn diff_path(&self, layer: &RemoteLayer) -> PathBuf {
        self.0
            .join(reference_dir(&layer.reference))
            .join(layer.layer.to_string())
            .join("diff")
    }
}

impl RemoteLayers for LayerStoreDir {
    fn lower_dir(&self, layer: &RemoteLayer) -> Option<PathBuf> {
        let path = self.diff_path(layer);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => Some(path),
            Ok(_) => None,
            Err(e) => {
                tracing::info!(
                    "{} layer {}: not served lazily ({e}); containerd unpacks it",
                    layer.reference,
                    layer.layer
                );
                None
            }
        }
    }
}

/// Whether `dir` is a live FUSE mount point (statfs(2) says FUSE, and it is
/// on another device than its parent), as a layer store left serving by an
/// earlier snapshotter is.
pub fn is_live_fuse_mount(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    const FUSE_SUPER_MAGIC: libc::c_long = 0x6573_5546;
    let (Ok(meta), Some(parent)) = (std::fs::metadata(dir), dir.parent()) else {
        return false;
    };
    let Ok(parent_meta) = std::fs::metadata(parent) else {
        return false;
    };
    let Ok(c_path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs buffer of the right type.
    let ok = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } == 0;
    ok && stat.f_type == FUSE_SUPER_MAGIC && meta.dev() != parent_meta.dev()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cri_and_ctr_remote_labels_both_name_the_layer() {
        let cri = labels(&[
            ("containerd.io/snapshot/cri.image-ref", "reg:5000/a/b:1"),
            ("containerd.io/snapshot/cri.layer-digest", DIGEST),
        ]);
        let stargz = labels(&[
            (
                "containerd.io/snapshot/remote/stargz.reference",
                "reg:5000/a/b:2",
            ),
            ("containerd.io/snapshot/remote/stargz.digest", DIGEST),
        ]);
        assert_eq!(requested_layer(&cri).unwrap().reference, "reg:5000/a/b:1");
        assert_eq!(
            requested_layer(&stargz).unwrap().reference,
            "reg:5000/a/b:2"
        );
        assert_eq!(requested_layer(&stargz).unwrap().layer.to_string(), DIGEST);
    }

    #[test]
    fn a_missing_or_malformed_digest_names_no_layer() {
        assert!(requested_layer(&labels(&[(SNAPSHOT_REF_LABEL, DIGEST)])).is_none());
        let bad = labels(&[
            ("containerd.io/snapshot/cri.image-ref", "reg/a:1"),
            ("containerd.io/snapshot/cri.layer-digest", "sha256:12"),
        ]);
        assert!(requested_layer(&bad).is_none());
    }

    #[test]
    fn the_store_path_is_the_podman_layout() {
        let store = LayerStoreDir(PathBuf::from("/s"));
        let layer = RemoteLayer {
            reference: "r/a:1".into(),
            layer: DIGEST.parse().unwrap(),
        };
        assert_eq!(
            store.diff_path(&layer),
            Path::new("/s")
                .join(reference_dir("r/a:1"))
                .join(DIGEST)
                .join("diff")
        );
        assert!(store.lower_dir(&layer).is_none());
        assert!(!is_live_fuse_mount(Path::new("/")));
    }
}
