//! zstd:chunked table of contents: `zstd_chunked::toc_position`, `zstd_chunked::parse_toc`.
fn main() {
    afl::fuzz!(|data: &[u8]| lazyimg_fuzz::zstd_chunked(data));
}
