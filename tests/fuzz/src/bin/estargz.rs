//! eStargz footer and table of contents: `estargz::toc_range`, `estargz::parse_toc`.
fn main() {
    afl::fuzz!(|data: &[u8]| lazyimg_fuzz::estargz(data));
}
