use std::ffi::{OsStr, OsString};

use super::tests::ino;
use super::*;
use crate::layer::read_entries;
use crate::layer::test_tar::TestTar;

/// etc/shadow, a file; links that point at it every way an image can, and
/// links that never end.
fn tree() -> Tree {
    let mut tar = TestTar::new();
    tar.file("etc/shadow", b"the image's own")
        .symlink("etc/abs", "/etc/shadow")
        .symlink("etc/rel", "shadow")
        .symlink("etc/up", "../../../../etc/shadow")
        .symlink("etc/dir", "/etc")
        .symlink("etc/chain", "abs")
        .symlink("etc/loop-a", "loop-b")
        .symlink("etc/loop-b", "loop-a")
        .symlink("etc/self", "self/x")
        .file("usr/file", b"x");
    let raw = tar.bytes();
    Tree::build(&[read_entries(&raw[..]).unwrap()]).unwrap()
}

fn resolve(tree: &Tree, path: &str) -> Result<Ino, ResolveError> {
    tree.resolve_in_image(OsStr::new(path), true)
}

#[test]
fn symlinks_resolve_inside_the_image_root() {
    let tree = tree();
    let shadow = ino(&tree, "etc/shadow");
    for path in [
        "etc/abs",
        "/etc/rel",
        "etc/up",
        "etc/dir/shadow",
        "etc/chain",
        "../../etc/./shadow",
        "usr/../etc/shadow",
    ] {
        assert_eq!(resolve(&tree, path), Ok(shadow), "{path}");
    }
    assert_eq!(
        tree.resolve_in_image(OsStr::new("etc/abs"), false),
        Ok(ino(&tree, "etc/abs")),
        "the last link is kept when not followed"
    );
    assert_eq!(resolve(&tree, ""), Ok(ROOT_INO));
    assert_eq!(resolve(&tree, "etc/dir"), Ok(ino(&tree, "etc")));
}

#[test]
fn loops_missing_names_and_files_as_directories_are_errors() {
    let tree = tree();
    for path in ["etc/loop-a", "etc/self"] {
        assert!(
            matches!(resolve(&tree, path), Err(ResolveError::Loop(_))),
            "{path}"
        );
    }
    assert_eq!(
        resolve(&tree, "etc/nope"),
        Err(ResolveError::NotFound(OsString::from("etc/nope")))
    );
    assert!(matches!(
        resolve(&tree, "usr/file/x"),
        Err(ResolveError::NotADirectory(_))
    ));
    assert!(matches!(
        resolve(&tree, "etc/abs/x"),
        Err(ResolveError::NotADirectory(_))
    ));
}

#[test]
fn the_walk_visits_every_name_once_in_name_order() {
    let tree = tree();
    let paths: Vec<OsString> = tree
        .walk(ROOT_INO, OsStr::new(""))
        .map(|(p, _)| p)
        .collect();
    let expected = [
        "",
        "etc",
        "etc/abs",
        "etc/chain",
        "etc/dir",
        "etc/loop-a",
        "etc/loop-b",
        "etc/rel",
        "etc/self",
        "etc/shadow",
        "etc/up",
        "usr",
        "usr/file",
    ];
    assert_eq!(paths, expected.map(OsString::from));
    let under: Vec<OsString> = tree
        .walk(ino(&tree, "usr"), OsStr::new("/usr"))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(under, ["/usr", "/usr/file"].map(OsString::from));
}
