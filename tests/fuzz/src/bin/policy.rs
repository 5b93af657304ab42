//! The approved-images list: `Policy::parse`, then checking a reference against it.
fn main() {
    afl::fuzz!(|data: &[u8]| lazyimg_fuzz::policy(data));
}
