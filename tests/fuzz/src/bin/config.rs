//! lazyimg's config.toml and registries.conf files: `Config::parse`, `RegistriesConf::merge`.
fn main() {
    afl::fuzz!(|data: &[u8]| lazyimg_fuzz::config(data));
}
