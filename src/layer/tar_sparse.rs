//! GNU sparse maps in tar headers, read as Go's archive/tar reads them
//! (reader.go `readGNUSparsePAXHeaders`, `readGNUSparseMap0x1`,
//! `readGNUSparseMap1x0`, `readOldGNUSparseMap`), so that lazyimg expands the
//! same files umoci and Podman expand:
//!
//! - old GNU (`--format=gnu -S`): typeflag `S`, four `(offset, numbytes)`
//!   pairs in the header, more in 512-byte extension blocks while
//!   `isextended` is set, the file's size in `realsize`;
//! - PAX 0.0: `GNU.sparse.offset`/`GNU.sparse.numbytes` records repeated,
//!   alternating, with `GNU.sparse.numblocks` and `GNU.sparse.size`;
//! - PAX 0.1: the same pairs as one comma list in `GNU.sparse.map`;
//! - PAX 1.0: `GNU.sparse.major=1`, `minor=0`, the real name in
//!   `GNU.sparse.name`, the size in `GNU.sparse.realsize`, and the map at the
//!   start of the entry's data: decimal numbers one a line (the count, then
//!   the pairs), padded to whole 512-byte blocks.
//!
//! The packed data follows (for 1.0, after the map's blocks) and must be
//! exactly as long as the segments together: Go fails reading such a file
//! ("sparse file references non-existent data" / "contains unreferenced
//! data"), so it is refused here when the layer is indexed.

use std::io::Read;

use super::SparseMap;
use super::tar_number::header_number;

const SPARSE_MAJOR: &[u8] = b"GNU.sparse.major";
const SPARSE_MINOR: &[u8] = b"GNU.sparse.minor";
const SPARSE_MAP: &[u8] = b"GNU.sparse.map";
const SPARSE_NUMBLOCKS: &[u8] = b"GNU.sparse.numblocks";
const SPARSE_OFFSET: &[u8] = b"GNU.sparse.offset";
const SPARSE_NUMBYTES: &[u8] = b"GNU.sparse.numbytes";
const SPARSE_NAME: &[u8] = b"GNU.sparse.name";
const SPARSE_SIZE: &[u8] = b"GNU.sparse.size";
const SPARSE_REALSIZE: &[u8] = b"GNU.sparse.realsize";

/// Go reads at most this much of a 1.0 map, and of an old GNU map's slots
/// (`maxSpecialFileSize`, the bound it puts on every variable-length
/// header; errSparseTooLong beyond), so a hostile map cannot make the
/// indexer buffer without end.
const MAX_SPECIAL_FILE: u64 = 1 << 20;

/// The `GNU.sparse.*` records of one entry's PAX header; the last record of
/// a key wins, as in Go's `parsePAX`.
#[derive(Debug, Default)]
pub(super) struct PaxSparse {
    major: Option<String>,
    minor: Option<String>,
    map: Option<String>,
    numblocks: Option<String>,
    name: Option<Vec<u8>>,
    size: Option<String>,
    realsize: Option<String>,
    /// Format 0.0's repeated `offset`/`numbytes` records, in order; Go joins
    /// them into `GNU.sparse.map`, replacing any record of that name.
    pairs: Vec<String>,
}

/// A sparse entry's map and where its packed data lies, relative to the
/// entry's data area.
#[derive(Debug)]
pub(super) struct SparseEntry {
    pub map: SparseMap,
    /// Bytes of the data area before the packed data (the 1.0 map's blocks).
    pub data_skip: u64,
    /// The file's name, when the format gives it apart (`GNU.sparse.name`).
    pub name: Option<Vec<u8>>,
}

impl PaxSparse {
    /// Takes one PAX record if it is a sparse one; `false` if it is not.
    ///
    /// # Errors
    /// Format 0.0 pairs out of turn (an `offset` where a `numbytes` is due or
    /// the reverse) or holding a comma, which Go refuses as `ErrHeader`.
    pub(super) fn record(&mut self, key: &[u8], value: &[u8]) -> Result<bool, String> {
        let text = || String::from_utf8_lossy(value).into_owned();
        let slot = match key {
            SPARSE_MAJOR => &mut self.major,
            SPARSE_MINOR => &mut self.minor,
            SPARSE_MAP => &mut self.map,
            SPARSE_NUMBLOCKS => &mut self.numblocks,
            SPARSE_SIZE => &mut self.size,
            SPARSE_REALSIZE => &mut self.realsize,
            SPARSE_NAME => {
                self.name = Some(value.to_vec());
                return Ok(true);
            }
            SPARSE_OFFSET | SPARSE_NUMBYTES => {
                let due = if self.pairs.len().is_multiple_of(2) {
                    SPARSE_OFFSET
                } else {
                    SPARSE_NUMBYTES
                };
                if key != due || value.contains(&b',') {
                    return Err(format!(
                        "sparse 0.0 record {} out of turn or holding a comma",
                        String::from_utf8_lossy(key)
                    ));
                }
                self.pairs.push(text());
                return Ok(true);
            }
            _ => return Ok(false),
        };
        *slot = Some(text());
        Ok(true)
    }

    /// The entry's sparse map, if its records make it a sparse file; `entry`
    /// is its data area (`data_size` bytes), read only for format 1.0.
    ///
    /// As in Go, records of an unknown version (a `major`/`minor` other than
    /// 0.0, 0.1 or 1.0), or `GNU.sparse.*` records without a version or a
    /// map, leave a plain file: its stored bytes, under its stored name.
    ///
    /// # Errors
    /// A sentence naming what is wrong: an unreadable number, a count that
    /// does not match the pairs, a map Go's rules refuse (see
    /// [`SparseMap::new`]), or packed data of another length than the map's.
    pub(super) fn resolve(
        mut self,
        entry: &mut impl Read,
        data_size: u64,
    ) -> Result<Option<SparseEntry>, String> {
        if !self.pairs.is_empty() {
            self.map = Some(self.pairs.join(","));
        }
        // Go looks records up in a map of strings: an empty one is absent.
        let given = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        let is_1x0 = match (given(&self.major).as_deref(), given(&self.minor).as_deref()) {
            (Some("0"), Some("0" | "1")) => false,
            (Some("1"), Some("0")) => true,
            (Some(_), _) | (_, Some(_)) => {
                tracing::debug!("unknown GNU sparse version: a plain file, as in Go");
                return Ok(None);
            }
            // 0.0 and 0.1 wrote no version: a map says it is one of them.
            (None, None) if self.map.as_deref().is_some_and(|m| !m.is_empty()) => false,
            (None, None) => return Ok(None),
        };
        let size = match given(&self.size).or(given(&self.realsize)).as_deref() {
            Some(size) => size
                .parse::<i64>()
                .map_err(|_| format!("sparse file size {size:?} is no number"))?,
            None => i64::try_from(data_size).map_err(|_| "entry too large")?,
        };
        let (segments, data_skip) = if is_1x0 {
            read_map_1x0(entry, data_size)?
        } else {
            (self.map_0x1()?, 0)
        };
        let map = SparseMap::new(size, segments)?;
        check_packed(&map, data_size - data_skip)?;
        Ok(Some(SparseEntry {
            map,
            data_skip,
            name: self.name.filter(|name| !name.is_empty()),
        }))
    }

    /// Formats 0.0 and 0.1: `numblocks` pairs in the comma list.
    fn map_0x1(&self) -> Result<Vec<(i64, i64)>, String> {
        let count = self.numblocks.as_deref().unwrap_or_default();
        let count: usize = count
            .parse()
            .map_err(|_| format!("sparse numblocks {count:?} is no count"))?;
        let map = self.map.as_deref().unwrap_or_default();
        let numbers: Vec<&str> = match map {
            "" => Vec::new(),
            map => map.split(',').collect(),
        };
        if Some(numbers.len()) != count.checked_mul(2) {
            return Err(format!(
                "sparse map holds {} numbers, numblocks {count} wants twice that",
                numbers.len()
            ));
        }
        pairs(&numbers)
    }
}

/// Format 1.0's map from the start of the data area: how many pairs, then
/// each number, newline-terminated, in whole 512-byte blocks; returns the
/// pairs and the bytes of blocks read. Go's `readGNUSparseMap1x0`.
fn read_map_1x0(entry: &mut impl Read, data_size: u64) -> Result<(Vec<(i64, i64)>, u64), String> {
    let mut text: Vec<u8> = Vec::new();
    let mut block = [0u8; 512];
    // Reads blocks until `lines` newlines are in; none more than needed.
    let mut feed = |text: &mut Vec<u8>, lines: usize| -> Result<(), String> {
        while text.iter().filter(|&&b| b == b'\n').count() < lines {
            if text.len() as u64 + 512 > data_size.min(MAX_SPECIAL_FILE) {
                return Err("sparse 1.0 map runs past the entry's data".into());
            }
            entry
                .read_exact(&mut block)
                .map_err(|e| format!("reading the sparse 1.0 map: {e}"))?;
            text.extend_from_slice(&block);
        }
        Ok(())
    };
    feed(&mut text, 1)?;
    let count_line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let count_line = String::from_utf8_lossy(count_line).into_owned();
    let count: usize = count_line
        .parse()
        .map_err(|_| format!("sparse 1.0 map count {count_line:?} is no count"))?;
    let lines = count
        .checked_mul(2)
        .and_then(|n| n.checked_add(1))
        .ok_or("sparse 1.0 map count overflows")?;
    feed(&mut text, lines)?;
    let blocks = text.len() as u64;
    let numbers: Vec<String> = (text.split(|&b| b == b'\n'))
        .skip(1)
        .take(2 * count)
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    let numbers: Vec<&str> = numbers.iter().map(String::as_str).collect();
    Ok((pairs(&numbers)?, blocks))
}

/// Decimal `offset, length` pairs, as Go's `strconv.ParseInt(s, 10, 64)`
/// reads them (a sign allowed; negatives are refused by [`SparseMap::new`]).
fn pairs(numbers: &[&str]) -> Result<Vec<(i64, i64)>, String> {
    let number = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| format!("sparse map number {s:?} is no number"))
    };
    (numbers.chunks_exact(2))
        .map(|pair| Ok((number(pair[0])?, number(pair[1])?)))
        .collect()
}

/// The old GNU map of a typeflag `S` header: its four slots, then the
/// extension blocks (`extensions`, whole 512-byte blocks as they followed the
/// header), each slot list ending at the first slot whose offset starts
/// with NUL, as GNU, BSD and Go tar end it. The size is `realsize`.
/// Go's `readOldGNUSparseMap`.
///
/// The packed data's length is not checked here: the tar crate refuses
/// the member when the segments do not add up to its data area.
///
/// # Errors
/// An unreadable number, extension blocks missing, more of them than Go
/// reads, or a map Go refuses.
pub(super) fn old_gnu_map(header: &tar::GnuHeader, extensions: &[u8]) -> Result<SparseMap, String> {
    let mut segments = Vec::new();
    let mut take = |slots: &[tar::GnuSparseHeader]| -> Result<(), String> {
        for slot in slots.iter().take_while(|slot| slot.offset[0] != 0) {
            let offset = header_number(&slot.offset).map_err(|e| format!("sparse offset: {e}"))?;
            let len = header_number(&slot.numbytes).map_err(|e| format!("sparse numbytes: {e}"))?;
            segments.push((offset, len));
        }
        Ok(())
    };
    take(&header.sparse)?;
    let mut extended = header.isextended[0] > 0;
    let mut blocks = extensions.chunks_exact(512);
    // Bytes of slots read, as Go counts them against its bound.
    let mut read = 4 * 24;
    while extended {
        let block = blocks.next().ok_or("sparse extension block missing")?;
        read += 21 * 24;
        if read >= MAX_SPECIAL_FILE {
            return Err("sparse map longer than Go reads (1 MiB of slots)".into());
        }
        // 21 slots of 24 bytes, then the `isextended` byte.
        let slots: Vec<tar::GnuSparseHeader> = (block[..504].chunks_exact(24))
            .map(|slot| tar::GnuSparseHeader {
                offset: slot[..12].try_into().expect("12 bytes"),
                numbytes: slot[12..].try_into().expect("12 bytes"),
            })
            .collect();
        take(&slots)?;
        extended = block[504] > 0;
    }
    let size = header_number(&header.realsize).map_err(|e| format!("sparse realsize: {e}"))?;
    SparseMap::new(size, segments)
}

/// The packed data must be exactly the segments' bytes: Go fails reading
/// a file with less ("references non-existent data") or more ("contains
/// unreferenced data").
fn check_packed(map: &SparseMap, stored: u64) -> Result<(), String> {
    if map.packed_size() != stored {
        return Err(format!(
            "the map's segments hold {} bytes, the entry stores {stored}",
            map.packed_size()
        ));
    }
    Ok(())
}
