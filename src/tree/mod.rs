//! Filled in by the merged-tree work.
