//! Filled in by the layer-index work.
