//! An image's merged root filesystem (or another [`View`] of it): the tree, plus
//! where its file bytes come from.
//!
//! The FUSE adapter sees only this: [`Tree`] answers every metadata question and a
//! [`ContentReader`] returns verified file bytes. How those bytes are found (whole
//! cached layers today, ranged chunk fetches later) stays behind the trait.

mod identity;
pub mod layer_store;
pub mod stats;
pub mod synthetic;

use std::sync::Arc;

use bytes::Bytes;

use crate::error::Result;
pub use identity::{ContentIdentity, same_content};
pub use stats::{Stats, StatsReport};

use crate::digest::Digest;
use crate::layer::EntryTable;
use crate::tree::{ContentLocation, OverlayXattrs, Tree, TreeError};

/// Reads regular-file content. Implementations return only verified bytes and may
/// block (a read can wait on the network), so callers run them off the FUSE loop.
pub trait ContentReader: Send + Sync + 'static {
    /// Up to `len` bytes of the file stored at `location`, starting `offset` bytes
    /// into the file. Fewer bytes only at end of file.
    fn read(&self, location: &ContentLocation, offset: u64, len: usize) -> Result<Bytes>;

    /// The same bytes as [`read`](Self::read) if they can be had without
    /// waiting on the network (unpacked layers, stored or in-memory chunks);
    /// `None` otherwise. Cheap enough to call on the FUSE loop, so reads of
    /// cached content never queue behind reads waiting on a registry.
    fn read_ready(
        &self,
        location: &ContentLocation,
        offset: u64,
        len: usize,
    ) -> Option<Result<Bytes>> {
        let _ = (location, offset, len);
        None
    }

    /// Fetches everything not yet cached, at most `max_rate` bytes per second
    /// on average; returns the bytes fetched. Nothing to do for local content.
    fn fill(&self, max_rate: Option<u64>) -> Result<u64> {
        let _ = max_rate;
        Ok(0)
    }

    /// Fetches the stored bytes of the files at `locations` (each whole; a
    /// sparse file's data, never its holes) so later reads find them at
    /// hand, as many at once as the reader allows; returns once they are
    /// verified and cached. Nothing to do for local content.
    ///
    /// Errors: the first that could not be fetched; the rest are fetched
    /// all the same.
    fn prefetch(&self, locations: &[ContentLocation]) -> Result<()> {
        let _ = locations;
        Ok(())
    }

    /// What names the bytes of the file at `location` without reading them,
    /// if anything does (see [`ContentIdentity`]).
    fn identity(&self, location: &ContentLocation) -> Option<ContentIdentity> {
        let _ = location;
        None
    }
}

/// A mounted image's whole view: immutable, shared by every FUSE worker.
pub struct RootFs {
    pub tree: Tree,
    pub content: Arc<dyn ContentReader>,
    /// What reading the content cost (`lazyimg stats`): a handle of its own,
    /// shared with the readers that count into it; `None` for content that
    /// keeps no counters.
    pub stats: Option<Arc<Stats>>,
}

/// Which tree of an image a [`RootFs`] serves; every view reads file bytes
/// through the image's one [`ContentReader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The image's root filesystem, layers merged ([`Tree::build`]).
    Merged,
    /// Every layer's own tree in overlayfs lower-layer format, layer `n` in
    /// the root's directory [`crate::tree::layer_dir_name`]`(n)`, marked for
    /// overlay mounts in this xattr namespace ([`Tree::overlay_layers`]):
    /// what an overlay mount, a containerd snapshot or Podman's additional
    /// layer store stacks.
    Layers(OverlayXattrs),
}

impl View {
    /// This view's tree of an image whose layers have these entry tables,
    /// bottom layer first.
    pub fn build(self, layers: &[EntryTable]) -> std::result::Result<Tree, TreeError> {
        match self {
            View::Merged => Tree::build(layers),
            View::Layers(xattrs) => Tree::overlay_layers(layers, xattrs),
        }
    }

    /// Key of the view's cached tree, given the merged tree's key: each view
    /// of one image is cached apart.
    pub fn tree_key(self, merged: Digest) -> Digest {
        match self {
            View::Merged => merged,
            View::Layers(xattrs) => {
                Digest::of(format!("{merged} overlay layers {}", xattrs.prefix()).as_bytes())
            }
        }
    }
}
