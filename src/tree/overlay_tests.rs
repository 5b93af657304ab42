//! `Tree::overlay_layers`: each layer's view in overlayfs lower-layer format.

use std::ffi::OsStr;

use tar::EntryType;

use super::tests::{attr, ino, names};
use super::*;
use crate::layer::test_tar::{TestTar, header};

fn views(layers: &mut [&mut TestTar], xattrs: OverlayXattrs) -> Tree {
    let indexes: Vec<_> = layers.iter_mut().map(|tar| tar.index()).collect();
    Tree::overlay_layers(&indexes, xattrs).expect("overlay views")
}

fn xattr_names(tree: &Tree, path: &str) -> Vec<String> {
    let names = tree.list_xattrs(ino(tree, path)).expect("inode");
    names.map(str::to_string).collect()
}

#[test]
fn each_layer_keeps_only_its_own_entries() {
    let tree = views(
        &mut [
            TestTar::new().dir("etc/").file("etc/a", b"lower a"),
            TestTar::new().file("etc/a", b"upper a").file("etc/b", b"b"),
        ],
        OverlayXattrs::Trusted,
    );
    assert_eq!(names(&tree, ""), ["0", "1"]);
    assert_eq!(layer_dir_name(1), "1");
    assert_eq!(names(&tree, "0/etc"), ["a"]);
    assert_eq!(names(&tree, "1/etc"), ["a", "b"]);
    // Content locations name the image's layer, so one reader serves all.
    assert_eq!(attr(&tree, "0/etc/a").content().unwrap().layer, 0);
    assert_eq!(attr(&tree, "1/etc/a").content().unwrap().layer, 1);
    assert_eq!(attr(&tree, "1/etc/a").size(), 7);
    assert_eq!(tree.parent(ino(&tree, "1/etc")), Some(ino(&tree, "1")));
    assert_eq!(tree.parent(ino(&tree, "1")), Some(ROOT_INO));
}

#[test]
fn whiteouts_become_character_devices_0_0() {
    let tree = views(
        &mut [
            TestTar::new()
                .dir("d/")
                .file("d/gone", b"x")
                .file("d/kept", b"y"),
            TestTar::new().file("d/.wh.gone", b"").file(".wh.top", b""),
        ],
        OverlayXattrs::Trusted,
    );
    assert_eq!(names(&tree, "1"), ["d", "top"]);
    assert_eq!(names(&tree, "1/d"), ["gone"]);
    let whiteout = attr(&tree, "1/d/gone");
    // overlayfs.rst: "a whiteout is created as a character device with 0/0
    // device number"; mode 0 as containers/storage's mknod leaves it.
    assert_eq!(
        (
            whiteout.st_mode(),
            whiteout.rdev(),
            whiteout.uid,
            whiteout.gid
        ),
        (0o020000, 0, 0, 0)
    );
    assert_eq!(
        names(&tree, "0/d"),
        ["gone", "kept"],
        "lower layer untouched"
    );
    assert!(
        xattr_names(&tree, "1/d").is_empty(),
        "a whiteout is no opaque marker"
    );
}

#[test]
fn whiteout_with_same_layer_entry() {
    let tree = views(
        &mut [
            TestTar::new()
                .file("file-again", b"old")
                .dir("dir-again/")
                .file("dir-again/old", b"old"),
            // Entries come before their whiteouts in the tar; OCI deletes the
            // lower path first either way.
            TestTar::new()
                .file("file-again", b"new")
                .dir("dir-again/")
                .file("dir-again/new", b"new")
                .file(".wh.file-again", b"")
                .file(".wh.dir-again", b""),
        ],
        OverlayXattrs::Trusted,
    );
    // A new non-directory hides the lower one by itself.
    assert_eq!(attr(&tree, "1/file-again").st_mode() & 0o170000, 0o100000);
    // A new directory would merge with the lower one: opaque instead.
    assert_eq!(names(&tree, "1/dir-again"), ["new"]);
    let dir = ino(&tree, "1/dir-again");
    assert_eq!(
        tree.xattr(dir, OsStr::new("trusted.overlay.opaque")),
        Some(&b"y"[..])
    );
}

#[test]
fn whiteouts_below_a_new_file_stay_out() {
    let tree = views(
        &mut [
            TestTar::new().dir("a/").file("a/b", b"b"),
            // `a` is a file now; the markers below it only delete lower paths.
            TestTar::new()
                .file("a", b"file")
                .file("a/.wh.b", b"")
                .file("a/.wh..wh..opq", b""),
        ],
        OverlayXattrs::Trusted,
    );
    assert_eq!(names(&tree, "1"), ["a"]);
    assert_eq!(attr(&tree, "1/a").st_mode(), 0o100644);
}

#[test]
fn opaque_markers_use_the_mount_namespace() {
    let layers = || {
        let mut lower = TestTar::new();
        lower.dir("o/").file("o/hidden", b"h");
        let mut upper = TestTar::new();
        upper
            .pax(&[("SCHILY.xattr.user.note", b"mine")])
            .dir("o/")
            .file("o/.wh..wh..opq", b"")
            .file("o/new", b"n")
            .file("implied/.wh..wh..opq", b"");
        [lower, upper]
    };
    let [mut lower, mut upper] = layers();
    let trusted = views(&mut [&mut lower, &mut upper], OverlayXattrs::Trusted);
    assert_eq!(names(&trusted, "1/o"), ["new"]);
    assert_eq!(
        xattr_names(&trusted, "1/o"),
        ["user.note", "trusted.overlay.opaque"]
    );
    assert_eq!(
        xattr_names(&trusted, "1/implied"),
        ["trusted.overlay.opaque"]
    );
    assert!(xattr_names(&trusted, "0/o").is_empty());

    let [mut lower, mut upper] = layers();
    let user = views(&mut [&mut lower, &mut upper], OverlayXattrs::User);
    assert_eq!(
        xattr_names(&user, "1/o"),
        ["user.note", "user.overlay.opaque"]
    );
}

#[test]
fn an_images_own_overlay_xattrs_are_escaped() {
    let mut tar = TestTar::new();
    tar.pax(&[
        ("SCHILY.xattr.trusted.overlay.redirect", b"/elsewhere"),
        ("SCHILY.xattr.user.overlay.opaque", b"y"),
    ])
    .dir("d/")
    .file("d/.wh..wh..opq", b"");
    let index = tar.index();
    let trusted =
        Tree::overlay_layers(std::slice::from_ref(&index), OverlayXattrs::Trusted).expect("views");
    // overlayfs ≥ 6.7 shows `trusted.overlay.overlay.X` as `trusted.overlay.X`
    // and never acts on it; the other namespace is no marker in this mount.
    assert_eq!(
        xattr_names(&trusted, "0/d"),
        [
            "trusted.overlay.overlay.redirect",
            "user.overlay.opaque",
            "trusted.overlay.opaque"
        ]
    );
    let user = Tree::overlay_layers(&[index], OverlayXattrs::User).expect("views");
    assert_eq!(
        xattr_names(&user, "0/d"),
        [
            "trusted.overlay.redirect",
            "user.overlay.overlay.opaque",
            "user.overlay.opaque"
        ]
    );
}

#[test]
fn hardlinks_stay_hardlinks_within_and_across_layers() {
    let tree = views(
        &mut [
            TestTar::new()
                .file_with(
                    {
                        let mut h = header(EntryType::Regular, 0o640);
                        h.set_uid(1000);
                        h
                    },
                    "base",
                    b"shared",
                )
                .hardlink("same-layer", "base"),
            TestTar::new().hardlink("up/cross-layer", "base"),
        ],
        OverlayXattrs::Trusted,
    );
    let base = ino(&tree, "0/base");
    assert_eq!(ino(&tree, "0/same-layer"), base);
    assert_eq!(ino(&tree, "1/up/cross-layer"), base);
    let inode = tree.attr(base).unwrap();
    // Names in all views; the content stays where layer 0 has it.
    assert_eq!((inode.nlink, inode.uid, inode.mode), (3, 1000, 0o640));
    assert_eq!(inode.content().unwrap().layer, 0);
}

#[test]
fn implied_directories_take_the_merged_metadata() {
    let mut private = header(EntryType::Directory, 0o700);
    private.set_uid(7);
    private.set_gid(8);
    let tree = views(
        &mut [
            TestTar::new().dir_with(private, "p/"),
            TestTar::new()
                .file("p/new", b"n")
                .file("p/.wh.x", b"")
                .file("fresh/f", b"f"),
        ],
        OverlayXattrs::Trusted,
    );
    let p = attr(&tree, "1/p");
    assert_eq!((p.mode, p.uid, p.gid), (0o700, 7, 8));
    let fresh = attr(&tree, "1/fresh");
    assert_eq!((fresh.mode, fresh.uid, fresh.gid), (0o755, 0, 0));
}

#[test]
fn view_roots_follow_the_merged_root() {
    let mut root = header(EntryType::Directory, 0o700);
    root.set_uid(5);
    let tree = views(
        &mut [
            TestTar::new().dir_with(root, "./").file("a", b"a"),
            TestTar::new().file("b", b"b"),
        ],
        OverlayXattrs::Trusted,
    );
    assert_eq!((attr(&tree, "0").mode, attr(&tree, "0").uid), (0o700, 5));
    assert_eq!((attr(&tree, "1").mode, attr(&tree, "1").uid), (0o700, 5));
    assert_eq!(tree.attr(ROOT_INO).unwrap().mode, 0o755);
}

#[test]
fn bad_hardlinks_fail_as_in_the_merge() {
    let index = TestTar::new().hardlink("l", "nowhere").index();
    assert!(matches!(
        Tree::overlay_layers(&[index], OverlayXattrs::Trusted),
        Err(TreeError::HardlinkTargetMissing { layer: 0, .. })
    ));
}
