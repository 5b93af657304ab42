//! Sparse files: which bytes of a file a layer stores, and where.
//!
//! GNU tar writes a file with holes as its data segments only ("packed",
//! one after another in the entry's data area) plus a map saying where each
//! segment sits in the file; everything else reads as zeros. Go's
//! archive/tar (reader.go `handleSparseFile`, sparse.go) expands such files
//! on reading, so umoci, Podman and containerd unpack them whole; lazyimg
//! serves them from the packed bytes and never fetches a hole.
//!
//! [`SparseMap`] is the one representation, whichever of GNU's four
//! spellings the map came in (old GNU `S` headers, PAX 0.0, 0.1, 1.0): the
//! tar parser builds it, entry tables, trees and index artifacts carry it,
//! and the content reader resolves reads through [`SparseMap::pieces`].

use serde::{Deserialize, Serialize};

/// A sparse file's data segments, checked by Go's rules
/// (`validateSparseEntries`): in file order, not overlapping, inside the
/// file. Byte `o` of segment `i` is byte `packed(i) + o` of the packed data,
/// where `packed(i)` is the sum of the earlier segments' lengths.
///
/// Built only by [`SparseMap::new`]; decoding (an entry table from the cache,
/// an index artifact from a registry) goes through it too, so a map in hand
/// is always valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawSparseMap", into = "RawSparseMap")]
pub struct SparseMap {
    /// The file's size in bytes (GNU's "real size"): what `stat` reports.
    size: u64,
    segments: Vec<Segment>,
    /// Bytes of data all segments hold together: the packed data's size.
    packed_size: u64,
}

/// One run of stored bytes: `len` bytes at file offset `offset`, found at
/// offset `packed` of the packed data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Segment {
    offset: u64,
    len: u64,
    packed: u64,
}

/// The serialized shape: the file size and `(offset, length)` pairs, as the
/// tar formats state them.
#[derive(Serialize, Deserialize)]
struct RawSparseMap {
    size: u64,
    segments: Vec<(u64, u64)>,
}

impl TryFrom<RawSparseMap> for SparseMap {
    type Error = String;

    fn try_from(raw: RawSparseMap) -> Result<Self, String> {
        let segments = raw.segments.iter().map(|&(o, l)| (o as i64, l as i64));
        SparseMap::new(raw.size as i64, segments)
    }
}

impl From<SparseMap> for RawSparseMap {
    fn from(map: SparseMap) -> Self {
        RawSparseMap {
            size: map.size,
            segments: map.segments.iter().map(|s| (s.offset, s.len)).collect(),
        }
    }
}

/// A piece of a read of a sparse file, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// `len` zero bytes (a hole): nothing to read.
    Hole { len: u64 },
    /// `len` bytes at offset `packed` of the packed data.
    Data { packed: u64, len: u64 },
}

impl SparseMap {
    /// The map of a file of `size` bytes whose data segments are `segments`
    /// (`(file offset, length)`, in bytes, in the order the archive lists
    /// them). Signed because the formats' numbers are (Go parses them with
    /// `strconv.ParseInt` or as signed octal), and a negative one must be
    /// refused, not wrapped.
    ///
    /// # Errors
    /// A sentence saying what is wrong, with Go's rules
    /// (archive/tar `validateSparseEntries`): a negative size, offset or
    /// length; a segment reaching past the file's end (or past `i64::MAX`);
    /// segments out of order or overlapping.
    pub fn new(size: i64, segments: impl IntoIterator<Item = (i64, i64)>) -> Result<Self, String> {
        let size = u64::try_from(size).map_err(|_| format!("negative file size {size}"))?;
        let mut out: Vec<Segment> = Vec::new();
        let mut packed: u64 = 0;
        for (offset, len) in segments {
            let (Ok(offset), Ok(len)) = (u64::try_from(offset), u64::try_from(len)) else {
                return Err(format!("negative segment ({offset}, {len})"));
            };
            let end = offset
                .checked_add(len)
                .filter(|&end| end <= i64::MAX as u64)
                .ok_or_else(|| format!("segment ({offset}, {len}) overflows"))?;
            if end > size {
                return Err(format!(
                    "segment ({offset}, {len}) ends past the file's size {size}"
                ));
            }
            if let Some(last) = out.last()
                && last.offset + last.len > offset
            {
                return Err(format!(
                    "segment ({offset}, {len}) overlaps or precedes ({}, {})",
                    last.offset, last.len
                ));
            }
            out.push(Segment {
                offset,
                len,
                packed,
            });
            // Cannot overflow: the segments are disjoint and inside `size`.
            packed += len;
        }
        Ok(SparseMap {
            size,
            segments: out,
            packed_size: packed,
        })
    }

    /// The file's size in bytes, holes included.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes the archive stores for the file: all segments together.
    pub fn packed_size(&self) -> u64 {
        self.packed_size
    }

    /// The segments as `(file offset, length)` pairs, in file order.
    pub fn segments(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.segments.iter().map(|s| (s.offset, s.len))
    }

    /// The pieces that make up file bytes `offset..offset + len`, clamped to
    /// the file's end, in order; together they are exactly that many bytes.
    /// Empty segments yield nothing.
    pub fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = Piece> + '_ {
        let start = offset.min(self.size);
        let end = offset.saturating_add(len).min(self.size);
        // The first segment that ends after `start`.
        let first = self.segments.partition_point(|s| s.offset + s.len <= start);
        let mut at = start;
        let mut segments = self.segments[first..].iter().filter(|s| s.len > 0);
        let mut pending: Option<&Segment> = None;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let segment = match pending {
                Some(s) => Some(s),
                None => {
                    pending = segments.next();
                    pending
                }
            };
            match segment {
                Some(s) if s.offset <= at => {
                    let len = (s.offset + s.len).min(end) - at;
                    let piece = Piece::Data {
                        packed: s.packed + (at - s.offset),
                        len,
                    };
                    at += len;
                    pending = None;
                    Some(piece)
                }
                Some(s) => {
                    let len = s.offset.min(end) - at;
                    at += len;
                    Some(Piece::Hole { len })
                }
                None => {
                    let len = end - at;
                    at = end;
                    Some(Piece::Hole { len })
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(size: i64, segments: &[(i64, i64)]) -> Result<SparseMap, String> {
        SparseMap::new(size, segments.iter().copied())
    }

    #[test]
    fn pieces_cover_holes_at_start_middle_and_end() {
        // 10 hole, 5 data, 10 hole, 5 data, 10 hole.
        let m = map(40, &[(10, 5), (25, 5), (40, 0)]).unwrap();
        assert_eq!(m.packed_size(), 10);
        let all: Vec<_> = m.pieces(0, 100).collect();
        assert_eq!(
            all,
            [
                Piece::Hole { len: 10 },
                Piece::Data { packed: 0, len: 5 },
                Piece::Hole { len: 10 },
                Piece::Data { packed: 5, len: 5 },
                Piece::Hole { len: 10 },
            ]
        );
        let mid: Vec<_> = m.pieces(12, 15).collect();
        assert_eq!(
            mid,
            [
                Piece::Data { packed: 2, len: 3 },
                Piece::Hole { len: 10 },
                Piece::Data { packed: 5, len: 2 },
            ]
        );
        assert_eq!(m.pieces(40, 10).count(), 0);
        assert_eq!(
            m.pieces(33, 100).collect::<Vec<_>>(),
            [Piece::Hole { len: 7 }]
        );
    }

    #[test]
    fn an_all_hole_file_is_one_hole() {
        let m = map(1 << 20, &[(1 << 20, 0)]).unwrap();
        assert_eq!(m.packed_size(), 0);
        assert_eq!(
            m.pieces(5, 10).collect::<Vec<_>>(),
            [Piece::Hole { len: 10 }]
        );
        let empty = map(7, &[]).unwrap();
        assert_eq!(
            empty.pieces(0, 7).collect::<Vec<_>>(),
            [Piece::Hole { len: 7 }]
        );
    }

    #[test]
    fn bad_maps_are_refused_as_go_refuses_them() {
        let refused = |size, segments: &[(i64, i64)], said: &str| {
            let err = map(size, segments).unwrap_err();
            assert!(err.contains(said), "{err}");
        };
        refused(-1, &[], "negative file size");
        refused(10, &[(-1, 2)], "negative segment");
        refused(10, &[(1, -2)], "negative segment");
        refused(10, &[(8, 3)], "ends past the file's size 10");
        refused(10, &[(4, 2), (2, 1)], "overlaps or precedes");
        refused(10, &[(4, 2), (5, 1)], "overlaps or precedes");
        refused(i64::MAX, &[(i64::MAX, 1)], "overflows");
        // Touching segments and empty ones are fine, as in Go.
        map(10, &[(0, 2), (2, 2), (4, 0), (4, 0), (10, 0)]).unwrap();
    }

    #[test]
    fn decoding_checks_the_map_again() {
        let m = map(40, &[(10, 5), (25, 5)]).unwrap();
        let bytes = postcard::to_stdvec(&m).unwrap();
        assert_eq!(postcard::from_bytes::<SparseMap>(&bytes).unwrap(), m);
        let bad = RawSparseMap {
            size: 4,
            segments: vec![(2, 5)],
        };
        let bytes = postcard::to_stdvec(&bad).unwrap();
        assert!(postcard::from_bytes::<SparseMap>(&bytes).is_err());
    }
}
