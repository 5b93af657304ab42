//! Making an image mountable without its layer blobs: for each layer, find a
//! chunk map (a table of contents the layer carries, or a lazyimg index pushed
//! beside the image), check it against the manifest, and keep it. A layer with
//! none is fetched whole, and the user is told how to make it lazy next time.

use futures_util::{StreamExt, TryStreamExt};
use tracing::Instrument as _;

use super::index_artifact::{self, IndexSources};
use crate::chunkmap::ChunkMap;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{self, Descriptor, DescriptorExt, LayerFormat, Manifest, Platform};
use crate::pull::{self, Gate, Progress, PullPolicy, PullReport};
use crate::reference::ImageRef;
use crate::registry::RegistryClient;
use crate::store::Store;
use crate::timeline;

/// Layers whose table of contents is fetched at once.
const PARALLEL_TOCS: usize = 4;

/// The manifest digest of `image` for `wanted`, made mountable by
/// [`pull_lazy`] first when `policy` and the cache say so. `gate` judges the
/// cached image's digests or, when pulling, the resolved ones before anything
/// is stored. A lazyimg index is used only if `trust` accepts it.
#[allow(clippy::too_many_arguments)]
pub async fn ensure_mountable(
    store: &Store,
    image: &ImageRef,
    wanted: &Platform,
    policy: PullPolicy,
    registry: &RegistryClient,
    progress: &dyn Progress,
    gate: Gate<'_>,
    indexes: &IndexSources,
) -> Result<Digest> {
    let cached = {
        let _phase = timeline::phase("cache lookup").entered();
        match policy {
            PullPolicy::Always => None,
            _ => store
                .image_record(&image.to_string(), &image::platform_name(wanted))?
                .filter(|record| is_mountable(store, &record.manifest)),
        }
    };
    if let Some(record) = cached {
        tracing::debug!("{image}: using cached {}", record.manifest);
        gate(&record.digest, &record.manifest)?;
        return Ok(record.manifest);
    }
    if policy == PullPolicy::Never {
        return Err(Error::NotCachedImage {
            image: image.to_string(),
        });
    }
    let report = pull_lazy(store, registry, image, wanted, progress, gate, indexes).await?;
    Ok(report.manifest)
}

/// Whether everything needed to open the image is stored: the manifest, the config
/// and, per layer, its blob, its uncompressed tar or its chunk map.
fn is_mountable(store: &Store, manifest_digest: &Digest) -> bool {
    let open = || -> Result<bool> {
        let Manifest::Image(manifest) =
            Manifest::parse(store.require(manifest_digest)?.bytes(), "cached manifest")?
        else {
            return Ok(false);
        };
        let config = image::parse_config(
            store.require(&manifest.config().sha256()?)?.bytes(),
            "cached config",
        )?;
        let diff_ids = image::diff_ids(&config, "cached config")?;
        let layers = image::layers(&manifest)?;
        Ok(diff_ids.len() == layers.len()
            && layers.iter().zip(&diff_ids).all(|((digest, _), diff_id)| {
                store.contains(diff_id)
                    || store.contains(digest)
                    || ChunkMap::load(store, digest).is_some()
            }))
    };
    open().unwrap_or(false)
}

/// Pulls `image` lazily: manifests and config now, per layer a chunk map (or,
/// failing that, the whole blob). Contents are fetched when first read.
pub async fn pull_lazy(
    store: &Store,
    registry: &RegistryClient,
    image: &ImageRef,
    wanted: &Platform,
    progress: &dyn Progress,
    gate: Gate<'_>,
    indexes: &IndexSources,
) -> Result<PullReport> {
    let (resolved, whole) = pull_chunk_maps(store, registry, image, wanted, gate, indexes).await?;
    let name = image.to_string();
    if !whole.is_empty() {
        tracing::warn!(
            "{name}: {} of {} layers have no table of contents and no lazyimg index, so they are fetched whole; \
             `lazyimg index --push {name}` makes the next mount lazy on every machine",
            whole.len(),
            resolved.manifest.layers().len()
        );
    }
    let fetched: Vec<u64> = futures_util::stream::iter(&whole)
        .map(|layer| {
            let what = format!("layer {} of {name}", layer.digest());
            async move {
                pull::fetch_blob(store, registry, image, layer, (&what, &what), progress).await
            }
        })
        .buffer_unordered(PARALLEL_TOCS)
        .try_collect()
        .instrument(timeline::phase("whole layers"))
        .await?;
    pull::record(store, image, &resolved, wanted, fetched.iter().sum(), 0)
}

/// The first half of [`pull_lazy`]: the manifests and config, and a chunk
/// map for every layer that is not stored and has one (a lazyimg index from
/// `indexes`, only if their trust accepts it). Returns what was resolved and the layers left,
/// which can only be read whole.
pub async fn pull_chunk_maps(
    store: &Store,
    registry: &RegistryClient,
    image: &ImageRef,
    wanted: &Platform,
    gate: Gate<'_>,
    indexes: &IndexSources,
) -> Result<(pull::Resolved, Vec<Descriptor>)> {
    let resolved = pull::fetch_manifests(store, registry, image, wanted, gate)
        .instrument(timeline::phase("manifest"))
        .await?;
    let name = image.to_string();
    let layers = image::layers(&resolved.manifest)?;
    // The lazyimg index is looked for while the config arrives (it names the
    // manifest, not the config), unless every layer's blob or map is stored.
    let may_need_index = layers
        .iter()
        .any(|(digest, _)| !store.contains(digest) && ChunkMap::load(store, digest).is_none());
    let discovery = async {
        if !may_need_index {
            return Ok(None);
        }
        index_artifact::find(registry, image, &resolved.manifest_digest, indexes)
            .instrument(timeline::phase("index discovery"))
            .await
    };
    let (config, artifact) = tokio::join!(
        pull::fetch_config(store, registry, image, &resolved).instrument(timeline::phase("config")),
        discovery
    );
    config?;
    let artifact = artifact?;
    let config_what = format!("config of {name}");
    let config = image::parse_config(
        store
            .require(&resolved.manifest.config().sha256()?)?
            .bytes(),
        &config_what,
    )?;
    let diff_ids = image::diff_ids(&config, &config_what)?;
    let needed: Vec<(Digest, &Descriptor)> = layers
        .into_iter()
        .enumerate()
        .filter(|(i, (digest, _))| {
            let unpacked = diff_ids.get(*i).is_some_and(|d| store.contains(d));
            !(unpacked || store.contains(digest) || ChunkMap::load(store, digest).is_some())
        })
        .map(|(_, layer)| layer)
        .collect();
    // A lazyimg index pushed beside the image comes first: it also covers
    // plain gzip layers, which carry no table of contents.
    let mut indexed = match artifact {
        Some(found) if !needed.is_empty() => {
            index_artifact::chunk_maps(
                store,
                found.registry,
                found.at,
                &resolved.manifest_digest,
                &found.artifact,
                &needed,
            )
            .await?
        }
        _ => Default::default(),
    };
    let maps: Vec<(Digest, &Descriptor, Option<ChunkMap>)> = futures_util::stream::iter(needed)
        .map(|(digest, layer)| {
            let from_index = indexed.remove(&digest);
            async move {
                match from_index {
                    Some(map) => Ok(Some(map)),
                    None => find_chunk_map(registry, image, layer).await,
                }
                .map(|map| (digest, layer, map))
            }
        })
        .buffered(PARALLEL_TOCS)
        .try_collect()
        .instrument(timeline::phase("tables of contents"))
        .await?;
    let _phase = timeline::phase("chunk maps stored").entered();
    let mut whole = Vec::new();
    for (digest, layer, map) in maps {
        match map {
            Some(map) => map.save(store, &digest)?,
            None => whole.push(layer.clone()),
        }
    }
    Ok((resolved, whole))
}

/// The chunk map for `layer` from the table of contents it carries, if any.
async fn find_chunk_map(
    registry: &RegistryClient,
    image: &ImageRef,
    layer: &Descriptor,
) -> Result<Option<ChunkMap>> {
    match LayerFormat::of(layer) {
        LayerFormat::Estargz => super::toc_fetch::estargz_map(registry, image, layer).await,
        LayerFormat::ZstdChunked => {
            super::toc_fetch::zstd_chunked_map(registry, image, layer).await
        }
        _ => Ok(None),
    }
}

/// A table of contents that cannot be fetched or fails its checks costs the
/// layer its laziness, never correctness: warn and fetch it whole.
pub(super) fn unusable(layer: &Descriptor, what: &str, err: Error) -> Result<Option<ChunkMap>> {
    match err {
        Error::Auth { .. } | Error::Denied { .. } => Err(err),
        err => {
            tracing::warn!("layer {}: ignoring its {what}: {err}", layer.digest());
            Ok(None)
        }
    }
}
