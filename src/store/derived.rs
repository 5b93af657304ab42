//! Data derived from verified content (entry tables, merged trees), kept beside
//! the blobs and named by the digest of what it was derived from.
//!
//! Derived files are caches, not content: a missing or unreadable one is simply
//! rebuilt from the blobs, so they need no digest of their own.

use std::fs;
use std::path::PathBuf;

use super::{Store, write_atomically};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// What a derived file holds; each kind has its own directory.
#[derive(Debug, Clone, Copy)]
pub enum Derived {
    /// A layer's entry table, by the layer's uncompressed digest (diff_id).
    EntryTable,
    /// A merged tree, by image manifest digest.
    Tree,
    /// How to read a layer lazily (`chunkmap::ChunkMap`), by the layer's digest.
    ChunkMap,
    /// The files to fetch first when mounting, from the image's lazyimg index,
    /// by image manifest digest.
    PrefetchList,
}

impl Derived {
    fn dir(self) -> &'static str {
        match self {
            Derived::EntryTable => "derived/layer-index",
            Derived::Tree => "derived/tree",
            Derived::ChunkMap => "derived/chunk-map",
            Derived::PrefetchList => "derived/prefetch",
        }
    }
}

impl Store {
    /// Removes entry tables whose uncompressed layer is no longer stored
    /// (evicted): only that blob can use them, and opening it again rebuilds
    /// its entry table. Returns how many were removed. Run under the eviction lock.
    ///
    /// The other kinds stay, because their names cannot tell whether their
    /// source is gone: a chunk map is named after a layer blob that a lazy
    /// mount never stores, a tree of a lazily read image after a digest of
    /// several things, and a prefetch list is not fetched again when only its
    /// manifest is (the layers' chunk maps are still there).
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be listed or a file not removed.
    pub(super) fn prune_orphaned_layer_indexes(&self) -> Result<usize> {
        let dir = self.root.join(Derived::EntryTable.dir());
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            // Anything not named by a digest is a temp file of a writer at work.
            let Some(source) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            else {
                continue;
            };
            if self.contains(&source) {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(entry.path(), e)),
            }
        }
        Ok(removed)
    }

    fn derived_path(&self, kind: Derived, source: &Digest) -> PathBuf {
        self.root.join(kind.dir()).join(source.hex())
    }

    /// The bytes derived from `source`, if they were saved.
    pub fn read_derived(&self, kind: Derived, source: &Digest) -> Result<Option<Vec<u8>>> {
        let path = self.derived_path(kind, source);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Saves `bytes` as derived from `source`, atomically.
    pub fn write_derived(&self, kind: Derived, source: &Digest, bytes: &[u8]) -> Result<()> {
        write_atomically(&self.derived_path(kind, source), bytes)
    }
}
