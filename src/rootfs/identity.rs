//! Telling two files' bytes apart with as little reading as possible: by
//! what names them ([`ContentIdentity`]), else by reading both.

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
}

/// Whether the file at `a` of `a_content` and the file at `b` of `b_content`,
/// of equal size, hold the same bytes. Decided by their identities where
/// those tell; else by reading both through the content readers (verified,
/// as `cat` reads), a piece of each at a time, stopping at the first piece
/// that differs. Without `fetch`, only files of cached tars are read and the
/// answer is otherwise [`SameContent::Unknown`].
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
    let local =
        |identity: &Option<ContentIdentity>| matches!(identity, Some(ContentIdentity::Tar { .. }));
    let at_hand = local(&a_identity) && local(&b_identity);
    if !(fetch || at_hand) {
        return Ok(SameContent::Unknown);
    }
    let mut offset = 0;
    while offset < a.size {
        let len = PIECE.min((a.size - offset) as usize);
        let piece = a_content.read(a, offset, len)?;
        if piece != b_content.read(b, offset, len)? {
            return Ok(SameContent::No);
        }
        if piece.is_empty() {
            break;
        }
        offset += piece.len() as u64;
    }
    Ok(SameContent::Yes)
}
