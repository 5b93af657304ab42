//! zstd:chunked layers (containers/storage `pkg/chunked`): a zstd tar in
//! which every regular file's payload, and each chunk of it, is a run of
//! zstd frames of its own. The table of contents is zstd-compressed JSON in a
//! skippable frame after the tar; layer annotations say where it is
//! (`manifest-position`) and give the sha256 of its compressed bytes
//! (`manifest-checksum`), which makes the TOC, and through its chunk digests
//! every chunk, verifiable.
//!
//! Entries record where each file's frames end (`endOffset`), and chunks of
//! zeros (`chunkType: zeros`) that need no fetching.
//!
//! Reading a layer: [`toc_position`] from the layer descriptor's
//! annotations, fetch `offset..offset + length`, then [`parse_toc`].

use std::collections::BTreeMap;

use super::toc::{Format, chunked_layer};
use super::{
    ChunkCodec, ChunkedLayer, LayerError, ZSTD_CHUNKED_LEGACY_TOC_ANNOTATION,
    ZSTD_CHUNKED_TOC_ANNOTATION,
};
use crate::digest::Digest;

const FORMAT: Format = Format {
    name: "zstd:chunked",
    codec: ChunkCodec::Zstd,
    bookkeeping: &[],
};

/// (checksum, position) annotation keys: the current ones first, then the
/// ones older containers/storage wrote, as skopeo 1.9 still does.
const ANNOTATIONS: [(&str, &str); 2] = [
    (
        ZSTD_CHUNKED_TOC_ANNOTATION,
        "io.github.containers.zstd-chunked.manifest-position",
    ),
    (
        ZSTD_CHUNKED_LEGACY_TOC_ANNOTATION,
        "io.containers.zstd-chunked.manifest-position",
    ),
];

/// The only TOC type: the CRFS-style JSON table of contents.
const MANIFEST_TYPE_CRFS: u64 = 1;

/// A zstd skippable frame's header (magic and length) before the TOC bytes.
const SKIPPABLE_HEADER_SIZE: u64 = 8;

/// Where a layer's TOC is and what its compressed bytes hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocPosition {
    /// The compressed TOC is the blob's bytes `offset..offset + length`.
    pub offset: u64,
    pub length: u64,
    pub uncompressed_length: u64,
    /// sha256 of the `length` compressed bytes.
    pub checksum: Digest,
}

/// The TOC position a layer descriptor's annotations announce; `None` when
/// they do not mark a zstd:chunked layer.
pub fn toc_position(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<TocPosition>, LayerError> {
    let Some((checksum, position_key)) = ANNOTATIONS
        .iter()
        .find_map(|&(checksum, position)| Some((annotations.get(checksum)?, position)))
    else {
        return Ok(None);
    };
    let checksum: Digest = checksum
        .parse()
        .map_err(|e| FORMAT.error(format!("TOC checksum annotation: {e}")))?;
    let position = annotations
        .get(position_key)
        .ok_or_else(|| FORMAT.error(format!("annotation {position_key} is missing")))?;
    let bad_position = || {
        FORMAT.error(format!(
            "annotation {position_key} is {position:?}, expected OFFSET:LENGTH:UNCOMPRESSED_LENGTH:1"
        ))
    };
    let fields = (position.split(':'))
        .map(|field| match field.bytes().all(|b| b.is_ascii_digit()) {
            true => field.parse::<u64>().ok(),
            false => None,
        })
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(bad_position)?;
    let [offset, length, uncompressed_length, MANIFEST_TYPE_CRFS] = fields[..] else {
        return Err(bad_position());
    };
    let position = TocPosition {
        offset,
        length,
        uncompressed_length,
        checksum,
    };
    validate(&position)?;
    Ok(Some(position))
}

/// Parses the TOC from `toc_bytes`, the blob's bytes at `position`, once
/// they hash to its checksum.
pub fn parse_toc(toc_bytes: &[u8], position: &TocPosition) -> Result<ChunkedLayer, LayerError> {
    validate(position)?;
    if toc_bytes.len() as u64 != position.length {
        return Err(FORMAT.error(format!(
            "TOC is {} bytes, the position annotation says {}",
            toc_bytes.len(),
            position.length
        )));
    }
    let checksum = Digest::of(toc_bytes);
    if checksum != position.checksum {
        return Err(FORMAT.error(format!(
            "TOC checksum is {checksum}, the layer annotation says {}",
            position.checksum
        )));
    }
    // Decompressing more than announced fails rather than allocating more.
    let json = zstd::bulk::decompress(toc_bytes, position.uncompressed_length as usize)
        .map_err(|e| FORMAT.error(format!("decompressing the TOC: {e}")))?;
    if json.len() as u64 != position.uncompressed_length {
        return Err(FORMAT.error(format!(
            "TOC decompresses to {} bytes, the position annotation says {}",
            json.len(),
            position.uncompressed_length
        )));
    }
    chunked_layer(&json, &FORMAT, position.offset - SKIPPABLE_HEADER_SIZE)
}

/// A position that can hold a TOC lazyimg is willing to load.
fn validate(position: &TocPosition) -> Result<(), LayerError> {
    if position.offset < SKIPPABLE_HEADER_SIZE || position.length == 0 {
        return Err(FORMAT.error(format!(
            "no TOC can be at {}..{}",
            position.offset,
            position.offset.saturating_add(position.length)
        )));
    }
    FORMAT.check_size("the compressed TOC", position.length)?;
    FORMAT.check_size("the TOC JSON", position.uncompressed_length)
}

#[cfg(test)]
mod tests;
