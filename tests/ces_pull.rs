//! `ces-pull` against the real local topology: the HTTPS+token upstream plays
//! ghcr.io (`[[registry]] prefix = "ghcr.io"` maps it there), the plain registry
//! plays the site proxy. Podman and Charliecloud are the real ones.
//!
//! Needs root (podman, FUSE). A missing tool makes these tests fail, never skip.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::site::*;
use support::testenv::{build_layout, nonce, run, testenv, unique_image};

#[test]
fn ces_pull_podman_copies_the_exact_image_and_podman_knows_both_names() {
    let env = testenv();
    let repo = format!("seed/podman-{}", nonce());
    let work = tempfile::tempdir().unwrap();
    let layout = demo_layout(work.path());
    env.push_upstream(&layout, DEMO_TAG, &format!("{repo}:v1"), false);
    let expected = upstream_digest(env, &format!("{repo}:v1"));

    // An approved list that allows it, so the happy path goes through the policy too.
    let lazyimg = site(env, "approved_images = \"approved.toml\"");
    std::fs::write(
        lazyimg.dir.path().join("approved.toml"),
        "[[image]]\nrepository = \"ghcr.io/seed/**\"\nnote = \"seed tests\"\n",
    )
    .unwrap();
    let ghcr = format!("ghcr.io/{repo}:v1");
    let proxy = format!("{}/{repo}:v1", env.plain());
    let _cleanup = PodmanImages(vec![ghcr.clone(), proxy.clone()]);

    let run = ces_pull(&lazyimg, &["podman", env.user(), env.token(), &ghcr], None).ok();
    assert_eq!(plain_digest(env, &format!("{repo}:v1")), expected);

    let images = podman(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    let id_of = |name: &str| {
        images
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("podman images lacks {name}:\n{images}"))
            .to_string()
    };
    assert_eq!(id_of(&ghcr), id_of(&proxy), "{images}");
    let out = podman(&["run", "--rm", &proxy, "cat", DEMO_FILE.0]);
    assert_eq!(out, DEMO_FILE.1);
    assert!(run.stderr().contains("podman has"), "{}", run.stderr());
    assert!(!run.stderr().contains(env.token()) && !run.stdout().contains(env.token()));
}

#[test]
fn ces_pull_charliecloud_prints_the_run_command_and_writes_a_squashfs_ch_run_accepts() {
    let env = testenv();
    let repo = format!("seed/charliecloud-{}", nonce());
    let work = tempfile::tempdir().unwrap();
    let layout = demo_layout(work.path());
    env.push_upstream(&layout, DEMO_TAG, &format!("{repo}:v1"), false);
    let lazyimg = site(env, "");
    let ghcr = format!("ghcr.io/{repo}:v1");
    let proxy = format!("{}/{repo}:v1", env.plain());
    let sqfs = lazyimg.dir.path().join("image.sqfs");
    let sqfs_text = sqfs.display().to_string();

    let pulled = ces_pull(
        &lazyimg,
        &[
            "charliecloud",
            env.user(),
            "-",
            &ghcr,
            "--squashfs",
            &sqfs_text,
        ],
        Some(&format!("{}\n", env.token())),
    )
    .ok();
    let command = format!("lazyimg run --runtime charliecloud {proxy} -- ");
    assert!(pulled.stdout().contains(&command), "{}", pulled.stdout());
    assert!(
        pulled.stdout().contains(&format!("ch-run {sqfs_text} -- ")),
        "{}",
        pulled.stdout()
    );

    let out =
        run(Command::new("ch-run")
            .env("USER", "root")
            .arg(&sqfs)
            .args(["--", "cat", DEMO_FILE.0]));
    assert!(out.success(), "ch-run {sqfs_text}: {}", out.stderr());
    assert_eq!(out.stdout(), DEMO_FILE.1);

    // The printed command works as printed (from the proxy, through the cache).
    let run_it = lazyimg
        .run(&[
            "run",
            "--runtime",
            "charliecloud",
            &proxy,
            "--",
            "cat",
            DEMO_FILE.0,
        ])
        .ok();
    assert_eq!(run_it.stdout(), DEMO_FILE.1);

    // Apptainer (not installable on Debian 12): the same copy, and the command to use.
    let apptainer = ces_pull(
        &lazyimg,
        &["apptainer", env.user(), "-", &ghcr],
        Some(env.token()),
    )
    .ok();
    assert!(
        apptainer
            .stdout()
            .contains(&format!("lazyimg run --runtime apptainer {proxy} -- ")),
        "{}",
        apptainer.stdout()
    );
    assert!(
        apptainer.stderr().contains("skipped as already there"),
        "{}",
        apptainer.stderr()
    );
}

#[test]
fn refusals_are_clear_and_leave_nothing_in_the_proxy() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let id = nonce();
    let (layout, image) = build_layout(work.path(), &unique_image("refusals", 1), "v1");
    let approved = format!("seed/refused-approved-{id}");
    let unapproved = format!("seed/refused-unapproved-{id}");
    let pinned = format!("seed/refused-pinned-{id}");
    for repo in [&approved, &unapproved, &pinned] {
        env.push_upstream(&layout.dir, "v1", &format!("{repo}:v1"), false);
    }
    let lazyimg = site(env, "approved_images = \"approved.toml\"");
    let list = lazyimg.dir.path().join("approved.toml");
    let other_digest = format!("sha256:{}", "0".repeat(64));
    std::fs::write(
        &list,
        format!(
            "[[image]]\nrepository = \"ghcr.io/{approved}\"\n\n\
             [[image]]\nrepository = \"ghcr.io/{pinned}\"\ndigest = \"{other_digest}\"\n"
        ),
    )
    .unwrap();
    let pull = |repo: &str, token: &str| {
        ces_pull(
            &lazyimg,
            &[
                "charliecloud",
                env.user(),
                "-",
                &format!("ghcr.io/{repo}:v1"),
            ],
            Some(token),
        )
    };

    let refused = pull(&unapproved, env.token());
    assert!(!refused.success());
    assert!(
        refused.stderr().contains("is not on the approved list"),
        "{}",
        refused.stderr()
    );
    assert_nothing_pushed(env, &unapproved);

    let refused = pull(&pinned, env.token());
    assert!(!refused.success());
    assert!(
        refused.stderr().contains(&image.manifest.digest)
            && refused.stderr().contains(&other_digest),
        "{}",
        refused.stderr()
    );
    assert_nothing_pushed(env, &pinned);

    let wrong = pull(&approved, "not-the-token");
    assert!(!wrong.success());
    assert!(
        wrong
            .stderr()
            .contains(&format!("authentication to {} failed", env.upstream())),
        "{}",
        wrong.stderr()
    );
    assert!(!wrong.stderr().contains("not-the-token"));
    assert_nothing_pushed(env, &approved);

    // `nopkg` authenticates but may read nothing (a token without read:packages).
    let denied = ces_pull(
        &lazyimg,
        &[
            "charliecloud",
            "nopkg",
            "-",
            &format!("ghcr.io/{approved}:v1"),
        ],
        Some("nopkgtoken"),
    );
    assert!(!denied.success());
    assert!(denied.stderr().contains("denied"), "{}", denied.stderr());
    assert_nothing_pushed(env, &approved);

    std::fs::write(&list, "[[image]]\nrepo = \"ghcr.io/seed/x\"\n").unwrap();
    let malformed = pull(&approved, env.token());
    assert!(!malformed.success());
    assert!(
        malformed.stderr().contains("approved-image list") && malformed.stderr().contains("repo"),
        "{}",
        malformed.stderr()
    );
    assert_nothing_pushed(env, &approved);
}

#[test]
fn the_token_never_shows_in_ps_logs_or_files() {
    let env = testenv();
    let repo = format!("seed/token-{}", nonce());
    let work = tempfile::tempdir().unwrap();
    let (layout, _) = build_layout(work.path(), &unique_image("token", 2), "v1");
    env.push_upstream(&layout.dir, "v1", &format!("{repo}:v1"), false);
    let lazyimg = site(env, "");
    let token = env.token();

    let mut child = Command::new(env!("CARGO_BIN_EXE_ces-pull"))
        .arg("--config")
        .arg(&lazyimg.config)
        .args([
            "-v",
            "charliecloud",
            env.user(),
            "-",
            &format!("ghcr.io/{repo}:v1"),
        ])
        .env_remove("REGISTRY_AUTH_FILE")
        .env("HOME", lazyimg.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Our child and its children (other tests push with the same token via skopeo).
    let scan = || {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if p != pid && ppid != Some(pid) {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
            for (what, bytes) in [("cmdline", cmdline), ("environ", environ)] {
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(token),
                    "the token is in /proc/{p}/{what}"
                );
            }
        }
    };
    // The token trickles in slowly while we look at the process table.
    let mut stdin = child.stdin.take().unwrap();
    for byte in token.bytes() {
        scan();
        stdin.write_all(&[byte]).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    stdin.write_all(b"\n").unwrap();
    drop(stdin);
    while child.try_wait().unwrap().is_none() {
        scan();
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains(token), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains(token));

    let grep = Command::new("grep")
        .args(["-r", "-l", "-a", "-F", token])
        .arg(lazyimg.dir.path())
        .output()
        .unwrap();
    assert_eq!(
        grep.status.code(),
        Some(1),
        "the token is written in: {}",
        String::from_utf8_lossy(&grep.stdout)
    );
}
