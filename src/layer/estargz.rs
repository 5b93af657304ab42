//! eStargz layers (stargz-snapshotter `docs/estargz.md`): a gzip tar in which
//! every regular file's payload, and each chunk of a large one, starts a new
//! gzip member. The last tar entry, `stargz.index.json`, in a member of its
//! own, is the table of contents; a 51-byte footer, an empty gzip member,
//! says where that member starts. The layer descriptor's
//! `containerd.io/snapshot/stargz/toc.digest` annotation is the sha256 of the
//! TOC JSON, which makes the TOC, and through its chunk digests every chunk,
//! verifiable.
//!
//! A member holding a payload's last chunk goes on with the tar padding and
//! the headers of the entries after it, so a chunk is the first
//! `content_size` bytes its members decompress to.
//!
//! Reading a layer: fetch the footer (the blob's last [`FOOTER_SIZE`] bytes),
//! then the TOC at [`toc_range`], then [`parse_toc`].

use std::io::Read;
use std::ops::Range;

use flate2::read::GzDecoder;

use super::toc::{Format, MAX_TOC_SIZE, chunked_layer};
use super::{ChunkCodec, ChunkedLayer, LayerError};
use crate::digest::Digest;

/// Size of the footer at the end of every eStargz blob.
pub const FOOTER_SIZE: u64 = 51;

const TOC_NAME: &str = "stargz.index.json";

const FORMAT: Format = Format {
    name: "eStargz",
    codec: ChunkCodec::Gzip,
    // Landmarks mark where prefetching ends; they are in the tar, but
    // stargz-snapshotter hides them from the mounted tree, and so do we.
    bookkeeping: &[TOC_NAME, ".prefetch.landmark", ".no.prefetch.landmark"],
};

/// The footer: a gzip header whose Extra field has one `SG` subfield holding
/// `%016xSTARGZ` (the TOC offset), then an empty stored block and the
/// trailer of an empty member. The gzip header's mtime, XFL and OS bytes
/// (4..10) may be anything.
const FOOTER_START: [u8; 4] = [0x1f, 0x8b, 8, 0x04];
const FOOTER_EXTRA_HEADER: [u8; 6] = [26, 0, b'S', b'G', 22, 0];
const FOOTER_MAGIC: &[u8] = b"STARGZ";
const FOOTER_END: [u8; 13] = [1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];

/// The bytes of the blob holding the TOC, as the footer (the last
/// [`FOOTER_SIZE`] bytes of a `blob_size`-byte blob) announces them.
pub fn toc_range(footer: &[u8], blob_size: u64) -> Result<Range<u64>, LayerError> {
    if footer.len() as u64 != FOOTER_SIZE {
        return Err(FORMAT.error(format!(
            "footer is {} bytes, expected {FOOTER_SIZE}",
            footer.len()
        )));
    }
    let (start, rest) = footer.split_at(4);
    let (extra_header, rest) = rest[6..].split_at(6);
    let (hex_offset, rest) = rest.split_at(16);
    let (magic, end) = rest.split_at(FOOTER_MAGIC.len());
    if start != FOOTER_START
        || extra_header != FOOTER_EXTRA_HEADER
        || magic != FOOTER_MAGIC
        || end != FOOTER_END
    {
        return Err(FORMAT.error("no eStargz footer at the end of the blob"));
    }
    let offset = std::str::from_utf8(hex_offset)
        .ok()
        .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| FORMAT.error(format!("footer TOC offset {hex_offset:?} is not hex")))?;
    let toc_end = blob_size.saturating_sub(FOOTER_SIZE);
    if offset >= toc_end {
        return Err(FORMAT.error(format!(
            "TOC offset {offset} is past the TOC's end at {toc_end}"
        )));
    }
    FORMAT.check_size("the compressed TOC", toc_end - offset)?;
    Ok(offset..toc_end)
}

/// Parses the TOC from `toc_bytes`, the blob's bytes at [`toc_range`]
/// (starting at `toc_offset`), once its JSON's sha256 matches
/// `expected_toc_digest`, the layer's TOC digest annotation.
pub fn parse_toc(
    toc_bytes: &[u8],
    toc_offset: u64,
    expected_toc_digest: &Digest,
) -> Result<ChunkedLayer, LayerError> {
    let json = toc_json(toc_bytes)?;
    let digest = Digest::of(&json);
    if digest != *expected_toc_digest {
        return Err(FORMAT.error(format!(
            "TOC digest is {digest}, the layer annotation says {expected_toc_digest}"
        )));
    }
    chunked_layer(&json, &FORMAT, toc_offset)
}

/// Room for the tar headers before the TOC JSON in its member.
const TOC_HEADERS_ROOM: u64 = 1 << 20;

/// The content of the TOC member's one tar entry, which must be the TOC.
fn toc_json(toc_bytes: &[u8]) -> Result<Vec<u8>, LayerError> {
    let gunzip_error = |e: std::io::Error| FORMAT.error(format!("TOC member: {e}"));
    // The digest is checked only after decompressing: bound what a hostile
    // member can inflate to, whatever its headers claim.
    let decompressed = GzDecoder::new(toc_bytes).take(MAX_TOC_SIZE + TOC_HEADERS_ROOM);
    let mut archive = tar::Archive::new(decompressed);
    let mut entry = archive
        .entries()
        .map_err(gunzip_error)?
        .next()
        .ok_or_else(|| FORMAT.error("TOC member holds no tar entry"))?
        .map_err(gunzip_error)?;
    let name = entry.path_bytes();
    if *name != *TOC_NAME.as_bytes() || !entry.header().entry_type().is_file() {
        return Err(FORMAT.error(format!(
            "TOC member holds {:?}, expected the file {TOC_NAME}",
            String::from_utf8_lossy(&name)
        )));
    }
    FORMAT.check_size("the TOC JSON", entry.size())?;
    let mut json = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut json).map_err(gunzip_error)?;
    Ok(json)
}

#[cfg(test)]
mod tests;
