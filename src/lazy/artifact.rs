//! lazyimg's index artifact: for each gzip or plain tar layer of an image, its
//! entries and a chunk map (gzip: deflate checkpoints every ~1 MiB of compressed
//! data, with the sha256 of every span's decompressed bytes), pushed
//! beside the image as an OCI artifact whose `subject` is the image manifest.
//!
//! Trust: the artifact is found through its subject and fetched by digest; each
//! layer index names the layer digest it describes and must match the image's
//! manifest; every span's content is verified before it is served (inflating
//! unverified compressed bytes can only yield content that fails that check).
//! A check that fails drops the index, never the mount.

use std::collections::BTreeMap;
use std::io::{self, Read};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::chunkmap::{BlobHome, ChunkMap, GzipResume, MapSource};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::image::{Descriptor, ImageManifest, Manifest};
use crate::layer::gzip_index::{self, Checkpoint, GzipIndexer};
use crate::layer::{self, Chunk, ChunkCodec, ChunkedLayer, Compression};
use crate::pull::{self, Silent};
use crate::reference::ImageRef;
use crate::registry::RegistryClient;
use crate::store::{Derived, Store};

pub const ARTIFACT_TYPE: &str = "application/vnd.lazyimg.index.v1";
const INDEX_MEDIA_TYPE: &str = "application/vnd.lazyimg.layer-index.v1+zstd";
const WINDOWS_MEDIA_TYPE: &str = "application/vnd.lazyimg.gzip-windows.v1";
/// The files a typical run reads first, one path per line (`mount --record`).
const PREFETCH_MEDIA_TYPE: &str = "application/vnd.lazyimg.prefetch.v1+text";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// On each artifact layer: the image layer it describes.
const LAYER_ANNOTATION: &str = "dev.lazyimg.layer";
/// 2: spans no longer carry a digest of their compressed bytes.
const FORMAT_VERSION: u32 = 2;
/// Compressed bytes between gzip checkpoints: about what one cold random read fetches.
pub const GZIP_SPAN: u64 = 1 << 20;
/// Chunk size of uncompressed tar layers.
const TAR_CHUNK: u64 = 1 << 20;

/// One layer's index, as stored in the artifact (postcard, then zstd).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerIndexFile {
    pub version: u32,
    pub layer: Digest,
    pub layer_size: u64,
    pub chunked: ChunkedLayer,
    pub gzip: Option<GzipResume>,
}

/// A built layer index and its windows blob (empty for tar layers).
pub struct BuiltIndex {
    pub file: LayerIndexFile,
    pub windows: Vec<u8>,
}

/// Indexes stored layer `layer` in one pass; `None` for layers that cannot be
/// read piecewise (plain zstd is one frame).
pub fn build_layer_index(store: &Store, layer: &Descriptor) -> Result<Option<BuiltIndex>> {
    let blob = store.require(&layer.digest)?;
    let bytes = blob.bytes();
    let layer_error = |source| Error::Layer {
        layer: layer.digest,
        source,
    };
    let (chunked, gzip, windows) = match Compression::from_media_type(&layer.media_type) {
        Some(Compression::None) => {
            let index = layer::index_layer(bytes).map_err(layer_error)?;
            let chunks = (0..bytes.len() as u64)
                .step_by(TAR_CHUNK as usize)
                .map(|start| {
                    let end = (start + TAR_CHUNK).min(bytes.len() as u64);
                    let piece = &bytes[start as usize..end as usize];
                    Chunk {
                        content_offset: start,
                        content_size: end - start,
                        blob_offset: start,
                        blob_size: end - start,
                        codec: ChunkCodec::Stored,
                        digest: Digest::of(piece),
                    }
                })
                .collect();
            (ChunkedLayer { index, chunks }, None, Vec::new())
        }
        Some(Compression::Gzip) => {
            let mut reader = SpanHashing::new(GzipIndexer::new(bytes, GZIP_SPAN));
            let index = layer::index_layer(&mut reader).map_err(layer_error)?;
            let (points, span_digests) = reader.finish().map_err(|e| {
                layer_error(layer::LayerError::Read {
                    offset: 0,
                    source: e,
                })
            })?;
            let chunks = (0..points.checkpoints.len())
                .map(|k| {
                    let blob_range = gzip_index::span_range(&points, k);
                    let out = gzip_index::span_out_range(&points, k);
                    Chunk {
                        content_offset: out.start,
                        content_size: out.end - out.start,
                        blob_offset: blob_range.start,
                        blob_size: blob_range.end - blob_range.start,
                        codec: ChunkCodec::Deflate {
                            checkpoint: k as u32,
                        },
                        digest: span_digests[k],
                    }
                })
                .collect();
            let (resume, windows) = pack_windows(points.checkpoints, points.windows)?;
            (ChunkedLayer { index, chunks }, Some(resume), windows)
        }
        Some(Compression::Zstd) | None => return Ok(None),
    };
    Ok(Some(BuiltIndex {
        file: LayerIndexFile {
            version: FORMAT_VERSION,
            layer: layer.digest,
            layer_size: layer.size,
            chunked,
            gzip,
        },
        windows,
    }))
}

/// Windows, each zstd-compressed on its own so a read fetches only the one it needs.
fn pack_windows(
    checkpoints: Vec<Checkpoint>,
    windows: Vec<Vec<u8>>,
) -> Result<(GzipResume, Vec<u8>)> {
    let mut blob = Vec::new();
    let mut chunks = Vec::new();
    let mut window_of = Vec::with_capacity(windows.len());
    let mut content_offset = 0;
    for window in windows {
        if window.is_empty() {
            window_of.push(None);
            continue;
        }
        let packed = zstd::bulk::compress(&window, 3).map_err(|e| Error::io("zstd", e))?;
        window_of.push(Some(chunks.len() as u32));
        chunks.push(Chunk {
            content_offset,
            content_size: window.len() as u64,
            blob_offset: blob.len() as u64,
            blob_size: packed.len() as u64,
            codec: ChunkCodec::Zstd,
            digest: Digest::of(&window),
        });
        content_offset += window.len() as u64;
        blob.extend_from_slice(&packed);
    }
    let resume = GzipResume {
        checkpoints,
        window_of,
        windows_blob: Digest::of(&blob),
        windows_size: blob.len() as u64,
        windows: chunks,
    };
    Ok((resume, blob))
}

/// Passes a gzip layer's uncompressed stream through, hashing it span by span
/// as the indexer places its checkpoints.
struct SpanHashing<R> {
    inner: GzipIndexer<R>,
    position: u64,
    hasher: Hasher,
    digests: Vec<Digest>,
    /// The next checkpoint whose offset ends a span (checkpoint 0 ends none).
    next: usize,
}

impl<R: Read> SpanHashing<R> {
    fn new(inner: GzipIndexer<R>) -> Self {
        SpanHashing {
            inner,
            position: 0,
            hasher: Hasher::new(),
            digests: Vec::new(),
            next: 1,
        }
    }

    fn finish(mut self) -> io::Result<(gzip_index::GzipCheckpoints, Vec<Digest>)> {
        // Drain through `read` so the tail is hashed too.
        io::copy(&mut self, &mut io::sink())?;
        let mut digests = self.digests;
        digests.push(self.hasher.finish());
        let points = self.inner.finish()?;
        if digests.len() != points.checkpoints.len() {
            return Err(io::Error::other(format!(
                "{} span digests for {} checkpoints",
                digests.len(),
                points.checkpoints.len()
            )));
        }
        Ok((points, digests))
    }
}

impl<R: Read> Read for SpanHashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut piece = &buf[..n];
        // A checkpoint is placed before any output past it exists, so every
        // boundary inside this piece is already known.
        while let Some(cut) = self
            .inner
            .checkpoints()
            .get(self.next)
            .map(|cp| cp.out.saturating_sub(self.position))
            .filter(|&cut| cut < piece.len() as u64)
        {
            let (head, tail) = piece.split_at(cut as usize);
            self.hasher.update(head);
            let done = std::mem::take(&mut self.hasher);
            self.digests.push(done.finish());
            self.position += cut;
            piece = tail;
            self.next += 1;
        }
        self.hasher.update(piece);
        self.position += piece.len() as u64;
        Ok(n)
    }
}

impl LayerIndexFile {
    fn encode(&self) -> Result<Vec<u8>> {
        let raw = postcard::to_stdvec(self).expect("a layer index always serialises");
        zstd::bulk::compress(&raw, 3).map_err(|e| Error::io("zstd", e))
    }

    fn decode(bytes: &[u8]) -> std::result::Result<LayerIndexFile, String> {
        // Bounded: a hostile blob cannot make us allocate more than this.
        let raw = zstd::bulk::decompress(bytes, 512 << 20).map_err(|e| e.to_string())?;
        let file: LayerIndexFile = postcard::from_bytes(&raw).map_err(|e| e.to_string())?;
        if file.version != FORMAT_VERSION {
            return Err(format!(
                "format version {}, this build reads {FORMAT_VERSION}",
                file.version
            ));
        }
        Ok(file)
    }
}

/// Pushes the indexes of `built`, and the prefetch list if given, as an
/// artifact for image manifest `subject`, and lists it under the `sha256-<hex>`
/// referrers tag for registries without the referrers API. Returns the
/// artifact's digest.
pub async fn push(
    store: &Store,
    registry: &RegistryClient,
    image: &ImageRef,
    subject: &Descriptor,
    built: &[BuiltIndex],
    prefetch: Option<&[u8]>,
) -> Result<Digest> {
    let empty_config = Bytes::from_static(b"{}");
    let mut layers = Vec::new();
    let mut blobs = vec![(Digest::of(&empty_config), empty_config.clone())];
    for index in built {
        let annotations =
            BTreeMap::from([(LAYER_ANNOTATION.to_string(), index.file.layer.to_string())]);
        let encoded = Bytes::from(index.file.encode()?);
        layers.push(descriptor(INDEX_MEDIA_TYPE, &encoded, annotations.clone()));
        blobs.push((Digest::of(&encoded), encoded));
        if !index.windows.is_empty() {
            let windows = Bytes::copy_from_slice(&index.windows);
            layers.push(descriptor(WINDOWS_MEDIA_TYPE, &windows, annotations));
            blobs.push((Digest::of(&windows), windows));
        }
    }
    if let Some(list) = prefetch {
        let list = Bytes::copy_from_slice(list);
        layers.push(descriptor(PREFETCH_MEDIA_TYPE, &list, BTreeMap::new()));
        blobs.push((Digest::of(&list), list));
    }
    for (digest, bytes) in &blobs {
        store.put(*digest, bytes, "lazyimg index blob")?;
        if !registry.blob_exists(&image.source, digest).await? {
            let blob = store.require(digest)?;
            registry
                .push_blob(&image.source, digest, &blob, std::sync::Arc::new(|_| {}))
                .await?;
        }
    }
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.into()),
        config: descriptor(EMPTY_MEDIA_TYPE, &empty_config, BTreeMap::new()),
        layers,
        annotations: BTreeMap::new(),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        subject: Some(subject.clone()),
    };
    let manifest_bytes = Bytes::from(serde_json::to_vec(&manifest).expect("manifests serialise"));
    let artifact = Digest::of(&manifest_bytes);
    let by_digest = image.source.clone_with_digest(artifact.to_string());
    registry
        .push_manifest(&by_digest, &manifest_bytes, MANIFEST_MEDIA_TYPE)
        .await?;
    update_referrers_tag(registry, image, subject, &manifest_bytes).await?;
    Ok(artifact)
}

fn descriptor(media_type: &str, bytes: &[u8], annotations: BTreeMap<String, String>) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
        annotations,
        platform: None,
        artifact_type: None,
    }
}

/// Adds the artifact to the referrers index at tag `sha256-<hex>`, replacing
/// earlier lazyimg indexes and keeping other tools' entries.
async fn update_referrers_tag(
    registry: &RegistryClient,
    image: &ImageRef,
    subject: &Descriptor,
    artifact_bytes: &[u8],
) -> Result<()> {
    let tag = subject.digest.to_string().replace(':', "-");
    let tagged = oci_client::Reference::with_tag(
        image.source.registry().to_string(),
        image.source.repository().to_string(),
        tag,
    );
    let mut manifests = match registry.fetch_manifest(&tagged).await {
        Ok(bytes) => match Manifest::parse(&bytes, "referrers index") {
            Ok(Manifest::Index(index)) => index.manifests,
            _ => Vec::new(),
        },
        Err(Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    manifests.retain(|m| m.artifact_type.as_deref() != Some(ARTIFACT_TYPE));
    let mut entry = descriptor(MANIFEST_MEDIA_TYPE, artifact_bytes, BTreeMap::new());
    entry.artifact_type = Some(ARTIFACT_TYPE.into());
    manifests.push(entry);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MANIFEST_MEDIA_TYPE,
        "manifests": manifests,
    });
    let bytes = Bytes::from(serde_json::to_vec(&index).expect("indexes serialise"));
    registry
        .push_manifest(&tagged, &bytes, INDEX_MANIFEST_MEDIA_TYPE)
        .await
}

/// The image's lazyimg index artifact, if one is listed for `manifest_digest`
/// and it checks out (fetched by digest, subject matching); else `None`, with a
/// warning when one was there but failed a check.
pub async fn locate(
    registry: &RegistryClient,
    image: &ImageRef,
    manifest_digest: &Digest,
) -> Result<Option<ImageManifest>> {
    let ignore = |reason: String| {
        tracing::warn!("{image}: ignoring its lazyimg index: {reason}");
        Ok(None)
    };
    let referrers = match registry
        .referrers(&image.source, manifest_digest, Some(ARTIFACT_TYPE))
        .await
    {
        Ok(list) => list,
        Err(e @ (Error::Auth { .. } | Error::Denied { .. } | Error::Network { .. })) => {
            return Err(e);
        }
        Err(e) => return ignore(format!("cannot list referrers: {e}")),
    };
    let Some(entry) = referrers
        .iter()
        .rev()
        .find(|d| d.artifact_type.as_deref() == Some(ARTIFACT_TYPE))
    else {
        return Ok(None);
    };
    let what = format!("lazyimg index {} of {image}", entry.digest);
    let bytes = registry
        .fetch_manifest(&image.source.clone_with_digest(entry.digest.to_string()))
        .await?;
    if let Err(e) = pull::check_descriptor(entry, &bytes, &what) {
        return ignore(e.to_string());
    }
    let artifact = match Manifest::parse(&bytes, &what) {
        Ok(Manifest::Image(artifact)) => artifact,
        Ok(Manifest::Index(_)) => return ignore("it is an index".into()),
        Err(e) => return ignore(e.to_string()),
    };
    if artifact.subject.as_ref().map(|s| s.digest) != Some(*manifest_digest) {
        return ignore(format!("its subject is not {manifest_digest}"));
    }
    Ok(Some(artifact))
}

/// The image layers an index artifact has an index for.
pub fn indexed_layers(artifact: &ImageManifest) -> Vec<String> {
    artifact
        .layers
        .iter()
        .filter(|d| d.media_type == INDEX_MEDIA_TYPE)
        .filter_map(|d| d.annotations.get(LAYER_ANNOTATION).cloned())
        .collect()
}

/// Chunk maps from the image's lazyimg index, for those of `layers` it covers
/// and that pass every check; its prefetch list, if any, is kept for the mount
/// ([`Derived::PrefetchList`]). Anything wrong with the index is a warning.
pub async fn find(
    store: &Store,
    registry: &RegistryClient,
    image: &ImageRef,
    manifest_digest: &Digest,
    layers: &[&Descriptor],
) -> Result<BTreeMap<Digest, ChunkMap>> {
    let Some(artifact) = locate(registry, image, manifest_digest).await? else {
        return Ok(BTreeMap::new());
    };
    let annotated = |layer: &Descriptor, media_type: &str| {
        artifact.layers.iter().find(|d| {
            d.media_type == media_type
                && d.annotations.get(LAYER_ANNOTATION) == Some(&layer.digest.to_string())
        })
    };
    // One round trip for all of them, not one per layer: links can be slow.
    let wanted: Vec<(&Descriptor, &Descriptor)> = layers
        .iter()
        .filter_map(|layer| Some((*layer, annotated(layer, INDEX_MEDIA_TYPE)?)))
        .collect();
    let prefetch = artifact
        .layers
        .iter()
        .find(|d| d.media_type == PREFETCH_MEDIA_TYPE);
    let blobs: Vec<(&Descriptor, String)> = wanted
        .iter()
        .map(|(layer, index)| (*index, format!("lazyimg index of layer {}", layer.digest)))
        .chain(prefetch.map(|list| (list, "lazyimg prefetch list".to_string())))
        .collect();
    futures_util::stream::iter(&blobs)
        .map(|(blob, what)| pull::fetch_blob(store, registry, image, blob, (what, what), &Silent))
        .buffer_unordered(blobs.len().max(1))
        .try_collect::<Vec<u64>>()
        .await?;
    if let Some(list) = prefetch {
        let bytes = store.require(&list.digest)?;
        store.write_derived(Derived::PrefetchList, manifest_digest, bytes.bytes())?;
    }
    let mut maps = BTreeMap::new();
    for (layer, index) in wanted {
        let checked =
            LayerIndexFile::decode(store.require(&index.digest)?.bytes()).and_then(|file| {
                check_file(&file, layer, annotated(layer, WINDOWS_MEDIA_TYPE)).map(|()| file)
            });
        match checked {
            Ok(file) => {
                // The windows blob is in this image's repository, which other
                // images sharing the layer (and so this map) may not be.
                let map = ChunkMap::new(MapSource::LazyimgIndex, file.chunked, file.gzip)
                    .kept_in(BlobHome::of(image));
                maps.insert(layer.digest, map);
            }
            Err(reason) => {
                tracing::warn!(
                    "lazyimg index of layer {}: ignoring it: {reason}",
                    layer.digest
                );
                return Ok(BTreeMap::new());
            }
        }
    }
    Ok(maps)
}

/// A layer index must describe exactly this layer, and its chunks must lie
/// inside it, in order, without overlapping content.
fn check_file(
    file: &LayerIndexFile,
    layer: &Descriptor,
    windows: Option<&Descriptor>,
) -> std::result::Result<(), String> {
    if file.layer != layer.digest || file.layer_size != layer.size {
        return Err(format!(
            "describes {} ({} bytes), not this layer",
            file.layer, file.layer_size
        ));
    }
    check_chunks(&file.chunked.chunks, layer.size)?;
    match (&file.gzip, windows) {
        (None, _) => {
            if file
                .chunked
                .chunks
                .iter()
                .any(|c| matches!(c.codec, ChunkCodec::Deflate { .. }))
            {
                return Err("deflate chunks without checkpoints".into());
            }
        }
        (Some(gzip), windows)
            if windows.map(|w| (w.digest, w.size))
                == Some((gzip.windows_blob, gzip.windows_size))
                || (windows.is_none() && gzip.windows.is_empty()) =>
        {
            check_chunks(&gzip.windows, gzip.windows_size)?;
            let checkpoints = gzip.checkpoints.len();
            if gzip.window_of.len() != checkpoints
                || gzip.window_of.iter().flatten().any(|&w| w as usize >= gzip.windows.len())
                || file.chunked.chunks.iter().any(|c| {
                    matches!(c.codec, ChunkCodec::Deflate { checkpoint } if checkpoint as usize >= checkpoints)
                })
            {
                return Err("checkpoints and windows do not match".into());
            }
        }
        (Some(_), _) => return Err("its windows blob is missing or does not match".into()),
    }
    Ok(())
}

fn check_chunks(chunks: &[Chunk], blob_size: u64) -> std::result::Result<(), String> {
    let mut content_end = 0;
    for chunk in chunks {
        let blob_end = chunk.blob_offset.checked_add(chunk.blob_size);
        if chunk.content_offset < content_end || blob_end.is_none_or(|end| end > blob_size) {
            return Err(format!(
                "chunk {} is out of order or outside the blob",
                chunk.digest
            ));
        }
        if chunk.content_size > layer::MAX_CHUNK_SIZE {
            return Err(format!(
                "chunk {} declares {} bytes of content, over the {}-byte limit",
                chunk.digest,
                chunk.content_size,
                layer::MAX_CHUNK_SIZE
            ));
        }
        content_end = chunk.content_offset.saturating_add(chunk.content_size);
    }
    Ok(())
}
