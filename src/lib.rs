//! lazyimg: container images usable in seconds on locked-down research sites.
//!
//! Data flows one way: registry → verified chunks → content store → tree → FUSE.
//! - [`registry`] moves bytes and never trusts them;
//! - [`store`] keeps only content that matched its sha256;
//! - [`lazy`] fetches, verifies and caches chunks of layers when they are first read;
//! - [`layer`] reads layer tars and tables of contents, [`tree`] merges them
//!   into one read-only tree;
//! - [`mount`] puts an image's tree and content together and serves it;
//! - [`snapshotter`] hands containerd layers that lazyimg serves lazily;
//! - [`cli`] is the edge: it turns errors into one line plus a hint.
//!
//! # Layers
//!
//! Bottom to top. A module uses modules of its own layer or below, never one
//! above, and no two modules use each other (`tests/layering.rs` checks both):
//!
//! 1. [`digest`], [`secret`], [`timeline`]: sha256 digests, tokens that never
//!    print, the phases a start spends its time in;
//! 2. [`layer`], [`tree`]: layer formats (tar, gzip, eStargz, zstd:chunked)
//!    and the merged tree, pure data with no I/O of their own;
//! 3. [`error`]: the crate's error type;
//! 3. [`signing`]: ed25519 keys and signatures of index artifacts;
//! 4. [`config`], [`image`], [`reference`]: plain data: configuration, OCI
//!    documents, image references;
//! 5. [`store`]: the content-addressed cache;
//! 6. [`registry`]: talking to registries;
//! 7. [`chunkmap`], [`rootfs`]: how a layer is read lazily (its chunk map),
//!    and the contract a mounted image's view fulfils;
//! 8. [`pull`], [`lazy`], [`fuse`]: pulling images, the lazy read engine, the
//!    FUSE adapter;
//! 9. [`policy`], [`seed`]: the approved-image list, copying images to a site registry;
//! 10. [`mount`], [`runtime`], [`snapshotter`]: assembling and serving a
//!     mount, container runtimes, containerd's remote snapshotter;
//! 11. [`cli`]: the edge.

pub mod chunkmap;
pub mod cli;
pub mod config;
pub mod digest;
pub mod error;
pub mod fuse;
pub mod image;
pub mod layer;
pub mod lazy;
pub mod mount;
pub mod policy;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod runtime;
pub mod secret;
pub mod seed;
pub mod signing;
pub mod snapshotter;
pub mod store;
pub mod timeline;
pub mod tree;

pub use error::{Error, Result};
