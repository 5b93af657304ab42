//! The images Podman's additional layer store serves, resolved exactly as
//! `lazyimg mount` resolves an image: the approved list checked, the
//! manifest, config and each layer's chunk map (lazyimg index or table of
//! contents) fetched and verified, then opened as per-layer overlay views.
//! One difference: a layer that can only be read whole (plain zstd, or gzip
//! without a lazyimg index) is not downloaded; it and the layers above it
//! are absent from the store, and Podman pulls them itself.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::lazy_source;
use super::open::open_bottom_layers;
use crate::chunkmap::{ChunkMap, MapSource};
use crate::config::Config;
use crate::digest::Digest;
use crate::error::Result;
use crate::image::{self, Descriptor, DescriptorExt, ImageManifest, LayerFormat, Platform};
use crate::layer::{
    ESTARGZ_TOC_ANNOTATION, ZSTD_CHUNKED_LEGACY_TOC_ANNOTATION, ZSTD_CHUNKED_TOC_ANNOTATION,
};
use crate::lazy::index_artifact::IndexSources;
use crate::lazy::prepare::pull_chunk_maps;
use crate::lazy::source::{RangeSource, RegistryRanges};
use crate::policy;
use crate::reference::ImageRef;
use crate::registry::{ClientOptions, RegistryClient, credentials};
use crate::rootfs::View;
use crate::rootfs::layer_store::{BlobReader, ImageResolver, LayerInfo, StoreImage, StoreLayer};
use crate::store::Store;
use crate::tree::{OverlayXattrs, ROOT_INO, layer_dir_name};

/// Resolves references against their registries (credentials from the
/// auth files, as `lazyimg mount` finds them), into one cache.
pub struct RegistryImages {
    pub config: Config,
    /// The auth files to search, in order ([`credentials::auth_files`]).
    pub auth_files: Vec<std::path::PathBuf>,
    pub store: Arc<Store>,
    pub platform: Platform,
    /// Where registry requests run; resolving happens on FUSE threads.
    pub runtime: tokio::runtime::Handle,
    /// `trusted.overlay.*` for root's Podman, `user.overlay.*` for rootless.
    pub xattrs: OverlayXattrs,
}

impl ImageResolver for RegistryImages {
    fn resolve(&self, reference: &str) -> Result<StoreImage> {
        let image = ImageRef::parse(reference, &self.config)?;
        let approval = policy::enforce(&self.config, &image)?;
        let found = credentials::lookup(
            &self.auth_files,
            &image.endpoint.host,
            image.source.repository(),
        )?;
        let registry = Arc::new(RegistryClient::for_image(
            &image,
            found.as_ref(),
            &self.auth_files,
            &ClientOptions::from_config(&self.config.network),
        )?);
        // Like `lazyimg mount`, but a layer that can only be read whole is
        // left to Podman instead of downloaded.
        let sources = IndexSources::for_image(
            &self.config,
            &self.auth_files,
            &image,
            approval
                .as_ref()
                .map(|a| a.index_pins())
                .unwrap_or_default(),
        )?;
        let (resolved, whole) = self.runtime.block_on(pull_chunk_maps(
            &self.store,
            &registry,
            &image,
            &self.platform,
            &policy::gate(approval.as_ref()),
            &sources,
        ))?;
        let manifest = &resolved.manifest;
        let name = image.to_string();
        let count = lazy_bottom_layers(manifest, &whole);
        if let Some(first) = manifest.layers().get(count) {
            tracing::info!(
                "layer store: {name}: layer {} cannot be read lazily; Podman pulls it and those above it itself",
                first.digest()
            );
        }
        let (source, options) = lazy_source(
            &self.config,
            &self.store,
            &image,
            registry,
            sources.store,
            self.runtime.clone(),
        );
        let lazy: Arc<dyn RangeSource> = source.clone();
        let view = View::Layers(self.xattrs);
        let rootfs = open_bottom_layers(
            &self.store,
            &resolved.manifest_digest,
            &name,
            Some((lazy, options)),
            view,
            count,
        )?;
        let layers = store_layers(&self.store, manifest, &name, &rootfs.tree, count)?;
        Ok(StoreImage {
            rootfs: Arc::new(rootfs),
            layers,
            blobs: Arc::new(WholeBlobs {
                store: Arc::clone(&self.store),
                source,
                downloading: Mutex::new(()),
            }),
        })
    }
}

/// How many of `manifest`'s layers, from the bottom, can be read lazily:
/// all below the first of `whole` (the layers only readable whole). Views
/// of those layers need no layer above them, so Podman can stack the rest
/// on them however it gets them.
fn lazy_bottom_layers(manifest: &ImageManifest, whole: &[Descriptor]) -> usize {
    manifest
        .layers()
        .iter()
        .position(|layer| whole.iter().any(|w| w.digest() == layer.digest()))
        .unwrap_or(manifest.layers().len())
}

/// The bottom `count` layers of `manifest`, with their views in `tree` and
/// their `info` records.
fn store_layers(
    store: &Store,
    manifest: &ImageManifest,
    name: &str,
    tree: &crate::tree::Tree,
    count: usize,
) -> Result<Vec<StoreLayer>> {
    let config_what = format!("config of {name}");
    let config = image::parse_config(
        store.require(&manifest.config().sha256()?)?.bytes(),
        &config_what,
    )?;
    let diff_ids = image::diff_ids(&config, &config_what)?;
    // open_view checked that there is one diff_id per layer, and a tar
    // media type for every layer it had to unpack.
    image::layers(manifest)?
        .into_iter()
        .zip(&diff_ids)
        .take(count)
        .zip(0u32..)
        .map(|(((digest, layer), diff_id), n)| {
            let compression = layer.layer_compression(name)?;
            let view = tree
                .lookup(ROOT_INO, &layer_dir_name(n))
                .expect("a layer view tree holds a directory per layer");
            let toc_digest = toc_digest(layer);
            Ok(StoreLayer {
                digest,
                toc_digest,
                size: layer.size(),
                view,
                info: LayerInfo::new(
                    &digest,
                    layer.size(),
                    compression,
                    diff_id,
                    tar_size(store, (&digest, layer), diff_id),
                    toc_digest.as_ref(),
                )
                .to_json(),
            })
        })
        .collect()
}

/// The digest of `layer`'s table of contents, from its annotation, for
/// the layers lazyimg reads through one (eStargz, zstd:chunked).
fn toc_digest(layer: &Descriptor) -> Option<Digest> {
    let keys: &[&str] = match LayerFormat::of(layer) {
        LayerFormat::Estargz => &[ESTARGZ_TOC_ANNOTATION],
        LayerFormat::ZstdChunked => &[
            ZSTD_CHUNKED_TOC_ANNOTATION,
            ZSTD_CHUNKED_LEGACY_TOC_ANNOTATION,
        ],
        _ => &[],
    };
    keys.iter()
        .find_map(|key| layer.annotation(key)?.parse().ok())
}

/// How long layer `layer`'s uncompressed tar (`diff_id`) is, where that is
/// known without reading it all: a stored tar's length; the end of the last
/// chunk of a lazyimg index, whose chunks cover the whole tar stream; or
/// the `io.containers.estargz.uncompressed-size` annotation Podman's
/// eStargz writer leaves (unverified, as stargz-snapshotter reads it).
fn tar_size(
    store: &Store,
    (digest, layer): (&Digest, &Descriptor),
    diff_id: &Digest,
) -> Option<u64> {
    if let Ok(Some(tar)) = store.get(diff_id) {
        return Some(tar.bytes().len() as u64);
    }
    if let Some(map) = ChunkMap::load(store, digest)
        && map.source == MapSource::LazyimgIndex
    {
        return map
            .layer
            .chunks
            .last()
            .map(|c| c.content_offset + c.content_size);
    }
    let size = layer.annotation(ESTARGZ_UNCOMPRESSED_SIZE)?.parse().ok();
    if size.is_none() {
        tracing::warn!(
            "layer store: the tar size of layer {digest} is unknown, so `podman save` will fail on it"
        );
    }
    size
}

/// Layer annotation with the tar's size (stargz-snapshotter
/// `estargz/types.go` `StoreUncompressedSizeAnnotation`).
const ESTARGZ_UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";

/// A layer's compressed blob, for `podman save` and `push`, which read it
/// whole: its bytes can only be verified whole (against the layer digest),
/// so the first read downloads the blob into the store, verified, and every
/// read is answered from there.
struct WholeBlobs {
    store: Arc<Store>,
    source: Arc<RegistryRanges>,
    /// One download at a time, so concurrent first reads fetch a blob once.
    downloading: Mutex<()>,
}

impl BlobReader for WholeBlobs {
    fn read(&self, digest: &Digest, size: u64, offset: u64, len: usize) -> Result<Bytes> {
        let blob = match self.store.get(digest)? {
            Some(blob) => blob,
            None => {
                let _one = self
                    .downloading
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if !self.store.contains(digest) {
                    tracing::info!("layer store: downloading blob {digest} whole for Podman");
                    self.source.fetch_whole(digest, size)?;
                }
                self.store.require(digest)?
            }
        };
        let bytes = blob.bytes();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(len).min(bytes.len());
        Ok(Bytes::copy_from_slice(&bytes[start..end]))
    }
}
