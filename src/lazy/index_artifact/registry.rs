//! Pushing an index artifact beside its image, and finding it again.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tracing::Instrument as _;

use super::format::{check_file, signed_payload};
use super::site_store::IndexSources;
use super::{
    ARTIFACT_TYPE, ArtifactLayer, BuiltLayer, EMPTY_MEDIA_TYPE, INDEX_MANIFEST_MEDIA_TYPE,
    INDEX_MEDIA_TYPE, LAYER_ANNOTATION, MANIFEST_MEDIA_TYPE, PREFETCH_MEDIA_TYPE,
    SIGNATURE_ANNOTATION, SIGNATURE_KEY_ANNOTATION, WINDOWS_MEDIA_TYPE,
};
use crate::chunkmap::{BlobHome, ChunkMap, MapSource};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{
    self, Descriptor, DescriptorExt, ImageManifest, ImageManifestBuilder, Manifest, MediaType,
};
use crate::pull::{self, Silent};
use crate::reference::ImageRef;
use crate::registry::RegistryClient;
use crate::signing::{IndexSigner, TrustedKeys};
use crate::store::{Derived, Store};
use crate::timeline;

/// Pushes the indexes of `built`, and the prefetch list if given, as an
/// artifact for image manifest `subject`, signed by `signer` when given, and
/// lists it under the `sha256-<hex>` referrers tag for registries without the
/// referrers API. Returns the artifact's digest.
pub async fn push(
    store: &Store,
    registry: &RegistryClient,
    image: &ImageRef,
    subject: &Descriptor,
    built: &[BuiltLayer],
    prefetch: Option<&[u8]>,
    signer: Option<&IndexSigner>,
) -> Result<Digest> {
    let empty_config = Bytes::from_static(b"{}");
    let mut layers = Vec::new();
    let mut blobs = vec![(Digest::of(&empty_config), empty_config.clone())];
    for index in built {
        let annotations =
            HashMap::from([(LAYER_ANNOTATION.to_string(), index.file.layer.to_string())]);
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
        layers.push(descriptor(PREFETCH_MEDIA_TYPE, &list, HashMap::new()));
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
    let mut manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(EMPTY_MEDIA_TYPE, &empty_config, HashMap::new()))
        .layers(layers)
        .artifact_type(MediaType::from(ARTIFACT_TYPE))
        .subject(subject.clone())
        .build()
        .expect("every required field is set");
    if let Some(signer) = signer {
        let signature = signer.sign(&signed_payload(&manifest));
        manifest.set_annotations(Some(HashMap::from([
            (SIGNATURE_ANNOTATION.to_string(), signature),
            (SIGNATURE_KEY_ANNOTATION.to_string(), signer.key_id()),
        ])));
    }
    let manifest_bytes = Bytes::from(image::to_json(&manifest));
    let artifact = Digest::of(&manifest_bytes);
    let by_digest = image.source.clone_with_digest(artifact.to_string());
    registry
        .push_manifest(&by_digest, &manifest_bytes, MANIFEST_MEDIA_TYPE)
        .await?;
    update_referrers_tag(registry, image, subject, &manifest_bytes).await?;
    Ok(artifact)
}

fn descriptor(media_type: &str, bytes: &[u8], annotations: HashMap<String, String>) -> Descriptor {
    image::descriptor(
        media_type,
        &Digest::of(bytes),
        bytes.len() as u64,
        annotations,
    )
}

/// Adds the artifact to the referrers index at tag `sha256-<hex>`, replacing
/// earlier lazyimg indexes and keeping other tools' entries.
async fn update_referrers_tag(
    registry: &RegistryClient,
    image: &ImageRef,
    subject: &Descriptor,
    artifact_bytes: &[u8],
) -> Result<()> {
    let tag = subject.digest().to_string().replace(':', "-");
    let tagged = oci_client::Reference::with_tag(
        image.source.registry().to_string(),
        image.source.repository().to_string(),
        tag,
    );
    let mut manifests = match registry.fetch_manifest(&tagged).await {
        Ok(bytes) => match Manifest::parse(&bytes, "referrers index") {
            Ok(Manifest::Index(index)) => index.manifests().clone(),
            _ => Vec::new(),
        },
        Err(Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    manifests.retain(|m| !is_index_artifact(m));
    let mut entry = descriptor(MANIFEST_MEDIA_TYPE, artifact_bytes, HashMap::new());
    entry.set_artifact_type(Some(ARTIFACT_TYPE.into()));
    manifests.push(entry);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MANIFEST_MEDIA_TYPE,
        "manifests": manifests,
    });
    let bytes = Bytes::from(image::to_json(&index));
    registry
        .push_manifest(&tagged, &bytes, INDEX_MANIFEST_MEDIA_TYPE)
        .await
}

/// The image's lazyimg index artifact, if one is listed for `manifest_digest`
/// and it checks out (fetched by digest, subject matching, signed by a key of
/// `trust` when it holds any); else `None`, with a warning when one was there
/// but failed a check.
pub async fn locate(
    registry: &RegistryClient,
    image: &ImageRef,
    manifest_digest: &Digest,
    trust: &TrustedKeys,
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
    let Some(entry) = referrers.iter().rev().find(|d| is_index_artifact(d)) else {
        return Ok(None);
    };
    let entry_digest = entry.sha256()?;
    let what = format!("lazyimg index {entry_digest} of {image}");
    let bytes = registry
        .fetch_manifest(&image.source.clone_with_digest(entry_digest.to_string()))
        .await?;
    if let Err(e) = pull::check_descriptor(entry, &bytes, &what) {
        return ignore(e.to_string());
    }
    let artifact = match Manifest::parse(&bytes, &what) {
        Ok(Manifest::Image(artifact)) => artifact,
        Ok(Manifest::Index(_)) => return ignore("it is an index".into()),
        Err(e) => return ignore(e.to_string()),
    };
    if artifact.subject().as_ref().and_then(|s| s.sha256().ok()) != Some(*manifest_digest) {
        return ignore(format!("its subject is not {manifest_digest}"));
    }
    if trust.is_empty() {
        tracing::warn!(
            "{image}: using lazyimg index {} without a signature check (no trusted_index_keys): \
             it is trusted because of who can push to {}",
            entry_digest,
            image.source.repository()
        );
    } else if let Err(untrusted) = trust.accept(
        &entry_digest,
        &signed_payload(&artifact),
        annotation(&artifact, SIGNATURE_KEY_ANNOTATION),
        annotation(&artifact, SIGNATURE_ANNOTATION),
    ) {
        return ignore(format!(
            "{entry_digest} is not trusted: {untrusted}; its layers are read whole, verified by their digests"
        ));
    }
    Ok(Some(artifact))
}

/// An image's index artifact as [`find`] found it, and where: its blobs are
/// fetched from the same place.
pub struct Found<'a> {
    pub artifact: ImageManifest,
    pub registry: &'a RegistryClient,
    /// The repository holding it: the image's own, or its place in the index store.
    pub at: &'a ImageRef,
}

/// The image's lazyimg index artifact ([`locate`]), looked for beside the
/// image and in the site's index store at once; one beside the image wins.
/// The store is asked only when `sources` trusts a key or pin, since what it
/// holds is used only through one; a store that cannot be asked costs a
/// warning, never the mount. Errors: as [`locate`] beside the image.
pub async fn find<'a>(
    registry: &'a RegistryClient,
    image: &'a ImageRef,
    manifest_digest: &Digest,
    sources: &'a IndexSources,
) -> Result<Option<Found<'a>>> {
    let beside = locate(registry, image, manifest_digest, &sources.trust);
    let in_store = async {
        let store = sources.store.as_ref()?;
        if sources.trust.is_empty() {
            tracing::warn!(
                "{image}: [index_store] is set but no trusted_index_keys: its indexes are used \
                 only through a trusted signature, so it is not asked"
            );
            return None;
        }
        let found = locate(&store.client, &store.image, manifest_digest, &sources.trust)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(
                    "{image}: cannot ask the index store {}: {e}",
                    store.image.source.registry()
                );
                None
            })?;
        Some(Found {
            artifact: found,
            registry: store.client.as_ref(),
            at: &store.image,
        })
    };
    let (beside, in_store) = tokio::join!(beside, in_store);
    Ok(match beside? {
        Some(artifact) => Some(Found {
            artifact,
            registry,
            at: image,
        }),
        None => in_store,
    })
}

/// The image layers an index artifact has an index for.
pub fn indexed_layers(artifact: &ImageManifest) -> Vec<String> {
    artifact
        .layers()
        .iter()
        .filter(|d| d.media_type().as_ref() == INDEX_MEDIA_TYPE)
        .filter_map(|d| d.annotation(LAYER_ANNOTATION).map(String::from))
        .collect()
}

/// Whether a referrers entry is a lazyimg index artifact (by its `artifactType`).
fn is_index_artifact(entry: &Descriptor) -> bool {
    entry
        .artifact_type()
        .as_ref()
        .is_some_and(|t| t.as_ref() == ARTIFACT_TYPE)
}

/// The manifest's own annotation `key`.
fn annotation<'a>(manifest: &'a ImageManifest, key: &str) -> Option<&'a str> {
    manifest
        .annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Chunk maps from `artifact`, the image's lazyimg index ([`locate`]), for
/// those of `layers` it covers and that pass every check; its prefetch list,
/// if any, is kept for the mount ([`Derived::PrefetchList`]). Anything wrong
/// with the index is a warning.
pub async fn chunk_maps(
    store: &Store,
    registry: &RegistryClient,
    image: &ImageRef,
    manifest_digest: &Digest,
    artifact: &ImageManifest,
    layers: &[(Digest, &Descriptor)],
) -> Result<BTreeMap<Digest, ChunkMap>> {
    let annotated = |layer: &Digest, media_type: &str| {
        let layer = layer.to_string();
        artifact.layers().iter().find(|d| {
            d.media_type().as_ref() == media_type
                && d.annotation(LAYER_ANNOTATION) == Some(layer.as_str())
        })
    };
    // One round trip for all of them, not one per layer: links can be slow.
    let wanted: Vec<(Digest, &Descriptor, &Descriptor)> = layers
        .iter()
        .filter_map(|&(digest, layer)| Some((digest, layer, annotated(&digest, INDEX_MEDIA_TYPE)?)))
        .collect();
    let prefetch = artifact
        .layers()
        .iter()
        .find(|d| d.media_type().as_ref() == PREFETCH_MEDIA_TYPE);
    let blobs: Vec<(&Descriptor, String)> = wanted
        .iter()
        .map(|(layer, _, index)| (*index, format!("lazyimg index of layer {layer}")))
        .chain(prefetch.map(|list| (list, "lazyimg prefetch list".to_string())))
        .collect();
    futures_util::stream::iter(&blobs)
        .map(|(blob, what)| pull::fetch_blob(store, registry, image, blob, (what, what), &Silent))
        .buffer_unordered(blobs.len().max(1))
        .try_collect::<Vec<u64>>()
        .instrument(timeline::phase("index blobs"))
        .await?;
    if let Some(list) = prefetch {
        let bytes = store.require(&list.sha256()?)?;
        store.write_derived(Derived::PrefetchList, manifest_digest, bytes.bytes())?;
    }
    let _phase = timeline::phase("index check").entered();
    let mut maps = BTreeMap::new();
    for (digest, layer, index) in wanted {
        let checked =
            ArtifactLayer::decode(store.require(&index.sha256()?)?.bytes()).and_then(|file| {
                check_file(&file, layer, annotated(&digest, WINDOWS_MEDIA_TYPE)).map(|()| file)
            });
        match checked {
            Ok(file) => {
                // The windows blob is in this image's repository, which other
                // images sharing the layer (and so this map) may not be.
                let map = ChunkMap::new(MapSource::LazyimgIndex, file.chunked, file.gzip)
                    .kept_in(BlobHome::of(image));
                maps.insert(digest, map);
            }
            Err(reason) => {
                tracing::warn!("lazyimg index of layer {digest}: ignoring it: {reason}");
                return Ok(BTreeMap::new());
            }
        }
    }
    Ok(maps)
}
