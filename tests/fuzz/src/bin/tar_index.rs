//! Tar indexing: `layer::read_entries` over a plain, gzip or zstd layer.
fn main() {
    afl::fuzz!(|data: &[u8]| lazyimg_fuzz::tar_index(data));
}
