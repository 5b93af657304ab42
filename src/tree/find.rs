//! The questions image reviewers ask of a tree, answered from metadata alone:
//! `lazyimg find`'s tests, each with GNU find's meaning (find(1)).

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;

use super::{Inode, InodeKind};
use crate::layer::Timestamp;

/// An inode's type as find(1)'s `-type` letters name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    /// `f`
    Regular,
    /// `d`
    Directory,
    /// `l`
    Symlink,
    /// `c`
    CharDevice,
    /// `b`
    BlockDevice,
    /// `p`
    Fifo,
}

impl FileType {
    /// The type of `inode`.
    pub fn of(inode: &Inode) -> FileType {
        match inode.kind {
            InodeKind::Regular(_) => FileType::Regular,
            InodeKind::Directory(_) => FileType::Directory,
            InodeKind::Symlink(_) => FileType::Symlink,
            InodeKind::CharDevice(_) => FileType::CharDevice,
            InodeKind::BlockDevice(_) => FileType::BlockDevice,
            InodeKind::Fifo => FileType::Fifo,
        }
    }

    /// The `-type` letter, also `ls -l`'s first column (`-` for regular files there).
    pub fn letter(self) -> char {
        match self {
            FileType::Regular => 'f',
            FileType::Directory => 'd',
            FileType::Symlink => 'l',
            FileType::CharDevice => 'c',
            FileType::BlockDevice => 'b',
            FileType::Fifo => 'p',
        }
    }

    /// The word `--json` output uses.
    pub fn name(self) -> &'static str {
        match self {
            FileType::Regular => "file",
            FileType::Directory => "dir",
            FileType::Symlink => "symlink",
            FileType::CharDevice => "char",
            FileType::BlockDevice => "block",
            FileType::Fifo => "fifo",
        }
    }
}

impl std::str::FromStr for FileType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "f" => FileType::Regular,
            "d" => FileType::Directory,
            "l" => FileType::Symlink,
            "c" => FileType::CharDevice,
            "b" => FileType::BlockDevice,
            "p" => FileType::Fifo,
            other => return Err(format!("unknown type {other:?}: use one of f d l c b p")),
        })
    }
}

/// find(1)'s `-size [+-]N[ckMG]`: the size rounded **up** to whole units is
/// compared with N (so `-size -1M` matches only empty files, as in GNU find);
/// no suffix means 512-byte blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeTest {
    pub compare: std::cmp::Ordering,
    pub units: u64,
    pub unit: u64,
}

impl SizeTest {
    pub fn matches(&self, size: u64) -> bool {
        size.div_ceil(self.unit).cmp(&self.units) == self.compare
    }
}

impl std::str::FromStr for SizeTest {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (compare, rest) = match text.as_bytes().first() {
            Some(b'+') => (std::cmp::Ordering::Greater, &text[1..]),
            Some(b'-') => (std::cmp::Ordering::Less, &text[1..]),
            _ => (std::cmp::Ordering::Equal, text),
        };
        let (digits, unit) = match rest.char_indices().last() {
            Some((at, 'c')) => (&rest[..at], 1),
            Some((at, 'w')) => (&rest[..at], 2),
            Some((at, 'b')) => (&rest[..at], 512),
            Some((at, 'k')) => (&rest[..at], 1 << 10),
            Some((at, 'M')) => (&rest[..at], 1 << 20),
            Some((at, 'G')) => (&rest[..at], 1 << 30),
            _ => (rest, 512),
        };
        let units = digits
            .parse()
            .map_err(|_| format!("bad size {text:?}: use [+-]N[ckMG], e.g. +100M"))?;
        Ok(SizeTest {
            compare,
            units,
            unit,
        })
    }
}

/// Tests that must all hold for an entry to match; an empty query matches
/// everything.
#[derive(Debug, Clone, Default)]
pub struct FindQuery {
    pub file_type: Option<FileType>,
    /// A shell pattern for the entry's name (find's `-name`: fnmatch(3)
    /// without flags, so `*` matches a leading dot too).
    pub name: Option<CString>,
    pub size: Option<SizeTest>,
    /// Modified strictly after this (find's `-newermt`).
    pub newer: Option<Timestamp>,
    /// Has this extended attribute, whatever its value.
    pub xattr: Option<String>,
    /// Has the setuid or setgid bit (find's `-perm /6000`).
    pub setuid: bool,
}

impl FindQuery {
    /// Whether the entry called `name` (its last path component) matches.
    pub fn matches(&self, name: &OsStr, inode: &Inode) -> bool {
        self.file_type.is_none_or(|t| t == FileType::of(inode))
            && self
                .name
                .as_ref()
                .is_none_or(|pattern| fnmatch(pattern, name))
            && self.size.is_none_or(|test| test.matches(inode.size()))
            && self.newer.is_none_or(|t| inode.mtime > t)
            && self
                .xattr
                .as_ref()
                .is_none_or(|wanted| inode.xattrs.iter().any(|(n, _)| n == wanted))
            && (!self.setuid || inode.mode & 0o6000 != 0)
    }
}

/// Whether `name` matches the shell pattern `pattern` (fnmatch(3), no flags).
pub(crate) fn fnmatch(pattern: &CString, name: &OsStr) -> bool {
    // A name with a NUL byte cannot come from a tar header or a TOC.
    let Ok(name) = CString::new(name.as_bytes()) else {
        return false;
    };
    // SAFETY: both are NUL-terminated strings that outlive the call.
    unsafe { libc::fnmatch(pattern.as_ptr(), name.as_ptr(), 0) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_whole_units_as_gnu_find_does() {
        let over: SizeTest = "+100M".parse().unwrap();
        assert!(!over.matches(100 << 20));
        assert!(over.matches((100 << 20) + 1));
        let under: SizeTest = "-1M".parse().unwrap();
        assert!(under.matches(0) && !under.matches(1));
        let exact: SizeTest = "3c".parse().unwrap();
        assert!(exact.matches(3) && !exact.matches(4));
        let blocks: SizeTest = "2".parse().unwrap();
        assert!(blocks.matches(1000) && !blocks.matches(1025));
        assert!("+x".parse::<SizeTest>().is_err());
    }

    #[test]
    fn names_match_like_find_name() {
        let pattern = |p: &str| CString::new(p).unwrap();
        assert!(fnmatch(&pattern("*.so*"), OsStr::new("libc.so.6")));
        assert!(fnmatch(&pattern("*"), OsStr::new(".hidden")));
        assert!(!fnmatch(&pattern("lib?"), OsStr::new("lib64")));
        assert!(fnmatch(&pattern("[a-c]*"), OsStr::from_bytes(b"caf\xe9")));
    }
}
