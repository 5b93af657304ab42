//! The chunk-map model: how one layer is read lazily, chunk by chunk, whatever
//! told us its layout (a table of contents the layer carries, or a lazyimg
//! index artifact pushed beside the image). Kept in the store as derived data
//! under the layer's digest, so every image holding the layer shares it.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::Result;
use crate::layer::gzip_checkpoints::Checkpoint;
use crate::layer::{Chunk, ChunkedLayer, budget};
use crate::reference::ImageRef;
use crate::store::{Derived, Store};

/// Bumped whenever [`ChunkMap`]'s encoding changes; older maps are rebuilt.
/// 2: maps carry the repository holding their auxiliary blobs ([`BlobHome`]).
const CHUNK_MAP_VERSION: u32 = 2;
/// Where a layer's chunk map came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapSource {
    Estargz,
    ZstdChunked,
    /// A lazyimg index artifact pushed beside the image.
    LazyimgIndex,
}

/// A repository of a registry: where blobs that are not the layer itself can
/// be fetched from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobHome {
    /// The host (and port) blobs are fetched from, after registry mapping.
    pub registry: String,
    pub repository: String,
}

impl BlobHome {
    /// The repository `image` is fetched from.
    pub fn of(image: &ImageRef) -> BlobHome {
        BlobHome {
            registry: image.source.registry().to_string(),
            repository: image.source.repository().to_string(),
        }
    }
}

/// Everything needed to read one layer lazily; kept as derived data under the
/// layer's digest, so it is shared by every image holding the layer, whatever
/// its repository: it must say itself where its other blobs are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkMap {
    pub version: u32,
    pub source: MapSource,
    pub layer: ChunkedLayer,
    /// For gzip layers read through a lazyimg index.
    pub gzip: Option<GzipResume>,
    /// Where the map's auxiliary blobs (the gzip windows of a lazyimg index)
    /// are: the repository whose index it came from. Other images sharing the
    /// layer need not hold them. `None` for maps with no auxiliary blobs.
    pub home: Option<BlobHome>,
}

impl ChunkMap {
    pub fn new(source: MapSource, layer: ChunkedLayer, gzip: Option<GzipResume>) -> ChunkMap {
        ChunkMap {
            version: CHUNK_MAP_VERSION,
            source,
            layer,
            gzip,
            home: None,
        }
    }

    /// The same map, its auxiliary blobs held by `home`.
    pub fn kept_in(self, home: BlobHome) -> ChunkMap {
        ChunkMap {
            home: Some(home),
            ..self
        }
    }

    /// Identifies the content space the map lays out: the sha256 of its layer
    /// index (entries and their content offsets) as postcard encodes it. A tree
    /// is built from entry tables alone, so it fits any map of equal identity,
    /// and only those: an eStargz TOC map and a lazyimg-index map of one blob
    /// place the same file at different offsets.
    pub fn content_identity(&self) -> Digest {
        let bytes =
            postcard::to_stdvec(&self.layer.table).expect("an entry table always serialises");
        Digest::of(&bytes)
    }

    /// The map saved for `layer`, if there is a usable one.
    pub fn load(store: &Store, layer: &Digest) -> Option<ChunkMap> {
        let bytes = store.read_derived(Derived::ChunkMap, layer).ok()??;
        postcard::from_bytes::<ChunkMap>(&bytes)
            .ok()
            .filter(|map| map.version == CHUNK_MAP_VERSION)
    }

    pub fn save(&self, store: &Store, layer: &Digest) -> Result<()> {
        let bytes = postcard::to_stdvec(self).expect("a chunk map always serialises");
        store.write_derived(Derived::ChunkMap, layer, &bytes)
    }
}

/// How to restart inflation at each checkpoint of a gzip layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GzipResume {
    #[serde(deserialize_with = "budget::vec")]
    pub checkpoints: Vec<Checkpoint>,
    /// Per checkpoint, its window's index in `windows`; `None` at member starts.
    #[serde(deserialize_with = "budget::vec")]
    pub window_of: Vec<Option<u32>>,
    /// The windows blob, also an artifact layer, read chunk by chunk like a layer.
    pub windows_blob: Digest,
    pub windows_size: u64,
    #[serde(deserialize_with = "budget::vec")]
    pub windows: Vec<Chunk>,
}
