//! `fuser::Filesystem` over a [`LayerStore`]: Podman's additional layer
//! store. Every answer comes from the store's namespace (which name leads
//! where) or, below a layer's `diff`, from the image's tree; file bytes go
//! through the read pool. The only writes answered are Podman's
//! notifications (see [`crate::rootfs::layer_store`]); other modifying
//! operations keep fuser's ENOSYS, as nothing but Podman writes here.

use std::ffi::OsStr;
use std::io;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo,
    IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyXattr,
    Request,
};

use crate::rootfs::layer_store::{LayerStore, Node, NodeKind, USE_FILE};

use super::adapter::{
    GENERATION, TTL, WANTED, read_file, reply_xattr, skip_count, xattr_name_list,
};
use super::attr::file_attr;
use super::errno::read_errno;
use super::read_pool::ReadPool;

pub(crate) struct StoreAdapter {
    store: Arc<LayerStore>,
    reads: ReadPool,
}

impl StoreAdapter {
    pub(crate) fn new(store: Arc<LayerStore>, read_workers: usize) -> io::Result<StoreAdapter> {
        Ok(StoreAdapter {
            store,
            reads: ReadPool::new(read_workers)?,
        })
    }

    fn attr(&self, node: Node) -> Option<FileAttr> {
        Some(match self.store.kind(node)? {
            NodeKind::Dir => own_attr(node, FileType::Directory, 0),
            NodeKind::File(size) => own_attr(node, FileType::RegularFile, size),
            NodeKind::Tree(image, ino) => file_attr(node.ino(), image.rootfs.tree.attr(ino)?, None),
        })
    }

    /// `.`, `..` and the children of `node`, each with its readdir cookie
    /// (as in the image adapter).
    fn entries(&self, node: Node) -> Option<Vec<(u64, Node, std::ffi::OsString)>> {
        let parent = self.store.parent(node)?;
        let children = self.store.children(node)?;
        let dots = [(".".into(), node), ("..".into(), parent)];
        Some(
            dots.into_iter()
                .chain(children)
                .zip(1u64..)
                .map(|((name, node), cookie)| (cookie, node, name))
                .collect(),
        )
    }
}

/// The store's own directories and files: read-only for everyone (Podman
/// runs as root, overlayfs reads as the mounter), owned by root.
fn own_attr(node: Node, kind: FileType, size: u64) -> FileAttr {
    let dir = kind == FileType::Directory;
    FileAttr {
        ino: INodeNo(node.ino()),
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm: if dir { 0o555 } else { 0o444 },
        nlink: if dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn node(ino: INodeNo) -> Result<Node, Errno> {
    Node::of(ino.0).ok_or(Errno::ENOENT)
}

impl Filesystem for StoreAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let wanted = WANTED & config.capabilities();
        config
            .add_capabilities(wanted)
            .map_err(|missing| io::Error::other(format!("kernel lacks {missing:?}")))
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = match node(parent) {
            Ok(parent) => parent,
            Err(e) => return reply.error(e),
        };
        // A miss is not cached: a reference that failed may resolve later.
        match self.store.lookup(parent, name).and_then(|n| self.attr(n)) {
            Some(attr) => reply.entry(&TTL, &attr, GENERATION),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match node(ino).ok().and_then(|n| self.attr(n)) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let target = match node(ino) {
            Ok(Node::Tree(slot, ino)) => self.store.image(slot).and_then(|image| {
                Some(Bytes::copy_from_slice(
                    image.rootfs.tree.readlink(ino)?.as_encoded_bytes(),
                ))
            }),
            _ => None,
        };
        match target {
            Some(target) => reply.data(&target),
            None => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match node(ino).ok().and_then(|n| self.attr(n)) {
            // Nothing here ever changes: cached pages stay valid across opens.
            Some(attr) if attr.kind == FileType::RegularFile => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Some(attr) if attr.kind == FileType::Directory => reply.error(Errno::EISDIR),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
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
        let node = match node(ino) {
            Ok(node) => node,
            Err(e) => return reply.error(e),
        };
        if let Node::Tree(slot, ino) = node {
            let Some(image) = self.store.image(slot) else {
                return reply.error(Errno::ENOENT);
            };
            let Some(location) = image
                .rootfs
                .tree
                .attr(ino)
                .and_then(|i| i.content())
                .cloned()
            else {
                return reply.error(Errno::EINVAL);
            };
            return read_file(
                &image.rootfs,
                &self.reads,
                ino,
                location,
                offset,
                size,
                reply,
            );
        }
        // `info` and `blob`: a blob's first read may download it whole.
        let store = Arc::clone(&self.store);
        self.reads
            .run(move || match store.read(node, offset, size as usize) {
                Some(Ok(bytes)) => reply.data(&bytes),
                Some(Err(e)) => {
                    tracing::error!("layer store: reading {node:?} at {offset}: {e}");
                    reply.error(read_errno(&e));
                }
                None => reply.error(Errno::EISDIR),
            });
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

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match node(ino).ok().and_then(|n| self.attr(n)) {
            Some(attr) if attr.kind == FileType::Directory => {
                reply.opened(FileHandle(0), FopenFlags::empty())
            }
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = node(ino).ok().and_then(|n| self.entries(n)) else {
            return reply.error(Errno::ENOTDIR);
        };
        for (cookie, child, name) in entries.into_iter().skip(skip_count(offset)) {
            let Some(attr) = self.attr(child) else {
                return reply.error(Errno::EIO);
            };
            if reply.add(INodeNo(child.ino()), cookie, attr.kind, &name) {
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
        let Some(entries) = node(ino).ok().and_then(|n| self.entries(n)) else {
            return reply.error(Errno::ENOTDIR);
        };
        for (cookie, child, name) in entries.into_iter().skip(skip_count(offset)) {
            let Some(attr) = self.attr(child) else {
                return reply.error(Errno::EIO);
            };
            if reply.add(INodeNo(child.ino()), cookie, &name, &TTL, &attr, GENERATION) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match node(ino) {
            Ok(Node::Tree(slot, ino)) => {
                let image = self.store.image(slot);
                match image.as_ref().and_then(|i| i.rootfs.tree.xattr(ino, name)) {
                    Some(value) => reply_xattr(reply, size, value),
                    None => reply.error(Errno::NO_XATTR),
                }
            }
            Ok(_) => reply.error(Errno::NO_XATTR),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut list = Vec::new();
        if let Ok(Node::Tree(slot, ino)) = node(ino)
            && let Some(image) = self.store.image(slot)
            && let Some(names) = image.rootfs.tree.list_xattrs(ino)
        {
            list = xattr_name_list(names);
        }
        reply_xattr(reply, size, &list);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // As in the image adapter: `default_permissions` checks modes.
        reply.ok();
    }

    /// Podman's "I use this layer" (containers/storage overlay.go
    /// `notifyUseAdditionalLayer`): creating `use` in a layer directory,
    /// answered with ENOENT as a notification-aware store must.
    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match node(parent) {
            Ok(layer @ Node::Layer(..)) if name == USE_FILE => {
                let what = self.store.describe(layer).unwrap_or_default();
                tracing::info!("layer store: Podman uses layer {what}");
                reply.error(Errno::ENOENT);
            }
            _ => reply.error(Errno::EROFS),
        }
    }

    /// Podman's "I no longer use this layer" (overlay.go
    /// `notifyReleaseAdditionalLayer`, also what `podman rmi` ends in):
    /// `rmdir` of the layer directory, answered with ENOENT; the layer stays.
    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let layer = node(parent)
            .ok()
            .and_then(|parent| match parent {
                Node::Image(_) => self.store.lookup(parent, name),
                _ => None,
            })
            .and_then(|layer| self.store.describe(layer));
        match layer {
            Some(what) => {
                tracing::info!("layer store: Podman released layer {what}");
                reply.error(Errno::ENOENT);
            }
            None => reply.error(Errno::EROFS),
        }
    }

    /// As in the image adapter: file flags probes get the standard "none".
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
}
