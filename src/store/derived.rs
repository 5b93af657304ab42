//! Data derived from verified content (layer indexes, merged trees), kept beside
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
    /// A layer's tar index, by the layer's uncompressed digest (diff_id).
    LayerIndex,
    /// A merged tree, by image manifest digest.
    Tree,
    /// How to read a layer lazily (`lazy::ChunkMap`), by the layer's digest.
    ChunkMap,
    /// The files to fetch first when mounting, from the image's lazyimg index,
    /// by image manifest digest.
    PrefetchList,
}

impl Derived {
    fn dir(self) -> &'static str {
        match self {
            Derived::LayerIndex => "derived/layer-index",
            Derived::Tree => "derived/tree",
            Derived::ChunkMap => "derived/chunk-map",
            Derived::PrefetchList => "derived/prefetch",
        }
    }
}

impl Store {
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
