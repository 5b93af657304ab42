//! The conventions a Unix command line is expected to follow, checked on the
//! built `lazyimg`: its bash completion loads in bash and completes
//! subcommands and options, every man page it writes renders with `man -l`
//! without a groff warning, `scripts/install.sh` puts both where bash and man
//! look, `cache verify --json` and `cache prune --json` report what they did
//! as one JSON object on stdout, and log lines on a terminal carry no color
//! while `NO_COLOR` is set (no-color.org), and a closed output pipe ends
//! it as SIGPIPE ends other tools.
//!
//! Needs bash, `script` (util-linux), and man-db with groff-base
//! (`scripts/setup-runtimes.sh` installs them); without them these tests
//! fail, they do not skip.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use lazyimg::digest::Digest;
use serde_json::json;

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
    let unit = installed("etc/systemd/system/lazyimg-snapshotter.service");
    assert!(
        std::fs::read_to_string(&unit)
            .unwrap()
            .contains("lazyimg snapshotter")
    );
}

/// A configuration whose cache is `dir/cache`, and the cache's blob directory
/// (created: `lazyimg` finds it as its store leaves it).
fn sandbox(dir: &Path) -> (PathBuf, PathBuf) {
    let config = dir.join("config.toml");
    std::fs::write(&config, format!("cache_dir = {:?}\n", dir.join("cache"))).unwrap();
    let blobs = dir.join("cache/blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    (config, blobs)
}

/// Stores `content` in `blobs` under the name of `named` (its digest), last
/// used `age` ago; returns the digest.
fn plant(blobs: &Path, named: &[u8], content: &[u8], age: Duration) -> Digest {
    let digest = Digest::of(named);
    let path = blobs.join(digest.hex());
    std::fs::write(&path, content).unwrap();
    let file = std::fs::File::options().append(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
    digest
}

/// `lazyimg --config CONFIG ARGS`: its exit status and stdout parsed as JSON.
fn json_of(config: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(LAZYIMG)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("lazyimg runs");
    let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout of {args:?} is not one JSON value ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), value)
}

#[test]
fn cache_verify_json_names_the_corrupt_blobs_it_removed() {
    let work = tempfile::tempdir().unwrap();
    let (config, blobs) = sandbox(work.path());
    let hour = Duration::from_secs(3600);
    let good = plant(&blobs, b"intact", b"intact", hour);
    let bad = plant(&blobs, b"original", b"tampered!", hour);

    let (status, result) = json_of(&config, &["cache", "verify", "--json"]);

    assert_eq!(status, Some(1), "a corrupt blob must fail the command");
    assert_eq!(result["verified"], json!(2), "{result}");
    assert_eq!(
        result["corrupt"],
        json!([{"digest": bad.to_string(), "size": 9}]),
        "{result}"
    );
    assert!(!blobs.join(bad.hex()).exists(), "the corrupt blob stays");
    assert!(
        blobs.join(good.hex()).exists(),
        "the intact blob was removed"
    );
}

#[test]
fn cache_prune_json_reports_the_blobs_and_daemon_logs_it_removed() {
    let work = tempfile::tempdir().unwrap();
    let (config, blobs) = sandbox(work.path());
    let minute = Duration::from_secs(60);
    let kib = vec![7u8; 1024];
    // Least recently used first: `oldest` and `older` go, `newest` stays.
    let oldest = plant(&blobs, b"oldest", &kib, 3 * minute);
    let older = plant(&blobs, b"older", &kib, 2 * minute);
    let newest = plant(&blobs, b"newest", &kib, minute);
    // A log of a daemon that has exited, last written eight days ago.
    let mut exited = Command::new("true").spawn().unwrap();
    exited.wait().unwrap();
    let logs = work.path().join("cache/logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join(format!("mount-{}.log", exited.id()));
    std::fs::write(&log, "twenty bytes of log\n").unwrap();
    std::fs::File::options()
        .append(true)
        .open(&log)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(8 * 24 * 3600))
        .unwrap();

    let (status, result) = json_of(
        &config,
        &["cache", "prune", "--max-size", "1500B", "--json"],
    );

    assert_eq!(status, Some(0));
    assert_eq!(result["max_size"], json!(1500), "{result}");
    assert_eq!(result["blobs"]["removed"], json!(2), "{result}");
    assert_eq!(result["blobs"]["freed"], json!(2048), "{result}");
    assert_eq!(result["blobs"]["remaining"], json!(1024), "{result}");
    assert_eq!(
        result["daemon_logs"],
        json!({"removed": 1, "freed": 20}),
        "{result}"
    );
    for gone in [oldest, older] {
        assert!(!blobs.join(gone.hex()).exists(), "{gone} stays");
    }
    assert!(blobs.join(newest.hex()).exists(), "{newest} was removed");
    assert!(!log.exists(), "the old log stays");
}

/// What `lazyimg` writes to a terminal (a pty made by `script`) while failing
/// to reach a registry that refuses connections: warnings and debug lines
/// from its log. `no_color`: the value of `NO_COLOR`, or unset.
fn terminal_log(no_color: Option<&str>) -> String {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "cache_dir = {:?}\n[network]\nattempts = 2\n\
             [[registry]]\nprefix = \"127.0.0.1:9\"\ninsecure = true\n",
            work.path().join("cache")
        ),
    )
    .unwrap();
    let inner = format!(
        "{LAZYIMG} -v --config {} cat 127.0.0.1:9/none:1 /etc/os-release",
        config.display()
    );
    let mut script = Command::new("script");
    script.args(["--quiet", "--return", "--command", &inner, "/dev/null"]);
    match no_color {
        Some(value) => script.env("NO_COLOR", value),
        None => script.env_remove("NO_COLOR"),
    };
    let out = script
        .output()
        .expect("script runs (util-linux: scripts/setup-runtimes.sh)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn no_color_turns_off_the_colors_of_log_lines_on_a_terminal() {
    const ESCAPE: char = '\x1b';
    let colored = terminal_log(None);
    // Else the check below proves nothing: the log must be there, in color.
    assert!(
        colored.contains("WARN") && colored.contains(ESCAPE),
        "no colored warning on the terminal:\n{colored}"
    );
    let plain = terminal_log(Some("1"));
    assert!(
        plain.contains("WARN"),
        "no warning on the terminal:\n{plain}"
    );
    assert!(
        !plain.contains(ESCAPE),
        "escape codes despite NO_COLOR=1:\n{plain:?}"
    );
    let empty = terminal_log(Some(""));
    assert!(
        empty.contains(ESCAPE),
        "an empty NO_COLOR counts as unset (no-color.org):\n{empty:?}"
    );
}

/// `lazyimg … | head`: a reader that stops reading ends lazyimg as SIGPIPE
/// ends other Unix tools, silently with status 141, not with an error line.
#[test]
fn a_closed_output_pipe_ends_the_command_silently_with_status_141() {
    use std::io::Read as _;
    // The read end closes at once: the completion script's first write fails.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(LAZYIMG)
        .args(["completions", "bash"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(141), "{stderr}");
    assert_eq!(stderr, "");
}
