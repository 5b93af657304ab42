//! Gzip checkpoints: indexing (`GzipCheckpointer`), resuming (`inflate_span`), chunk decoding (`lazy::decode`).
fn main() {
    afl::fuzz!(|data: &[u8]| lazyimg_fuzz::gzip_resume(data));
}
