//! Read-only queries the FUSE adapter maps its operations onto. Unknown
//! inode numbers and wrong inode kinds yield `None`, never a panic.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::{
    ContentLocation, DIR_SIZE, DirEntry, Directory, Ino, Inode, InodeKind, ROOT_INO, Tree,
};

const S_IFIFO: u32 = 0o010000;
const S_IFCHR: u32 = 0o020000;
const S_IFDIR: u32 = 0o040000;
const S_IFBLK: u32 = 0o060000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl Tree {
    /// Number of inodes; valid inode numbers are `1..=inode_count()`.
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    pub fn attr(&self, ino: Ino) -> Option<&Inode> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.inodes.get(index)
    }

    /// The entry `name` in directory `parent`; `.` and `..` are not entries.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Option<Ino> {
        let entries = &self.directory(parent)?.entries;
        let found = entries
            .binary_search_by(|entry| entry.name.as_bytes().cmp(name.as_bytes()))
            .ok()?;
        Some(entries[found].ino)
    }

    /// Entries sorted by name bytes, without `.` and `..` (see module docs
    /// for readdir offsets).
    pub fn children(&self, ino: Ino) -> Option<&[DirEntry]> {
        Some(&self.directory(ino)?.entries)
    }

    /// The directory containing directory `ino`, for `..`; the root's
    /// parent is the root.
    pub fn parent(&self, ino: Ino) -> Option<Ino> {
        Some(self.directory(ino)?.parent)
    }

    pub fn readlink(&self, ino: Ino) -> Option<&OsStr> {
        match &self.attr(ino)?.kind {
            InodeKind::Symlink(target) => Some(target),
            _ => None,
        }
    }

    pub fn xattr(&self, ino: Ino, name: &OsStr) -> Option<&[u8]> {
        let xattrs = &self.attr(ino)?.xattrs;
        let (_, value) = xattrs
            .iter()
            .find(|(n, _)| n.as_bytes() == name.as_bytes())?;
        Some(value)
    }

    pub fn list_xattrs(&self, ino: Ino) -> Option<impl Iterator<Item = &str>> {
        Some(self.attr(ino)?.xattrs.iter().map(|(name, _)| name.as_str()))
    }

    /// Walks a `/`-separated path from the root without following symlinks;
    /// empty and `.` components are skipped, `..` is not interpreted.
    pub fn resolve_path(&self, path: impl AsRef<OsStr>) -> Option<Ino> {
        path.as_ref()
            .as_bytes()
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .try_fold(ROOT_INO, |dir, name| {
                self.lookup(dir, OsStr::from_bytes(name))
            })
    }

    fn directory(&self, ino: Ino) -> Option<&Directory> {
        match &self.attr(ino)?.kind {
            InodeKind::Directory(directory) => Some(directory),
            _ => None,
        }
    }
}

impl Inode {
    /// `st_size`: file length, `DIR_SIZE` for directories, target length for
    /// symlinks, 0 for devices and fifos.
    pub fn size(&self) -> u64 {
        match &self.kind {
            InodeKind::Regular(location) => location.size,
            InodeKind::Directory(_) => DIR_SIZE,
            InodeKind::Symlink(target) => target.len() as u64,
            InodeKind::CharDevice(_) | InodeKind::BlockDevice(_) | InodeKind::Fifo => 0,
        }
    }

    /// `st_mode`: file type bits plus permission bits.
    pub fn st_mode(&self) -> u32 {
        let file_type = match self.kind {
            InodeKind::Regular(_) => S_IFREG,
            InodeKind::Directory(_) => S_IFDIR,
            InodeKind::Symlink(_) => S_IFLNK,
            InodeKind::CharDevice(_) => S_IFCHR,
            InodeKind::BlockDevice(_) => S_IFBLK,
            InodeKind::Fifo => S_IFIFO,
        };
        file_type | self.mode
    }

    /// Device number in the kernel's `new_encode_dev` layout, which is what
    /// the 32-bit FUSE `rdev` field carries; 0 for non-devices.
    pub fn rdev(&self) -> u32 {
        match self.kind {
            InodeKind::CharDevice(device) | InodeKind::BlockDevice(device) => {
                (device.minor & 0xff)
                    | ((device.major & 0xfff) << 8)
                    | ((device.minor & !0xff) << 12)
            }
            _ => 0,
        }
    }

    pub fn content(&self) -> Option<&ContentLocation> {
        match &self.kind {
            InodeKind::Regular(location) => Some(location),
            _ => None,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, InodeKind::Directory(_))
    }
}
