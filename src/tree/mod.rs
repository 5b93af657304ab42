//! The merged, read-only view of an image: layers' entry tables applied bottom to
//! top with the OCI changeset rules, frozen into an inode table that the
//! FUSE adapter queries. [`Tree::overlay_layers`] freezes the layers'
//! unmerged views in overlayfs lower-layer format instead.
//!
//! Conventions the adapter can rely on:
//! - Inode numbers are dense, `ROOT_INO` (1) up to `inode_count()`; names of
//!   one hardlinked file share an inode.
//! - `children` lists a directory's entries sorted by raw name bytes,
//!   without `.` and `..`; the index in that slice is a stable readdir
//!   cookie because the tree never changes. The adapter emits `.` and `..`
//!   itself, using `parent` for `..` (the root is its own parent).
//! - Directory size is `DIR_SIZE` (4096, like ext4 for small directories);
//!   symlink size is the target length, as `readlink` callers expect;
//!   device and fifo size is 0.
//! - Directory nlink is 2 + number of subdirectories; a file's nlink is its
//!   number of names in the merged tree.

mod build;
mod diff;
#[cfg(test)]
mod diff_tests;
mod find;
mod graft;
mod overlay;
#[cfg(test)]
mod overlay_tests;
mod persist;
mod query;
#[cfg(test)]
mod tests;
mod walk;
pub use diff::{Attribute, Change, ChangeKind, SameContent};
pub(crate) use find::fnmatch;
pub use find::{FileType, FindQuery, SizeTest};
pub use walk::{MAX_SYMLINKS, ResolveError};
#[cfg(test)]
mod walk_tests;

use std::ffi::OsString;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::layer::{Device, EntryKind, SparseMap, Timestamp};

pub use overlay::{OverlayXattrs, layer_dir_name};
pub use persist::FORMAT_VERSION;

pub type Ino = u64;

pub const ROOT_INO: Ino = 1;

/// Reported size of every directory.
pub const DIR_SIZE: u64 = 4096;

/// Where a regular file's bytes live: `size` bytes at `offset` of layer
/// `layer`'s content space (the uncompressed tar stream for tar layers;
/// `layer` indexes the slice given to `Tree::build` or
/// `Tree::overlay_layers`, bottom layer first). Nothing else in the tree
/// knows how content is addressed.
///
/// A sparse file (`sparse` set) is `size` bytes too, its holes included,
/// but the content space holds only its data segments, packed: the map's
/// `packed_size()` bytes at `offset`. Readers resolve it with
/// [`ContentLocation::packed`] and [`SparseMap::pieces`], and read a hole
/// as zeros without touching the layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContentLocation {
    pub layer: u32,
    pub offset: u64,
    pub size: u64,
    /// Shared, not copied, by every name and handle of the file.
    pub sparse: Option<Arc<SparseMap>>,
}

impl ContentLocation {
    /// `size` bytes stored whole at `offset` of layer `layer`.
    pub fn dense(layer: u32, offset: u64, size: u64) -> ContentLocation {
        ContentLocation {
            layer,
            offset,
            size,
            sparse: None,
        }
    }

    /// Where layer `layer`'s entry of kind `kind` keeps its bytes; `None`
    /// unless it is a regular file (sparse or not).
    pub fn of_entry(layer: u32, kind: &EntryKind) -> Option<ContentLocation> {
        match kind {
            &EntryKind::Regular { offset, size } => Some(Self::dense(layer, offset, size)),
            EntryKind::Sparse { offset, map } => Some(ContentLocation {
                layer,
                offset: *offset,
                size: map.size(),
                sparse: Some(Arc::new(map.clone())),
            }),
            _ => None,
        }
    }

    /// The stored bytes of the file as one dense run: itself when it is
    /// not sparse, else its packed data segments, which
    /// [`SparseMap::pieces`] offsets point into.
    pub fn packed(&self) -> ContentLocation {
        match &self.sparse {
            None => self.clone(),
            Some(map) => Self::dense(self.layer, self.offset, map.packed_size()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub kind: InodeKind,
    /// The layer (0 = bottom) whose entry last wrote this entry's metadata,
    /// as `lazyimg ls -l` shows it; `None` for directories no entry named
    /// (implied parents) and entries no image layer holds (grafted ones).
    pub layer: Option<u32>,
    /// Permission bits including setuid/setgid/sticky; see `st_mode` for
    /// the full value with the file type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    pub nlink: u32,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InodeKind {
    Regular(ContentLocation),
    Directory(Directory),
    Symlink(OsString),
    CharDevice(Device),
    BlockDevice(Device),
    Fifo,
}

/// A directory's entries; read them through `Tree::children`/`lookup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    parent: Ino,
    /// Sorted by name bytes, so lookups are binary searches.
    entries: Vec<DirEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: Ino,
}

/// Inode `n` is `inodes[n - 1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    inodes: Vec<Inode>,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("layer {layer}: hardlink {path:?} points to {target:?}, which does not exist")]
    HardlinkTargetMissing {
        layer: u32,
        path: String,
        target: String,
    },
    #[error("layer {layer}: hardlink {path:?} points to directory {target:?}")]
    HardlinkToDirectory {
        layer: u32,
        path: String,
        target: String,
    },
    #[error("layer {layer}: the entry for the root directory is not a directory")]
    RootNotDirectory { layer: u32 },
    #[error("{count} layers is more than a tree can address")]
    TooManyLayers { count: usize },
    #[error("not a lazyimg tree cache")]
    NotATreeCache,
    #[error("tree cache has format version {found}, this build reads version {expected}")]
    FormatVersion { found: u32, expected: u32 },
    #[error("encoding tree cache: {0}")]
    Encode(#[source] postcard::Error),
    #[error("decoding tree cache: {0}")]
    Decode(#[source] postcard::Error),
}
