//! The lazyimg index artifact's layer file: `ArtifactLayer::decode`, `check_file`.
fn main() {
    afl::fuzz!(|data: &[u8]| lazyimg_fuzz::index_artifact(data));
}
