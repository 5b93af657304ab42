//! Every layer of an image in overlayfs lower-layer format: the layer's own
//! entries, unmerged, as `mount -t overlay -o lowerdir=…` reads them, so that
//! a kernel overlay of the views shows what [`Tree::build`] shows.
//!
//! The OCI markers (image-spec `layer.md`, "Whiteouts") become what
//! overlayfs looks for in a lower layer (kernel
//! `Documentation/filesystems/overlayfs.rst`, "whiteouts and opaque
//! directories"):
//! - `DIR/.wh.NAME` becomes a character device 0/0 named `NAME`, unless the
//!   layer itself puts something at `NAME` (a non-directory there hides the
//!   lower one anyway; a directory there is made opaque, because a
//!   directory over a lower directory would otherwise merge with it, while
//!   OCI deletes the lower one first);
//! - `DIR/.wh..wh..opq` becomes the xattr `<ns>.overlay.opaque` = `y` on
//!   `DIR`, `<ns>` being the namespace of [`OverlayXattrs`].
//!
//! All views live in one tree, layer `n` in the root's directory
//! [`layer_dir_name`]`(n)`, so that one FUSE mount serves them and file
//! content locations keep naming the image's layer numbers: the image's one
//! content reader serves every view. Sharing one tree is also what keeps
//! hardlinks across layers hardlinks: a layer's hardlink to a lower layer's
//! file is another name of that very inode (overlayfs reports a lower
//! file's own `st_ino`, and with every layer on one filesystem its
//! `st_dev` is the overlay's), where separate filesystems could only give a
//! copy. nlink therefore counts a file's names in all views.
//!
//! A directory the layer implies without an entry of its own (a missing
//! parent, or the directory of a whiteout) takes the metadata the merged
//! image has there, so the topmost layer's copy, which overlayfs shows, is
//! what `Tree::build` keeps. (containers/storage and stargz-snapshotter
//! give such directories 0755 root instead, which overlays differently
//! from the OCI merge.)

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use super::Tree;
use super::TreeError;
use super::build::{Merge, Meta, NodeId, NodeKind, ROOT, components, numbered};
use crate::layer::path::split_parent;
use crate::layer::{Device, EntryTable, Timestamp, Whiteout};

/// The xattr namespace overlayfs reads its markers from, which the mount
/// chooses: `trusted.overlay.*` by default, `user.overlay.*` with the
/// `userxattr` option (unprivileged overlay mounts, rootless Podman). A view
/// carries one namespace only: overlayfs hides its own namespace's
/// `overlay.*` xattrs from the merged view but shows the other's as
/// ordinary xattrs, so marking both would leak the unused one into every
/// container's opaque directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OverlayXattrs {
    Trusted,
    User,
}

impl OverlayXattrs {
    /// `trusted.overlay.` or `user.overlay.`.
    pub fn prefix(self) -> &'static str {
        match self {
            OverlayXattrs::Trusted => "trusted.overlay.",
            OverlayXattrs::User => "user.overlay.",
        }
    }

    /// The opaque-directory marker.
    fn opaque(self) -> String {
        format!("{}opaque", self.prefix())
    }

    /// The name under which a layer stores its own xattr `name`. A tar's
    /// `<ns>.overlay.X` would be read by overlayfs as one of its markers
    /// (opaque, redirect, metacopy…), letting an image steer the overlay;
    /// overlayfs ≥ 6.7 reads `<ns>.overlay.overlay.X` in a layer as the
    /// plain xattr `<ns>.overlay.X` ("Nesting overlayfs mounts" in
    /// overlayfs.rst), so escaping keeps the value and loses the power.
    fn escape(self, name: String) -> String {
        let prefix = self.prefix();
        match name.strip_prefix(prefix) {
            Some(rest) => format!("{prefix}overlay.{rest}"),
            None => name,
        }
    }
}

/// The root's entry holding layer `layer`'s view in
/// [`Tree::overlay_layers`]: the layer number in decimal, bottom layer 0.
pub fn layer_dir_name(layer: u32) -> OsString {
    OsString::from(layer.to_string())
}

impl Tree {
    /// The overlay-format view of each of `layers` (bottom layer first), in
    /// the root's directories [`layer_dir_name`]; see the module docs.
    /// Mounting them with `lowerdir=N:…:1:0` (top layer first) shows what
    /// [`Tree::build`] of `layers` shows.
    pub fn overlay_layers(layers: &[EntryTable], xattrs: OverlayXattrs) -> Result<Tree, TreeError> {
        // The merged tree grows alongside the views, in the same arena: it
        // resolves hardlinks and supplies implied directories' metadata,
        // and its non-directory nodes are the views' nodes.
        let mut arena = Merge::new();
        let mut views = BTreeMap::new();
        let mut opaque = Vec::new();
        for (layer, index) in numbered(layers)? {
            let view = arena.add_layer_view(layer, index, &mut opaque)?;
            views.insert(layer_dir_name(layer), view);
        }
        // Every node once (views share nodes), and before the markers,
        // which must stay unescaped.
        arena.for_each_meta(|meta| {
            for (name, _) in &mut meta.xattrs {
                *name = xattrs.escape(std::mem::take(name));
            }
        });
        let marker = xattrs.opaque();
        for dir in opaque {
            let meta = arena.meta_mut(dir);
            if !meta.xattrs.iter().any(|(name, _)| *name == marker) {
                meta.xattrs.push((marker.clone(), b"y".to_vec()));
            }
        }
        let root = arena.push(Meta::implicit_dir(), NodeKind::Directory(views));
        Ok(arena.freeze(root))
    }
}

impl Merge {
    /// Applies layer `layer` to the merged tree and builds its view, noting
    /// the view's directories to be made opaque in `opaque`; returns the
    /// view's root directory.
    fn add_layer_view(
        &mut self,
        layer: u32,
        index: &EntryTable,
        opaque: &mut Vec<NodeId>,
    ) -> Result<NodeId, TreeError> {
        self.apply_whiteouts(index);
        let view = self.push(Meta::implicit_dir(), NodeKind::Directory(BTreeMap::new()));
        for entry in &index.entries {
            let placed = self.apply_entry(layer, entry)?;
            // The root's own entry (`./`) only sets metadata, copied below.
            let Some((parent, name)) = split_parent(entry.path.as_bytes()) else {
                continue;
            };
            let dir = self.ensure_dir_in(view, parent, Some(ROOT));
            match placed {
                Some(node) => self.insert(dir, name, node),
                None => match self.child(dir, name) {
                    Some(existing) if self.is_dir(existing) => {
                        *self.meta_mut(existing) = Meta::of(layer, entry);
                    }
                    _ => {
                        let created =
                            self.push(Meta::of(layer, entry), NodeKind::Directory(BTreeMap::new()));
                        self.insert(dir, name, created);
                    }
                },
            }
        }
        for whiteout in &index.whiteouts {
            opaque.extend(self.add_whiteout(layer, view, whiteout));
        }
        *self.meta_mut(view) = self.meta(ROOT).clone();
        Ok(view)
    }

    /// Turns one OCI whiteout into its overlayfs form in `view` (module
    /// docs); returns the directory to mark opaque, if any.
    fn add_whiteout(&mut self, layer: u32, view: NodeId, whiteout: &Whiteout) -> Option<NodeId> {
        let (dir, name) = match whiteout {
            Whiteout::Opaque(dir) => (dir.as_bytes(), None),
            Whiteout::Remove(path) => {
                let (parent, name) = split_parent(path.as_bytes())?;
                (parent, Some(name))
            }
        };
        if self.under_non_directory(view, dir) {
            return None;
        }
        let dir = self.ensure_dir_in(view, dir, Some(ROOT));
        let Some(name) = name else {
            return Some(dir);
        };
        match self.child(dir, name) {
            Some(existing) => self.is_dir(existing).then_some(existing),
            None => {
                let device = self.push(
                    whiteout_meta(layer),
                    NodeKind::CharDevice(Device::default()),
                );
                self.insert(dir, name, device);
                None
            }
        }
    }

    /// Whether the layer put a non-directory at `path` or above it in
    /// `view`: that already hides every lower path below it, and a whiteout
    /// there must not turn it into a directory.
    fn under_non_directory(&self, view: NodeId, path: &[u8]) -> bool {
        let mut dir = view;
        for name in components(path) {
            match self.child(dir, name) {
                Some(node) if self.is_dir(node) => dir = node,
                Some(_) => return true,
                None => return false,
            }
        }
        false
    }
}

/// A whiteout's own metadata is not kept in the layer index; the device is
/// created as containers/storage's overlay driver does (`mknod` with mode
/// 0, i.e. no permission bits) and owned by root. overlayfs never shows a
/// whiteout, so none of it reaches a container.
fn whiteout_meta(layer: u32) -> Meta {
    Meta {
        layer: Some(layer),
        mode: 0,
        uid: 0,
        gid: 0,
        mtime: Timestamp::default(),
        xattrs: Vec::new(),
    }
}
