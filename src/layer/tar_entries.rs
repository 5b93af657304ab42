//! Streaming tar reader for entry tables: reads each header once, skips file data, unpacks
//! nothing.

use std::cell::{Cell, RefCell};
use std::io::{self, Read};

use tar::{Archive, Entry, EntryType};

use super::member::{MemberKind, MemberMeta};
use super::tar_number::{header_number, pax_integer, to_u32};
use super::tar_sparse::{PaxSparse, SparseEntry, old_gnu_map};
use super::{Device, EntryTable, LayerError, Timestamp};

const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
const BLOCK: u64 = 512;

/// Most bytes of extension headers (PAX `x` records, GNU `L`/`K` long names,
/// with their own headers and padding) the stream may hold before one entry.
/// The tar crate reads those into memory whole, so a header claiming
/// gigabytes of them (a few KiB of gzip can) would have it allocate that
/// much. Go's archive/tar refuses a PAX header or long name over 1 MiB
/// (`maxSpecialFileSize`) and the tar crate takes one of each per entry:
/// every layer Go reads fits.
const MAX_EXTENSION_BYTES: u64 = 4 << 20;

/// Indexes a layer from its uncompressed tar stream in one pass.
pub fn read_entries(reader: impl Read) -> Result<EntryTable, LayerError> {
    let state = StreamState {
        extensions_end: Cell::new(MAX_EXTENSION_BYTES),
        ..StreamState::default()
    };
    let mut archive = Archive::new(TrackedReader {
        inner: reader,
        state: &state,
    });
    let mut index = EntryTable::default();
    // Names the last good entry so stream-level errors have context.
    let mut last_path = String::from("start of archive");
    let entries = archive.entries().map_err(|e| state.error(e, &last_path))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| state.error(e, &last_path))?;
        last_path = format!("after {}", String::from_utf8_lossy(&entry.path_bytes()));
        // The entry's own data may be read whole (a sparse 1.0 map lives there).
        state.extensions_end.set(u64::MAX);
        let stored = index_entry(&mut entry, &mut index, &state)?;
        // The next member's headers start after this entry's data: whatever
        // the tar crate reads past it before it yields the next entry is
        // that entry's extension headers, bounded.
        let next = (stored.start).saturating_add(stored.size.div_ceil(BLOCK) * BLOCK);
        state.capture_from.set(next);
        state.captured.borrow_mut().clear();
        state
            .extensions_end
            .set(next.saturating_add(MAX_EXTENSION_BYTES));
    }
    Ok(index)
}

/// What the tar crate consumed so far and whether the source itself failed;
/// shared with the reader the archive owns.
///
/// It also keeps the headers of the member being read (the bytes from
/// `capture_from`, where they start, on): the tar crate consumes an old GNU
/// sparse file's extension blocks itself and keeps their map private, and
/// the map must be known to serve the file without reading its data.
#[derive(Default)]
struct StreamState {
    pos: Cell<u64>,
    source_failed: Cell<bool>,
    capture_from: Cell<u64>,
    captured: RefCell<Vec<u8>>,
    /// Reading stops here until the next entry is yielded: the end of the
    /// current entry's data plus [`MAX_EXTENSION_BYTES`].
    extensions_end: Cell<u64>,
    extensions_too_long: Cell<bool>,
}

impl StreamState {
    /// The tar crate reports both source and format problems as `io::Error`;
    /// the reader wrapper tells them apart.
    fn error(&self, err: io::Error, context: &str) -> LayerError {
        let offset = self.pos.get();
        if self.extensions_too_long.get() {
            LayerError::MalformedTar {
                offset,
                entry: context.to_owned(),
                reason: format!(
                    "extension headers (PAX records, long names) over {MAX_EXTENSION_BYTES} bytes"
                ),
            }
        } else if self.source_failed.get() {
            LayerError::Read {
                offset,
                source: err,
            }
        } else {
            LayerError::MalformedTar {
                offset,
                entry: context.to_owned(),
                reason: err.to_string(),
            }
        }
    }
}

struct TrackedReader<'s, R> {
    inner: R,
    state: &'s StreamState,
}

impl<R: Read> Read for TrackedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let allowed = (self.state.extensions_end.get()).saturating_sub(self.state.pos.get());
        if allowed == 0 {
            self.state.extensions_too_long.set(true);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "extension headers too long",
            ));
        }
        let len = buf
            .len()
            .min(usize::try_from(allowed).unwrap_or(usize::MAX));
        match self.inner.read(&mut buf[..len]) {
            Ok(n) => {
                let pos = self.state.pos.get();
                let from = self.state.capture_from.get();
                if pos + n as u64 > from {
                    let skip = from.saturating_sub(pos) as usize;
                    self.state
                        .captured
                        .borrow_mut()
                        .extend_from_slice(&buf[skip..n]);
                }
                self.state.pos.set(pos + n as u64);
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.state.source_failed.set(true);
                }
                Err(e)
            }
        }
    }
}

/// Metadata gathered from the entry's PAX records; `None` keeps the header's
/// value.
#[derive(Default)]
struct PaxInfo {
    mtime: Option<Timestamp>,
    uid: Option<i64>,
    gid: Option<i64>,
    xattrs: Vec<(String, Vec<u8>)>,
    sparse: PaxSparse,
}

/// Where an entry's data area lies in the tar stream: `size` bytes from
/// `start` (for an old GNU sparse file, after its extension blocks).
struct StoredData {
    start: u64,
    size: u64,
}

/// Identifies the entry being indexed in error messages.
struct Context {
    shown: String,
    header_pos: u64,
}

impl Context {
    fn malformed(&self, reason: impl std::fmt::Display) -> LayerError {
        LayerError::MalformedTar {
            offset: self.header_pos,
            entry: self.shown.clone(),
            reason: reason.to_string(),
        }
    }
}

/// Adds `entry` to `index`; returns where its data lies, so the reader can
/// tell where the next member's headers start.
fn index_entry<R: Read>(
    entry: &mut Entry<'_, R>,
    index: &mut EntryTable,
    state: &StreamState,
) -> Result<StoredData, LayerError> {
    let mut raw_path = entry.path_bytes().into_owned();
    let cx = Context {
        shown: String::from_utf8_lossy(&raw_path).into_owned(),
        header_pos: entry.raw_header_position(),
    };
    let entry_type = entry.header().entry_type();
    // The stream stands at the entry's data: the tar crate has read every
    // header of the member, and nothing of its data.
    let mut stored = StoredData {
        start: state.pos.get(),
        size: entry.size(),
    };
    if entry_type == EntryType::XGlobalHeader {
        // Global PAX defaults; image tools do not emit meaningful ones.
        tracing::debug!(entry = %cx.shown, "ignoring global PAX header");
        return Ok(stored);
    }
    let mut pax =
        read_pax(entry, &cx.shown).map_err(|e| cx.malformed(format!("bad PAX record: {e}")))?;
    let sparse = std::mem::take(&mut pax.sparse);
    let bad_sparse = |reason: String| LayerError::BadSparse {
        path: cx.shown.clone(),
        reason,
    };
    let sparse = if entry_type.is_gnu_sparse() {
        let header = entry.header().as_gnu().ok_or_else(|| {
            // The tar crate refuses these before; kept for the type's sake.
            bad_sparse("typeflag S on a header that is not GNU".into())
        })?;
        // The tar crate sized the entry to the real size; the data area is
        // what the segments hold, which it checked (`parse_sparse_header`).
        let captured = state.captured.borrow();
        let extensions = (cx.header_pos + BLOCK)
            .checked_sub(state.capture_from.get())
            .and_then(|from| captured.get(from as usize..))
            .ok_or_else(|| bad_sparse("extension blocks not captured".into()))?;
        let map = old_gnu_map(header, extensions).map_err(&bad_sparse)?;
        stored.size = map.packed_size();
        Some(SparseEntry {
            map,
            data_skip: 0,
            name: None,
        })
    } else {
        sparse.resolve(entry, stored.size).map_err(&bad_sparse)?
    };
    let kind = match sparse {
        None => member_kind(entry, entry_type, &raw_path, &cx)?,
        Some(sparse) => {
            // Go refuses a map on a header-only type (`isHeaderOnlyType`);
            // a type lazyimg cannot represent is refused anyway.
            if !matches!(
                entry_type,
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
            ) {
                return Err(bad_sparse(format!(
                    "a sparse map on an entry of type {:#04x}",
                    entry_type.as_byte()
                )));
            }
            if let Some(name) = sparse.name {
                raw_path = name;
            }
            MemberKind::Sparse {
                offset: stored.start + sparse.data_skip,
                map: sparse.map,
            }
        }
    };
    let old = entry.header().as_old();
    let field = |what: &str, raw: &[u8]| {
        header_number(raw).map_err(|reason| cx.malformed(format!("{what}: {reason}")))
    };
    let id = |what: &str, pax: Option<i64>, raw: &[u8]| {
        let value = match pax {
            Some(value) => value,
            None => field(what, raw)?,
        };
        to_u32(value).map_err(|reason| cx.malformed(format!("{what}: {reason}")))
    };
    let mtime = match pax.mtime {
        Some(mtime) => mtime,
        None => Timestamp {
            secs: field("mtime", &old.mtime)?,
            nanos: 0,
        },
    };
    let meta = MemberMeta {
        // Go keeps the mode's int64 whole; only its permission bits are
        // used, so the low bits are all that matter.
        mode: field("mode", &old.mode)? as u32,
        uid: id("uid", pax.uid, &old.uid)?,
        gid: id("gid", pax.gid, &old.gid)?,
        mtime,
        xattrs: pax.xattrs,
    };
    index.add_member(&raw_path, kind, meta)?;
    Ok(stored)
}

/// The member a header describes, typeflag by typeflag:
///
/// - regular (`0`, and NUL from pre-POSIX tars) and contiguous (`7`, a
///   regular file on every system but Masscomp's) name a directory when the
///   name ends in `/`, the BSD convention GNU tar follows for all three
///   (extract.c `prepare_to_extract`); Go's archive/tar applies it to NUL
///   (reader.go `Next`) and makes `0` and `7` regular files named without
///   the slash, which cannot be what a writer meant;
/// - any type lazyimg cannot represent (GNU `D`, `M`, `V`, vendor `A`–`Z`,
///   ...) is [`MemberKind::Unsupported`]: umoci and containers/storage refuse
///   unknown types, and extracting one as a regular file, as GNU tar does,
///   would serve bytes the writer meant as something else.
fn member_kind<R: Read>(
    entry: &Entry<'_, R>,
    entry_type: EntryType,
    raw_path: &[u8],
    cx: &Context,
) -> Result<MemberKind, LayerError> {
    let link_target = || entry.link_name_bytes().unwrap_or_default().into_owned();
    Ok(match entry_type {
        EntryType::Regular | EntryType::Continuous if raw_path.ends_with(b"/") => {
            MemberKind::Directory
        }
        EntryType::Regular | EntryType::Continuous => MemberKind::Regular {
            offset: entry.raw_file_position(),
            size: entry.size(),
        },
        EntryType::Directory => MemberKind::Directory,
        EntryType::Symlink => MemberKind::Symlink(link_target()),
        EntryType::Link => MemberKind::Hardlink(link_target()),
        EntryType::Char => MemberKind::CharDevice(device(entry).map_err(|e| cx.malformed(e))?),
        EntryType::Block => MemberKind::BlockDevice(device(entry).map_err(|e| cx.malformed(e))?),
        EntryType::Fifo => MemberKind::Fifo,
        other => MemberKind::Unsupported(other.as_byte()),
    })
}

/// Device numbers as Go reads them: from USTAR, PAX and GNU headers; a
/// pre-POSIX (V7) header has no such fields, so 0:0.
fn device<R: Read>(entry: &Entry<'_, R>) -> Result<Device, String> {
    let header = entry.header();
    let (major, minor) = match (header.as_ustar(), header.as_gnu()) {
        (Some(ustar), _) => (ustar.dev_major, ustar.dev_minor),
        (None, Some(gnu)) => (gnu.dev_major, gnu.dev_minor),
        (None, None) => return Ok(Device::default()),
    };
    let number = |what: &str, raw: &[u8]| {
        header_number(raw)
            .and_then(to_u32)
            .map_err(|reason| format!("{what}: {reason}"))
    };
    Ok(Device {
        major: number("devmajor", &major)?,
        minor: number("devminor", &minor)?,
    })
}

fn read_pax<R: Read>(entry: &mut Entry<'_, R>, shown: &str) -> Result<PaxInfo, String> {
    let mut info = PaxInfo::default();
    let Some(records) = entry.pax_extensions().map_err(|e| e.to_string())? else {
        return Ok(info);
    };
    for record in records {
        let record = record.map_err(|e| e.to_string())?;
        let key = record.key_bytes();
        let integer = || {
            let value = record.value().map_err(|e| e.to_string())?;
            let key = String::from_utf8_lossy(key);
            pax_integer(value).map_err(|reason| format!("{key}: {reason}"))
        };
        // The last record of a key wins; an empty one leaves the header's
        // value, as in Go's mergePAX (POSIX pax: it deletes the keyword).
        // (The tar crate has written the first numeric `uid`/`gid` record
        // into the header already: only a repeated key can tell.)
        if key == b"mtime" {
            let value = record.value().map_err(|e| e.to_string())?;
            info.mtime = match value {
                "" => None,
                value => Some(parse_pax_time(value).ok_or_else(|| format!("mtime {value:?}"))?),
            };
        } else if key == b"uid" {
            info.uid = integer()?;
        } else if key == b"gid" {
            info.gid = integer()?;
        } else if key == b"size" {
            // The tar crate already sized the entry from this record when it
            // is an unsigned decimal, and from the header when it is not;
            // Go refuses what is no number, or negative.
            if integer()?.is_some_and(|size| size < 0) {
                return Err("size: negative".into());
            }
        } else if let Some(name) = key.strip_prefix(XATTR_PREFIX) {
            let Ok(name) = std::str::from_utf8(name) else {
                // PAX keywords must be UTF-8; such a name cannot be a
                // security.* attribute, so dropping it is harmless.
                tracing::warn!(entry = %shown, "skipping xattr with non-UTF-8 name");
                continue;
            };
            let value = record.value_bytes().to_vec();
            // A repeated key overrides the earlier one, as in PAX; an empty
            // value then removes it (see `MemberMeta::xattrs`).
            match info.xattrs.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = value,
                None => info.xattrs.push((name.to_owned(), value)),
            }
        } else {
            info.sparse.record(key, record.value_bytes())?;
        }
    }
    Ok(info)
}

/// Parses a PAX time as Go's `parsePAXTime` does: decimal seconds with an
/// optional sign, optionally with a fraction (digits past nanoseconds are
/// dropped).
fn parse_pax_time(value: &str) -> Option<Timestamp> {
    let (negative, unsigned) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value.strip_prefix('+').unwrap_or(value)),
    };
    let (whole, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(frac) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(match (negative, nanos) {
        (false, _) => Timestamp { secs, nanos },
        (true, 0) => Timestamp { secs: -secs, nanos },
        // -1.25 s is 2 s before the epoch plus 0.75 s.
        (true, _) => Timestamp {
            secs: -secs - 1,
            nanos: 1_000_000_000 - nanos,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_time_parsing() {
        let t = |secs, nanos| Some(Timestamp { secs, nanos });
        assert_eq!(parse_pax_time("1700000000"), t(1_700_000_000, 0));
        assert_eq!(
            parse_pax_time("1700000000.5"),
            t(1_700_000_000, 500_000_000)
        );
        assert_eq!(parse_pax_time("1.123456789999"), t(1, 123_456_789));
        assert_eq!(parse_pax_time("-1.25"), t(-2, 750_000_000));
        assert_eq!(parse_pax_time("-3"), t(-3, 0));
        assert_eq!(parse_pax_time(""), None);
        assert_eq!(parse_pax_time("1.2x"), None);
        assert_eq!(parse_pax_time("+1"), t(1, 0));
        assert_eq!(parse_pax_time("-0.5"), t(-1, 500_000_000));
        assert_eq!(parse_pax_time("+-1"), None);
        assert_eq!(parse_pax_time(".5"), None);
    }
}
