//! The conventions a Unix command line is expected to follow, checked on the
//! built `lazyimg`: its bash completion loads in bash and completes
//! subcommands and options, every man page it writes renders with `man -l`
//! without a groff warning, and `scripts/install.sh` puts both where bash and
//! man look.
//!
//! Needs bash, and man-db with groff-base (`scripts/setup-runtimes.sh`
//! installs them); without them these tests fail, they do not skip.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const LAZYIMG: &str = env!("CARGO_BIN_EXE_lazyimg");

/// Runs `command`; its standard output, or a panic with both streams.
fn stdout_of(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// What bash offers for the command line `words` (the last word is the one
/// being completed) once `script` is sourced: the function that
/// `complete -p lazyimg` names is called as bash-completion calls it (command,
/// current word, previous word) with COMP_WORDS and COMP_CWORD set.
fn bash_completions(script: &Path, words: &[&str]) -> BTreeSet<String> {
    let program = r#"
        source "$1"; shift
        spec=$(complete -p lazyimg) || exit 1
        function=$(sed -n 's/.* -F \([^ ]*\) .*/\1/p' <<<"$spec")
        [[ -n $function ]] || { echo "no -F function in: $spec" >&2; exit 1; }
        COMP_WORDS=("$@")
        COMP_CWORD=$(($# - 1))
        "$function" lazyimg "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = stdout_of(
        Command::new("bash")
            .args(["--norc", "--noprofile", "-c", program, "bash"])
            .arg(script)
            .args(words),
    );
    out.lines().map(str::to_string).collect()
}

fn offers(script: &Path, words: &[&str], expected: &str) {
    let offered = bash_completions(script, words);
    assert!(
        offered.contains(expected),
        "completing {words:?} offers {offered:?}, not {expected}"
    );
}

/// The man pages in `dir`, by file name.
fn pages(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".1"))
        .collect()
}

/// `man -l PAGE` with groff's warnings on: the rendered text, or a panic if
/// man fails or groff warns (an unknown macro, a bad escape).
fn render(page: &Path) -> String {
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .expect("man runs (man-db: scripts/setup-runtimes.sh installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "man -l {} ({}):\n{stderr}",
        page.display(),
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bash_completion_loads_and_completes_subcommands_and_their_options() {
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("lazyimg.bash");
    // A configuration that cannot be read must not stop it: an install step
    // runs it before any exists.
    let generated = stdout_of(Command::new(LAZYIMG).args([
        "--config",
        "/nonexistent/config.toml",
        "completions",
        "bash",
    ]));
    std::fs::write(&script, generated).unwrap();

    offers(&script, &["lazyimg", "mo"], "mount");
    offers(&script, &["lazyimg", "cache", "v"], "verify");
    offers(&script, &["lazyimg", "mount", "--fo"], "--foreground");
    let offered = bash_completions(&script, &["lazyimg", "mo"]);
    assert!(
        !offered.contains("pull"),
        "`mo` completes to words it does not start: {offered:?}"
    );
}

#[test]
fn every_man_page_renders_and_names_its_command() {
    let work = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: `lazyimg man` creates it.
    let dir = work.path().join("man/man1");
    stdout_of(Command::new(LAZYIMG).arg("man").arg(&dir));

    let pages = pages(&dir);
    for expected in ["lazyimg.1", "lazyimg-mount.1", "lazyimg-cache-verify.1"] {
        assert!(pages.contains(expected), "no {expected} among {pages:?}");
    }
    for page in &pages {
        let text = render(&dir.join(page));
        let command = page.trim_end_matches(".1");
        assert!(
            text.contains("NAME") && text.contains(command),
            "{page} renders without its NAME section naming {command}:\n{text}"
        );
    }
}

#[test]
fn install_script_puts_completion_and_man_pages_where_bash_and_man_look() {
    let work = tempfile::tempdir().unwrap();
    let destdir = work.path().join("root");
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh"))
        .env("DESTDIR", &destdir)
        .env("LAZYIMG_BIN", LAZYIMG)
        .env_remove("PREFIX")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "install.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let installed = |path: &str| -> PathBuf { destdir.join(path) };
    for program in ["usr/local/bin/lazyimg", "usr/local/bin/ces-pull"] {
        stdout_of(Command::new(installed(program)).arg("--version"));
    }
    let completion = installed("usr/share/bash-completion/completions/lazyimg");
    offers(&completion, &["lazyimg", "umo"], "umount");

    let generated = work.path().join("generated");
    stdout_of(Command::new(LAZYIMG).arg("man").arg(&generated));
    let man1 = installed("usr/local/share/man/man1");
    assert_eq!(pages(&man1), pages(&generated));
    render(&man1.join("lazyimg.1"));
}
