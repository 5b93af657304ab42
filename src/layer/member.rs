//! Turning one archive member, described by any layer format (a tar header, an
//! eStargz or zstd:chunked table of contents, a lazyimg index), into index
//! entries: path normalization, whiteouts and link checks live here once.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::path::{PathProblem, join, normalize, split_parent};
use super::{Device, EntryKind, EntryTable, LayerError, TarEntry, Timestamp, Whiteout};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Names starting with this are reserved by the OCI spec for future use.
const RESERVED_PREFIX: &[u8] = b".wh..wh.";

/// A member's type as its format states it; link targets still raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberKind {
    /// `offset` is in the layer's content space (see [`super::ChunkedLayer`]).
    Regular {
        offset: u64,
        size: u64,
    },
    Directory,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    CharDevice(Device),
    BlockDevice(Device),
    Fifo,
    /// A regular file with holes; see [`EntryKind::Sparse`].
    Sparse {
        offset: u64,
        map: super::SparseMap,
    },
    /// A type byte lazyimg cannot represent; an error unless the member is a whiteout.
    Unsupported(u8),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberMeta {
    /// Mode as stored; only the permission bits (`0o7777`) are kept.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    /// As the format states them; [`EntryTable::add_member`] applies
    /// `keep_xattr`.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// The one rule for extended attributes, whichever format carries them (PAX
/// `SCHILY.xattr.*` records, eStargz and zstd:chunked TOC `xattrs`): an
/// attribute with an empty value is no attribute. POSIX pax says an empty
/// record deletes the keyword; Go's archive/tar (reader.go `mergePAX`) skips
/// empty values, so `Header.Xattrs` never holds one and neither umoci, Podman
/// nor the Go writers of eStargz and zstd:chunked TOCs ever set one.
fn keep_xattr((_, value): &(String, Vec<u8>)) -> bool {
    !value.is_empty()
}

impl EntryTable {
    /// Adds the member named `raw_path` (as the archive spells it): an entry, a
    /// whiteout, or nothing for reserved `.wh..wh.` names.
    pub fn add_member(
        &mut self,
        raw_path: &[u8],
        kind: MemberKind,
        meta: MemberMeta,
    ) -> Result<(), LayerError> {
        let shown = || String::from_utf8_lossy(raw_path).into_owned();
        let path = normalize(raw_path).map_err(|problem| match problem {
            PathProblem::Escapes => LayerError::PathEscapes { path: shown() },
            PathProblem::Nul => LayerError::NulByte {
                path: shown(),
                what: "path",
            },
        })?;
        match classify(&path, raw_path)? {
            WhiteoutName::Ordinary => {}
            WhiteoutName::Whiteout(whiteout) => {
                self.whiteouts.push(whiteout);
                return Ok(());
            }
            WhiteoutName::Reserved => {
                tracing::debug!(entry = %shown(), "ignoring reserved whiteout name");
                return Ok(());
            }
        }
        let link_target = |target: Vec<u8>| {
            if target.contains(&0) {
                return Err(LayerError::NulByte {
                    path: shown(),
                    what: "link target",
                });
            }
            Ok(OsString::from_vec(target))
        };
        let kind = match kind {
            MemberKind::Regular { offset, size } => EntryKind::Regular { offset, size },
            MemberKind::Directory => EntryKind::Directory,
            MemberKind::Symlink(target) => EntryKind::Symlink {
                target: link_target(target)?,
            },
            MemberKind::Hardlink(target) => {
                let target = link_target(target)?;
                let target =
                    normalize(target.as_bytes()).map_err(|_| LayerError::HardlinkEscapes {
                        path: shown(),
                        target: target.to_string_lossy().into_owned(),
                    })?;
                EntryKind::Hardlink { target }
            }
            MemberKind::CharDevice(device) => EntryKind::CharDevice(device),
            MemberKind::BlockDevice(device) => EntryKind::BlockDevice(device),
            MemberKind::Fifo => EntryKind::Fifo,
            MemberKind::Sparse { offset, map } => EntryKind::Sparse { offset, map },
            MemberKind::Unsupported(type_byte) => {
                return Err(LayerError::UnsupportedEntryType {
                    path: shown(),
                    type_byte,
                });
            }
        };
        self.entries.push(TarEntry {
            path,
            kind,
            mode: meta.mode & 0o7777,
            uid: meta.uid,
            gid: meta.gid,
            mtime: meta.mtime,
            xattrs: meta.xattrs.into_iter().filter(keep_xattr).collect(),
        });
        Ok(())
    }
}

/// How a base name relates to the OCI whiteout convention.
enum WhiteoutName {
    Ordinary,
    Whiteout(Whiteout),
    /// Other `.wh..wh.` names: reserved by the spec, skipped.
    Reserved,
}

fn classify(path: &OsString, raw_path: &[u8]) -> Result<WhiteoutName, LayerError> {
    let Some((dir, name)) = split_parent(path.as_bytes()) else {
        return Ok(WhiteoutName::Ordinary);
    };
    // Like Docker, also skip everything inside reserved directories (AUFS
    // left `.wh..wh.plnk/` and `.wh..wh.aufs` in old layers).
    let in_reserved = dir
        .split(|&b| b == b'/')
        .any(|c| c.starts_with(RESERVED_PREFIX));
    if name == OPAQUE_MARKER && !in_reserved {
        let dir = OsString::from_vec(dir.to_vec());
        return Ok(WhiteoutName::Whiteout(Whiteout::Opaque(dir)));
    }
    if in_reserved || name.starts_with(RESERVED_PREFIX) {
        return Ok(WhiteoutName::Reserved);
    }
    let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) else {
        return Ok(WhiteoutName::Ordinary);
    };
    // `.wh.`, `.wh..` and `.wh...` would name nothing, the directory itself
    // or its parent.
    if matches!(target, b"" | b"." | b"..") {
        return Err(LayerError::InvalidWhiteout {
            path: String::from_utf8_lossy(raw_path).into_owned(),
        });
    }
    Ok(WhiteoutName::Whiteout(Whiteout::Remove(join(dir, target))))
}
