//! Telling two files' bytes apart with as little reading as possible: by
//! what names them ([`ContentIdentity`]), else by reading both.

use std::ops::Range;

use crate::digest::Digest;
use crate::error::Result;
use crate::tree::{ContentLocation, SameContent};

use super::ContentReader;

/// Bytes compared at once when files must be read.
const PIECE: usize = 1 << 20;

/// A name for a file's bytes that can be had without reading them, so that
/// two images' files compare without fetching either (`lazyimg diff`).
///
/// The rule: equal identities mean equal bytes, because each digest is the
/// sha256 of bytes that are verified against it before they are served.
/// Unequal identities mean nothing in general (the same bytes can be cut
/// into chunks differently); [`ContentIdentity::compare`] says when they do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentIdentity {
    /// `size` bytes at `offset` of the uncompressed layer tar whose sha256 is
    /// `diff_id`, held in the cache (so reading it costs no request): equal
    /// for a file of a layer both images share.
    Tar {
        diff_id: Digest,
        offset: u64,
        size: u64,
    },
    /// The file is `size` bytes starting `skip` bytes into the decoded
    /// chunks `chunks` (sha256 and length of each, in order, contiguous):
    /// eStargz and zstd:chunked chunks, lazyimg index spans.
    Chunks {
        skip: u64,
        size: u64,
        chunks: Vec<(Digest, u64)>,
    },
}

impl ContentIdentity {
    /// Whether the files named by `self` and `other` hold the same bytes:
    /// `Some(true)` when the identities are equal; `Some(false)` when both
    /// files are covered exactly by chunks (no other file's bytes in them,
    /// `skip` 0 and lengths summing to `size`) cut at the same places, and a
    /// chunk's digest differs, so some byte of the files differs; `None`
    /// otherwise (the bytes must be read to tell).
    pub fn compare(&self, other: &ContentIdentity) -> Option<bool> {
        if self == other {
            return Some(true);
        }
        match (self, other) {
            (
                ContentIdentity::Chunks {
                    skip: 0,
                    size,
                    chunks,
                },
                ContentIdentity::Chunks {
                    skip: 0,
                    size: other_size,
                    chunks: other_chunks,
                },
            ) if size == other_size
                && chunks.iter().map(|c| c.1).sum::<u64>() == *size
                && chunks
                    .iter()
                    .map(|c| c.1)
                    .eq(other_chunks.iter().map(|c| c.1)) =>
            {
                Some(false)
            }
            _ => None,
        }
    }

    /// Byte ranges of a `size`-byte file, relative to its start, that
    /// `self` and `other` show equal without reading: the whole file when the
    /// identities are equal; else, for two [`ContentIdentity::Chunks`], the
    /// parts covered by a chunk both have at the same place (same start
    /// relative to the file, same length, same digest). In file order, not
    /// overlapping. A rebuild that changes one file of a layer leaves its
    /// neighbours' chunks equal except where they share a chunk with it.
    pub fn equal_ranges(&self, other: &ContentIdentity, size: u64) -> Vec<Range<u64>> {
        if self == other {
            return std::iter::once(0..size).collect();
        }
        let (
            ContentIdentity::Chunks {
                skip,
                chunks,
                size: own_size,
            },
            ContentIdentity::Chunks {
                skip: other_skip,
                chunks: other_chunks,
                size: other_size,
            },
        ) = (self, other)
        else {
            return Vec::new();
        };
        if (own_size, other_size) != (&size, &size) {
            return Vec::new();
        }
        // Each chunk as (start relative to the file, length, digest); the
        // first chunk may start before the file.
        let placed = |skip: u64, chunks: &[(Digest, u64)]| {
            let mut start = -(skip as i128);
            chunks
                .iter()
                .map(|(digest, len)| {
                    let placed = (start, *len, *digest);
                    start += *len as i128;
                    placed
                })
                .collect::<Vec<_>>()
        };
        let theirs: std::collections::HashSet<(i128, u64, Digest)> =
            placed(*other_skip, other_chunks).into_iter().collect();
        placed(*skip, chunks)
            .into_iter()
            .filter(|chunk| theirs.contains(chunk))
            .filter_map(|(start, len, _)| {
                let from = start.max(0) as u64;
                let to = ((start + len as i128).max(0) as u64).min(size);
                (from < to).then_some(from..to)
            })
            .collect()
    }
}

/// The parts of `0..size` that `known` (in order, not overlapping) leaves out.
fn gaps(known: &[Range<u64>], size: u64) -> Vec<Range<u64>> {
    let mut gaps = Vec::new();
    let mut at = 0;
    for range in known {
        if range.start > at {
            gaps.push(at..range.start);
        }
        at = at.max(range.end);
    }
    if at < size {
        gaps.push(at..size);
    }
    gaps
}

/// Whether the file at `a` of `a_content` and the file at `b` of `b_content`,
/// of equal size, hold the same bytes. Decided by their identities where
/// those tell; else by reading both through the content readers (verified,
/// as `cat` reads) where their chunks do not already show them equal
/// ([`ContentIdentity::equal_ranges`]), a piece of each at a time, stopping
/// at the first piece that differs. Without `fetch`, only files of cached
/// tars are read and the answer is otherwise [`SameContent::Unknown`].
pub fn same_content(
    a_content: &dyn ContentReader,
    a: &ContentLocation,
    b_content: &dyn ContentReader,
    b: &ContentLocation,
    fetch: bool,
) -> Result<SameContent> {
    let (a_identity, b_identity) = (a_content.identity(a), b_content.identity(b));
    if let (Some(x), Some(y)) = (&a_identity, &b_identity)
        && let Some(same) = x.compare(y)
    {
        return Ok(if same {
            SameContent::Yes
        } else {
            SameContent::No
        });
    }
    let known = match (&a_identity, &b_identity) {
        (Some(x), Some(y)) => x.equal_ranges(y, a.size),
        _ => Vec::new(),
    };
    let unknown = gaps(&known, a.size);
    if unknown.is_empty() {
        return Ok(SameContent::Yes);
    }
    let local =
        |identity: &Option<ContentIdentity>| matches!(identity, Some(ContentIdentity::Tar { .. }));
    let at_hand = local(&a_identity) && local(&b_identity);
    if !(fetch || at_hand) {
        return Ok(SameContent::Unknown);
    }
    for range in unknown {
        let mut offset = range.start;
        while offset < range.end {
            let len = PIECE.min((range.end - offset) as usize);
            let piece = a_content.read(a, offset, len)?;
            if piece != b_content.read(b, offset, len)? {
                return Ok(SameContent::No);
            }
            if piece.is_empty() {
                break;
            }
            offset += piece.len() as u64;
        }
    }
    Ok(SameContent::Yes)
}
