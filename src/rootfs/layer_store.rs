//! Podman's additional layer store (ALS) as a namespace: which name leads
//! where, what each node is, and the `info` record, with no FUSE in sight.
//!
//! The layout containers/storage 1.43 (Podman 4.3) looks a layer up in,
//! `drivers/overlay/overlay.go` `getAdditionalLayerPath`, with the store
//! configured as `DIR:ref`:
//!
//! ```text
//! DIR/<base64 std, padded, of the image reference>/<compressed layer digest>/
//!     diff/   the layer's own tree in overlayfs lower-layer format
//!     info    JSON: a containers/storage layer record (layers.go `Layer`)
//!     blob    the compressed layer blob
//! ```
//!
//! All three must `stat` or Podman pulls the layer itself. The reference is
//! containers/image's `reference.Named.String()` of the source
//! (`copy/copy.go` passes `rawSource.Reference().DockerReference()`):
//! `host[:port]/path:tag`, `…@sha256:…`, Docker Hub names in full.
//!
//! Notifications (`overlay.go` `notifyUseAdditionalLayer`,
//! `notifyReleaseAdditionalLayer`): creating `<layer>/use` means "in use",
//! `rmdir <layer>` means "released"; a store that counts them answers both
//! with ENOENT, which Podman takes as "noted".
//!
//! Each image's layers are served from its [`View::Layers`](super::View)
//! tree: `<layer>/diff` is that tree's directory of the layer, so hardlinks
//! across an image's layers stay hardlinks (one filesystem, one inode).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::Serialize;

use super::RootFs;
use crate::digest::Digest;
use crate::error::Result;
use crate::layer::Compression;
use crate::tree::{Ino, ROOT_INO};

/// The file Podman creates in a layer directory to say it uses the layer.
pub const USE_FILE: &str = "use";
const DIFF: &str = "diff";
const INFO: &str = "info";
const BLOB: &str = "blob";

/// The directory name of image `reference` under the store's root.
pub fn reference_dir(reference: &str) -> String {
    STANDARD.encode(reference)
}

/// The image reference a root entry names, if it is one.
pub fn reference_of(dir: &OsStr) -> Option<String> {
    let bytes = STANDARD.decode(dir.as_encoded_bytes()).ok()?;
    String::from_utf8(bytes).ok()
}

/// A layer's `info`: the fields of containers/storage's `Layer` record
/// (`layers.go`) that `store.go` `LookupAdditionalLayer` and `PutAs` read:
/// the DiffID (which names the layer in Podman's store and must match the
/// image config), the blob's digest and size, the tar's size, and the
/// blob's compression (`layers.go` `Diff`, behind `podman save`/`push`,
/// decompresses `blob` when asked for another compression).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    #[serde(rename = "compressed-diff-digest")]
    pub compressed_digest: String,
    #[serde(rename = "compressed-size")]
    pub compressed_size: u64,
    #[serde(rename = "diff-digest")]
    pub diff_digest: String,
    /// The tar's length, when known. containers/image 5.23 needs it exact
    /// (`storage/storage_src.go`: `podman save` sizes the layer's tar entry
    /// by it, and -1, "unknown", fails `podman images` and `save`
    /// outright); left out when unknown, which only `podman save` and
    /// image sizes notice.
    #[serde(rename = "diff-size", skip_serializing_if = "Option::is_none")]
    pub diff_size: Option<u64>,
    /// The TOC digest ([`StoreLayer::toc_digest`]), the field newer
    /// containers/storage records for layers it found by TOC; 1.43 ignores it.
    #[serde(rename = "toc-digest", skip_serializing_if = "Option::is_none")]
    pub toc_digest: Option<String>,
    /// containers/storage `pkg/archive` `Compression`: 0 none, 2 gzip, 4 zstd.
    pub compression: u8,
}

impl LayerInfo {
    /// The record of a layer whose blob is `digest` (`size` bytes, compressed
    /// with `compression`) and whose uncompressed tar is `diff_id`
    /// (`tar_size` bytes, if known), with a table of contents `toc_digest`.
    pub fn new(
        digest: &Digest,
        size: u64,
        compression: Compression,
        diff_id: &Digest,
        tar_size: Option<u64>,
        toc_digest: Option<&Digest>,
    ) -> LayerInfo {
        LayerInfo {
            compressed_digest: digest.to_string(),
            compressed_size: size,
            diff_digest: diff_id.to_string(),
            diff_size: tar_size,
            toc_digest: toc_digest.map(Digest::to_string),
            compression: match compression {
                Compression::None => 0,
                Compression::Gzip => 2,
                Compression::Zstd => 4,
            },
        }
    }

    /// The `info` file's bytes: the JSON containers/storage decodes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec(self).expect("a layer record always serialises");
        json.push(b'\n');
        json
    }
}

/// Reads a layer's compressed blob; may block on the network.
pub trait BlobReader: Send + Sync + 'static {
    /// Up to `len` bytes of blob `digest` (`size` bytes long) from `offset`,
    /// verified: fewer only at the end.
    fn read(&self, digest: &Digest, size: u64, offset: u64, len: usize) -> Result<Bytes>;
}

/// One served layer of an image.
pub struct StoreLayer {
    /// The blob's digest, as the manifest names it: the layer's directory.
    pub digest: Digest,
    /// The digest of the layer's table of contents (eStargz, zstd:chunked),
    /// which names the same directory: containers/image ≥ 5.31 (Podman ≥
    /// 5.1) looks layers with a TOC up by it, and only those.
    pub toc_digest: Option<Digest>,
    /// The blob's size: `blob`'s length.
    pub size: u64,
    /// The layer's directory in the image's [`View::Layers`](super::View) tree.
    pub view: Ino,
    /// The `info` file's bytes.
    pub info: Vec<u8>,
}

/// An image opened for the store: its layer views and where blobs come from.
pub struct StoreImage {
    pub rootfs: Arc<RootFs>,
    /// The layers served, in manifest order; a layer missing here is absent
    /// from the store and Podman pulls it itself.
    pub layers: Vec<StoreLayer>,
    pub blobs: Arc<dyn BlobReader>,
}

/// Opens the image a reference names, as the store serves it.
pub trait ImageResolver: Send + Sync + 'static {
    /// The image `reference` (Podman's form, see the module docs) names,
    /// refused when `lazyimg mount` would refuse it.
    fn resolve(&self, reference: &str) -> Result<StoreImage>;
}

/// Inode numbers: 1 is the root; image slot `s` owns the block of 2^40
/// numbers from `(s + 1) << 40`: its tree's inodes at their own numbers
/// (a tree holds fewer than 2^39), the store's own nodes above 2^39.
const IMAGE_BLOCK: u32 = 40;
const OWN_NODES: u64 = 1 << 39;

/// A node of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    /// `<ref>/`, by image slot.
    Image(u32),
    /// `<ref>/<digest>/`, by image slot and index in [`StoreImage::layers`].
    Layer(u32, u32),
    Info(u32, u32),
    Blob(u32, u32),
    /// An inode of the image's tree (`diff/` and all below it).
    Tree(u32, Ino),
}

impl Node {
    /// The node's inode number, as the kernel sees it.
    pub fn ino(self) -> u64 {
        let base = |slot: u32| (u64::from(slot) + 1) << IMAGE_BLOCK;
        let own = |slot, k: u64| base(slot) | OWN_NODES | k;
        let layer = |slot, layer: u32, k| own(slot, 1 + 3 * u64::from(layer) + k);
        match self {
            Node::Root => ROOT_INO,
            Node::Image(slot) => own(slot, 0),
            Node::Layer(slot, l) => layer(slot, l, 0),
            Node::Info(slot, l) => layer(slot, l, 1),
            Node::Blob(slot, l) => layer(slot, l, 2),
            Node::Tree(slot, ino) => base(slot) | ino,
        }
    }

    /// The node inode number `ino` names, if any.
    pub fn of(ino: u64) -> Option<Node> {
        if ino == ROOT_INO {
            return Some(Node::Root);
        }
        let slot = u32::try_from((ino >> IMAGE_BLOCK).checked_sub(1)?).ok()?;
        let within = ino & ((1 << IMAGE_BLOCK) - 1);
        if within & OWN_NODES == 0 {
            return (within != 0).then_some(Node::Tree(slot, within));
        }
        let k = within & !OWN_NODES;
        if k == 0 {
            return Some(Node::Image(slot));
        }
        let layer = u32::try_from((k - 1) / 3).ok()?;
        Some(match (k - 1) % 3 {
            0 => Node::Layer(slot, layer),
            1 => Node::Info(slot, layer),
            _ => Node::Blob(slot, layer),
        })
    }
}

/// What a node is, for its attributes.
pub enum NodeKind {
    /// A directory of the store's own.
    Dir,
    /// A file of the store's own, this many bytes long.
    File(u64),
    /// An inode of an image's tree.
    Tree(Arc<StoreImage>, Ino),
}

/// The store's namespace: images resolved on first lookup and kept.
pub struct LayerStore {
    resolver: Box<dyn ImageResolver>,
    /// By slot: the reference and its image.
    images: RwLock<Vec<(String, Arc<StoreImage>)>>,
    /// Slots by reference.
    slots: Mutex<HashMap<String, u32>>,
    /// Held while resolving, so two lookups of one new reference do not
    /// resolve it twice; lookups of known references do not wait for it.
    resolving: Mutex<()>,
}

impl LayerStore {
    pub fn new(resolver: Box<dyn ImageResolver>) -> LayerStore {
        LayerStore {
            resolver,
            images: RwLock::new(Vec::new()),
            slots: Mutex::new(HashMap::new()),
            resolving: Mutex::new(()),
        }
    }

    /// The image in `slot`.
    pub fn image(&self, slot: u32) -> Option<Arc<StoreImage>> {
        let images = self.images.read().unwrap_or_else(PoisonError::into_inner);
        images
            .get(slot as usize)
            .map(|(_, image)| Arc::clone(image))
    }

    /// The reference of the image in `slot`.
    pub fn reference(&self, slot: u32) -> Option<String> {
        let images = self.images.read().unwrap_or_else(PoisonError::into_inner);
        images.get(slot as usize).map(|(name, _)| name.clone())
    }

    /// `name` in directory `parent`. Looking up a reference not seen before
    /// resolves it (which may take a while); one that cannot be served is
    /// absent, logged with the reason, and tried again on the next lookup.
    pub fn lookup(&self, parent: Node, name: &OsStr) -> Option<Node> {
        match parent {
            Node::Root => self.resolve(&reference_of(name)?).map(Node::Image),
            Node::Image(slot) => {
                let digest: Digest = name.to_str()?.parse().ok()?;
                let image = self.image(slot)?;
                let layer = (image.layers.iter())
                    .position(|l| l.digest == digest || l.toc_digest == Some(digest))?;
                Some(Node::Layer(slot, u32::try_from(layer).ok()?))
            }
            Node::Layer(slot, layer) => match name.to_str()? {
                DIFF => Some(Node::Tree(slot, self.layer_view(slot, layer)?)),
                INFO => Some(Node::Info(slot, layer)),
                BLOB => Some(Node::Blob(slot, layer)),
                _ => None,
            },
            Node::Tree(slot, ino) => {
                let child = self.image(slot)?.rootfs.tree.lookup(ino, name)?;
                Some(Node::Tree(slot, child))
            }
            Node::Info(..) | Node::Blob(..) => None,
        }
    }

    /// Slot of `reference`, resolving it if new.
    fn resolve(&self, reference: &str) -> Option<u32> {
        let known = || {
            let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.get(reference).copied()
        };
        if let Some(slot) = known() {
            return Some(slot);
        }
        let _one = self
            .resolving
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Resolved by another lookup while this one waited?
        if let Some(slot) = known() {
            return Some(slot);
        }
        let image = match self.resolver.resolve(reference) {
            Ok(image) => image,
            Err(e) => {
                tracing::warn!("layer store: not serving {reference}: {e}");
                return None;
            }
        };
        tracing::info!(
            "layer store: serving {} layers of {reference}",
            image.layers.len()
        );
        let mut images = self.images.write().unwrap_or_else(PoisonError::into_inner);
        let slot = u32::try_from(images.len()).ok()?;
        images.push((reference.to_string(), Arc::new(image)));
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.insert(reference.to_string(), slot);
        Some(slot)
    }

    fn layer_view(&self, slot: u32, layer: u32) -> Option<Ino> {
        Some(self.image(slot)?.layers.get(layer as usize)?.view)
    }

    /// `node`'s parent directory (the root is its own).
    pub fn parent(&self, node: Node) -> Option<Node> {
        Some(match node {
            Node::Root | Node::Image(_) => Node::Root,
            Node::Layer(slot, _) => Node::Image(slot),
            Node::Info(slot, l) | Node::Blob(slot, l) => Node::Layer(slot, l),
            Node::Tree(slot, ino) => {
                let image = self.image(slot)?;
                match image.layers.iter().position(|l| l.view == ino) {
                    Some(layer) => Node::Layer(slot, u32::try_from(layer).ok()?),
                    None => Node::Tree(slot, image.rootfs.tree.parent(ino)?),
                }
            }
        })
    }

    /// The entries of directory `node` (without `.` and `..`); `None` if
    /// `node` is not a directory. The root lists the references resolved so far.
    pub fn children(&self, node: Node) -> Option<Vec<(OsString, Node)>> {
        let own = |slot, layer| -> Option<Vec<(OsString, Node)>> {
            Some(vec![
                (BLOB.into(), Node::Blob(slot, layer)),
                (DIFF.into(), Node::Tree(slot, self.layer_view(slot, layer)?)),
                (INFO.into(), Node::Info(slot, layer)),
            ])
        };
        match node {
            Node::Root => {
                let images = self.images.read().unwrap_or_else(PoisonError::into_inner);
                let names = images.iter().zip(0u32..);
                Some(
                    names
                        .map(|((name, _), slot)| (reference_dir(name).into(), Node::Image(slot)))
                        .collect(),
                )
            }
            Node::Image(slot) => Some(
                (self.image(slot)?.layers.iter().zip(0u32..))
                    .flat_map(|(l, i)| {
                        let names = std::iter::once(l.digest).chain(l.toc_digest);
                        names.map(move |name| (name.to_string().into(), Node::Layer(slot, i)))
                    })
                    .collect(),
            ),
            Node::Layer(slot, layer) => own(slot, layer),
            Node::Tree(slot, ino) => Some(
                self.image(slot)?
                    .rootfs
                    .tree
                    .children(ino)?
                    .iter()
                    .map(|e| (e.name.clone(), Node::Tree(slot, e.ino)))
                    .collect(),
            ),
            Node::Info(..) | Node::Blob(..) => None,
        }
    }

    /// What `node` is; `None` if there is no such node.
    pub fn kind(&self, node: Node) -> Option<NodeKind> {
        let layer = |slot: u32, l: u32, size: fn(&StoreLayer) -> u64| {
            Some(size(self.image(slot)?.layers.get(l as usize)?))
        };
        Some(match node {
            Node::Root => NodeKind::Dir,
            Node::Image(slot) => {
                self.image(slot)?;
                NodeKind::Dir
            }
            Node::Layer(slot, l) => {
                layer(slot, l, |_| 0)?;
                NodeKind::Dir
            }
            Node::Info(slot, l) => NodeKind::File(layer(slot, l, |l| l.info.len() as u64)?),
            Node::Blob(slot, l) => NodeKind::File(layer(slot, l, |l| l.size)?),
            Node::Tree(slot, ino) => {
                let image = self.image(slot)?;
                image.rootfs.tree.attr(ino)?;
                NodeKind::Tree(image, ino)
            }
        })
    }

    /// Bytes of `info` or `blob` file `node`; may block on the network.
    pub fn read(&self, node: Node, offset: u64, len: usize) -> Option<Result<Bytes>> {
        match node {
            Node::Info(slot, l) => {
                let image = self.image(slot)?;
                let info = &image.layers.get(l as usize)?.info;
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(info.len());
                let end = start.saturating_add(len).min(info.len());
                Some(Ok(Bytes::copy_from_slice(&info[start..end])))
            }
            Node::Blob(slot, l) => {
                let image = self.image(slot)?;
                let layer = image.layers.get(l as usize)?;
                Some(image.blobs.read(&layer.digest, layer.size, offset, len))
            }
            _ => None,
        }
    }

    /// A layer directory's name and image reference, for the log.
    pub fn describe(&self, node: Node) -> Option<String> {
        let (Node::Layer(slot, l) | Node::Info(slot, l) | Node::Blob(slot, l)) = node else {
            return None;
        };
        let image = self.image(slot)?;
        let layer = image.layers.get(l as usize)?;
        Some(format!("{} of {}", layer.digest, self.reference(slot)?))
    }
}

#[cfg(test)]
mod tests;
