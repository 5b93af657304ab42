//! Reading a tree without a mount: a depth-first walk in name order, and path
//! resolution that follows symlinks inside the image only.
//!
//! Resolution follows path_resolution(7) with the image's root as the root: an
//! absolute symlink target starts again at the image's root, `..` at the root
//! stays there, and more than [`MAX_SYMLINKS`] symlinks is a loop (ELOOP). So a
//! reviewer's `lazyimg cat etc/link` where `etc/link -> /etc/shadow` shows the
//! image's `/etc/shadow`, never the host's, unlike shell tools over a mount.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::{Ino, InodeKind, ROOT_INO, Tree};

/// Symlinks followed in one resolution before it counts as a loop (Linux's
/// limit, path_resolution(7)).
pub const MAX_SYMLINKS: usize = 40;

/// Why a path does not resolve inside an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("{0:?}: no such file or directory in the image")]
    NotFound(OsString),
    #[error("{0:?}: not a directory")]
    NotADirectory(OsString),
    #[error("{0:?}: symlink loop (more than {MAX_SYMLINKS} symlinks)")]
    Loop(OsString),
}

impl Tree {
    /// Every inode under `from` (itself first), depth-first with each
    /// directory's entries in name-byte order, with its path relative to
    /// `from`'s path `prefix` (`/`-separated bytes, no leading `/` unless
    /// `prefix` has one). A hardlinked inode appears once per name.
    pub fn walk(&self, from: Ino, prefix: &OsStr) -> impl Iterator<Item = (OsString, Ino)> + '_ {
        let mut stack = vec![(prefix.to_os_string(), from)];
        std::iter::from_fn(move || {
            let (path, ino) = stack.pop()?;
            if let Some(children) = self.children(ino) {
                for entry in children.iter().rev() {
                    stack.push((child_path(&path, &entry.name), entry.ino));
                }
            }
            Some((path, ino))
        })
    }

    /// The inode `path` names, following symlinks inside the image (see the
    /// module docs); the last component's symlink is followed only when
    /// `follow_last`. `path` may be absolute or relative to the image root.
    pub fn resolve_in_image(&self, path: &OsStr, follow_last: bool) -> Result<Ino, ResolveError> {
        let mut followed = 0;
        // Components still to walk, last one at the end; `dirs` the way down.
        let mut pending: Vec<Vec<u8>> = components(path.as_bytes()).rev().collect();
        let mut dirs = vec![ROOT_INO];
        let error_path = || path.to_os_string();
        while let Some(name) = pending.pop() {
            let here = *dirs.last().expect("the root is never popped");
            if name == b".." {
                if dirs.len() > 1 {
                    dirs.pop();
                }
                continue;
            }
            let Some(ino) = self.lookup(here, OsStr::from_bytes(&name)) else {
                return Err(match self.children(here) {
                    Some(_) => ResolveError::NotFound(error_path()),
                    None => ResolveError::NotADirectory(error_path()),
                });
            };
            let last = pending.is_empty();
            match &self.attr(ino).expect("looked-up inodes exist").kind {
                InodeKind::Symlink(target) if !last || follow_last => {
                    followed += 1;
                    if followed > MAX_SYMLINKS {
                        return Err(ResolveError::Loop(error_path()));
                    }
                    let target = target.as_bytes();
                    if target.starts_with(b"/") {
                        dirs.truncate(1);
                    }
                    pending.extend(components(target).rev());
                }
                InodeKind::Directory(_) => dirs.push(ino),
                _ if last => return Ok(ino),
                _ => return Err(ResolveError::NotADirectory(error_path())),
            }
        }
        Ok(*dirs.last().expect("the root is never popped"))
    }
}

/// `name` in directory `path`, as walks show it: `/`-joined, and bare at an
/// empty `path`.
pub(super) fn child_path(path: &OsStr, name: &OsStr) -> OsString {
    let mut child = path.as_bytes().to_vec();
    if !child.is_empty() && !child.ends_with(b"/") {
        child.push(b'/');
    }
    child.extend_from_slice(name.as_bytes());
    OsString::from_vec(child)
}

/// The non-empty, non-`.` components of a `/`-separated path, as owned bytes.
fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = Vec<u8>> + '_ {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
}
