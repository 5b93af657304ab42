use std::ffi::{OsStr, OsString};
use std::time::Instant;

use tar::EntryType;

use super::*;
use crate::layer::test_tar::{TestTar, header};
use crate::layer::{EntryKind, EntryTable, TarEntry, read_entries};

fn build(layers: &mut [&mut TestTar]) -> Tree {
    let indexes: Vec<EntryTable> = layers.iter_mut().map(|tar| tar.index()).collect();
    Tree::build(&indexes).expect("build tree")
}

pub(super) fn ino(tree: &Tree, path: &str) -> Ino {
    tree.resolve_path(path)
        .unwrap_or_else(|| panic!("{path} missing"))
}

pub(super) fn attr<'a>(tree: &'a Tree, path: &str) -> &'a Inode {
    tree.attr(ino(tree, path)).expect("attr")
}

pub(super) fn names(tree: &Tree, path: &str) -> Vec<String> {
    tree.children(ino(tree, path))
        .expect("directory")
        .iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect()
}

fn location(tree: &Tree, path: &str) -> ContentLocation {
    attr(tree, path).content().expect("regular file").clone()
}

#[test]
fn single_layer_queries() {
    let mut root = header(EntryType::Directory, 0o700);
    root.set_uid(7);
    let mut tar = TestTar::new();
    tar.dir_with(root, "./")
        .pax(&[
            ("SCHILY.xattr.security.capability", b"\x01\x02"),
            ("SCHILY.xattr.user.k", b"v"),
        ])
        .file("usr/bin/ping", b"ping!")
        .dir("usr/lib/")
        .symlink("bin", "usr/bin")
        .device(EntryType::Char, "dev/null", 1, 3)
        .device(EntryType::Block, "dev/big", 259, 300)
        .dir_with(header(EntryType::Fifo, 0o600), "dev/fifo");
    let raw = tar.bytes();
    let tree = Tree::build(&[read_entries(&raw[..]).unwrap()]).unwrap();

    let root = tree.attr(ROOT_INO).unwrap();
    assert_eq!((root.mode, root.uid, root.st_mode()), (0o700, 7, 0o040700));
    assert_eq!(tree.parent(ROOT_INO), Some(ROOT_INO));
    assert_eq!(names(&tree, ""), ["bin", "dev", "usr"]);
    assert_eq!(names(&tree, "dev"), ["big", "fifo", "null"]);
    // 2 + subdirectories: usr and dev under the root, bin and lib under usr.
    assert_eq!(root.nlink, 4);
    assert_eq!(attr(&tree, "usr").nlink, 4);
    assert_eq!(attr(&tree, "usr/lib").nlink, 2);
    // Implicit parents.
    let usr = attr(&tree, "usr");
    assert_eq!(
        (usr.mode, usr.uid, usr.gid, usr.size()),
        (0o755, 0, 0, DIR_SIZE)
    );
    assert_eq!(tree.parent(ino(&tree, "usr/bin")), Some(ino(&tree, "usr")));

    let usr_ino = ino(&tree, "usr");
    let ping = tree
        .lookup(ino(&tree, "usr/bin"), OsStr::new("ping"))
        .unwrap();
    assert_eq!(tree.lookup(usr_ino, OsStr::new("nope")), None);
    assert_eq!(tree.lookup(ping, OsStr::new("x")), None, "lookup in a file");
    let ping_attr = tree.attr(ping).unwrap();
    assert_eq!(
        (ping_attr.size(), ping_attr.nlink, ping_attr.st_mode()),
        (5, 1, 0o100644)
    );
    let loc = ping_attr.content().unwrap();
    assert_eq!(loc.layer, 0);
    assert_eq!(
        &raw[loc.offset as usize..(loc.offset + loc.size) as usize],
        b"ping!"
    );
    assert_eq!(
        tree.xattr(ping, OsStr::new("security.capability")),
        Some(&b"\x01\x02"[..])
    );
    assert_eq!(tree.xattr(ping, OsStr::new("user.none")), None);
    assert_eq!(
        tree.list_xattrs(ping).unwrap().collect::<Vec<_>>(),
        ["security.capability", "user.k"]
    );

    let bin = ino(&tree, "bin");
    assert_eq!(tree.readlink(bin), Some(OsStr::new("usr/bin")));
    assert_eq!(tree.attr(bin).unwrap().size(), 7);
    assert_eq!(tree.readlink(ping), None);
    assert_eq!(
        tree.resolve_path("bin/ping"),
        None,
        "symlinks are not followed"
    );

    let null = attr(&tree, "dev/null");
    assert_eq!(
        (null.st_mode(), null.rdev(), null.size()),
        (0o020660, 0x0103, 0)
    );
    // 259:300 in new_encode_dev: minor low byte, major, minor high bits.
    assert_eq!(
        attr(&tree, "dev/big").rdev(),
        0x2c | (259 << 8) | (0x100 << 12)
    );
    assert_eq!(attr(&tree, "dev/big").st_mode(), 0o060660);
    assert_eq!(attr(&tree, "dev/fifo").st_mode(), 0o010600);

    assert_eq!(tree.attr(0), None);
    assert_eq!(tree.attr(tree.inode_count() as Ino + 1), None);
    assert_eq!(tree.children(ping), None);
}

#[test]
fn whiteouts_remove_files_and_subtrees() {
    let tree = build(&mut [
        TestTar::new()
            .file("etc/passwd", b"root")
            .file("etc/group", b"g")
            .file("var/cache/a/b", b"1")
            .file("var/cache/c", b"2")
            .file("var/log", b"l"),
        TestTar::new()
            .file("etc/.wh.passwd", b"")
            .file("var/.wh.cache", b"")
            .file(".wh.missing", b"")
            .file("nodir/.wh.x", b""),
    ]);
    assert_eq!(names(&tree, "etc"), ["group"]);
    assert_eq!(names(&tree, "var"), ["log"]);
    assert_eq!(tree.resolve_path("var/cache/a/b"), None);
    assert_eq!(attr(&tree, "var").nlink, 2);
    // Whiteouts alone create nothing.
    assert_eq!(tree.resolve_path("nodir"), None);
}

#[test]
fn whiteout_and_recreate_in_same_layer() {
    let tree = build(&mut [
        TestTar::new().file("d/old", b"o").file("f", b"lower"),
        // Entries precede their whiteouts in the tar; whiteouts still only
        // hit the lower layer.
        TestTar::new()
            .dir("d/")
            .file("d/new", b"n")
            .file("f", b"upper")
            .file(".wh.d", b"")
            .file(".wh.f", b""),
    ]);
    assert_eq!(names(&tree, "d"), ["new"]);
    assert_eq!(location(&tree, "f").layer, 1);
}

#[test]
fn opaque_dir_hides_lower_children_only() {
    let tree = build(&mut [
        TestTar::new()
            .file("app/lower1", b"1")
            .file("app/sub/lower2", b"2")
            .file("other", b"o"),
        TestTar::new()
            .dir("app/")
            .file("app/mine", b"m")
            // Marker after the layer's own entry: order must not matter.
            .file("app/.wh..wh..opq", b""),
        TestTar::new().file("app/later", b"l"),
    ]);
    assert_eq!(names(&tree, "app"), ["later", "mine"]);
    assert_eq!(names(&tree, ""), ["app", "other"]);
    assert_eq!(attr(&tree, "app").nlink, 2);
}

#[test]
fn replacement_across_layers() {
    let mut new_meta = header(EntryType::Directory, 0o750);
    new_meta.set_uid(33);
    new_meta.set_gid(44);
    new_meta.set_mtime(42);
    let tree = build(&mut [
        TestTar::new()
            .file("was-file", b"file")
            .file("was-dir/x/y", b"deep")
            .file("kept/a", b"a")
            .file("plain", b"v1"),
        TestTar::new()
            .file("was-dir", b"now a file")
            .file("was-file/child", b"c")
            .dir_with(new_meta, "kept/")
            .file("kept/b", b"b")
            .file("plain", b"v2"),
    ]);
    assert_eq!(attr(&tree, "was-dir").size(), 10);
    assert_eq!(tree.resolve_path("was-dir/x"), None);
    // The implicit parent replaced the lower file.
    assert!(attr(&tree, "was-file").is_dir());
    assert_eq!(names(&tree, "was-file"), ["child"]);
    let kept = attr(&tree, "kept");
    assert_eq!(
        (kept.mode, kept.uid, kept.gid, kept.mtime.secs),
        (0o750, 33, 44, 42)
    );
    assert_eq!(names(&tree, "kept"), ["a", "b"]);
    assert_eq!(location(&tree, "plain").layer, 1);
    assert_eq!(location(&tree, "kept/a").layer, 0);
}

#[test]
fn dir_replaced_by_dir_entry_in_same_layer_keeps_children() {
    let tree = build(&mut [TestTar::new()
        .dir("d/")
        .file("d/f", b"x")
        .dir_with(header(EntryType::Directory, 0o711), "d/")]);
    assert_eq!(attr(&tree, "d").mode, 0o711);
    assert_eq!(names(&tree, "d"), ["f"]);
}

#[test]
fn hardlinks_share_inodes() {
    let tree = build(&mut [
        TestTar::new()
            .file("bin/busybox", b"bb")
            .file("lower", b"low"),
        TestTar::new()
            .hardlink("bin/sh", "bin/busybox")
            .hardlink("bin/ls", "./bin/sh")
            .hardlink("up/lower-link", "lower"),
    ]);
    let busybox = ino(&tree, "bin/busybox");
    assert_eq!(ino(&tree, "bin/sh"), busybox);
    assert_eq!(ino(&tree, "bin/ls"), busybox);
    assert_eq!(tree.attr(busybox).unwrap().nlink, 3);
    assert_eq!(location(&tree, "bin/ls").layer, 0);
    assert_eq!(ino(&tree, "up/lower-link"), ino(&tree, "lower"));
    assert_eq!(attr(&tree, "lower").nlink, 2);
}

#[test]
fn replacing_one_hardlink_name_keeps_the_other() {
    let tree = build(&mut [
        TestTar::new()
            .file("a", b"shared")
            .hardlink("b", "a")
            .hardlink("dir/c", "a"),
        TestTar::new().file("a", b"replaced").file(".wh.dir", b""),
    ]);
    assert_ne!(ino(&tree, "a"), ino(&tree, "b"));
    assert_eq!(location(&tree, "a").layer, 1);
    let b = attr(&tree, "b");
    assert_eq!((b.nlink, b.size(), b.content().unwrap().layer), (1, 6, 0));
    assert_eq!(attr(&tree, "a").nlink, 1);
}

#[test]
fn bad_hardlinks_name_both_paths() {
    let missing = Tree::build(&[TestTar::new().hardlink("x/link", "nowhere").index()]);
    match missing {
        Err(e @ TreeError::HardlinkTargetMissing { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("x/link") && msg.contains("nowhere"), "{msg}");
        }
        other => panic!("expected HardlinkTargetMissing, got {other:?}"),
    }
    // Whiteouts apply before the layer's entries, so this target is gone.
    let layers = [
        TestTar::new().file("t", b"").index(),
        TestTar::new().file(".wh.t", b"").hardlink("l", "t").index(),
    ];
    assert!(matches!(
        Tree::build(&layers),
        Err(TreeError::HardlinkTargetMissing { layer: 1, .. })
    ));
    let to_dir = Tree::build(&[TestTar::new().dir("d/").hardlink("l", "d").index()]);
    assert!(matches!(to_dir, Err(TreeError::HardlinkToDirectory { .. })));
}

#[test]
fn root_entry_must_be_a_directory() {
    let index = EntryTable {
        entries: vec![TarEntry {
            path: OsString::new(),
            kind: EntryKind::Fifo,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: Default::default(),
            xattrs: Vec::new(),
        }],
        whiteouts: Vec::new(),
    };
    assert!(matches!(
        Tree::build(&[index]),
        Err(TreeError::RootNotDirectory { layer: 0 })
    ));
}

#[test]
fn persist_round_trip_and_version_check() {
    let tree = build(&mut [TestTar::new()
        .pax(&[("SCHILY.xattr.user.x", b"\xff")])
        .file("a/b", b"data")
        .hardlink("a/c", "a/b")
        .symlink("l", "a/b")
        .device(EntryType::Char, "null", 1, 3)]);
    let bytes = tree.to_bytes().unwrap();
    assert_eq!(Tree::from_bytes(&bytes).unwrap(), tree);

    let mut other_version = bytes.clone();
    other_version[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert!(matches!(
        Tree::from_bytes(&other_version),
        Err(TreeError::FormatVersion { found, expected }) if found == FORMAT_VERSION + 1 && expected == FORMAT_VERSION
    ));
    assert!(matches!(
        Tree::from_bytes(b"not a cache"),
        Err(TreeError::NotATreeCache)
    ));
    assert!(matches!(
        Tree::from_bytes(&bytes[..bytes.len() - 3]),
        Err(TreeError::Decode(_))
    ));
    let mut trailing = bytes;
    trailing.push(0);
    assert!(matches!(
        Tree::from_bytes(&trailing),
        Err(TreeError::Decode(_))
    ));
}

#[test]
fn large_tree_lookups_are_fast() {
    const DIRS: usize = 100;
    const FILES: usize = 1000;
    let entry = |path: String, kind| TarEntry {
        path: path.into(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: Default::default(),
        xattrs: Vec::new(),
    };
    let mut entries = Vec::new();
    for d in 0..DIRS {
        entries.push(entry(format!("d{d}"), EntryKind::Directory));
        for f in 0..FILES {
            let kind = EntryKind::Regular {
                offset: (d * FILES + f) as u64,
                size: 1,
            };
            entries.push(entry(format!("d{d}/f{f}"), kind));
        }
    }
    let layer = EntryTable {
        entries,
        whiteouts: Vec::new(),
    };
    let start = Instant::now();
    let tree = Tree::build(std::slice::from_ref(&layer)).unwrap();
    assert_eq!(tree.inode_count(), 1 + DIRS + DIRS * FILES);
    for d in (0..DIRS).step_by(7) {
        for f in (0..FILES).step_by(13) {
            let found = tree.resolve_path(format!("d{d}/f{f}")).unwrap();
            assert_eq!(
                tree.attr(found).unwrap().content().unwrap().offset,
                (d * FILES + f) as u64
            );
        }
    }
    let restored = Tree::from_bytes(&tree.to_bytes().unwrap()).unwrap();
    assert_eq!(restored.inode_count(), tree.inode_count());
    // Generous bound for an unoptimized build on a slow machine; a
    // quadratic algorithm would take minutes.
    assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
}

/// Each entry names the layer that last wrote it: a file replaced above
/// names the upper layer, a directory named again takes the later entry's
/// layer, and a parent no entry names has none.
#[test]
fn entries_name_the_layer_that_last_wrote_them() {
    let tree = build(&mut [
        TestTar::new()
            .dir("etc/")
            .file("etc/passwd", b"root")
            .file("etc/hosts", b"localhost"),
        TestTar::new()
            .file("etc/passwd", b"root, alice")
            .file("opt/tool/bin", b"#!"),
        TestTar::new().dir("etc/"),
    ]);
    let layer = |path| attr(&tree, path).layer;
    assert_eq!(layer("etc/hosts"), Some(0));
    assert_eq!(layer("etc/passwd"), Some(1));
    assert_eq!(layer("opt/tool/bin"), Some(1));
    assert_eq!(layer("etc"), Some(2));
    assert_eq!(layer("opt"), None);
    assert_eq!(tree.attr(ROOT_INO).unwrap().layer, None);
}

/// A sparse file is as big as its holes make it; its map rides along to
/// the content reader (shared by its names) and through the tree cache.
#[test]
fn sparse_files_keep_their_size_and_map_through_the_cache() {
    let mut tar = TestTar::new();
    tar.pax(&[
        ("GNU.sparse.major", b"0"),
        ("GNU.sparse.minor", b"1"),
        ("GNU.sparse.numblocks", b"1"),
        ("GNU.sparse.map", b"1000,4"),
        ("GNU.sparse.size", b"5000"),
    ])
    .file("holes", b"data")
    .hardlink("again", "holes");
    let tree = build(&mut [&mut tar]);
    let at = location(&tree, "holes");
    assert_eq!(at.size, 5000);
    assert_eq!(at.packed().size, 4);
    let map = at.sparse.as_ref().expect("sparse");
    assert_eq!(map.segments().collect::<Vec<_>>(), [(1000, 4)]);
    assert_eq!(location(&tree, "again"), at);
    let bytes = tree.to_bytes().unwrap();
    assert_eq!(Tree::from_bytes(&bytes).unwrap(), tree);
}
