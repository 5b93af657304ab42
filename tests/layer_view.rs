//! Per-layer views against the kernel: the torture image's layers, each in
//! overlayfs lower-layer format, served by lazyimg's FUSE adapter and
//! stacked by the kernel's overlayfs (`lowerdir=2:1:0`), must list exactly
//! like umoci's unpack of the image and like lazyimg's merged mount, in the
//! default (`trusted.overlay.*`) and the `userxattr` (`user.overlay.*`)
//! namespace alike.
//!
//! Needs root, /dev/fuse and overlayfs; without them these tests fail, they
//! do not skip.

mod support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;

use fuser::BackgroundSession;
use lazyimg::digest::Digest;
use lazyimg::fuse::{MountOptions, spawn_mount};
use lazyimg::mount::{open_image, open_view};
use lazyimg::rootfs::{RootFs, View};
use lazyimg::store::Store;
use lazyimg::tree::OverlayXattrs;
use tempfile::TempDir;

use support::image::{BuiltImage, BuiltLayer, Compression, OciLayout, build_layer, torture_image};
use support::listing::{diff_listings, listing};
use support::tools::{is_root, unpack_with_umoci};

fn require_mounts() {
    assert!(
        is_root(),
        "tests/layer_view.rs must run as root: it mounts FUSE and overlay filesystems"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: load the fuse module (modprobe fuse)"
    );
}

/// The torture image written as an OCI layout (for umoci) and put into a
/// lazyimg store the way a pull leaves it: manifest, config, layer blobs.
struct Image {
    work: TempDir,
    built: BuiltImage,
    store: Arc<Store>,
}

impl Image {
    fn torture() -> Image {
        let spec = torture_image(Compression::Gzip);
        let layers: Vec<BuiltLayer> = spec.layers.iter().map(build_layer).collect();
        let work = tempfile::tempdir().expect("work dir");
        let mut layout = OciLayout::create(&work.path().join("layout"));
        let built = layout.add_image_from_layers(&spec, &layers);
        layout.tag("torture", &built.manifest);
        let store = Arc::new(Store::open(&work.path().join("store"), u64::MAX).expect("store"));
        let put = |digest: &str, bytes: &[u8]| {
            let digest = Digest::from_str(digest).expect("digest");
            store.put(digest, bytes, "test blob").expect("put blob");
        };
        put(&built.manifest.digest, &built.manifest_json);
        put(&built.config.digest, &built.config_json);
        for layer in &layers {
            put(&layer.digest, &layer.blob);
        }
        Image { work, built, store }
    }

    fn manifest(&self) -> Digest {
        Digest::from_str(&self.built.manifest.digest).expect("manifest digest")
    }

    fn open(&self, view: View) -> RootFs {
        open_view(&self.store, &self.manifest(), "test/torture", None, view).expect("open view")
    }

    /// umoci's unpack: the independent oracle.
    fn umoci_rootfs(&self) -> PathBuf {
        let layout = self.work.path().join("layout");
        unpack_with_umoci(&layout, "torture", &self.work.path().join("bundle"))
            .expect("umoci unpack")
    }
}

/// A FUSE mount of `rootfs` on a fresh directory; dropping it unmounts.
struct Fuse {
    _session: BackgroundSession,
    dir: TempDir,
}

fn mount_fuse(rootfs: RootFs) -> Fuse {
    let dir = tempfile::tempdir().expect("mountpoint");
    let options = MountOptions {
        allow_other: false,
        owner: None,
        fsname: "lazyimg:test/torture".into(),
        threads: 4,
    };
    let session = spawn_mount(Arc::new(rootfs), dir.path(), &options).expect("FUSE mount");
    Fuse {
        _session: session,
        dir,
    }
}

/// A kernel overlay mount; unmounted on drop, before the FUSE mounts it
/// stacks (declare it after them).
struct Overlay {
    dir: TempDir,
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// `mount -t overlay` of the views in `views` (top layer first in
/// `lowerdir`), read-only since there is no upper layer.
fn mount_overlay(views: &Path, layers: usize, extra: &str) -> Overlay {
    let lowers: Vec<String> = (0..layers)
        .rev()
        .map(|n| views.join(n.to_string()).display().to_string())
        .collect();
    let dir = tempfile::tempdir().expect("overlay mountpoint");
    let options = format!("{extra}lowerdir={}", lowers.join(":"));
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(dir.path())
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount -t overlay -o {options}: {}\n(dmesg tail: {})",
        String::from_utf8_lossy(&out.stderr).trim(),
        dmesg_tail()
    );
    Overlay { dir }
}

/// overlayfs explains refusals only in the kernel log.
fn dmesg_tail() -> String {
    let out = Command::new("dmesg")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn assert_same(what: &str, expected: &[String], actual: &[String]) {
    let diff = diff_listings(expected, actual);
    assert!(
        diff.is_empty(),
        "{what}: {} differences:\n{}",
        diff.len(),
        diff.join("\n")
    );
}

fn overlay_lists_like_umoci_and_the_merged_mount(xattrs: OverlayXattrs, extra_options: &str) {
    require_mounts();
    let image = Image::torture();
    let umoci = listing(&image.umoci_rootfs()).expect("list umoci unpack");
    let merged = mount_fuse(
        open_image(&image.store, &image.manifest(), "test/torture", None).expect("open image"),
    );
    let views = mount_fuse(image.open(View::Layers(xattrs)));
    let layers = image.built.layers.len();
    assert_eq!(layers, 3);

    // The views themselves carry overlayfs's markers, not OCI's.
    let whiteout = fs::symlink_metadata(views.dir.path().join("1/whiteout-me/doomed"))
        .expect("whiteout of layer 1");
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    let layer1 = listing(&views.dir.path().join("1")).expect("list layer 1's view");
    assert!(!layer1.iter().any(|line| line.contains(".wh.")));
    let opaque = format!(
        "\"opaque\" dir mode=0750 uid=0 gid=0 xattr.{}opaque=79",
        xattrs.prefix()
    );
    assert!(layer1.contains(&opaque), "no {opaque:?} in {layer1:#?}");

    let overlay = mount_overlay(views.dir.path(), layers, extra_options);
    let stacked = listing(overlay.dir.path()).expect("list overlay");
    assert!(
        stacked.len() > 50,
        "overlay lists only {} paths",
        stacked.len()
    );
    assert_same(
        "overlay of the layer views vs umoci unpack",
        &umoci,
        &stacked,
    );
    let merged = listing(merged.dir.path()).expect("list merged mount");
    assert_same(
        "overlay of the layer views vs lazyimg's merged mount",
        &merged,
        &stacked,
    );
    drop(overlay);
}

/// Sets up views marked in `xattrs` and stacks them with mount options
/// `extra`; returns the listing differences against umoci's unpack.
fn overlay_differences(xattrs: OverlayXattrs, extra_options: &str) -> Vec<String> {
    require_mounts();
    let image = Image::torture();
    let umoci = listing(&image.umoci_rootfs()).expect("list umoci unpack");
    let views = mount_fuse(image.open(View::Layers(xattrs)));
    let overlay = mount_overlay(views.dir.path(), image.built.layers.len(), extra_options);
    let stacked = listing(overlay.dir.path()).expect("list overlay");
    drop(overlay);
    diff_listings(&umoci, &stacked)
}

/// Why a view carries one namespace: a mount honours only its own, and
/// shows the other's marker as an ordinary xattr.
#[test]
fn markers_in_the_other_namespace_are_not_honoured() {
    let diff = overlay_differences(OverlayXattrs::User, "");
    assert!(
        diff.iter()
            .any(|line| line.starts_with("+\"opaque/old\" file")),
        "user.overlay.opaque hid opaque/old in a trusted.overlay mount: {diff:#?}"
    );
    assert!(
        diff.iter().any(|line| line.starts_with("+\"opaque\" dir")
            && line.contains("xattr.user.overlay.opaque=79")),
        "user.overlay.opaque is not visible in a trusted.overlay mount: {diff:#?}"
    );
}

#[test]
fn trusted_overlay_of_layer_views_lists_like_umoci_and_merged_mount() {
    overlay_lists_like_umoci_and_the_merged_mount(OverlayXattrs::Trusted, "");
}

#[test]
fn userxattr_overlay_of_layer_views_lists_like_umoci_and_merged_mount() {
    overlay_lists_like_umoci_and_the_merged_mount(OverlayXattrs::User, "userxattr,");
}
