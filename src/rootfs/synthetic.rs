//! Files a mount shows that no layer holds, built in memory and grafted onto
//! the image's tree ([`Tree::graft`]): what a runtime expects of an image it
//! converted itself. Only mounts that ask for them get them; a plain mount's
//! listing stays the image's.

use std::ffi::OsString;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{ContentIdentity, ContentReader, RootFs};
use crate::error::Result;
use crate::layer::{EntryKind, TarEntry, Timestamp};
use crate::tree::{ContentLocation, Tree};

/// The layer number synthetic files' content is addressed under: above any
/// layer an image can have ([`Tree::build`] refuses `u32::MAX` layers).
pub const SYNTHETIC_LAYER: u32 = u32::MAX;

/// Directories and files to add, owned by root, content in memory.
#[derive(Debug, Default)]
pub struct SyntheticFiles {
    entries: Vec<TarEntry>,
    content: BytesMut,
}

impl SyntheticFiles {
    /// A directory `path` (relative to the root, `/`-separated; its parent
    /// added before it or in the image) with permission bits `mode`.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.push(path, EntryKind::Directory, mode);
        self
    }

    /// A regular file `path` holding `content`.
    pub fn file(&mut self, path: &str, mode: u32, content: &[u8]) -> &mut Self {
        let offset = self.content.len() as u64;
        self.content.extend_from_slice(content);
        let size = content.len() as u64;
        self.push(path, EntryKind::Regular { offset, size }, mode);
        self
    }

    /// The entries and the content their regular files point into.
    pub fn parts(&self) -> (&[TarEntry], &[u8]) {
        (&self.entries, &self.content)
    }

    fn push(&mut self, path: &str, kind: EntryKind, mode: u32) {
        self.entries.push(TarEntry {
            path: OsString::from(path),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            xattrs: Vec::new(),
        });
    }
}

impl RootFs {
    /// This view with `files` grafted on; an entry whose path the image
    /// already has is left out (the image's own wins), and logged.
    pub fn with_synthetic(mut self, files: SyntheticFiles) -> RootFs {
        let skipped = Tree::graft(&mut self.tree, &files.entries, SYNTHETIC_LAYER);
        for path in skipped {
            tracing::info!("not adding /{}: the image has it", path.to_string_lossy());
        }
        RootFs {
            tree: self.tree,
            content: Arc::new(WithSynthetic {
                base: self.content,
                bytes: files.content.freeze(),
            }),
            stats: self.stats,
        }
    }
}

/// The image's content, plus the synthetic files' under [`SYNTHETIC_LAYER`].
struct WithSynthetic {
    base: Arc<dyn ContentReader>,
    bytes: Bytes,
}

impl WithSynthetic {
    fn slice(&self, location: &ContentLocation, offset: u64, len: usize) -> Bytes {
        let start = location.offset.saturating_add(offset.min(location.size));
        let end = location.offset + location.size;
        let stop = start.saturating_add(len as u64).min(end);
        self.bytes.slice(start as usize..stop as usize)
    }
}

impl ContentReader for WithSynthetic {
    fn read(&self, location: &ContentLocation, offset: u64, len: usize) -> Result<Bytes> {
        if location.layer == SYNTHETIC_LAYER {
            return Ok(self.slice(location, offset, len));
        }
        self.base.read(location, offset, len)
    }

    fn read_ready(
        &self,
        location: &ContentLocation,
        offset: u64,
        len: usize,
    ) -> Option<Result<Bytes>> {
        if location.layer == SYNTHETIC_LAYER {
            return Some(Ok(self.slice(location, offset, len)));
        }
        self.base.read_ready(location, offset, len)
    }

    fn fill(&self, max_rate: Option<u64>) -> Result<u64> {
        self.base.fill(max_rate)
    }

    fn identity(&self, location: &ContentLocation) -> Option<ContentIdentity> {
        (location.layer != SYNTHETIC_LAYER)
            .then(|| self.base.identity(location))
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;
    use crate::layer::EntryTable;
    use crate::tree::{InodeKind, ROOT_INO};

    /// Content of an image that has none: reads are a bug here.
    struct NoContent;

    impl ContentReader for NoContent {
        fn read(&self, _: &ContentLocation, _: u64, _: usize) -> Result<Bytes> {
            panic!("the image's content was read")
        }
    }

    #[test]
    fn synthetic_files_read_back_from_memory() {
        let tree = Tree::build(&[EntryTable::default()]).unwrap();
        let rootfs = RootFs {
            tree,
            content: Arc::new(NoContent),
            stats: None,
        };
        let mut files = SyntheticFiles::default();
        files
            .dir("s", 0o755)
            .file("s/a", 0o644, b"first")
            .file("s/b", 0o755, b"second file");
        let rootfs = rootfs.with_synthetic(files);
        let dir = rootfs.tree.lookup(ROOT_INO, OsStr::new("s")).unwrap();
        let b = rootfs.tree.lookup(dir, OsStr::new("b")).unwrap();
        let InodeKind::Regular(location) = rootfs.tree.attr(b).unwrap().kind else {
            panic!("not a file");
        };
        assert_eq!(
            rootfs.content.read(&location, 0, 100).unwrap(),
            "second file"
        );
        assert_eq!(rootfs.content.read(&location, 7, 2).unwrap(), "fi");
        assert_eq!(rootfs.content.read(&location, 50, 2).unwrap(), "");
        assert!(rootfs.content.identity(&location).is_none());
        assert_eq!(rootfs.tree.attr(b).unwrap().mode, 0o755);
    }
}
