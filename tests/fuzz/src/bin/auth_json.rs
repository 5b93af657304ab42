//! containers-auth.json files: `registry::credentials::lookup_in`.
fn main() {
    afl::fuzz!(|data: &[u8]| lazyimg_fuzz::auth_json(data));
}
