//! Manifest, index and image configuration JSON (`image::Manifest::parse`, `parse_index`, `parse_config`).
fn main() {
    afl::fuzz!(|data: &[u8]| lazyimg_fuzz::image_json(data));
}
