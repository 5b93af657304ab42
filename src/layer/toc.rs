//! What eStargz and zstd:chunked tables of contents share. Both descend from
//! the CRFS stargz TOC: a JSON list of the layer's tar members in tar order,
//! in which each non-empty regular file points at the compressed frames (gzip
//! members, zstd frames) that hold its payload, split into chunks with their
//! own digests. A `reg` entry describes a file and its first chunk; `chunk`
//! entries right after it describe the rest.

use std::collections::BTreeMap;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;

use base64::Engine as _;
use serde::Deserialize;

use super::member::{MemberKind, MemberMeta};
use super::path::normalize;
use super::{
    Chunk, ChunkCodec, ChunkedLayer, Device, LayerError, MAX_CHUNK_SIZE, Timestamp, budget,
};
use crate::digest::Digest;

/// Largest table of contents, compressed or not, lazyimg accepts: it is held
/// in memory whole. The same limit containers/storage applies.
pub(super) const MAX_TOC_SIZE: u64 = 150 << 20;

/// Memory the TOC's entries may take once decoded ([`budget`]): room for
/// 1.3 million of the smallest (a realistic TOC of [`MAX_TOC_SIZE`] has
/// fewer than a million). With the JSON itself and its strings, each at most
/// [`MAX_TOC_SIZE`], and the layer made from the entries, a TOC never takes
/// more than 1 GiB; a bigger one is refused (and its layer read whole).
const MAX_TOC_MEMORY: u64 = 384 << 20;

/// How one format lays its table of contents over the blob.
pub(super) struct Format {
    pub name: &'static str,
    /// How the frames of each data chunk are compressed.
    pub codec: ChunkCodec,
    /// Entries (by normalized name) that are the format's own bookkeeping,
    /// not files of the image.
    pub bookkeeping: &'static [&'static str],
}

impl Format {
    pub fn error(&self, reason: impl Into<String>) -> LayerError {
        LayerError::Toc {
            format: self.name,
            reason: reason.into(),
        }
    }

    fn entry_error(&self, entry: &TocEntry, reason: String) -> LayerError {
        self.error(format!("entry {:?}: {reason}", entry.name))
    }

    /// Fails unless `size` bytes of TOC (`what`) are within [`MAX_TOC_SIZE`].
    pub fn check_size(&self, what: &str, size: u64) -> Result<(), LayerError> {
        if size > MAX_TOC_SIZE {
            return Err(self.error(format!(
                "{what} is {size} bytes, more than the {MAX_TOC_SIZE} accepted"
            )));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Toc {
    version: u32,
    #[serde(deserialize_with = "budget::vec")]
    entries: Vec<TocEntry>,
}

/// The union of both formats' entry fields; unknown fields are ignored.
/// Absent numbers are 0 and absent strings empty, as Go's `omitempty` leaves
/// them out.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TocEntry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    modtime: Option<String>,
    #[serde(default)]
    link_name: String,
    /// As Go's tar header has it: may carry file-type bits above `0o7777`.
    #[serde(default)]
    mode: u64,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default)]
    dev_major: u32,
    #[serde(default)]
    dev_minor: u32,
    /// Values are base64: Go's JSON for eStargz's `[]byte`, and what
    /// zstd:chunked writes explicitly.
    #[serde(default, deserialize_with = "budget::map")]
    xattrs: BTreeMap<String, String>,
    /// The whole file's digest.
    #[serde(default)]
    digest: String,
    /// Where this chunk's first compressed frame starts in the blob.
    #[serde(default)]
    offset: u64,
    /// zstd:chunked: where the file's last frame ends.
    #[serde(default)]
    end_offset: u64,
    /// eStargz: where the chunk starts inside frames shared with other
    /// payloads (`ctr-remote --estargz-min-chunk-size`).
    #[serde(default)]
    inner_offset: u64,
    #[serde(default)]
    chunk_offset: u64,
    /// 0 on a file's last chunk means "the rest of the file".
    #[serde(default)]
    chunk_size: u64,
    #[serde(default)]
    chunk_digest: String,
    /// zstd:chunked: empty for data, `zeros` for a run of zero bytes.
    #[serde(default)]
    chunk_type: String,
}

/// Turns TOC JSON into a layer. `payload_end` is where the TOC's own frames
/// start: no file data lies beyond it.
pub(super) fn chunked_layer(
    json: &[u8],
    format: &Format,
    payload_end: u64,
) -> Result<ChunkedLayer, LayerError> {
    let toc: Toc =
        budget::within(MAX_TOC_MEMORY, || serde_json::from_slice(json)).map_err(|e| match e {
            budget::Refused::Decode(e) => format.error(format!("bad JSON: {e}")),
            over => format.error(over.to_string()),
        })?;
    if toc.version != 1 {
        return Err(format.error(format!("version {}, expected 1", toc.version)));
    }
    let mut builder = Builder {
        format,
        next_offset: next_offsets(&toc.entries, payload_end),
        entries: &toc.entries,
        payload_end,
        layer: ChunkedLayer::default(),
        content_end: 0,
    };
    let mut start = 0;
    while start < toc.entries.len() {
        let chunks = toc.entries[start + 1..]
            .iter()
            .take_while(|e| e.kind == "chunk")
            .count();
        builder.add(start..start + 1 + chunks)?;
        start += 1 + chunks;
    }
    Ok(builder.layer)
}

/// For each entry, where the next entry with frames of its own starts (or
/// `payload_end`): the end of the entry's frames when the TOC says nothing
/// closer, as stargz readers compute it.
fn next_offsets(entries: &[TocEntry], payload_end: u64) -> Vec<u64> {
    let mut next = vec![payload_end; entries.len()];
    let mut following = payload_end;
    for (slot, entry) in next.iter_mut().zip(entries).rev() {
        *slot = following;
        if entry.offset != 0 {
            following = entry.offset;
        }
    }
    next
}

struct Builder<'t> {
    format: &'t Format,
    entries: &'t [TocEntry],
    next_offset: Vec<u64>,
    payload_end: u64,
    layer: ChunkedLayer,
    /// Bytes of content space handed out so far.
    content_end: u64,
}

impl Builder<'_> {
    /// Adds the member at `group.start` and, for a regular file, the chunks
    /// `group` describes.
    fn add(&mut self, group: Range<usize>) -> Result<(), LayerError> {
        let (format, entry) = (self.format, &self.entries[group.start]);
        let err = |reason: String| format.entry_error(entry, reason);
        if entry.kind == "chunk" {
            return Err(err("chunk entry without a regular file before it".into()));
        }
        if group.len() > 1 && entry.kind != "reg" {
            return Err(err(format!("chunk entries after a {:?} entry", entry.kind)));
        }
        lossless_names(entry).map_err(err)?;
        let bookkeeping = normalize(entry.name.as_bytes()).is_ok_and(|path| {
            (format.bookkeeping.iter()).any(|name| path.as_bytes() == name.as_bytes())
        });
        if bookkeeping {
            return Ok(());
        }
        let kind = member_kind(entry, self.content_end).map_err(err)?;
        let meta = member_meta(entry).map_err(err)?;
        let entries_before = self.layer.table.entries.len();
        self.layer
            .table
            .add_member(entry.name.as_bytes(), kind, meta)?;
        // Whiteouts and reserved names add no entry: any payload of theirs
        // belongs to no file and gets no content space.
        let added = self.layer.table.entries.len() > entries_before;
        if added && entry.kind == "reg" && entry.size > 0 {
            let content_end = (self.content_end.checked_add(entry.size))
                .ok_or_else(|| err("sizes overflow".into()))?;
            self.add_chunks(group)?;
            self.content_end = content_end;
        }
        Ok(())
    }

    /// The file's chunks must tile it in order, each with a digest and
    /// frames inside the payload part of the blob.
    fn add_chunks(&mut self, group: Range<usize>) -> Result<(), LayerError> {
        let (format, entries) = (self.format, self.entries);
        let file = &entries[group.start];
        let err = |reason: String| format.entry_error(file, reason);
        let mut covered = 0u64;
        for i in group.clone() {
            let piece = &entries[i];
            let last = i + 1 == group.end;
            if !piece.name.is_empty() && piece.name != file.name {
                return Err(err(format!("chunk entry names {:?}", piece.name)));
            }
            if piece.chunk_offset != covered {
                return Err(err(format!(
                    "chunk at byte {} of the file, expected {covered}",
                    piece.chunk_offset
                )));
            }
            if piece.inner_offset != 0 {
                return Err(err(
                    "innerOffset (several payloads in one compressed frame) is not supported"
                        .into(),
                ));
            }
            let size = match piece.chunk_size {
                0 if last => file.size - covered,
                0 => return Err(err(format!("chunk at byte {covered} has no chunkSize"))),
                size => size,
            };
            covered = covered.saturating_add(size);
            if size == 0 || covered > file.size || (last && covered != file.size) {
                return Err(err(format!(
                    "chunks cover {covered} bytes of a {}-byte file",
                    file.size
                )));
            }
            // A file in one chunk may carry only the whole file's digest.
            let digest = match (piece.chunk_digest.as_str(), group.len()) {
                ("", 1) => file.digest.as_str(),
                (digest, _) => digest,
            };
            if digest.is_empty() {
                return Err(err(format!(
                    "chunk at byte {} has no digest",
                    piece.chunk_offset
                )));
            }
            let digest: Digest = digest.parse().map_err(|e| err(format!("{e}")))?;
            let (codec, blob_size) = match piece.chunk_type.as_str() {
                "zeros" => (ChunkCodec::Zeros, 0),
                "" => {
                    let end = match file.end_offset {
                        end if last && end != 0 => end,
                        _ => self.next_offset[i],
                    };
                    if piece.offset == 0 || piece.offset >= end || end > self.payload_end {
                        return Err(err(format!(
                            "chunk frames at {}..{end}, outside the payload 1..{}",
                            piece.offset, self.payload_end
                        )));
                    }
                    (self.format.codec, end - piece.offset)
                }
                other => return Err(err(format!("unknown chunkType {other:?}"))),
            };
            if size > MAX_CHUNK_SIZE {
                return Err(err(format!(
                    "chunk at byte {} declares {size} bytes of content, over the {MAX_CHUNK_SIZE}-byte limit",
                    piece.chunk_offset
                )));
            }
            self.layer.chunks.push(Chunk {
                content_offset: self.content_end + piece.chunk_offset,
                content_size: size,
                blob_offset: piece.offset,
                blob_size,
                codec,
                digest,
            });
        }
        Ok(())
    }
}

/// Names are bytes, but a TOC is JSON: its Go writers (stargz-snapshotter,
/// containers/storage) marshal names, link targets and xattr names as Go
/// strings, and encoding/json "coerces" a string to valid UTF-8 by replacing
/// each byte that is not UTF-8 with U+FFFD. A name holding U+FFFD therefore
/// cannot say which bytes the tar holds (`caf\xe9` and `caf\xe8` both read
/// `caf\u{FFFD}`): such a TOC is refused, and the layer is read whole, where
/// names are the tar's bytes.
fn lossless_names(entry: &TocEntry) -> Result<(), String> {
    let names = [("name", &entry.name), ("linkName", &entry.link_name)];
    let xattr_names = entry.xattrs.keys().map(|name| ("xattr name", name));
    match names
        .into_iter()
        .chain(xattr_names)
        .find(|(_, text)| text.contains('\u{FFFD}'))
    {
        Some((what, text)) => Err(format!(
            "{what} {text:?} holds U+FFFD, which the TOC's JSON writes for bytes that are not UTF-8"
        )),
        None => Ok(()),
    }
}

fn member_kind(entry: &TocEntry, content_offset: u64) -> Result<MemberKind, String> {
    let link_target = || entry.link_name.clone().into_bytes();
    let device = Device {
        major: entry.dev_major,
        minor: entry.dev_minor,
    };
    Ok(match entry.kind.as_str() {
        "reg" => MemberKind::Regular {
            offset: content_offset,
            size: entry.size,
        },
        "dir" => MemberKind::Directory,
        "symlink" => MemberKind::Symlink(link_target()),
        "hardlink" => MemberKind::Hardlink(link_target()),
        "char" => MemberKind::CharDevice(device),
        "block" => MemberKind::BlockDevice(device),
        "fifo" => MemberKind::Fifo,
        other => return Err(format!("unknown type {other:?}")),
    })
}

fn member_meta(entry: &TocEntry) -> Result<MemberMeta, String> {
    let mtime = match entry.modtime.as_deref() {
        None | Some("") => Timestamp::default(),
        Some(text) => parse_rfc3339(text).ok_or_else(|| format!("bad modtime {text:?}"))?,
    };
    let xattrs = (entry.xattrs.iter())
        .map(|(name, value)| {
            let value = base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|e| format!("xattr {name:?} is not base64: {e}"))?;
            Ok((name.clone(), value))
        })
        .collect::<Result<_, String>>()?;
    Ok(MemberMeta {
        // Only permission bits survive, as for tar headers.
        mode: (entry.mode & 0o7777) as u32,
        uid: entry.uid,
        gid: entry.gid,
        mtime,
        xattrs,
    })
}

/// `0001-01-01T00:00:00Z`, Go's zero time, in seconds since the epoch.
const GO_ZERO_TIME: i64 = -62_135_596_800;

/// Parses the RFC 3339 times Go writes: whole seconds in UTC for eStargz,
/// nanoseconds and possibly a zone offset for zstd:chunked. Go's zero time,
/// which older zstd:chunked writers put for "no time", becomes the epoch,
/// which is what Go's tar writer stores for it.
fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let field = |range: Range<usize>| number(text.get(range)?);
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    let bytes = text.as_bytes();
    if bytes.len() < 20
        || separators.iter().any(|&(at, sep)| bytes[at] != sep)
        || !matches!(bytes[10], b'T' | b't')
    {
        return None;
    }
    let (year, month, day) = (field(0..4)?, field(5..7)?, field(8..10)?);
    let (hour, minute, second) = (field(11..13)?, field(14..16)?, field(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Digits past nanoseconds are dropped.
        for (i, digit) in fraction.bytes().take(digits.min(9)).enumerate() {
            nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &fraction[digits..];
    }
    let east_of_utc = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (number(rest.get(1..3)?)?, number(rest.get(4..6)?)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'+' { offset } else { -offset }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - east_of_utc;
    if secs == GO_ZERO_TIME && nanos == 0 {
        return Some(Timestamp::default());
    }
    Some(Timestamp { secs, nanos })
}

/// A run of ASCII digits as a number.
fn number(digits: &str) -> Option<i64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_as_go_writes_them() {
        let t = |secs, nanos| Some(Timestamp { secs, nanos });
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), t(0, 0));
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), t(1_700_000_000, 0));
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20.5+01:00"),
            t(1_700_000_000, 500_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T21:43:20.1234567891-00:30"),
            t(1_700_000_000, 123_456_789)
        );
        assert_eq!(parse_rfc3339("2096-10-02T07:06:40Z"), t(4_000_000_000, 0));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), t(-1, 0));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), t(1_709_164_800, 0));
        // Go's zero time means "none": the epoch, like Go's tar writer.
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), t(0, 0));
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14 22:13:20Z",
            "2023-11-14T22:13:20",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:60Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+0100",
            "2023-11-14T22:13:20+01:60",
            "+023-11-14T22:13:20Z",
            "2023-11-14T22:13:20Zjunk",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }
}
