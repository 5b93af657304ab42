//! Opening a pulled image as a [`RootFs`]: every layer's uncompressed tar kept in
//! the store under its diff_id, indexed once, merged once, then served by mmap.
//!
//! Trust chain: the manifest digest names the config, the config lists each
//! layer's diff_id, and a layer's tar is stored under its diff_id only after it
//! hashed to exactly that. So every byte served traces back to the manifest digest.

use std::io::{self, Read};
use std::sync::Arc;

use super::RootFs;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{ImageConfig, Manifest};
use crate::layer::{self, Compression, LayerIndex};
use crate::registry::BlobSink;
use crate::store::{Blob, BlobWriter, Derived, Store};
use crate::lazy::{ImageContent, LayerContent};
use crate::tree::Tree;

/// Opens the image whose manifest `manifest_digest` is in `store` (with its
/// config and layers). `name` is for messages.
pub fn open_image(store: &Store, manifest_digest: &Digest, name: &str) -> Result<RootFs> {
    let manifest_bytes = store.require(manifest_digest)?;
    let Manifest::Image(manifest) = Manifest::parse(manifest_bytes.bytes(), name)? else {
        return Err(Error::Manifest {
            what: name.to_string(),
            reason: format!("{manifest_digest} is an index, not an image manifest"),
        });
    };
    let config_what = format!("config of {name}");
    let config = ImageConfig::parse(
        store.require(&manifest.config.digest)?.bytes(),
        &config_what,
    )?;
    let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::Manifest {
            what: config_what,
            reason: format!(
                "{} diff_ids for {} layers",
                diff_ids.len(),
                manifest.layers.len()
            ),
        });
    }

    // Make sure every uncompressed tar is stored (this also indexes fresh ones).
    let mut fresh_indexes = Vec::new();
    for (layer, diff_id) in manifest.layers.iter().zip(&diff_ids) {
        if !store.contains(diff_id) {
            let compression =
                Compression::from_media_type(&layer.media_type).ok_or_else(|| Error::Manifest {
                    what: name.to_string(),
                    reason: format!(
                        "layer {} has unsupported media type {}",
                        layer.digest, layer.media_type
                    ),
                })?;
            let index = unpack_layer(store, &layer.digest, compression, diff_id)?;
            fresh_indexes.push((*diff_id, index));
        }
    }
    let blobs = diff_ids
        .iter()
        .map(|d| store.require(d))
        .collect::<Result<Vec<Blob>>>()?;

    let tree = match cached_tree(store, manifest_digest) {
        Some(tree) => tree,
        None => {
            let indexes = diff_ids
                .iter()
                .zip(&blobs)
                .map(
                    |(diff_id, blob)| match fresh_indexes.iter().position(|(d, _)| d == diff_id) {
                        Some(i) => Ok(fresh_indexes.swap_remove(i).1),
                        None => layer_index(store, diff_id, blob),
                    },
                )
                .collect::<Result<Vec<LayerIndex>>>()?;
            let tree = Tree::build(&indexes).map_err(|source| Error::Tree {
                image: name.to_string(),
                source,
            })?;
            let bytes = tree.to_bytes().map_err(|source| Error::Tree {
                image: name.to_string(),
                source,
            })?;
            store.write_derived(Derived::Tree, manifest_digest, &bytes)?;
            tree
        }
    };
    let layers = blobs.into_iter().map(LayerContent::Unpacked).collect();
    Ok(RootFs {
        tree,
        content: Arc::new(ImageContent::new(layers, None, 0, Arc::default())),
    })
}

/// A tree saved by an earlier open; a damaged or outdated one is rebuilt.
fn cached_tree(store: &Store, manifest_digest: &Digest) -> Option<Tree> {
    let bytes = store.read_derived(Derived::Tree, manifest_digest).ok()??;
    Tree::from_bytes(&bytes)
        .inspect_err(|e| tracing::warn!("rebuilding the tree of {manifest_digest}: {e}"))
        .ok()
}

/// The index of a stored uncompressed layer, from the derived cache or rebuilt.
fn layer_index(store: &Store, diff_id: &Digest, tar: &Blob) -> Result<LayerIndex> {
    if let Some(bytes) = store.read_derived(Derived::LayerIndex, diff_id)?
        && let Ok(index) = postcard::from_bytes(&bytes)
    {
        return Ok(index);
    }
    let index = layer::index_layer(tar.bytes()).map_err(|source| Error::Layer {
        layer: *diff_id,
        source,
    })?;
    save_index(store, diff_id, &index)?;
    Ok(index)
}

fn save_index(store: &Store, diff_id: &Digest, index: &LayerIndex) -> Result<()> {
    let bytes = postcard::to_stdvec(index).expect("a layer index always serialises");
    store.write_derived(Derived::LayerIndex, diff_id, &bytes)
}

/// Decompresses stored layer `digest` into the store under `diff_id`, indexing the
/// tar in the same pass. Nothing is stored unless the tar hashes to `diff_id`.
fn unpack_layer(
    store: &Store,
    digest: &Digest,
    compression: Compression,
    diff_id: &Digest,
) -> Result<LayerIndex> {
    let blob = store.require(digest)?;
    let what = format!("uncompressed layer {digest}");
    let decompressed = layer::decompress(compression, blob.bytes()).map_err(|e| Error::Layer {
        layer: *digest,
        source: layer::LayerError::Read {
            offset: 0,
            source: e,
        },
    })?;
    let mut tee = Tee {
        inner: decompressed,
        writer: store.writer(*diff_id, None, &what)?,
        failed: None,
    };
    let indexed = layer::index_layer(&mut tee);
    // The tar reader stops at the end-of-archive marker; the digest covers the padding after it.
    let drained = indexed.is_ok() && io::copy(&mut tee, &mut io::sink()).is_ok();
    if let Some(store_error) = tee.failed {
        return Err(store_error);
    }
    let index = indexed.map_err(|source| Error::Layer {
        layer: *digest,
        source,
    })?;
    if !drained {
        return Err(Error::Layer {
            layer: *digest,
            source: layer::LayerError::Read {
                offset: tee.writer.written(),
                source: io::Error::other(
                    "the compressed stream is damaged after the end of the tar",
                ),
            },
        });
    }
    tee.writer.commit()?;
    save_index(store, diff_id, &index)?;
    Ok(index)
}

/// Copies everything read from `inner` into a store writer.
struct Tee<'a, R> {
    inner: R,
    writer: BlobWriter<'a>,
    /// The store's own error (e.g. a full disk), kept typed for the caller.
    failed: Option<Error>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(e) = self.writer.write_all(&buf[..n]) {
            let message = e.to_string();
            self.failed = Some(e);
            return Err(io::Error::other(message));
        }
        Ok(n)
    }
}
