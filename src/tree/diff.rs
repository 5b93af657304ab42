//! What changed between two trees: entries added, removed and changed, in the
//! order [`Tree::walk`] visits them (depth first, names in byte order), each
//! changed entry with the attributes that differ named.
//!
//! The tree knows where a file's bytes lie, not what they are, so whether two
//! files' bytes are equal is asked of the caller (see [`Tree::diff`]); equal
//! sizes are the only case it asks about.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::walk::child_path;
use super::{ContentLocation, FileType, Ino, Inode, InodeKind, Tree};

/// Whether two files of equal size hold the same bytes, as far as is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameContent {
    Yes,
    No,
    /// Not known without reading the bytes, which the caller chose not to.
    Unknown,
}

/// An attribute of an entry that can differ between two trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attribute {
    /// File, directory, symlink, device or fifo: the other attributes that
    /// only one of the types has are then not compared.
    Type,
    /// Permission bits, setuid, setgid and sticky included.
    Mode,
    /// uid or gid.
    Owner,
    /// Regular files only (a directory's size says nothing).
    Size,
    /// Regular files' bytes.
    Content,
    /// Symlinks' targets.
    Target,
    /// Extended attributes, names or values (their order in the tar aside).
    Xattrs,
    /// Devices' major or minor numbers.
    Device,
    /// Modification time, kept apart from the rest: rebuilds change it on
    /// their own.
    Mtime,
}

impl Attribute {
    /// The name `lazyimg diff` prints.
    pub fn name(self) -> &'static str {
        match self {
            Attribute::Type => "type",
            Attribute::Mode => "mode",
            Attribute::Owner => "owner",
            Attribute::Size => "size",
            Attribute::Content => "content",
            Attribute::Target => "target",
            Attribute::Xattrs => "xattrs",
            Attribute::Device => "device",
            Attribute::Mtime => "mtime",
        }
    }
}

/// One difference between two trees at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `/`-separated, below the prefix given to [`Tree::diff`].
    pub path: OsString,
    pub kind: ChangeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// Only in the second tree (the inode there).
    Added(Ino),
    /// Only in the first tree (the inode there).
    Removed(Ino),
    /// In both, with these attributes differing (in [`Attribute`] order),
    /// and the content perhaps differing too when `content_unknown`.
    Changed {
        a: Ino,
        b: Ino,
        differ: Vec<Attribute>,
        content_unknown: bool,
    },
}

/// The pair a diff still has to visit: one path in one or both trees.
enum Visit {
    Both(Ino, Ino),
    OnlyA(Ino),
    OnlyB(Ino),
}

impl Tree {
    /// Every difference between `self` under `a_from` and `b` under
    /// `b_from`, passed to `emit` in walk order with paths below `prefix`.
    /// A start that is `None` (the path is in one tree only) makes everything
    /// under the other start added or removed; both `None`: no difference.
    /// Under a directory present in one tree only, or replaced by another
    /// type, every entry is added or removed. Hardlinks compare name by name.
    ///
    /// `same_content` is asked about regular files of equal, non-zero size
    /// in both trees (locations in `self`'s and `b`'s layers respectively);
    /// files whose sizes differ differ in content too. An error of either
    /// callback ends the diff.
    pub fn diff<E>(
        &self,
        a_from: Option<Ino>,
        b: &Tree,
        b_from: Option<Ino>,
        prefix: &OsStr,
        mut same_content: impl FnMut(&ContentLocation, &ContentLocation) -> Result<SameContent, E>,
        mut emit: impl FnMut(Change) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = match (a_from, b_from) {
            (Some(a), Some(b)) => Visit::Both(a, b),
            (Some(a), None) => Visit::OnlyA(a),
            (None, Some(b)) => Visit::OnlyB(b),
            (None, None) => return Ok(()),
        };
        let mut stack = vec![(prefix.to_os_string(), start)];
        while let Some((path, visit)) = stack.pop() {
            let (kind, a_children, b_children) = match visit {
                Visit::OnlyA(ino) => (Some(ChangeKind::Removed(ino)), self.children(ino), None),
                Visit::OnlyB(ino) => (Some(ChangeKind::Added(ino)), None, b.children(ino)),
                Visit::Both(a_ino, b_ino) => {
                    let a_inode = self.attr(a_ino).expect("walked inodes exist");
                    let b_inode = b.attr(b_ino).expect("walked inodes exist");
                    let (differ, content_unknown) = compare(a_inode, b_inode, &mut same_content)?;
                    let kind =
                        (!differ.is_empty() || content_unknown).then_some(ChangeKind::Changed {
                            a: a_ino,
                            b: b_ino,
                            differ,
                            content_unknown,
                        });
                    (kind, self.children(a_ino), b.children(b_ino))
                }
            };
            // Children go on the stack in reverse name order, so they come
            // off it (and out) in name order, each before its own children.
            let mut visits = merge(a_children.unwrap_or(&[]), b_children.unwrap_or(&[]));
            visits.reverse();
            stack.extend(
                visits
                    .into_iter()
                    .map(|(name, v)| (child_path(&path, name), v)),
            );
            if let Some(kind) = kind {
                emit(Change { path, kind })?;
            }
        }
        Ok(())
    }
}

/// Two sorted entry lists joined by name: what to visit under a directory.
fn merge<'t>(a: &'t [super::DirEntry], b: &'t [super::DirEntry]) -> Vec<(&'t OsStr, Visit)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.name.as_bytes().cmp(y.name.as_bytes()),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.push((a[i].name.as_os_str(), Visit::OnlyA(a[i].ino)));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push((b[j].name.as_os_str(), Visit::OnlyB(b[j].ino)));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push((a[i].name.as_os_str(), Visit::Both(a[i].ino, b[j].ino)));
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// The attributes in which `a` and `b` differ, and whether their content is
/// unknown. Link counts are not compared: they follow from other entries.
fn compare<E>(
    a: &Inode,
    b: &Inode,
    same_content: &mut impl FnMut(&ContentLocation, &ContentLocation) -> Result<SameContent, E>,
) -> Result<(Vec<Attribute>, bool), E> {
    let mut differ = Vec::new();
    let mut content_unknown = false;
    match (&a.kind, &b.kind) {
        (InodeKind::Regular(x), InodeKind::Regular(y)) => {
            if x.size != y.size {
                differ.extend([Attribute::Size, Attribute::Content]);
            } else if x.size > 0 {
                match same_content(x, y)? {
                    SameContent::Yes => {}
                    SameContent::No => differ.push(Attribute::Content),
                    SameContent::Unknown => content_unknown = true,
                }
            }
        }
        (InodeKind::Symlink(x), InodeKind::Symlink(y)) if x != y => differ.push(Attribute::Target),
        (InodeKind::CharDevice(x), InodeKind::CharDevice(y))
        | (InodeKind::BlockDevice(x), InodeKind::BlockDevice(y))
            if x != y =>
        {
            differ.push(Attribute::Device)
        }
        _ if FileType::of(a) != FileType::of(b) => differ.push(Attribute::Type),
        _ => {}
    }
    if a.mode != b.mode {
        differ.push(Attribute::Mode);
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        differ.push(Attribute::Owner);
    }
    if sorted_xattrs(a) != sorted_xattrs(b) {
        differ.push(Attribute::Xattrs);
    }
    if a.mtime != b.mtime {
        differ.push(Attribute::Mtime);
    }
    differ.sort();
    Ok((differ, content_unknown))
}

/// `inode`'s xattrs in name order: tars may carry them in any order.
fn sorted_xattrs(inode: &Inode) -> Vec<&(String, Vec<u8>)> {
    let mut xattrs: Vec<_> = inode.xattrs.iter().collect();
    xattrs.sort();
    xattrs
}
