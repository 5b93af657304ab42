//! Chunk maps from the tables of contents eStargz and zstd:chunked layers carry,
//! fetched by range and checked against the digest the manifest gives for them.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::prepare::unusable;
use crate::chunkmap::{ChunkMap, MapSource};
use crate::digest::Digest;
use crate::error::Result;
use crate::image::{Descriptor, DescriptorExt};
use crate::layer::{ESTARGZ_TOC_ANNOTATION, LayerError, estargz, zstd_chunked};
use crate::reference::ImageRef;
use crate::registry::RegistryClient;

pub(super) async fn estargz_map(
    registry: &RegistryClient,
    image: &ImageRef,
    layer: &Descriptor,
) -> Result<Option<ChunkMap>> {
    const WHAT: &str = "eStargz table of contents";
    let Some(toc_digest) = annotated_digest(layer, ESTARGZ_TOC_ANNOTATION) else {
        return Ok(None);
    };
    let Some(footer_start) = layer.size().checked_sub(estargz::FOOTER_SIZE) else {
        return Ok(None);
    };
    let Some(footer) = fetch(registry, image, layer, footer_start..layer.size()).await? else {
        return Ok(None);
    };
    let toc_range = match estargz::toc_range(&footer, layer.size()) {
        Ok(range) => range,
        Err(e) => return unusable(layer, WHAT, layer_error(layer, e)),
    };
    let toc_offset = toc_range.start;
    let Some(toc) = fetch(registry, image, layer, toc_range).await? else {
        return Ok(None);
    };
    match estargz::parse_toc(&toc, toc_offset, &toc_digest) {
        Ok(chunked) => Ok(Some(ChunkMap::new(MapSource::Estargz, chunked, None))),
        Err(e) => unusable(layer, WHAT, layer_error(layer, e)),
    }
}

pub(super) async fn zstd_chunked_map(
    registry: &RegistryClient,
    image: &ImageRef,
    layer: &Descriptor,
) -> Result<Option<ChunkMap>> {
    const WHAT: &str = "zstd:chunked table of contents";
    let annotations: BTreeMap<String, String> = layer
        .annotations()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let position = match zstd_chunked::toc_position(&annotations) {
        Ok(Some(position)) => position,
        Ok(None) => return Ok(None),
        Err(e) => return unusable(layer, WHAT, layer_error(layer, e)),
    };
    let range = position.offset..position.offset.saturating_add(position.length);
    if range.end > layer.size() {
        let reason = format!(
            "position {range:?} is past the blob's {} bytes",
            layer.size()
        );
        let error = layer_error(
            layer,
            LayerError::Toc {
                format: "zstd:chunked",
                reason,
            },
        );
        return unusable(layer, WHAT, error);
    }
    let Some(toc) = fetch(registry, image, layer, range).await? else {
        return Ok(None);
    };
    match zstd_chunked::parse_toc(&toc, &position) {
        Ok(chunked) => Ok(Some(ChunkMap::new(MapSource::ZstdChunked, chunked, None))),
        Err(e) => unusable(layer, WHAT, layer_error(layer, e)),
    }
}

/// `None` when the registry will not serve ranges: then the layer is fetched whole.
async fn fetch(
    registry: &RegistryClient,
    image: &ImageRef,
    layer: &Descriptor,
    range: std::ops::Range<u64>,
) -> Result<Option<Bytes>> {
    registry
        .fetch_range(&image.source, &layer.sha256()?, range)
        .await
}

fn annotated_digest(layer: &Descriptor, key: &str) -> Option<Digest> {
    let text = layer.annotation(key)?;
    text.parse()
        .inspect_err(|_| tracing::warn!("layer {}: {key} {text:?} is not a digest", layer.digest()))
        .ok()
}

fn layer_error(layer: &Descriptor, source: LayerError) -> crate::Error {
    match layer.sha256() {
        Ok(digest) => crate::Error::Layer {
            layer: digest,
            source,
        },
        Err(e) => e,
    }
}
