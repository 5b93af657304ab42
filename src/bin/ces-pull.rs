//! `ces-pull [RUNTIME] USER TOKEN ghcr.io/NS/NAME:TAG`: the site's approved pull
//! step, installed next to `lazyimg` (the same as `lazyimg ces-pull`).

fn main() -> std::process::ExitCode {
    lazyimg::cli::ces_pull_main()
}
