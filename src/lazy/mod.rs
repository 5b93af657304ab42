//! Lazy content: file bytes fetched from the registry chunk by chunk when first
//! read, verified, then served from the content store.
//!
//! Data flows one way: [`source`] (registry ranges) → [`fetch`] (single-flight,
//! coalescing, verification via [`decode`]) → the store → [`ImageContent`], the
//! [`ContentReader`] the FUSE adapter calls.

mod coalesce;
pub mod decode;
pub mod fetch;
mod gzip;
pub mod index_artifact;
mod pool;
pub mod prefetch;
pub mod prepare;
pub mod source;
#[cfg(test)]
mod tests;
mod toc_fetch;
mod write_queue;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::config::Config;
use crate::digest::Digest;
use crate::error::{ReadError, Result};
use crate::layer::{Piece, SparseMap};
use crate::rootfs::{ContentIdentity, ContentReader, Stats};
use crate::store::Blob;
use crate::tree::ContentLocation;
pub use fetch::{ChunkFetcher, LazyBlob};
pub use gzip::GzipSpans;
pub use prepare::pull_lazy;

/// How far from the last read's end a read still counts as sequential.
const SEQUENTIAL_SLACK: u64 = 1 << 20;

/// Blob bytes a background fill asks for at once.
const FILL_BATCH: u64 = 8 << 20;

/// How lazy reads behave: every knob and deadline of the engine, in one place.
/// `[lazy]` and `[network]` in the configuration file set them.
#[derive(Debug, Clone)]
pub struct LazyOptions {
    /// Threads that decode and verify chunks (default: one per CPU).
    pub workers: usize,
    /// Background fetches (readahead) at once; readahead is skipped while all
    /// are busy.
    pub fetchers: usize,
    /// Bytes of the same file fetched ahead of a sequential reader (and the
    /// size up to which a file is fetched whole on its first read).
    pub readahead: u64,
    /// Largest single range request when adjacent chunks are coalesced, bytes.
    pub max_request: u64,
    /// Verified chunks waiting to be written to the store, at most, in bytes.
    pub write_queue: u64,
    /// Longest one ranged read may take, retries included.
    pub read_deadline: Duration,
    /// Longest a whole-blob download may take (registries that refuse ranges).
    pub whole_blob_deadline: Duration,
    /// Longest a reader waits on another reader's ranged fetch.
    pub wait_deadline: Duration,
    /// A second-level chunk cache many nodes share (`shared_cache_dir`).
    pub shared_cache: Option<std::path::PathBuf>,
}

impl LazyOptions {
    /// The defaults with reads bounded by `read_deadline`; waiting on another
    /// reader's fetch is bounded by twice that (its retries) plus a margin.
    pub fn with_read_deadline(read_deadline: Duration) -> LazyOptions {
        LazyOptions {
            read_deadline,
            wait_deadline: read_deadline * 2 + Duration::from_secs(5),
            ..LazyOptions::default()
        }
    }

    /// The options `config` sets: `[lazy]`, and `[network] read_timeout` as
    /// the deadline of one ranged read.
    pub fn from_config(config: &Config) -> LazyOptions {
        let read_deadline = Duration::from_secs(config.network.read_timeout.max(1));
        let lazy = &config.lazy;
        let defaults = LazyOptions::with_read_deadline(read_deadline);
        LazyOptions {
            workers: lazy.workers.unwrap_or(defaults.workers).max(1),
            fetchers: lazy.fetchers.unwrap_or(defaults.fetchers).max(1),
            readahead: lazy.readahead.map_or(defaults.readahead, |r| r.as_u64()),
            whole_blob_deadline: lazy
                .whole_blob_timeout
                .map_or(defaults.whole_blob_deadline, |s| {
                    Duration::from_secs(s.max(1))
                }),
            shared_cache: config.shared_cache_dir.clone(),
            ..defaults
        }
    }
}

impl Default for LazyOptions {
    fn default() -> Self {
        let read_deadline = Duration::from_secs(30);
        LazyOptions {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            fetchers: 4,
            readahead: 8 << 20,
            max_request: 16 << 20,
            write_queue: 8 << 20,
            read_deadline,
            whole_blob_deadline: Duration::from_secs(600),
            wait_deadline: read_deadline * 2 + Duration::from_secs(5),
            shared_cache: None,
        }
    }
}

/// Where one layer's content lives.
pub enum LayerContent {
    /// The verified uncompressed tar is in the store: content space = tar
    /// offsets; `diff_id` is its sha256.
    Unpacked { tar: Blob, diff_id: Digest },
    /// Fetched on demand.
    Chunked(Arc<LazyBlob>),
}

/// The whole-layer check of a layer read through a lazyimg index, run by the
/// background fetch ([`ContentReader::fill`]) before it fills the layer: it
/// downloads the layer whole, verified against its digest, and compares the
/// index with the one its bytes give. `Ok(None)`: the index describes the
/// layer; `Ok(Some(reason))`: it does not (or the bytes missed a digest), and
/// the layer is marked bad; `Err`: the check could not run (network, disk).
pub type WholeLayerCheck = Box<dyn Fn() -> Result<Option<String>> + Send + Sync>;

/// Every layer of a mounted image, as the tree's content locations address them.
pub struct ImageContent {
    layers: Vec<LayerContent>,
    /// Per layer: its whole-layer check, if it has one.
    checks: Vec<Option<WholeLayerCheck>>,
    /// Per layer: why it failed its whole-layer check; every read of it fails from then on.
    bad: Vec<std::sync::OnceLock<String>>,
    /// Present when any layer is chunked.
    fetcher: Option<Arc<ChunkFetcher>>,
    /// Bytes of the same file fetched ahead of a sequential reader.
    readahead: u64,
    /// Where the last read of each file ended, to tell sequential readers.
    read_ends: std::sync::Mutex<std::collections::HashMap<ContentLocation, u64>>,
    stats: Arc<Stats>,
}

impl ImageContent {
    /// `fetcher` must be given when any layer is [`LayerContent::Chunked`]; it
    /// should count into the same `stats`.
    pub fn new(
        layers: Vec<LayerContent>,
        fetcher: Option<Arc<ChunkFetcher>>,
        readahead: u64,
        stats: Arc<Stats>,
    ) -> Self {
        ImageContent {
            checks: layers.iter().map(|_| None).collect(),
            bad: layers.iter().map(|_| Default::default()).collect(),
            layers,
            fetcher,
            readahead,
            read_ends: Default::default(),
            stats,
        }
    }

    /// The same content, layer `layer` checked whole by `check` when the
    /// background fetch gets to it.
    pub fn with_check(mut self, layer: usize, check: WholeLayerCheck) -> Self {
        self.checks[layer] = Some(check);
        self
    }

    /// Runs layer `index`'s whole-layer check, if any; `false` when it failed
    /// (the layer is then bad: logged with the reason, counted in the stats).
    fn check_whole(&self, index: usize, blob: &LazyBlob) -> Result<bool> {
        let Some(check) = &self.checks[index] else {
            return Ok(true);
        };
        let Some(reason) = check()? else {
            tracing::info!("layer {}: whole-layer check passed", blob.digest);
            return Ok(true);
        };
        tracing::error!(
            "layer {} failed its whole-layer check: {reason}; every read of it fails with EIO from now on",
            blob.digest
        );
        if self.bad[index].set(reason).is_ok() {
            self.stats.bad_layer();
        }
        Ok(false)
    }

    /// The chunks of `blob` holding content `range`, as an index range.
    fn chunk_range(blob: &LazyBlob, range: &Range<u64>) -> Range<usize> {
        let chunks = &blob.chunks;
        let first = chunks.partition_point(|c| c.content_offset + c.content_size <= range.start);
        let last = chunks.partition_point(|c| c.content_offset < range.end);
        first..last
    }

    /// Reads `range` of a chunked layer; with `ready_only`, answers only from
    /// chunks at hand (`Ok(None)` otherwise, and nothing is remembered).
    fn read_chunked(
        &self,
        blob: &Arc<LazyBlob>,
        location: &ContentLocation,
        range: Range<u64>,
        ready_only: bool,
    ) -> Result<Option<Bytes>> {
        let fetcher = self
            .fetcher
            .as_ref()
            .expect("chunked layers come with a fetcher");
        let chunks = &blob.chunks;
        let Range {
            start: first,
            end: last,
        } = Self::chunk_range(blob, &range);
        let ready = if ready_only {
            match fetcher.ready(blob, first..last) {
                Some(pieces) => Some(pieces),
                None => return Ok(None),
            }
        } else {
            None
        };
        // A small file comes whole with its first read. A file read from its
        // start or where the last read ended gets its next window with this
        // read (when none of it is on its way yet) and the one after that in
        // the background, so a sequential reader stays a request ahead. Random
        // reads of big files fetch only what they touch.
        let file_end = location.offset + location.size;
        let window_end = |from: u64| {
            let end = from.saturating_add(self.readahead).min(file_end);
            chunks.partition_point(|c| c.content_offset < end).max(last)
        };
        let sequential = self.follows_last_read(location, &range);
        let ahead = if location.size <= self.readahead {
            window_end(location.offset)
        } else if sequential {
            window_end(range.end)
        } else {
            last
        };
        let pieces = match ready {
            Some(pieces) => {
                fetcher.read_ahead(blob, last..ahead);
                pieces
            }
            None => {
                let with_this_read = if fetcher.is_idle(blob, last..ahead) {
                    ahead
                } else {
                    last
                };
                fetcher.chunks(blob, first..last, with_this_read)?
            }
        };
        if sequential {
            fetcher.read_ahead(blob, ahead..window_end(range.end + self.readahead));
        }
        let mut out = BytesMut::new();
        let mut at = range.start;
        for (chunk, piece) in chunks[first..last].iter().zip(&pieces) {
            if chunk.content_offset > at {
                break;
            }
            let from = (at - chunk.content_offset) as usize;
            let to = ((range.end - chunk.content_offset) as usize).min(piece.len());
            if pieces.len() == 1 {
                return self.covered(piece.slice(from..to), range, blob).map(Some);
            }
            out.extend_from_slice(&piece[from..to]);
            at = chunk.content_offset + to as u64;
        }
        self.covered(out.freeze(), range, blob).map(Some)
    }

    /// The file bytes `offset..offset + len` of `location` as a content-space
    /// range of its layer, clamped to the file.
    fn content_range(location: &ContentLocation, offset: u64, len: usize) -> Range<u64> {
        let start = location.offset + offset.min(location.size);
        let end = start + (len as u64).min(location.size - offset.min(location.size));
        start..end
    }

    fn read_layer(
        &self,
        location: &ContentLocation,
        offset: u64,
        len: usize,
        ready_only: bool,
    ) -> Result<Option<Bytes>> {
        if let Some(map) = &location.sparse {
            return self.read_sparse(location, map, offset, len, ready_only);
        }
        let range = Self::content_range(location, offset, len);
        let bytes = match &self.layers[location.layer as usize] {
            LayerContent::Unpacked { tar, .. } => {
                tar.slice(range.start as usize..range.end as usize)
            }
            LayerContent::Chunked(blob)
                if let Some(reason) = self.bad[location.layer as usize].get() =>
            {
                return Err(Arc::new(ReadError::BadLayer {
                    layer: blob.digest,
                    reason: reason.clone(),
                })
                .into());
            }
            LayerContent::Chunked(blob) if range.start < range.end => {
                match self.read_chunked(blob, location, range, ready_only)? {
                    Some(bytes) => bytes,
                    None => return Ok(None),
                }
            }
            LayerContent::Chunked(_) => Bytes::new(),
        };
        self.stats.served(bytes.len() as u64);
        Ok(Some(bytes))
    }

    /// Reads a sparse file: its data pieces from the packed run like any
    /// file's bytes (so readahead follows the packed data), its holes as
    /// zeros that are never fetched, nor waited for.
    fn read_sparse(
        &self,
        location: &ContentLocation,
        map: &SparseMap,
        offset: u64,
        len: usize,
        ready_only: bool,
    ) -> Result<Option<Bytes>> {
        let packed = location.packed();
        let mut out = BytesMut::new();
        let mut holes = 0;
        for piece in map.pieces(offset, len as u64) {
            match piece {
                Piece::Hole { len } => {
                    out.resize(out.len() + len as usize, 0);
                    holes += len;
                }
                Piece::Data { packed: at, len } => {
                    match self.read_layer(&packed, at, len as usize, ready_only)? {
                        Some(bytes) => out.extend_from_slice(&bytes),
                        None => return Ok(None),
                    }
                }
            }
        }
        self.stats.served(holes);
        Ok(Some(out.freeze()))
    }

    /// Whether a read at `range` of the file at `location` continues the
    /// previous one (or starts the file), remembering where it ends.
    fn follows_last_read(&self, location: &ContentLocation, range: &std::ops::Range<u64>) -> bool {
        let mut ends = self.read_ends.lock().unwrap_or_else(|p| p.into_inner());
        let end = ends.entry(location.clone()).or_insert(location.offset);
        // The kernel sends a sequential reader's requests a few at a time and
        // not always in order: near enough counts.
        let sequential = range.start.abs_diff(*end) <= SEQUENTIAL_SLACK;
        *end = (*end).max(range.end);
        sequential
    }

    /// The identity of content `range` of `blob`: the chunks holding it, if
    /// they hold all of it without gaps.
    fn chunks_identity(blob: &LazyBlob, range: &Range<u64>) -> Option<ContentIdentity> {
        let chunks = &blob.chunks[Self::chunk_range(blob, range)];
        let first = chunks.first()?;
        let contiguous = chunks
            .windows(2)
            .all(|w| w[0].content_offset + w[0].content_size == w[1].content_offset);
        let last = chunks.last()?;
        let covered = first.content_offset <= range.start
            && last.content_offset + last.content_size >= range.end;
        (contiguous && covered).then(|| ContentIdentity::Chunks {
            skip: range.start - first.content_offset,
            size: range.end - range.start,
            chunks: chunks.iter().map(|c| (c.digest, c.content_size)).collect(),
        })
    }

    /// Checks the chunks covered the whole range: a gap means a broken map.
    fn covered(&self, bytes: Bytes, range: Range<u64>, blob: &LazyBlob) -> Result<Bytes> {
        if bytes.len() as u64 != range.end - range.start {
            return Err(Arc::new(ReadError::MapGap {
                layer: blob.digest,
                range,
            })
            .into());
        }
        Ok(bytes)
    }
}

impl ContentReader for ImageContent {
    fn read(&self, location: &ContentLocation, offset: u64, len: usize) -> Result<Bytes> {
        Ok(self
            .read_layer(location, offset, len, false)?
            .expect("a read that may fetch always answers"))
    }

    fn read_ready(
        &self,
        location: &ContentLocation,
        offset: u64,
        len: usize,
    ) -> Option<Result<Bytes>> {
        self.read_layer(location, offset, len, true).transpose()
    }

    fn identity(&self, location: &ContentLocation) -> Option<ContentIdentity> {
        // The identities name runs of content-space bytes; a sparse file is
        // not one, so it is compared by reading.
        if location.sparse.is_some() {
            return None;
        }
        let range = location.offset..location.offset + location.size;
        match &self.layers[location.layer as usize] {
            LayerContent::Unpacked { diff_id, .. } => Some(ContentIdentity::Tar {
                diff_id: *diff_id,
                offset: location.offset,
                size: location.size,
            }),
            LayerContent::Chunked(blob) => Self::chunks_identity(blob, &range),
        }
    }

    fn prefetch(&self, locations: &[ContentLocation]) -> Result<()> {
        let Some(fetcher) = &self.fetcher else {
            return Ok(());
        };
        let wanted: Vec<(Arc<LazyBlob>, Range<usize>)> = (locations.iter())
            .filter_map(|location| {
                // The stored bytes are what there is to fetch: a sparse
                // file's holes are never fetched.
                let location = location.packed();
                let index = location.layer as usize;
                let LayerContent::Chunked(blob) = self.layers.get(index)? else {
                    return None;
                };
                let range = location.offset..location.offset + location.size;
                (self.bad[index].get().is_none() && !range.is_empty())
                    .then(|| (Arc::clone(blob), Self::chunk_range(blob, &range)))
            })
            .collect();
        fetcher.prefetch(&wanted)
    }

    fn fill(&self, max_rate: Option<u64>) -> Result<u64> {
        let Some(fetcher) = &self.fetcher else {
            return Ok(0);
        };
        let mut pacer = prefetch::Pacer::new(max_rate);
        let mut fetched = 0;
        for (index, layer) in self.layers.iter().enumerate() {
            let LayerContent::Chunked(blob) = layer else {
                continue;
            };
            if !self.check_whole(index, blob)? {
                continue;
            }
            let mut start = 0;
            while start < blob.chunks.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < blob.chunks.len() && bytes < FILL_BATCH {
                    bytes += blob.chunks[end].blob_size;
                    end += 1;
                }
                let missing = blob.chunks[start..end]
                    .iter()
                    .any(|c| !fetcher.is_stored(&c.digest));
                if missing {
                    fetcher.chunks(blob, start..end, end)?;
                    pacer.sent(bytes);
                    fetched += bytes;
                }
                start = end;
            }
        }
        Ok(fetched)
    }
}
