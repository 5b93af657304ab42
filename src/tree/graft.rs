//! Entries added to a built tree that no layer holds: the synthetic files a
//! runtime expects of an image it converted itself (Apptainer's
//! `/.singularity.d`). They never replace the image's own entries: a path the
//! image already has keeps the image's entry.

use std::os::unix::ffi::OsStrExt;

use super::{ContentLocation, DirEntry, Directory, Ino, Inode, InodeKind, ROOT_INO, Tree};
use crate::layer::{EntryKind, TarEntry};

impl Tree {
    /// Adds `entries` (parents before children; paths relative to the root,
    /// as [`crate::layer`] normalises them) whose regular files' content is at
    /// `offset`/`size` of the content space of layer `layer`. Entries of other
    /// kinds than directory, regular file and symlink, entries under a
    /// missing or non-directory parent, and paths the tree already has are
    /// left out; their paths are returned.
    pub fn graft(&mut self, entries: &[TarEntry], layer: u32) -> Vec<std::ffi::OsString> {
        let mut skipped = Vec::new();
        for entry in entries {
            if self.graft_one(entry, layer).is_none() {
                skipped.push(entry.path.clone());
            }
        }
        skipped
    }

    fn graft_one(&mut self, entry: &TarEntry, layer: u32) -> Option<Ino> {
        let path = entry.path.as_bytes();
        let (parent_path, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&path[..0], path),
        };
        let mut parent = ROOT_INO;
        for component in parent_path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            parent = self.lookup(parent, std::ffi::OsStr::from_bytes(component))?;
        }
        let name = std::ffi::OsStr::from_bytes(name);
        if name.is_empty() || self.lookup(parent, name).is_some() {
            return None;
        }
        let ino = self.inodes.len() as Ino + 1;
        let (kind, nlink) = match &entry.kind {
            EntryKind::Directory => (
                InodeKind::Directory(Directory {
                    parent,
                    entries: Vec::new(),
                }),
                2,
            ),
            kind @ (EntryKind::Regular { .. } | EntryKind::Sparse { .. }) => (
                InodeKind::Regular(
                    ContentLocation::of_entry(layer, kind).expect("a regular file has content"),
                ),
                1,
            ),
            EntryKind::Symlink { target } => (InodeKind::Symlink(target.clone()), 1),
            _ => return None,
        };
        let is_dir = matches!(kind, InodeKind::Directory(_));
        let parent_inode = &mut self.inodes[(parent - 1) as usize];
        let InodeKind::Directory(directory) = &mut parent_inode.kind else {
            return None;
        };
        let at = directory
            .entries
            .binary_search_by(|e| e.name.as_bytes().cmp(name.as_bytes()))
            .err()?;
        directory.entries.insert(
            at,
            DirEntry {
                name: name.to_os_string(),
                ino,
            },
        );
        if is_dir {
            parent_inode.nlink += 1;
        }
        self.inodes.push(Inode {
            kind,
            // No image layer wrote it.
            layer: None,
            mode: entry.mode & 0o7777,
            uid: entry.uid,
            gid: entry.gid,
            mtime: entry.mtime,
            nlink,
            xattrs: entry.xattrs.clone(),
        });
        Some(ino)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;
    use crate::layer::{EntryTable, Timestamp};

    fn entry(path: &str, kind: EntryKind, mode: u32) -> TarEntry {
        TarEntry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            xattrs: Vec::new(),
        }
    }

    fn image() -> Tree {
        let table = EntryTable {
            entries: vec![
                entry("etc", EntryKind::Directory, 0o755),
                entry(
                    "etc/hosts",
                    EntryKind::Regular { offset: 0, size: 3 },
                    0o644,
                ),
            ],
            whiteouts: Vec::new(),
        };
        Tree::build(&[table]).unwrap()
    }

    #[test]
    fn grafted_entries_are_found_sorted_and_counted() {
        let mut tree = image();
        let skipped = tree.graft(
            &[
                entry(".singularity.d", EntryKind::Directory, 0o755),
                entry(
                    ".singularity.d/runscript",
                    EntryKind::Regular { offset: 5, size: 7 },
                    0o755,
                ),
                entry(
                    "etc/zz",
                    EntryKind::Symlink {
                        target: "hosts".into(),
                    },
                    0o777,
                ),
            ],
            9,
        );
        assert!(skipped.is_empty(), "{skipped:?}");
        let dir = tree.lookup(ROOT_INO, OsStr::new(".singularity.d")).unwrap();
        let script = tree.lookup(dir, OsStr::new("runscript")).unwrap();
        assert_eq!(
            tree.attr(script).unwrap().kind,
            InodeKind::Regular(ContentLocation::dense(9, 5, 7))
        );
        assert_eq!(tree.parent(dir), Some(ROOT_INO));
        let names: Vec<_> = tree
            .children(ROOT_INO)
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect();
        assert_eq!(names, [".singularity.d", "etc"], "sorted by bytes");
        assert_eq!(
            tree.attr(ROOT_INO).unwrap().nlink,
            4,
            "root, ., etc and the new dir"
        );
        let etc = tree.lookup(ROOT_INO, OsStr::new("etc")).unwrap();
        assert_eq!(
            tree.readlink(tree.lookup(etc, OsStr::new("zz")).unwrap()),
            Some(OsStr::new("hosts"))
        );
    }

    #[test]
    fn the_images_own_entries_win_and_orphans_are_left_out() {
        let mut tree = image();
        let before = tree.inode_count();
        let skipped = tree.graft(
            &[
                entry(
                    "etc/hosts",
                    EntryKind::Regular { offset: 0, size: 1 },
                    0o644,
                ),
                entry(
                    "missing/file",
                    EntryKind::Regular { offset: 0, size: 1 },
                    0o644,
                ),
                entry("etc/hosts/x", EntryKind::Directory, 0o755),
                entry("etc/fifo", EntryKind::Fifo, 0o644),
            ],
            9,
        );
        assert_eq!(skipped.len(), 4);
        assert_eq!(tree.inode_count(), before);
        let etc = tree.lookup(ROOT_INO, OsStr::new("etc")).unwrap();
        let hosts = tree.lookup(etc, OsStr::new("hosts")).unwrap();
        assert_eq!(
            tree.attr(hosts).unwrap().kind,
            InodeKind::Regular(ContentLocation::dense(0, 0, 3))
        );
    }
}
