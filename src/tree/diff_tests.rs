use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use tar::EntryType;

use super::*;
use crate::layer::read_entries;
use crate::layer::test_tar::{TestTar, header};

/// An image's layer tars, bottom first, and its merged tree.
struct Image {
    tars: Vec<Vec<u8>>,
    tree: Tree,
}

impl Image {
    fn new(tars: Vec<Vec<u8>>) -> Image {
        let tables: Vec<_> = tars.iter().map(|t| read_entries(&t[..]).unwrap()).collect();
        let tree = Tree::build(&tables).unwrap();
        Image { tars, tree }
    }

    fn bytes(&self, location: &ContentLocation) -> &[u8] {
        let start = location.offset as usize;
        &self.tars[location.layer as usize][start..start + location.size as usize]
    }
}

/// The base layer both images share.
fn base() -> Vec<u8> {
    TestTar::new()
        .dir("etc")
        .file("etc/keep", b"same")
        .file("etc/content", b"aaaa")
        .file("etc/meta", b"m")
        .file("etc/both", b"bb")
        .file("etc/gone", b"x")
        .file("etc/mtime", b"t")
        .file("file2dir", b"f")
        .dir("dir2file")
        .file("dir2file/inner", b"i")
        .file("file2link", b"l")
        .symlink("link2file", "etc/keep")
        .symlink("retarget", "etc/keep")
        .dir("opq")
        .file("opq/old", b"o")
        .file("opq/kept", b"k")
        .device(EntryType::Char, "dev/null", 1, 3)
        .bytes()
}

/// A rebuild: the base layer, then one that changes every way a layer can.
fn rebuild() -> Vec<u8> {
    let mut mode_0600 = header(EntryType::Regular, 0o600);
    let mut later = header(EntryType::Regular, 0o644);
    later.set_mtime(crate::layer::test_tar::MTIME + 1);
    TestTar::new()
        .file("etc/content", b"bbbb")
        .file_with(mode_0600.clone(), "etc/meta", b"m")
        .file_with(mode_0600.clone(), "etc/both", b"bbb")
        .file("etc/.wh.gone", b"")
        .file_with(later, "etc/mtime", b"t")
        .file(".wh.file2dir", b"")
        .file("file2dir/x", b"x")
        .file("dir2file", b"d")
        .symlink("file2link", "etc/keep")
        .file("link2file", b"z")
        .symlink("retarget", "etc/meta")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/kept", b"k")
        .device(EntryType::Char, "dev/null", 1, 5)
        .file_with(
            {
                mode_0600.set_uid(7);
                mode_0600
            },
            "new/file",
            b"n",
        )
        .bytes()
}

/// `diff` of `a` and `b` as text lines, contents compared byte by byte
/// unless `unknown`, which answers "don't know" for every file asked about.
fn lines(a: &Image, b: &Image, unknown: bool) -> (Vec<String>, usize) {
    let mut asked = 0;
    let mut out = Vec::new();
    a.tree
        .diff(
            Some(ROOT_INO),
            &b.tree,
            Some(ROOT_INO),
            OsStr::new("/"),
            |x, y| {
                asked += 1;
                Ok::<_, ()>(match a.bytes(x) == b.bytes(y) {
                    _ if unknown => SameContent::Unknown,
                    true => SameContent::Yes,
                    false => SameContent::No,
                })
            },
            |change| {
                let path = String::from_utf8(change.path.as_bytes().to_vec()).unwrap();
                out.push(match change.kind {
                    ChangeKind::Added(_) => format!("A {path}"),
                    ChangeKind::Removed(_) => format!("D {path}"),
                    ChangeKind::Changed {
                        differ,
                        content_unknown,
                        ..
                    } => {
                        let mut names: Vec<&str> = differ.iter().map(|a| a.name()).collect();
                        if content_unknown {
                            names.push("content?");
                        }
                        format!("M {path} ({})", names.join(", "))
                    }
                });
                Ok(())
            },
        )
        .unwrap();
    (out, asked)
}

#[test]
fn a_rebuild_lists_every_change_and_nothing_else() {
    let a = Image::new(vec![base()]);
    let b = Image::new(vec![base(), rebuild()]);
    let (changes, _) = lines(&a, &b, false);
    let expected = [
        "M /dev/null (device)",
        "M /dir2file (type, mode)",
        "D /dir2file/inner",
        "M /etc/both (mode, size, content)",
        "M /etc/content (content)",
        "D /etc/gone",
        "M /etc/meta (mode)",
        "M /etc/mtime (mtime)",
        "M /file2dir (type, mode, mtime)",
        "A /file2dir/x",
        "M /file2link (type, mode)",
        "M /link2file (type, mode)",
        "A /new",
        "A /new/file",
        "D /opq/old",
        "M /retarget (target)",
    ];
    assert_eq!(changes, expected);
    let (reverse, _) = lines(&b, &a, false);
    assert_eq!(reverse.len(), expected.len(), "{reverse:?}");
}

#[test]
fn equal_trees_differ_nowhere_and_content_is_asked_only_at_equal_sizes() {
    let a = Image::new(vec![base()]);
    let (changes, asked) = lines(&a, &a, false);
    assert_eq!(changes, Vec::<String>::new());
    // Every non-empty regular file of the base is asked about once.
    assert_eq!(asked, 11);
    let b = Image::new(vec![base(), rebuild()]);
    let (unknown, _) = lines(&a, &b, true);
    assert!(unknown.contains(&"M /etc/content (content?)".to_string()));
    assert!(unknown.contains(&"M /etc/keep (content?)".to_string()));
    assert!(
        unknown.contains(&"M /etc/both (mode, size, content)".to_string()),
        "sizes tell without asking: {unknown:?}"
    );
}

#[test]
fn a_start_in_one_tree_only_is_all_added_or_all_removed() {
    let a = Image::new(vec![base()]);
    let mut added = Vec::new();
    a.tree
        .diff(
            None,
            &a.tree,
            Some(ROOT_INO),
            OsStr::new("/"),
            |_, _| Ok::<_, ()>(SameContent::Yes),
            |change| {
                assert!(matches!(change.kind, ChangeKind::Added(_)), "{change:?}");
                added.push(change.path);
                Ok(())
            },
        )
        .unwrap();
    let every: Vec<_> = a
        .tree
        .walk(ROOT_INO, OsStr::new("/"))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(added, every);
    let mut removed = 0;
    a.tree
        .diff(
            Some(ROOT_INO),
            &a.tree,
            None,
            OsStr::new("/"),
            |_, _| Ok::<_, ()>(SameContent::Yes),
            |change| {
                assert!(matches!(change.kind, ChangeKind::Removed(_)), "{change:?}");
                removed += 1;
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(removed, every.len());
}
