//! Resolving an image to its manifest and fetching its blobs into the store,
//! verifying every digest on the way in.

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use oci_client::RegistryOperation;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{
    self, Descriptor, DescriptorExt, ImageIndex, ImageManifest, Manifest, Platform,
};
use crate::reference::ImageRef;
use crate::registry::RegistryClient;
use crate::store::{ImageRecord, Store};

/// Layers fetched at once: enough to fill a link, few enough not to thrash a small disk.
const PARALLEL_LAYERS: usize = 4;

/// Reports progress of byte transfers; the CLI draws bars or prints log lines.
pub trait Progress: Sync {
    fn start(&self, label: &str, size: u64) -> Box<dyn ProgressTask>;
}

pub trait ProgressTask: Send + Sync {
    fn advance(&self, bytes: u64);
    fn finish(&self, outcome: &str);
}

/// For callers that want no reporting.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64) -> Box<dyn ProgressTask> {
        Box::new(Silent)
    }
}

impl ProgressTask for Silent {
    fn advance(&self, _: u64) {}
    fn finish(&self, _: &str) {}
}

/// An image manifest, verified against what names it.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The digest the reference points at (an index for multi-platform images).
    pub digest: Digest,
    pub bytes: Bytes,
    pub index: Option<ImageIndex>,
    /// The image manifest for the chosen platform.
    pub manifest_digest: Digest,
    pub manifest_bytes: Bytes,
    pub manifest: ImageManifest,
    /// As the index says; `None` when the reference named a single-platform manifest.
    pub platform: Option<Platform>,
}

/// Fetches the manifest `image` names and, for an index, the one for `wanted`.
pub async fn resolve(
    registry: &RegistryClient,
    image: &ImageRef,
    wanted: &Platform,
) -> Result<Resolved> {
    let (bytes, digest) = fetch_named_manifest(registry, image).await?;
    match Manifest::parse(&bytes, &image.to_string())? {
        Manifest::Image(manifest) => Ok(Resolved {
            digest,
            bytes: bytes.clone(),
            index: None,
            manifest_digest: digest,
            manifest_bytes: bytes,
            manifest,
            platform: None,
        }),
        Manifest::Index(index) => {
            let entry = image::select_platform(&index, wanted)?.clone();
            let entry_digest = entry.sha256()?;
            let what = format!("{} manifest of {image}", image::platform_name(wanted));
            let manifest_bytes = registry
                .fetch_manifest(&image.source.clone_with_digest(entry_digest.to_string()))
                .await?;
            check_descriptor(&entry, &manifest_bytes, &what)?;
            let Manifest::Image(manifest) = Manifest::parse(&manifest_bytes, &what)? else {
                return Err(Error::Manifest {
                    what,
                    reason: "an index entry points at another index".into(),
                });
            };
            Ok(Resolved {
                digest,
                bytes,
                index: Some(index),
                manifest_digest: entry_digest,
                manifest_bytes,
                manifest,
                platform: entry.platform().clone(),
            })
        }
    }
}

/// The manifest `image` names, with its digest, checked against a pinned digest.
pub(crate) async fn fetch_named_manifest(
    registry: &RegistryClient,
    image: &ImageRef,
) -> Result<(Bytes, Digest)> {
    let bytes = registry.fetch_manifest(&image.source).await?;
    let digest = Digest::of(&bytes);
    if let Some(pinned) = image.pinned_digest()
        && pinned != digest
    {
        return Err(Error::DigestMismatch {
            what: format!("manifest of {image}"),
            expected: pinned,
            actual: digest,
        });
    }
    Ok((bytes, digest))
}

/// Checks that `bytes` are what `descriptor` names: digest and size.
pub(crate) fn check_descriptor(descriptor: &Descriptor, bytes: &[u8], what: &str) -> Result<()> {
    let actual = Digest::of(bytes);
    let expected = descriptor.sha256()?;
    if actual != expected {
        return Err(Error::DigestMismatch {
            what: what.to_string(),
            expected,
            actual,
        });
    }
    if bytes.len() as u64 != descriptor.size() {
        return Err(Error::SizeMismatch {
            what: what.to_string(),
            expected: descriptor.size(),
            actual: bytes.len() as u64,
        });
    }
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PullReport {
    pub name: String,
    pub digest: Digest,
    pub manifest: Digest,
    pub platform: String,
    pub layers: usize,
    pub bytes_fetched: u64,
    pub bytes_cached: u64,
}

/// Accepts or refuses an image given the digest its reference resolved to (an
/// index for multi-platform images) and the chosen platform's manifest digest;
/// called before anything is stored. The approved-image policy's second step.
pub type Gate<'a> = &'a (dyn Fn(&Digest, &Digest) -> Result<()> + Sync);

/// Pulls `image` into `store`: manifests, config and every layer, verified.
pub async fn pull(
    store: &Store,
    registry: &RegistryClient,
    image: &ImageRef,
    wanted: &Platform,
    progress: &dyn Progress,
) -> Result<PullReport> {
    pull_gated(store, registry, image, wanted, progress, &|_, _| Ok(())).await
}

/// [`pull`], refusing before anything is stored unless `gate` accepts the digests.
pub async fn pull_gated(
    store: &Store,
    registry: &RegistryClient,
    image: &ImageRef,
    wanted: &Platform,
    progress: &dyn Progress,
    gate: Gate<'_>,
) -> Result<PullReport> {
    let resolved = fetch_metadata(store, registry, image, wanted, gate).await?;
    let name = image.to_string();
    let manifest = &resolved.manifest;
    let layers: Vec<(&Descriptor, String)> = manifest
        .layers()
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let what = format!(
                "layer {}/{} {} of {name}",
                i + 1,
                manifest.layers().len(),
                layer.digest()
            );
            (layer, what)
        })
        .collect();
    let bytes_cached: u64 = layers
        .iter()
        .filter(|(d, _)| d.sha256().is_ok_and(|digest| store.contains(&digest)))
        .map(|(d, _)| d.size())
        .sum();
    let fetched: Vec<u64> = futures_util::stream::iter(layers.iter())
        .map(|(descriptor, what)| {
            fetch_blob(store, registry, image, descriptor, (what, what), progress)
        })
        .buffer_unordered(PARALLEL_LAYERS)
        .try_collect()
        .await?;
    record(
        store,
        image,
        &resolved,
        wanted,
        fetched.iter().sum(),
        bytes_cached,
    )
}

/// Authenticates, resolves `image` for `wanted`, lets `gate` judge the digests,
/// then stores the manifests and the config: everything but the layers.
pub async fn fetch_metadata(
    store: &Store,
    registry: &RegistryClient,
    image: &ImageRef,
    wanted: &Platform,
    gate: Gate<'_>,
) -> Result<Resolved> {
    let resolved = fetch_manifests(store, registry, image, wanted, gate).await?;
    fetch_config(store, registry, image, &resolved).await?;
    Ok(resolved)
}

/// The first half of [`fetch_metadata`]: authenticates, resolves `image` for
/// `wanted`, lets `gate` judge the digests, then stores the manifests.
pub async fn fetch_manifests(
    store: &Store,
    registry: &RegistryClient,
    image: &ImageRef,
    wanted: &Platform,
    gate: Gate<'_>,
) -> Result<Resolved> {
    registry
        .authenticate(&image.source, RegistryOperation::Pull)
        .await?;
    let resolved = resolve(registry, image, wanted).await?;
    gate(&resolved.digest, &resolved.manifest_digest)?;
    let name = image.to_string();
    for (digest, bytes) in [
        (resolved.digest, &resolved.bytes),
        (resolved.manifest_digest, &resolved.manifest_bytes),
    ] {
        store.put(digest, bytes, &format!("manifest of {name}"))?;
    }
    Ok(resolved)
}

/// The second half of [`fetch_metadata`]: the config `resolved` names, into
/// the store unless there; returns the bytes fetched.
pub async fn fetch_config(
    store: &Store,
    registry: &RegistryClient,
    image: &ImageRef,
    resolved: &Resolved,
) -> Result<u64> {
    let config = resolved.manifest.config();
    let what = format!("config {} of {image}", config.digest());
    fetch_blob(store, registry, image, config, (&what, &what), &Silent).await
}

/// Records that `image` for `wanted` is `resolved`, once its content is usable.
pub(crate) fn record(
    store: &Store,
    image: &ImageRef,
    resolved: &Resolved,
    wanted: &Platform,
    bytes_fetched: u64,
    bytes_cached: u64,
) -> Result<PullReport> {
    let name = image.to_string();
    let manifest = &resolved.manifest;
    let config_bytes = store.require(&manifest.config().sha256()?)?;
    let config = image::parse_config(config_bytes.bytes(), &format!("config of {name}"))?;
    let platform = resolved.platform.clone().unwrap_or_else(|| {
        // A single-platform image is used whatever it was built for, as
        // Podman does (containers/image warns the same way); an index had its
        // platform chosen already.
        let built_for = image::config_platform(&config);
        if !image::platform_accepts(wanted, &built_for) {
            tracing::warn!(
                "{name}: image platform ({}) does not match the expected platform ({})",
                image::platform_name(&built_for),
                image::platform_name(wanted)
            );
        }
        built_for
    });
    store.record_image(&ImageRecord::new(
        name.clone(),
        resolved.digest,
        resolved.manifest_digest,
        image::platform_name(wanted),
    ))?;
    Ok(PullReport {
        name,
        digest: resolved.digest,
        manifest: resolved.manifest_digest,
        platform: image::platform_name(&platform),
        layers: manifest.layers().len(),
        bytes_fetched,
        bytes_cached,
    })
}

/// Fetches one blob into the store unless it is there; returns the bytes fetched.
/// `label` names the transfer in progress reports, `what` the blob in errors.
pub(crate) async fn fetch_blob(
    store: &Store,
    registry: &RegistryClient,
    image: &ImageRef,
    descriptor: &Descriptor,
    (label, what): (&str, &str),
    progress: &dyn Progress,
) -> Result<u64> {
    let digest = descriptor.sha256()?;
    if store.contains(&digest) {
        return Ok(0);
    }
    let task = progress.start(label, descriptor.size());
    let mut writer = store.writer(digest, Some(descriptor.size()), what)?;
    let mut advance = |n: u64| task.advance(n);
    let result = registry
        .fetch_blob(
            &image.source,
            &digest,
            descriptor.size(),
            &mut writer,
            &mut advance,
        )
        .await;
    let result = result.map_err(|e| name_missing_blob(e, descriptor, what));
    // fsync and rename block: keep them off the async workers' critical path.
    let result = result.and_then(|()| tokio::task::block_in_place(|| writer.commit()));
    match &result {
        Ok(()) => task.finish("verified"),
        Err(e) => task.finish(&format!("failed: {e}")),
    }
    result.map(|()| descriptor.size())
}

/// A blob the registry lacks, named as what it is to the image (`what`); a
/// missing non-distributable layer says so, as such layers may live elsewhere.
fn name_missing_blob(err: Error, descriptor: &Descriptor, what: &str) -> Error {
    match err {
        Error::BlobNotFound {
            registry,
            repository,
            ..
        } if descriptor.is_non_distributable() => Error::ForeignLayerMissing {
            registry,
            repository,
            what: what.to_string(),
        },
        Error::BlobNotFound {
            registry,
            repository,
            digest,
            ..
        } => Error::BlobNotFound {
            registry,
            repository,
            digest,
            what: what.to_string(),
        },
        other => other,
    }
}

/// When `mount` and `run` contact the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PullPolicy {
    /// Use the cached image if it is complete, else pull.
    #[default]
    Missing,
    /// Always ask the registry (a moved tag is followed).
    Always,
    /// Never contact the registry: fail unless the image is cached.
    Never,
}
