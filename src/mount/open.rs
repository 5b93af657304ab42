//! Opening a pulled image as a [`RootFs`]: every layer's uncompressed tar kept in
//! the store under its diff_id, its entries read once, merged once, then served by mmap.
//!
//! Trust chain: the manifest digest names the config, the config lists each
//! layer's diff_id, and a layer's tar is stored under its diff_id only after it
//! hashed to exactly that. So every byte served traces back to the manifest digest.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Arc;

use crate::chunkmap::{ChunkMap, MapSource};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{self, Descriptor, DescriptorExt, Manifest};
use crate::layer::{self, Compression, EntryTable};
use crate::lazy::decode::DeflateResume;
use crate::lazy::index_artifact;
use crate::lazy::source::{RangeSource, Routed};
use crate::lazy::{
    ChunkFetcher, GzipSpans, ImageContent, LayerContent, LazyBlob, LazyOptions, WholeLayerCheck,
};
use crate::rootfs::{RootFs, Stats, View};
use crate::store::BlobSink;
use crate::store::{Blob, BlobWriter, Derived, Store};
use crate::tree::Tree;

/// Opens the image whose manifest `manifest_digest` is in `store` (with its
/// config, and per layer its tar, its blob or a chunk map). `name` is for
/// messages. Chunk-mapped layers read through `lazy`, which must then be given.
pub fn open_image(
    store: &Arc<Store>,
    manifest_digest: &Digest,
    name: &str,
    lazy: Option<(Arc<dyn RangeSource>, LazyOptions)>,
) -> Result<RootFs> {
    open_view(store, manifest_digest, name, lazy, View::Merged)
}

/// [`open_image`], serving `view` of the image.
pub fn open_view(
    store: &Arc<Store>,
    manifest_digest: &Digest,
    name: &str,
    lazy: Option<(Arc<dyn RangeSource>, LazyOptions)>,
    view: View,
) -> Result<RootFs> {
    open_bottom_layers(store, manifest_digest, name, lazy, view, usize::MAX)
}

/// [`open_view`] of the image as if it had only its bottom `count` layers
/// (all of them if it has fewer): what Podman's layer store serves when the
/// layer above those cannot be read lazily. Only those layers need be stored
/// or mapped.
pub fn open_bottom_layers(
    store: &Arc<Store>,
    manifest_digest: &Digest,
    name: &str,
    lazy: Option<(Arc<dyn RangeSource>, LazyOptions)>,
    view: View,
    count: usize,
) -> Result<RootFs> {
    let layers_phase = crate::timeline::phase("layer maps").entered();
    let manifest_bytes = store.require(manifest_digest)?;
    let Manifest::Image(mut manifest) = Manifest::parse(manifest_bytes.bytes(), name)? else {
        return Err(Error::Manifest {
            what: name.to_string(),
            reason: format!("{manifest_digest} is an index, not an image manifest"),
        });
    };
    let config_what = format!("config of {name}");
    let config = image::parse_config(
        store.require(&manifest.config().sha256()?)?.bytes(),
        &config_what,
    )?;
    let mut diff_ids = image::diff_ids(&config, &config_what)?;
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::Manifest {
            what: config_what,
            reason: format!(
                "{} diff_ids for {} layers",
                diff_ids.len(),
                manifest.layers().len()
            ),
        });
    }
    // A tree of fewer layers is another tree: cached under its own key.
    let image_key = if count < manifest.layers().len() {
        manifest.layers_mut().truncate(count);
        diff_ids.truncate(count);
        Digest::of(format!("{manifest_digest} bottom {count} layers").as_bytes())
    } else {
        *manifest_digest
    };

    // Per layer: its verified tar (unpacking a stored blob first), else its chunk map.
    let mut plans = Vec::new();
    let mut tables = Vec::new();
    // What the tree is built from, layer by layer: `t` for a tar (its entry table
    // follows from the diff_id, which the manifest names), else the map's
    // content identity.
    let mut layouts = String::new();
    for (layer, diff_id) in manifest.layers().iter().zip(&diff_ids) {
        let digest = layer.sha256()?;
        let mut fresh_table = None;
        if !store.contains(diff_id) && store.contains(&digest) {
            let compression = layer.layer_compression(name)?;
            fresh_table = Some(unpack_layer(store, &digest, compression, diff_id)?);
        }
        if let Some(tar) = store.get(diff_id)? {
            let table = match fresh_table {
                Some(table) => table,
                None => entry_table(store, diff_id, &tar)?,
            };
            tables.push(table);
            plans.push(Plan::Tar(tar, *diff_id));
            layouts.push_str(" t");
        } else if let Some(map) = ChunkMap::load(store, &digest) {
            layouts.push_str(&format!(" {}", map.content_identity()));
            tables.push(map.layer.table.clone());
            plans.push(Plan::Chunked(
                Box::new(layer.clone()),
                *diff_id,
                Box::new(map),
            ));
        } else {
            return Err(Error::NotCached(digest));
        }
    }
    let chunked = plans.iter().any(|plan| matches!(plan, Plan::Chunked(..)));
    drop(layers_phase);

    // Chunk maps lay content out differently from tars, and from each other
    // (a TOC map and an index-artifact map of one blob): a tree is only reused
    // for the same layouts. The map of a shared layer is replaced by whichever
    // image stores one last, so this is checked at every open.
    let tree_key = view.tree_key(if chunked {
        Digest::of(format!("{image_key}{layouts}").as_bytes())
    } else {
        image_key
    });
    let tree_phase = crate::timeline::phase("tree load").entered();
    let tree = match cached_tree(store, &tree_key) {
        Some(tree) => tree,
        None => {
            let tree = view.build(&tables).map_err(|source| Error::Tree {
                image: name.to_string(),
                source,
            })?;
            let bytes = tree.to_bytes().map_err(|source| Error::Tree {
                image: name.to_string(),
                source,
            })?;
            store.write_derived(Derived::Tree, &tree_key, &bytes)?;
            tree
        }
    };
    drop(tree_phase);
    let stats = Arc::new(Stats::default());
    let (fetcher, source, readahead) = match lazy {
        Some((source, options)) if chunked => {
            let source = route_auxiliary_blobs(source, &plans);
            let fetcher = ChunkFetcher::new(
                Arc::clone(store),
                Arc::clone(&source),
                Arc::clone(&stats),
                &options,
            )?;
            (Some(Arc::new(fetcher)), Some(source), options.readahead)
        }
        None if chunked => {
            return Err(Error::NotCachedImage {
                image: name.to_string(),
            });
        }
        _ => (None, None, 0),
    };
    let mut checks = Vec::new();
    let layers = plans
        .into_iter()
        .enumerate()
        .map(|(index, plan)| match plan {
            Plan::Tar(tar, diff_id) => Ok(LayerContent::Unpacked { tar, diff_id }),
            Plan::Chunked(layer, diff_id, map) => {
                let (digest, size) = (layer.sha256()?, layer.size());
                if let (MapSource::LazyimgIndex, Some(source)) = (map.source, &source) {
                    checks.push((
                        index,
                        whole_layer_check(store, source, *layer, diff_id, &map),
                    ));
                }
                let deflate = match (map.gzip, &fetcher, &source) {
                    (Some(resume), Some(fetcher), Some(source)) => {
                        let spans = GzipSpans::new(resume, &map.layer.chunks, Arc::clone(fetcher));
                        let whole = whole_tar(store, source, (digest, size), diff_id);
                        Some(Arc::new(spans.or_whole(Arc::clone(source), whole))
                            as Arc<dyn DeflateResume>)
                    }
                    _ => None,
                };
                Ok(LayerContent::Chunked(Arc::new(LazyBlob {
                    digest,
                    size,
                    deflate,
                    chunks: map.layer.chunks,
                })))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let content = checks.into_iter().fold(
        ImageContent::new(layers, fetcher, readahead, Arc::clone(&stats)),
        |content, (index, check)| content.with_check(index, check),
    );
    Ok(RootFs {
        tree,
        content: Arc::new(content),
        stats: Some(stats),
    })
}

/// How one layer will be read.
enum Plan {
    /// The layer's verified tar and its diff_id.
    Tar(Blob, Digest),
    /// The layer's descriptor, its diff_id and its map.
    Chunked(Box<Descriptor>, Digest, Box<ChunkMap>),
}

/// `source`, but fetching each map's auxiliary blobs from the repository that
/// holds them ([`ChunkMap::home`]) where `source` can reach it: a map is
/// shared by every image with its layer, whichever repository it came from.
fn route_auxiliary_blobs(source: Arc<dyn RangeSource>, plans: &[Plan]) -> Arc<dyn RangeSource> {
    let routes: HashMap<Digest, Arc<dyn RangeSource>> = plans
        .iter()
        .filter_map(|plan| match plan {
            Plan::Chunked(_, _, map) => {
                let windows = map.gzip.as_ref()?.windows_blob;
                Some((windows, source.elsewhere(map.home.as_ref()?)?))
            }
            Plan::Tar(..) => None,
        })
        .collect();
    if routes.is_empty() {
        return source;
    }
    Arc::new(Routed::new(source, routes))
}

/// The whole-layer check of `layer`, read through the lazyimg index `map`:
/// the layer is downloaded whole from `source` (verified against its digest)
/// unless stored, and the index compared with the one its bytes give
/// ([`index_artifact::check_map`]). A download whose bytes miss the digest
/// fails the check; one that cannot finish is an error (checked another time).
fn whole_layer_check(
    store: &Arc<Store>,
    source: &Arc<dyn RangeSource>,
    layer: Descriptor,
    diff_id: Digest,
    map: &ChunkMap,
) -> WholeLayerCheck {
    let (store, source, map) = (Arc::clone(store), Arc::clone(source), map.clone());
    Box::new(move || {
        let digest = layer.sha256()?;
        if !store.contains(&digest) {
            match source.fetch_whole(&digest, layer.size()) {
                Err(e @ Error::DigestMismatch { .. }) => return Ok(Some(e.to_string())),
                downloaded => downloaded?,
            }
        }
        index_artifact::check_map(&store, &layer, &diff_id, &map)
    })
}

/// The verified uncompressed tar of the gzip layer blob `(digest, size)`, made on demand: the
/// layer is downloaded whole from `source` (verified against its digest)
/// unless stored, then unpacked (verified against `diff_id`). Reads of a gzip
/// layer whose windows are out of reach end here.
fn whole_tar(
    store: &Arc<Store>,
    source: &Arc<dyn RangeSource>,
    (digest, size): (Digest, u64),
    diff_id: Digest,
) -> impl Fn() -> Result<Blob> + Send + Sync + 'static {
    let (store, source) = (Arc::clone(store), Arc::clone(source));
    move || {
        if let Some(tar) = store.get(&diff_id)? {
            return Ok(tar);
        }
        if !store.contains(&digest) {
            source.fetch_whole(&digest, size)?;
        }
        unpack_layer(&store, &digest, Compression::Gzip, &diff_id)?;
        store.require(&diff_id)
    }
}

/// A tree saved by an earlier open; a damaged or outdated one is rebuilt.
fn cached_tree(store: &Store, manifest_digest: &Digest) -> Option<Tree> {
    let bytes = store.read_derived(Derived::Tree, manifest_digest).ok()??;
    Tree::from_bytes(&bytes)
        .inspect_err(|e| tracing::warn!("rebuilding the tree of {manifest_digest}: {e}"))
        .ok()
}

/// The entry table of a stored uncompressed layer, from the derived cache or rebuilt.
fn entry_table(store: &Store, diff_id: &Digest, tar: &Blob) -> Result<EntryTable> {
    if let Some(bytes) = store.read_derived(Derived::EntryTable, diff_id)?
        && let Ok(table) = postcard::from_bytes(&bytes)
    {
        return Ok(table);
    }
    let table = layer::read_entries(tar.bytes()).map_err(|source| Error::Layer {
        layer: *diff_id,
        source,
    })?;
    save_entry_table(store, diff_id, &table)?;
    Ok(table)
}

fn save_entry_table(store: &Store, diff_id: &Digest, table: &EntryTable) -> Result<()> {
    let bytes = postcard::to_stdvec(table).expect("an entry table always serialises");
    store.write_derived(Derived::EntryTable, diff_id, &bytes)
}

/// Decompresses stored layer `digest` into the store under `diff_id`, reading its
/// entry table in the same pass. Nothing is stored unless the tar hashes to `diff_id`.
fn unpack_layer(
    store: &Store,
    digest: &Digest,
    compression: Compression,
    diff_id: &Digest,
) -> Result<EntryTable> {
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
    let read = layer::read_entries(&mut tee);
    // The tar reader stops at the end-of-archive marker; the digest covers the padding after it.
    let drained = read.is_ok() && io::copy(&mut tee, &mut io::sink()).is_ok();
    if let Some(store_error) = tee.failed {
        return Err(store_error);
    }
    let table = read.map_err(|source| Error::Layer {
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
    save_entry_table(store, diff_id, &table)?;
    Ok(table)
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
