//! Per-layer entry table: one streaming pass over a layer's uncompressed tar
//! stream records every entry's metadata and where regular-file bytes sit in
//! that stream, so the mount can serve reads without unpacking anything.
//!
//! Paths and link targets are kept as raw bytes (`OsString`): Linux file
//! names need not be UTF-8 and an image with one odd name must still mount.

pub mod budget;
mod compression;
pub mod estargz;
pub mod gzip_checkpoints;
mod member;
pub(crate) mod path;
mod sparse;
mod tar_entries;
mod tar_number;
mod tar_sparse;
#[cfg(test)]
pub(crate) mod test_tar;
#[cfg(test)]
mod test_toc;
mod toc;
pub mod zstd_chunked;

use std::ffi::OsString;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub use compression::{Compression, decompress};
pub use member::{MemberKind, MemberMeta};
pub use sparse::{Piece, SparseMap};
pub use tar_entries::read_entries;

/// The layer annotation naming an eStargz layer's TOC digest.
pub const ESTARGZ_TOC_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The layer annotation naming a zstd:chunked layer's TOC digest.
pub const ZSTD_CHUNKED_TOC_ANNOTATION: &str = "io.github.containers.zstd-chunked.manifest-checksum";
/// The key older containers/storage used, and skopeo 1.9 still writes.
pub const ZSTD_CHUNKED_LEGACY_TOC_ANNOTATION: &str = "io.containers.zstd-chunked.manifest-checksum";

/// Everything the tree needs from one layer, in tar order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryTable {
    /// Non-whiteout entries in the order they appear in the tar.
    #[serde(deserialize_with = "budget::vec")]
    pub entries: Vec<TarEntry>,
    /// Whiteouts of this layer. They only affect lower layers, so their
    /// position relative to `entries` is irrelevant and not recorded.
    #[serde(deserialize_with = "budget::vec")]
    pub whiteouts: Vec<Whiteout>,
}

/// A layer that can be read piece by piece, without the rest of its blob.
///
/// Its *content space* is a byte space its chunks tile: for a gzip layer read
/// through checkpoints, the uncompressed tar stream; for eStargz and
/// zstd:chunked, the file payloads one after another in table-of-contents
/// order. Regular entries of `index` point into that space.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkedLayer {
    pub table: EntryTable,
    /// Sorted by `content_offset`, not overlapping. Bytes of the space no
    /// chunk covers belong to no file.
    #[serde(deserialize_with = "budget::vec")]
    pub chunks: Vec<Chunk>,
}

/// Most content one chunk may declare, in bytes (64 MiB). Decoding a chunk
/// allocates its content size, so a table of contents or index with a bigger
/// chunk is refused when prepared (its layer is then read whole, verified by
/// the layer digest) and the decoder refuses one again. lazyimg's own gzip
/// spans stay under 8 MiB of output plus one deflate block; eStargz writers
/// chunk files at 4 MiB by default.
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;

/// One independently fetchable, independently verifiable piece of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Where the decoded bytes sit in the layer's content space.
    pub content_offset: u64,
    pub content_size: u64,
    /// The bytes of the layer blob to fetch, `blob_offset..blob_offset + blob_size`.
    pub blob_offset: u64,
    pub blob_size: u64,
    pub codec: ChunkCodec,
    /// sha256 of the decoded `content_size` bytes: checked before anything is
    /// served, and the chunk's name in the content store.
    pub digest: Digest,
}

/// How a chunk's fetched bytes turn into content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkCodec {
    /// The bytes are the content.
    Stored,
    /// One or more gzip members; the content is the first `content_size`
    /// bytes they decompress to (eStargz).
    Gzip,
    /// One or more zstd frames, decompressed likewise (zstd:chunked).
    Zstd,
    /// Raw deflate resuming at gzip checkpoint `checkpoint` of the layer's
    /// lazyimg index, which also supplies the 32 KiB window.
    Deflate { checkpoint: u32 },
    /// Nothing to fetch (`blob_size` is 0): the content is `content_size`
    /// zero bytes. zstd:chunked marks runs of zeros in files this way; the
    /// blob holds them too, but fetching them would only cost a round trip.
    Zeros,
}

/// One tar entry. `path` is relative, `/`-separated, without `.` or empty
/// components; the root directory is the empty path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TarEntry {
    pub path: OsString,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (`0o7777` mask).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    /// From PAX `SCHILY.xattr.NAME` records; values are raw bytes.
    #[serde(deserialize_with = "budget::vec")]
    pub xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// `offset` is where the content starts in the layer's content space: the
    /// uncompressed tar stream for tar, gzip and zstd layers, or the space a
    /// [`ChunkedLayer`] defines.
    Regular {
        offset: u64,
        size: u64,
    },
    Directory,
    /// Stored verbatim: resolved inside the container, never by us.
    Symlink {
        target: OsString,
    },
    /// Normalized like `path`; names an entry of this layer or a lower one.
    Hardlink {
        target: OsString,
    },
    CharDevice(Device),
    BlockDevice(Device),
    Fifo,
    /// A regular file with holes (GNU sparse; see [`SparseMap`]): its data
    /// segments are stored one after another, `map.packed_size()` bytes at
    /// `offset` of the content space; its other bytes, up to `map.size()`,
    /// are zeros. Last of the variants, so entry tables encoded before it
    /// existed still decode.
    Sparse {
        offset: u64,
        map: SparseMap,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub major: u32,
    pub minor: u32,
}

/// Seconds since the epoch plus nanoseconds (non-zero only when a PAX
/// `mtime` record carried a fraction). `nanos` is always `< 1e9`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// OCI whiteouts; paths are normalized like `TarEntry::path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Whiteout {
    /// `DIR/.wh.NAME`: remove `DIR/NAME` and its subtree from lower layers.
    Remove(OsString),
    /// `DIR/.wh..wh..opq`: hide every lower-layer child of `DIR`.
    Opaque(OsString),
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The tar stream itself is broken (bad checksum, truncated, bad field).
    /// `entry` names the offending entry, or the last good one for stream
    /// level damage.
    #[error("malformed tar at byte {offset} ({entry}): {reason}")]
    MalformedTar {
        offset: u64,
        entry: String,
        reason: String,
    },
    /// The underlying reader (network, decompressor) failed.
    #[error("reading layer stream at byte {offset}: {source}")]
    Read {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("tar entry {path:?} escapes the image root")]
    PathEscapes { path: String },
    #[error("tar entry {path:?}: hardlink target {target:?} escapes the image root")]
    HardlinkEscapes { path: String, target: String },
    #[error("tar entry {path:?} contains a NUL byte in its {what}")]
    NulByte { path: String, what: &'static str },
    #[error("tar entry {path:?}: invalid whiteout name")]
    InvalidWhiteout { path: String },
    /// A GNU sparse file whose map Go's archive/tar refuses too (see
    /// [`SparseMap::new`]), or whose stored data does not match its map.
    #[error("tar entry {path:?}: bad sparse file: {reason}")]
    BadSparse { path: String, reason: String },
    #[error("tar entry {path:?}: unsupported entry type {type_byte:#04x}")]
    UnsupportedEntryType { path: String, type_byte: u8 },
    /// An eStargz or zstd:chunked table of contents is unusable: footer,
    /// digest, JSON or an entry's fields. `format` names the layer format.
    #[error("{format} table of contents: {reason}")]
    Toc {
        format: &'static str,
        reason: String,
    },
}

#[cfg(test)]
mod sparse_tests;
#[cfg(test)]
mod tests;
