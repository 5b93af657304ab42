//! lazyimg: container images usable in seconds on locked-down research sites.
//!
//! Data flows one way: registry → verified chunks → content store → tree → FUSE.

pub mod layer;
pub mod tree;
