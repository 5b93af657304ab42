//! `fuser::Filesystem` over a [`RootFs`]: each operation is one tree query
//! turned into a reply, except `read`, which goes to the read pool.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenAccMode,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};

use crate::rootfs::RootFs;
use crate::tree::{ContentLocation, Ino, ROOT_INO, Tree};

use super::attr::{file_attr, file_type, negative_entry};
use super::read_pool::{self, ReadJob, ReadPool};

/// The tree never changes while mounted, so the kernel may cache entries,
/// attributes and negative lookups for long.
/// Read on the mount's root, this (unlisted) attribute returns the mount's
/// transfer counters as JSON: how `lazyimg stats` asks a running daemon.
pub const STATS_XATTR: &str = "user.lazyimg.stats";

pub(super) const TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Inodes are never reused within a mount.
pub(super) const GENERATION: Generation = Generation(0);
/// `statfs` unit; matches `st_blksize`.
const STATFS_BLOCK: u64 = 4096;
const NAME_MAX: u32 = 255;

/// Kernel features we ask for beyond fuser's defaults (which already include
/// `FUSE_ASYNC_READ`). Attributes cost nothing here, so every directory
/// listing carries them (readdirplus) and spares the kernel one lookup per
/// name; lookups in one directory may run in parallel because nothing
/// changes; symlink targets may stay in the page cache.
pub(super) const WANTED: InitFlags = InitFlags::FUSE_DO_READDIRPLUS
    .union(InitFlags::FUSE_PARALLEL_DIROPS)
    .union(InitFlags::FUSE_CACHE_SYMLINKS);

pub(crate) struct Adapter {
    rootfs: Arc<RootFs>,
    owner: Option<(u32, u32)>,
    reads: ReadPool,
    /// Precomputed for `statfs`: the tree is immutable.
    total_blocks: u64,
}

impl Adapter {
    pub(crate) fn new(
        rootfs: Arc<RootFs>,
        owner: Option<(u32, u32)>,
        read_workers: usize,
    ) -> io::Result<Adapter> {
        let total_bytes: u64 = (1..=rootfs.tree.inode_count() as Ino)
            .filter_map(|ino| rootfs.tree.attr(ino)?.content())
            .map(|location| location.size)
            .sum();
        Ok(Adapter {
            reads: ReadPool::new(read_workers)?,
            rootfs,
            owner,
            total_blocks: total_bytes.div_ceil(STATFS_BLOCK),
        })
    }

    fn tree(&self) -> &Tree {
        &self.rootfs.tree
    }

    fn attr(&self, ino: Ino) -> Option<FileAttr> {
        Some(file_attr(ino, self.tree().attr(ino)?, self.owner))
    }

    /// `.`, `..` and the children of `dir`, each with its readdir cookie:
    /// the position of the entry after it, which is where the kernel asks to
    /// resume. Positions are stable because the tree never changes.
    fn dir_entries(&self, dir: Ino) -> Option<impl Iterator<Item = (u64, Ino, &OsStr)>> {
        let tree = self.tree();
        let dots = [
            (dir, OsStr::new(".")),
            (tree.parent(dir)?, OsStr::new("..")),
        ];
        let children = tree
            .children(dir)?
            .iter()
            .map(|e| (e.ino, e.name.as_os_str()));
        Some(
            dots.into_iter()
                .chain(children)
                .zip(1u64..)
                .map(|((ino, name), cookie)| (cookie, ino, name)),
        )
    }
}

/// Offsets beyond `usize` are past any directory's end.
pub(super) fn skip_count(offset: u64) -> usize {
    usize::try_from(offset).unwrap_or(usize::MAX)
}

/// Answer for an operation on an inode of the wrong kind (or none at all).
fn wrong_kind(tree: &Tree, ino: Ino, expected_dir: bool) -> Errno {
    match tree.attr(ino) {
        None => Errno::ENOENT,
        Some(inode) if inode.is_dir() && !expected_dir => Errno::EISDIR,
        Some(_) if expected_dir => Errno::ENOTDIR,
        Some(_) => Errno::EINVAL,
    }
}

/// Size-probe protocol shared by getxattr and listxattr: size 0 asks for the
/// length, a buffer too small is ERANGE.
pub(super) fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    match u32::try_from(value.len()) {
        Err(_) => reply.error(Errno::E2BIG),
        Ok(needed) if size == 0 => reply.size(needed),
        Ok(needed) if needed > size => reply.error(Errno::ERANGE),
        Ok(_) => reply.data(value),
    }
}

/// listxattr(2)'s answer for `names`: each name followed by a NUL byte.
pub(super) fn xattr_name_list<'a>(names: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let mut list = Vec::new();
    for name in names {
        list.extend_from_slice(name.as_bytes());
        list.push(0);
    }
    list
}

/// Answers a read of up to `size` bytes at `offset` of the file at
/// `location` (inode `ino`) in `rootfs`.
pub(super) fn read_file(
    rootfs: &Arc<RootFs>,
    reads: &ReadPool,
    ino: Ino,
    location: ContentLocation,
    offset: u64,
    size: u32,
    reply: ReplyData,
) {
    let available = location.size.saturating_sub(offset);
    // `size` is a u32, so the clamped length fits in usize.
    let len = u64::from(size).min(available) as usize;
    if len == 0 {
        return reply.data(&[]);
    }
    // Cached content is answered here, so it never queues behind reads
    // that wait on the network in the pool.
    if let Some(ready) = rootfs.content.read_ready(&location, offset, len) {
        return read_pool::answer(ino, &location, offset, len, ready, reply);
    }
    let job = ReadJob {
        ino,
        location,
        offset,
        len,
        reply,
    };
    reads.submit(rootfs, job);
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Features an old kernel lacks are simply not used.
        let wanted = WANTED & config.capabilities();
        config
            .add_capabilities(wanted)
            .map_err(|missing| io::Error::other(format!("kernel lacks {missing:?}")))
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.tree().lookup(parent.0, name) {
            Some(ino) => match self.attr(ino) {
                Some(attr) => reply.entry(&TTL, &attr, GENERATION),
                None => reply.error(Errno::EIO),
            },
            // Node id 0 with a TTL: the kernel caches the miss, which spares
            // round trips for PATH, library and import path searches.
            None if self.tree().children(parent.0).is_some() => {
                reply.entry(&TTL, &negative_entry(), GENERATION)
            }
            None => reply.error(wrong_kind(self.tree(), parent.0, true)),
        }
    }

    // Default `forget` (a no-op) is right: inodes live as long as the tree.

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree().readlink(ino.0) {
            Some(target) => reply.data(target.as_bytes()),
            None => reply.error(wrong_kind(self.tree(), ino.0, false)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.tree().attr(ino.0).and_then(|inode| inode.content()) {
            // Stateless reads: the inode number is all `read` needs. The
            // content never changes, so cached pages stay valid across opens.
            Some(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            None => reply.error(wrong_kind(self.tree(), ino.0, false)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(location) = self
            .tree()
            .attr(ino.0)
            .and_then(|inode| inode.content())
            .cloned()
        else {
            return reply.error(wrong_kind(self.tree(), ino.0, false));
        };
        read_file(
            &self.rootfs,
            &self.reads,
            ino.0,
            location,
            offset,
            size,
            reply,
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever buffered for writing.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    // Default `release` and `releasedir` (Ok) fit: there is no per-open state.

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.tree().children(ino.0).is_none() {
            return reply.error(wrong_kind(self.tree(), ino.0, true));
        }
        // Listings never change, so the kernel may keep them in its
        // directory cache across opens instead of asking again.
        let cached = FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE;
        reply.opened(FileHandle(0), cached);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = self.dir_entries(ino.0) else {
            return reply.error(wrong_kind(self.tree(), ino.0, true));
        };
        for (cookie, child, name) in entries.skip(skip_count(offset)) {
            let Some(inode) = self.tree().attr(child) else {
                return reply.error(Errno::EIO);
            };
            if reply.add(INodeNo(child), cookie, file_type(&inode.kind), name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(entries) = self.dir_entries(ino.0) else {
            return reply.error(wrong_kind(self.tree(), ino.0, true));
        };
        for (cookie, child, name) in entries.skip(skip_count(offset)) {
            let Some(attr) = self.attr(child) else {
                return reply.error(Errno::EIO);
            };
            if reply.add(INodeNo(child), cookie, name, &TTL, &attr, GENERATION) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.tree().inode_count() as u64;
        // Nothing is free: the filesystem is read-only (MS_RDONLY comes from
        // the mount flags, statfs has no field for it).
        let block = STATFS_BLOCK as u32;
        reply.statfs(self.total_blocks, 0, 0, files, 0, block, NAME_MAX, block);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if ino.0 == ROOT_INO
            && name == STATS_XATTR
            && let Some(stats) = self.rootfs.stats.as_ref().map(|s| s.report())
        {
            let json = serde_json::to_vec(&stats).expect("stats always serialise");
            return reply_xattr(reply, size, &json);
        }
        match self.tree().xattr(ino.0, name) {
            Some(value) => reply_xattr(reply, size, value),
            None if self.tree().attr(ino.0).is_some() => reply.error(Errno::NO_XATTR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(names) = self.tree().list_xattrs(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        reply_xattr(reply, size, &xattr_name_list(names));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Never called under `default_permissions` (the kernel checks the
        // modes itself, and W_OK on a read-only mount fails before us); Ok
        // keeps that true should the option ever be dropped.
        reply.ok();
    }

    // Everything below would modify the image: EROFS, not ENOSYS, so callers
    // see "read-only file system" and the kernel does not fall back to
    // another way of trying.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    /// Tools probe file flags (e.g. FS_IOC_GETFLAGS when podman sets up its
    /// overlay); an image has none to offer, and ENOTTY is the standard answer.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }
}
