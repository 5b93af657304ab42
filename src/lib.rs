//! lazyimg: container images usable in seconds on locked-down research sites.
//!
//! Data flows one way: registry → verified chunks → content store → tree → FUSE.
//! - [`registry`] moves bytes and never trusts them;
//! - [`store`] keeps only content that matched its sha256;
//! - [`lazy`] fetches, verifies and caches chunks of layers when they are first read;
//! - [`layer`] indexes layer tars, [`tree`] merges them into one read-only tree;
//! - [`cli`] is the edge: it turns errors into one line plus a hint.

pub mod cli;
pub mod config;
pub mod digest;
pub mod error;
pub mod fuse;
pub mod image;
pub mod layer;
pub mod lazy;
pub mod policy;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod runtime;
pub mod secret;
pub mod seed;
pub mod store;
pub mod tree;

pub use error::{Error, Result};
