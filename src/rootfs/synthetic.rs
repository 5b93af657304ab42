//! Files a mount shows that no layer holds, grafted onto the image's tree
//! ([`Tree::graft`]): what a runtime expects of an image it converted itself
//! (content built in memory), or host files a job needs inside (the NVIDIA
//! driver for Charliecloud, read from the host file when read). Only mounts
//! that ask for them get them; a plain mount's listing stays the image's.
//! Host files are the host's own, trusted as the host trusts them: no image
//! byte is served from them.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{ContentIdentity, ContentReader, RootFs};
use crate::error::Result;
use crate::layer::{EntryKind, TarEntry, Timestamp};
use crate::tree::{ContentLocation, Tree};

/// The layer number synthetic files' content is addressed under: above any
/// layer an image can have ([`Tree::build`] refuses `u32::MAX` layers).
pub const SYNTHETIC_LAYER: u32 = u32::MAX;

/// Where host files start in the synthetic content space; in-memory content
/// takes the offsets below.
const HOST_BASE: u64 = 1 << 62;

/// Directories and files to add, owned by root.
#[derive(Debug, Default)]
pub struct SyntheticFiles {
    entries: Vec<TarEntry>,
    content: BytesMut,
    /// Host files by the offset they start at (from [`HOST_BASE`]), open,
    /// with their sizes when added.
    host: Vec<(u64, Arc<File>, u64)>,
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

    /// A regular file `path` whose content is the host file `host` (opened
    /// now; its size now is the file's size). Errors: `host` cannot be
    /// opened or is not a regular file.
    pub fn host_file(&mut self, path: &str, mode: u32, host: &Path) -> std::io::Result<&mut Self> {
        let file = File::open(host)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::other(format!(
                "{} is not a regular file",
                host.display()
            )));
        }
        let offset = self
            .host
            .last()
            .map_or(HOST_BASE, |(base, _, size)| base + size);
        self.host.push((offset, Arc::new(file), meta.len()));
        self.push(
            path,
            EntryKind::Regular {
                offset,
                size: meta.len(),
            },
            mode,
        );
        Ok(self)
    }

    /// Whether `path` is among the entries added so far.
    pub fn has(&self, path: &str) -> bool {
        self.entries.iter().any(|e| e.path == path)
    }

    /// The entries and the in-memory content their regular files point into.
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
                host: files.host,
            }),
            stats: self.stats,
        }
    }
}

/// The image's content, plus the synthetic files' under [`SYNTHETIC_LAYER`].
struct WithSynthetic {
    base: Arc<dyn ContentReader>,
    bytes: Bytes,
    host: Vec<(u64, Arc<File>, u64)>,
}

impl WithSynthetic {
    fn slice(&self, location: &ContentLocation, offset: u64, len: usize) -> Result<Bytes> {
        let offset = offset.min(location.size);
        let len = (len as u64).min(location.size - offset);
        if location.offset < HOST_BASE {
            let start = (location.offset + offset) as usize;
            return Ok(self.bytes.slice(start..start + len as usize));
        }
        let at = self
            .host
            .partition_point(|(base, ..)| *base <= location.offset);
        let (base, file, _) = &self.host[at.checked_sub(1).expect("offsets come from host_file")];
        debug_assert_eq!(*base, location.offset);
        let mut buf = vec![0; len as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break, // the host file shrank since: what is left
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(crate::error::Error::io(Path::new("host file"), e)),
            }
        }
        buf.truncate(filled);
        Ok(Bytes::from(buf))
    }
}

impl ContentReader for WithSynthetic {
    fn read(&self, location: &ContentLocation, offset: u64, len: usize) -> Result<Bytes> {
        if location.layer == SYNTHETIC_LAYER {
            return self.slice(location, offset, len);
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
            return Some(self.slice(location, offset, len));
        }
        self.base.read_ready(location, offset, len)
    }

    fn fill(&self, max_rate: Option<u64>) -> Result<u64> {
        self.base.fill(max_rate)
    }

    fn prefetch(&self, locations: &[ContentLocation]) -> Result<()> {
        let image: Vec<ContentLocation> = (locations.iter())
            .filter(|l| l.layer != SYNTHETIC_LAYER)
            .cloned()
            .collect();
        self.base.prefetch(&image)
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
        let InodeKind::Regular(location) = rootfs.tree.attr(b).unwrap().kind.clone() else {
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

    #[test]
    fn host_files_are_read_from_the_host_when_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("one"), b"host one").unwrap();
        std::fs::write(dir.path().join("two"), b"host file two").unwrap();
        let tree = Tree::build(&[EntryTable::default()]).unwrap();
        let rootfs = RootFs {
            tree,
            content: Arc::new(NoContent),
            stats: None,
        };
        let mut files = SyntheticFiles::default();
        files.file("inline", 0o644, b"memory");
        files
            .host_file("one", 0o755, &dir.path().join("one"))
            .unwrap();
        files
            .host_file("two", 0o644, &dir.path().join("two"))
            .unwrap();
        assert!(files.host_file("dir", 0o644, dir.path()).is_err());
        let rootfs = rootfs.with_synthetic(files);
        let read = |name: &str, offset, len| {
            let ino = rootfs.tree.lookup(ROOT_INO, OsStr::new(name)).unwrap();
            let InodeKind::Regular(location) = rootfs.tree.attr(ino).unwrap().kind.clone() else {
                panic!("not a file");
            };
            rootfs.content.read(&location, offset, len).unwrap()
        };
        assert_eq!(read("inline", 0, 99), "memory");
        assert_eq!(read("one", 0, 99), "host one");
        assert_eq!(read("two", 5, 4), "file");
        assert_eq!(read("two", 13, 4), "");
    }
}
