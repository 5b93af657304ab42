//! Applies layers' entry tables bottom to top (OCI image-spec changeset rules, as
//! `umoci unpack` and podman's overlay storage produce), then freezes the
//! result into the inode table.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::{
    ContentLocation, DirEntry, Directory, Ino, Inode, InodeKind, ROOT_INO, Tree, TreeError,
};
use crate::layer::path::split_parent;
use crate::layer::{Device, EntryKind, EntryTable, TarEntry, Timestamp, Whiteout};

impl Tree {
    /// Merges `layers`, bottom layer first.
    pub fn build(layers: &[EntryTable]) -> Result<Tree, TreeError> {
        let mut merged = Merge::new();
        for (number, layer) in numbered(layers)? {
            merged.apply_layer(number, layer)?;
        }
        Ok(merged.freeze(ROOT))
    }
}

/// `layers` with their layer numbers, which must fit a [`ContentLocation`].
pub(super) fn numbered(
    layers: &[EntryTable],
) -> Result<impl Iterator<Item = (u32, &EntryTable)>, TreeError> {
    if u32::try_from(layers.len()).is_err() {
        return Err(TreeError::TooManyLayers {
            count: layers.len(),
        });
    }
    Ok((0..).zip(layers))
}

/// Index into `Merge::nodes`.
pub(super) type NodeId = usize;

/// The merged image's root directory.
pub(super) const ROOT: NodeId = 0;

/// Mutable merge state. Replaced or deleted nodes simply become unreachable
/// and are dropped by `freeze`; hardlinked names share one node, so nlink
/// falls out of counting names at the end instead of being tracked here.
/// Other trees may be grown in the same arena beside the merged one (see
/// `overlay.rs`), sharing its non-directory nodes.
pub(super) struct Merge {
    nodes: Vec<Node>,
}

struct Node {
    meta: Meta,
    kind: NodeKind,
}

#[derive(Clone)]
pub(super) struct Meta {
    /// The layer whose entry last set this metadata (0 = bottom); `None`
    /// for directories no entry named (implied parents, the root before a
    /// `./` entry).
    pub(super) layer: Option<u32>,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: Timestamp,
    pub(super) xattrs: Vec<(String, Vec<u8>)>,
}

pub(super) enum NodeKind {
    Regular(ContentLocation),
    /// Sorted, so `freeze` emits readdir order without sorting.
    Directory(BTreeMap<OsString, NodeId>),
    Symlink(OsString),
    CharDevice(Device),
    BlockDevice(Device),
    Fifo,
}

impl Meta {
    /// What tar unpackers give directories they create for a missing parent
    /// (and what the root has until a `./` entry says otherwise). The epoch
    /// keeps builds reproducible.
    pub(super) fn implicit_dir() -> Meta {
        Meta {
            layer: None,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            xattrs: Vec::new(),
        }
    }

    /// The metadata entry `entry` of layer `layer` sets.
    pub(super) fn of(layer: u32, entry: &TarEntry) -> Meta {
        Meta {
            layer: Some(layer),
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            mtime: entry.mtime,
            xattrs: entry.xattrs.clone(),
        }
    }
}

pub(super) fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

fn lossy(path: &OsString) -> String {
    path.to_string_lossy().into_owned()
}

impl Merge {
    pub(super) fn new() -> Merge {
        Merge {
            nodes: vec![Node {
                meta: Meta::implicit_dir(),
                kind: NodeKind::Directory(BTreeMap::new()),
            }],
        }
    }

    fn apply_layer(&mut self, layer: u32, index: &EntryTable) -> Result<(), TreeError> {
        self.apply_whiteouts(index);
        index
            .entries
            .iter()
            .try_for_each(|entry| self.apply_entry(layer, entry).map(drop))
    }

    /// Whiteouts only hide lower layers, so they go before the layer's
    /// entries; those then land regardless of where the markers sat in the
    /// tar.
    pub(super) fn apply_whiteouts(&mut self, index: &EntryTable) {
        for whiteout in &index.whiteouts {
            self.apply_whiteout(whiteout);
        }
    }

    fn apply_whiteout(&mut self, whiteout: &Whiteout) {
        match whiteout {
            Whiteout::Remove(path) => {
                if let Some((parent, name)) = split_parent(path.as_bytes())
                    && let Some(children) = self.find(parent).and_then(|dir| self.children_mut(dir))
                {
                    children.remove(OsStr::from_bytes(name));
                }
            }
            Whiteout::Opaque(dir) => {
                if let Some(children) = self
                    .find(dir.as_bytes())
                    .and_then(|dir| self.children_mut(dir))
                {
                    children.clear();
                }
            }
        }
    }

    /// Applies one entry of layer `layer`; returns the node its path now
    /// names when that is not a directory (a new node, or for a hardlink the
    /// node it shares), else `None`.
    pub(super) fn apply_entry(
        &mut self,
        layer: u32,
        entry: &TarEntry,
    ) -> Result<Option<NodeId>, TreeError> {
        let Some((parent, name)) = split_parent(entry.path.as_bytes()) else {
            // The root itself (`./`): only its metadata can change.
            return match entry.kind {
                EntryKind::Directory => {
                    self.nodes[ROOT].meta = Meta::of(layer, entry);
                    Ok(None)
                }
                _ => Err(TreeError::RootNotDirectory { layer }),
            };
        };
        let kind = match &entry.kind {
            EntryKind::Hardlink { target } => {
                // Resolved against the state before this entry: same layer
                // (earlier in the tar) or lower.
                let node = self.hardlink_target(layer, entry, target)?;
                let parent = self.ensure_dir(parent);
                self.insert(parent, name, node);
                return Ok(Some(node));
            }
            EntryKind::Directory => NodeKind::Directory(BTreeMap::new()),
            kind @ (EntryKind::Regular { .. } | EntryKind::Sparse { .. }) => NodeKind::Regular(
                ContentLocation::of_entry(layer, kind).expect("a regular file has content"),
            ),
            EntryKind::Symlink { target } => NodeKind::Symlink(target.clone()),
            EntryKind::CharDevice(device) => NodeKind::CharDevice(*device),
            EntryKind::BlockDevice(device) => NodeKind::BlockDevice(*device),
            EntryKind::Fifo => NodeKind::Fifo,
        };
        let parent = self.ensure_dir(parent);
        if let NodeKind::Directory(_) = kind
            && let Some(existing) = self.child(parent, name)
            && self.is_dir(existing)
        {
            // A directory over a directory merges: children stay, metadata
            // is the new one.
            self.nodes[existing].meta = Meta::of(layer, entry);
            return Ok(None);
        }
        let is_dir = matches!(kind, NodeKind::Directory(_));
        let node = self.push(Meta::of(layer, entry), kind);
        // Replaces whatever had this name, dropping a replaced directory's
        // whole subtree.
        self.insert(parent, name, node);
        Ok((!is_dir).then_some(node))
    }

    fn hardlink_target(
        &self,
        layer: u32,
        entry: &TarEntry,
        target: &OsString,
    ) -> Result<NodeId, TreeError> {
        match self.find(target.as_bytes()) {
            None => Err(TreeError::HardlinkTargetMissing {
                layer,
                path: lossy(&entry.path),
                target: lossy(target),
            }),
            Some(node) if self.is_dir(node) => Err(TreeError::HardlinkToDirectory {
                layer,
                path: lossy(&entry.path),
                target: lossy(target),
            }),
            Some(node) => Ok(node),
        }
    }

    /// Walks `path` without creating anything or following symlinks.
    fn find(&self, path: &[u8]) -> Option<NodeId> {
        components(path).try_fold(ROOT, |dir, name| self.child(dir, name))
    }

    pub(super) fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        match &self.nodes[dir].kind {
            NodeKind::Directory(children) => children.get(OsStr::from_bytes(name)).copied(),
            _ => None,
        }
    }

    fn children_mut(&mut self, dir: NodeId) -> Option<&mut BTreeMap<OsString, NodeId>> {
        match &mut self.nodes[dir].kind {
            NodeKind::Directory(children) => Some(children),
            _ => None,
        }
    }

    pub(super) fn is_dir(&self, node: NodeId) -> bool {
        matches!(self.nodes[node].kind, NodeKind::Directory(_))
    }

    /// Returns the directory at `path`, creating missing components with
    /// implicit metadata. A non-directory in the way is replaced, as in
    /// overlay storage where each layer's implicit parents are real
    /// directories shadowing whatever lower layers had there.
    fn ensure_dir(&mut self, path: &[u8]) -> NodeId {
        self.ensure_dir_in(ROOT, path, None)
    }

    /// `ensure_dir` for the tree below `root`; a component it creates copies
    /// the metadata of the directory at the same path below `like`, where
    /// there is one, instead of taking implicit metadata.
    pub(super) fn ensure_dir_in(
        &mut self,
        root: NodeId,
        path: &[u8],
        mut like: Option<NodeId>,
    ) -> NodeId {
        let mut dir = root;
        for name in components(path) {
            like = like
                .and_then(|model| self.child(model, name))
                .filter(|&model| self.is_dir(model));
            dir = match self.child(dir, name) {
                Some(existing) if self.is_dir(existing) => existing,
                _ => {
                    let meta = like
                        .map_or_else(Meta::implicit_dir, |model| self.nodes[model].meta.clone());
                    let created = self.push(meta, NodeKind::Directory(BTreeMap::new()));
                    self.insert(dir, name, created);
                    created
                }
            };
        }
        dir
    }

    pub(super) fn meta(&self, node: NodeId) -> &Meta {
        &self.nodes[node].meta
    }

    pub(super) fn meta_mut(&mut self, node: NodeId) -> &mut Meta {
        &mut self.nodes[node].meta
    }

    /// Every node's metadata, reachable or not, each once.
    pub(super) fn for_each_meta(&mut self, f: impl FnMut(&mut Meta)) {
        self.nodes.iter_mut().map(|node| &mut node.meta).for_each(f);
    }

    pub(super) fn push(&mut self, meta: Meta, kind: NodeKind) -> NodeId {
        self.nodes.push(Node { meta, kind });
        self.nodes.len() - 1
    }

    /// `dir` always comes from `ensure_dir` (or the view's equivalent), so
    /// it is a directory.
    pub(super) fn insert(&mut self, dir: NodeId, name: &[u8], node: NodeId) {
        if let Some(children) = self.children_mut(dir) {
            children.insert(OsString::from_vec(name.to_vec()), node);
        }
    }

    /// Numbers nodes reachable from `root`, which becomes the tree's root,
    /// breadth-first (so a directory's children get neighbouring inode
    /// numbers) and counts links.
    pub(super) fn freeze(self, root: NodeId) -> Tree {
        let mut slots: Vec<Slot> = self.nodes.into_iter().map(Slot::Pending).collect();
        let mut table = Table::default();
        if let Slot::Pending(root) = std::mem::replace(&mut slots[root], Slot::Placed(ROOT_INO)) {
            table.place(root, ROOT_INO);
        }
        while let Some((dir_ino, children)) = table.queue.pop_front() {
            let mut entries = Vec::with_capacity(children.len());
            let mut subdirs = 0;
            for (name, id) in children {
                let next = table.inodes.len() as Ino + 1;
                let ino = match std::mem::replace(&mut slots[id], Slot::Placed(next)) {
                    Slot::Pending(node) => {
                        subdirs += u32::from(matches!(node.kind, NodeKind::Directory(_)));
                        table.place(node, dir_ino)
                    }
                    // Another name of an already numbered non-directory: a
                    // hardlink.
                    Slot::Placed(ino) => {
                        slots[id] = Slot::Placed(ino);
                        table.inodes[ino as usize - 1].nlink += 1;
                        ino
                    }
                };
                entries.push(DirEntry { name, ino });
            }
            let dir = &mut table.inodes[dir_ino as usize - 1];
            dir.nlink += subdirs;
            if let InodeKind::Directory(directory) = &mut dir.kind {
                directory.entries = entries;
            }
        }
        Tree {
            inodes: table.inodes,
        }
    }
}

enum Slot {
    Pending(Node),
    Placed(Ino),
}

/// The inode table under construction plus directories whose children
/// still need numbers.
#[derive(Default)]
struct Table {
    inodes: Vec<Inode>,
    queue: VecDeque<(Ino, BTreeMap<OsString, NodeId>)>,
}

impl Table {
    /// Appends `node` as the next inode and returns its number.
    fn place(&mut self, node: Node, parent: Ino) -> Ino {
        let ino = self.inodes.len() as Ino + 1;
        let (kind, nlink) = match node.kind {
            NodeKind::Directory(children) => {
                self.queue.push_back((ino, children));
                let entries = Vec::new();
                (InodeKind::Directory(Directory { parent, entries }), 2)
            }
            NodeKind::Regular(location) => (InodeKind::Regular(location), 1),
            NodeKind::Symlink(target) => (InodeKind::Symlink(target), 1),
            NodeKind::CharDevice(device) => (InodeKind::CharDevice(device), 1),
            NodeKind::BlockDevice(device) => (InodeKind::BlockDevice(device), 1),
            NodeKind::Fifo => (InodeKind::Fifo, 1),
        };
        self.inodes.push(Inode {
            kind,
            layer: node.meta.layer,
            mode: node.meta.mode,
            uid: node.meta.uid,
            gid: node.meta.gid,
            mtime: node.meta.mtime,
            nlink,
            xattrs: node.meta.xattrs,
        });
        ino
    }
}
