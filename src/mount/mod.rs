//! Assembling a mount: an image's tree and content put together as a
//! [`RootFs`] (lazily read layers wired to the registry, recording and
//! prefetching), served over FUSE until a signal, and the daemon that
//! `lazyimg mount` leaves behind.
//!
//! Sits above [`rootfs`](crate::rootfs) (the contract) and [`lazy`](crate::lazy)
//! (the engine): neither knows the other's wiring; only this module does.

mod daemon;
mod layer_store;
mod open;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::config::Config;
use crate::digest::Digest;
use crate::image::{self, DescriptorExt, ImageConfiguration, Manifest};
use crate::lazy::LazyOptions;
use crate::lazy::index_artifact::IndexStore;
use crate::lazy::prefetch::{Recorder, prefetch_files};
use crate::lazy::source::{RangeSource, RegistryRanges};
use crate::reference::ImageRef;
use crate::registry::RegistryClient;
use crate::rootfs::RootFs;
use crate::rootfs::synthetic::SyntheticFiles;
use crate::store::{Derived, Store};
use crate::tree::Tree;
pub use daemon::{
    DaemonFailed, Started, claim_status_pipe, clear_stale_mount, is_daemon, report_live,
    serve_layer_store_until_signalled, serve_until_signalled, start_daemon, umount,
};
pub use layer_store::RegistryImages;
pub use open::{open_bottom_layers, open_image, open_view};

/// What a mount records and fetches ahead of its readers.
#[derive(Debug, Clone, Default)]
pub struct Prefetching {
    /// Write the path of every file read, in the order first read, here.
    pub record: Option<PathBuf>,
    /// Fetch the files this list names first (else the list pushed with the
    /// image's lazyimg index, if any).
    pub list: Option<PathBuf>,
    /// Then fetch the rest of the image in the background.
    pub background: bool,
    /// Limit the background fetch to this many bytes per second.
    pub max_rate: Option<u64>,
}

/// Opens the prepared image `manifest` of `image`; layers not in the cache
/// are read lazily from `registry` (the windows of indexes found in the
/// site's index store from there), as `config` says. Starts the prefetching
/// `prefetching` asks for. The files `extra` makes of the image's tree, if
/// any, are grafted on (a mount for Apptainer, a GPU job's driver);
/// recording and prefetching see only the image's files.
pub fn open_lazy(
    config: &Config,
    store: &Arc<Store>,
    manifest: &Digest,
    image: &ImageRef,
    (registry, index_store): (Arc<RegistryClient>, Option<IndexStore>),
    prefetching: &Prefetching,
    extra: impl FnOnce(&Tree) -> anyhow::Result<Option<SyntheticFiles>>,
) -> anyhow::Result<Arc<RootFs>> {
    let mut rootfs = open_reading(config, store, manifest, image, registry, index_store)?;
    if let Some(list) = &prefetching.record {
        let recorder = Recorder::new(&rootfs.tree, Arc::clone(&rootfs.content), list)?;
        rootfs.content = Arc::new(recorder);
    }
    if let Some(files) = extra(&rootfs.tree)? {
        rootfs = rootfs.with_synthetic(files);
    }
    let rootfs = Arc::new(rootfs);
    // A list given here wins over the one pushed with the image's index.
    let list = match &prefetching.list {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("cannot read the prefetch list {}", path.display()))?,
        ),
        None => store.read_derived(Derived::PrefetchList, manifest)?,
    };
    start_prefetch(&rootfs, list, prefetching);
    Ok(rootfs)
}

/// Opens the prepared image `manifest` of `image` for reading only what is
/// asked: layers not in the cache are read lazily from `registry` (and
/// `index_store`, as [`open_lazy`] says), nothing is
/// prefetched or recorded (what `lazyimg ls`, `cat` and `find` need). Call
/// from a tokio runtime's thread: reads use that runtime.
pub fn open_reading(
    config: &Config,
    store: &Arc<Store>,
    manifest: &Digest,
    image: &ImageRef,
    registry: Arc<RegistryClient>,
    index_store: Option<IndexStore>,
) -> anyhow::Result<RootFs> {
    let (source, options) = lazy_source(
        config,
        store,
        image,
        registry,
        index_store,
        tokio::runtime::Handle::current(),
    );
    let lazy: (Arc<dyn RangeSource>, LazyOptions) = (source, options);
    // Decompressing and indexing layers is blocking work the first time.
    Ok(tokio::task::block_in_place(|| {
        open_image(store, manifest, &image.to_string(), Some(lazy))
    })?)
}

/// Where `image`'s lazily read layers come from: `registry` (and
/// `index_store` for the windows of indexes found there), reached from plain
/// threads through `runtime`, with the limits `config` sets.
fn lazy_source(
    config: &Config,
    store: &Arc<Store>,
    image: &ImageRef,
    registry: Arc<RegistryClient>,
    index_store: Option<IndexStore>,
    runtime: tokio::runtime::Handle,
) -> (Arc<RegistryRanges>, LazyOptions) {
    let options = LazyOptions::from_config(config);
    let source = RegistryRanges {
        registry,
        image: image.clone(),
        store: Arc::clone(store),
        runtime,
        read_deadline: options.read_deadline,
        whole_blob_deadline: options.whole_blob_deadline,
        index_store: index_store.map(Arc::new),
    };
    (Arc::new(source), options)
}

/// Runs the prefetch `list` and the background fetch on a thread of their
/// own: the mount serves meanwhile, and reads of what is being fetched wait for it.
fn start_prefetch(rootfs: &Arc<RootFs>, list: Option<Vec<u8>>, prefetching: &Prefetching) {
    if list.is_none() && !prefetching.background {
        return;
    }
    let max_rate = prefetching.max_rate;
    let background = prefetching.background;
    let rootfs = Arc::clone(rootfs);
    let spawned = std::thread::Builder::new()
        .name("lazyimg-prefetch".into())
        .spawn(move || {
            if let Some(list) = list {
                let done = prefetch_files(&rootfs, &list);
                tracing::info!(
                    "prefetched {} files ({} bytes); {} listed paths skipped",
                    done.files,
                    done.bytes,
                    done.skipped
                );
            }
            if background {
                match rootfs.content.fill(max_rate) {
                    Ok(bytes) => tracing::info!("background fetch done: {bytes} bytes fetched"),
                    Err(e) => tracing::warn!("background fetch stopped: {e}"),
                }
            }
        });
    // Prefetching only saves time later; the mount works without it.
    if let Err(e) = spawned {
        tracing::warn!("cannot start prefetching: {e}");
    }
}

/// The config of the image whose manifest `manifest` is in `store`.
pub fn image_config(
    store: &Store,
    manifest: &Digest,
    image: &ImageRef,
) -> anyhow::Result<ImageConfiguration> {
    let what = image.to_string();
    let Manifest::Image(manifest) = Manifest::parse(store.require(manifest)?.bytes(), &what)?
    else {
        bail!("{what}: the cached manifest is an index");
    };
    Ok(image::parse_config(
        store.require(&manifest.config().sha256()?)?.bytes(),
        &what,
    )?)
}
