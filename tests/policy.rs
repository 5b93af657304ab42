//! The approved-image list (`approved_images`) through the real `lazyimg` binary,
//! against the real HTTPS + token upstream: unapproved images are refused by
//! `pull`, `mount` and `run` before anything is cached, a rule's digest is enforced
//! once the tag is resolved, a broken list fails closed, and `lazyimg policy`
//! explains the decisions.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::image::OciLayout;
use support::testenv::{Lazyimg, Run, TestEnv, build_layout, run, testenv, unique_image};

/// A sandboxed `lazyimg` whose configuration names `approved.toml` in its own
/// directory, holding `list`; `extra` is more configuration TOML.
fn with_list(env: &TestEnv, list: &str, extra: &str) -> (Lazyimg, PathBuf) {
    // The list lives in the sandbox, whose path is known once it exists.
    let lazyimg = Lazyimg::with_config(env, "");
    let path = lazyimg.dir.path().join("approved.toml");
    let text = std::fs::read_to_string(&lazyimg.config).unwrap();
    let text = format!("approved_images = {path:?}\n{text}{extra}");
    std::fs::write(&lazyimg.config, text).unwrap();
    std::fs::write(&path, list).unwrap();
    (lazyimg, path)
}

fn authed(lazyimg: &Lazyimg, args: &[&str]) -> Run {
    run(lazyimg
        .cmd()
        .env("REGISTRY_AUTH_FILE", testenv().auth_file())
        .args(args))
}

/// Asserts a refusal naming the approved list, with a hint, and nothing cached.
fn assert_refused(lazyimg: &Lazyimg, run: &Run, list: &Path, needle: &str) {
    let stderr = run.stderr();
    assert!(!run.success(), "expected a refusal:\n{stderr}");
    assert!(
        stderr.contains("is not on the approved list") && stderr.contains(list.to_str().unwrap()),
        "{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{needle:?} missing from:\n{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
    assert!(
        lazyimg.cached_blobs().is_empty(),
        "{:?}",
        lazyimg.cached_blobs()
    );
}

fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == path.to_str())
}

fn unmount(path: &Path) {
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status();
}

/// Pushes a fresh one-layer image as `repo:tag`; returns its reference and image.
fn push(env: &TestEnv, label: &str, repo_tag: &str) -> (String, support::image::BuiltImage) {
    let work = tempfile::tempdir().unwrap();
    let (layout, image) = build_layout(work.path(), &unique_image(label, 1), "t");
    env.push_upstream(&layout.dir, "t", repo_tag, false);
    (format!("{}/{repo_tag}", env.upstream()), image)
}

#[test]
fn unapproved_images_are_refused_by_pull_mount_and_run_before_anything_is_cached() {
    let env = testenv();
    let (reference, _) = push(env, "unapproved", "policy/unapproved:v1");
    let list = format!(
        "[[image]]\nrepository = \"{}/policy/someone-else\"\n",
        env.upstream()
    );
    let (lazyimg, path) = with_list(env, &list, "");
    let want = format!(
        "no rule for {}/policy/unapproved; approvers would add [[image]] repository = \"{}/policy/unapproved\" tags = [\"v1\"]",
        env.upstream(),
        env.upstream()
    );

    let pull = authed(&lazyimg, &["pull", &reference]);
    assert_refused(&lazyimg, &pull, &path, &want);
    assert!(
        pull.stderr()
            .contains(&format!("{reference} is not on the approved list")),
        "{}",
        pull.stderr()
    );

    let mnt = lazyimg.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mount = authed(&lazyimg, &["mount", &reference, mnt.to_str().unwrap()]);
    assert_refused(&lazyimg, &mount, &path, &want);
    assert!(!is_mounted(&mnt));

    let run = authed(&lazyimg, &["run", &reference, "--", "true"]);
    assert_refused(&lazyimg, &run, &path, &want);

    // A digest-pinned reference under no rule is refused the same way.
    let pinned = authed(
        &lazyimg,
        &[
            "pull",
            &format!(
                "{}/policy/unapproved@sha256:{}",
                env.upstream(),
                "a".repeat(64)
            ),
        ],
    );
    assert_refused(&lazyimg, &pinned, &path, "digest = \"sha256:aaaa");
}

#[test]
fn an_approved_image_pulls_and_mounts_and_other_tags_are_refused() {
    let env = testenv();
    let (reference, image) = push(env, "approved", "policy/approved:v1");
    let list = format!(
        "[[image]]\nrepository = \"{}/policy/*\"\ntags = [\"v1\"]\nnote = \"IG approval 2026-114\"\n",
        env.upstream()
    );
    let (lazyimg, path) = with_list(env, &list, "");

    let other_tag = authed(
        &lazyimg,
        &["pull", &format!("{}/policy/approved:v2", env.upstream())],
    );
    assert_refused(
        &lazyimg,
        &other_tag,
        &path,
        "rule 1 (line 1) approves only the tags \"v1\", not \"v2\"",
    );

    let pull = authed(&lazyimg, &["pull", &reference]).ok();
    assert_eq!(pull.stdout().trim(), image.manifest.digest);
    assert!(lazyimg.cached_blobs().contains(&image.layers[0].digest));

    let mnt = lazyimg.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    authed(&lazyimg, &["mount", &reference, mnt.to_str().unwrap()]).ok();
    let mounted = is_mounted(&mnt);
    let label = std::fs::read_to_string(mnt.join("layer0/label.txt"));
    unmount(&mnt);
    assert!(mounted);
    assert!(label.unwrap().contains("approved"));
}

#[test]
fn a_digest_rule_refuses_a_tag_that_resolves_elsewhere_before_fetching_layers() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let (mut layout, approved) = build_layout(work.path(), &unique_image("digest-ok", 2), "ok");
    let moved = layout.add_image(&unique_image("digest-moved", 2));
    layout.tag("moved", &moved.manifest);
    env.push_upstream(&layout.dir, "ok", "policy/pinned:v1", false);
    env.push_upstream(&layout.dir, "moved", "policy/pinned:v2", false);
    let repo = format!("{}/policy/pinned", env.upstream());
    let list = format!(
        "[[image]]\nrepository = {repo:?}\ndigest = {:?}\nnote = \"pinned\"\n",
        approved.manifest.digest
    );
    let (lazyimg, path) = with_list(env, &list, "");

    let want = format!(
        "it resolves to {}, but rule 1 (line 1) approves only {}",
        moved.manifest.digest, approved.manifest.digest
    );
    let pull = authed(&lazyimg, &["pull", &format!("{repo}:v2")]);
    assert_refused(&lazyimg, &pull, &path, &want);
    for layer in &moved.layers {
        assert!(!lazyimg.cached_blobs().contains(&layer.digest));
    }
    let mnt = lazyimg.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mount = authed(
        &lazyimg,
        &["mount", &format!("{repo}:v2"), mnt.to_str().unwrap()],
    );
    assert_refused(&lazyimg, &mount, &path, &want);
    assert!(!is_mounted(&mnt));
    // Pinned to the wrong digest: refused by name, without asking the registry.
    let pinned = authed(
        &lazyimg,
        &["pull", &format!("{repo}@{}", moved.manifest.digest)],
    );
    assert_refused(
        &lazyimg,
        &pinned,
        &path,
        &format!(
            "approves only {}, not {}",
            approved.manifest.digest, moved.manifest.digest
        ),
    );

    // The tag that resolves to the approved digest pulls, and so does the digest.
    let ok = authed(&lazyimg, &["pull", &format!("{repo}:v1")]).ok();
    assert_eq!(ok.stdout().trim(), approved.manifest.digest);
    authed(
        &lazyimg,
        &["pull", &format!("{repo}@{}", approved.manifest.digest)],
    )
    .ok();
    // Mounting the cached image checks the recorded digest (the daemon too).
    authed(
        &lazyimg,
        &["mount", &format!("{repo}:v1"), mnt.to_str().unwrap()],
    )
    .ok();
    let mounted = is_mounted(&mnt);
    unmount(&mnt);
    assert!(mounted);

    // policy check resolves the tag to decide.
    let check = authed(&lazyimg, &["policy", "check", &format!("{repo}:v2")]);
    assert_eq!(check.output.status.code(), Some(1), "{}", check.stderr());
    assert!(check.stdout().contains(&want), "{}", check.stdout());
    let check = authed(&lazyimg, &["policy", "check", &format!("{repo}:v1")]);
    assert_eq!(check.output.status.code(), Some(0), "{}", check.stderr());
    assert!(
        check
            .stdout()
            .contains(&format!("and it resolves to {}", approved.manifest.digest)),
        "{}",
        check.stdout()
    );
}

#[test]
fn a_rule_may_pin_the_platform_manifest_of_a_multi_platform_image() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let layout = OciLayout::create(work.path());
    let amd64 = layout.add_image(&unique_image("policy-amd64", 1).platform("linux", "amd64", None));
    let arm64 =
        layout.add_image(&unique_image("policy-arm64", 1).platform("linux", "arm64", Some("v8")));
    let index = layout.add_index(&[
        ("linux", "amd64", None, &amd64),
        ("linux", "arm64", Some("v8"), &arm64),
    ]);
    let mut layout = layout;
    layout.tag("multi", &index);
    env.push_upstream(&layout.dir, "multi", "policy/multi:1", false);
    let repo = format!("{}/policy/multi", env.upstream());
    // Only the amd64 manifest is approved, not the index as a whole.
    let list = format!(
        "[[image]]\nrepository = {repo:?}\ndigest = {:?}\n",
        amd64.manifest.digest
    );
    let (lazyimg, path) = with_list(env, &list, "");
    let pull = authed(
        &lazyimg,
        &["pull", "--platform", "linux/amd64", &format!("{repo}:1")],
    )
    .ok();
    assert_eq!(pull.stdout().trim(), index.digest);
    let arm = authed(
        &lazyimg,
        &["pull", "--platform", "linux/arm64", &format!("{repo}:1")],
    );
    assert!(!arm.success());
    assert!(
        arm.stderr()
            .contains(&format!("(platform manifest {})", arm64.manifest.digest))
            && arm.stderr().contains(path.to_str().unwrap()),
        "{}",
        arm.stderr()
    );
    assert!(!lazyimg.cached_blobs().contains(&arm64.layers[0].digest));
}

#[test]
fn a_broken_or_missing_list_fails_closed_for_every_command() {
    let env = testenv();
    let (reference, _) = push(env, "broken-list", "policy/broken:v1");
    let list = format!(
        "[[image]]\nrepository = \"{}/policy/broken\"\ntag = [\"v1\"]\n",
        env.upstream()
    );
    let (lazyimg, path) = with_list(env, &list, "");
    let mnt = lazyimg.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["pull", &reference],
        vec!["mount", &reference, mnt.to_str().unwrap()],
        vec!["run", &reference, "--", "true"],
        vec!["policy", "check", &reference],
        vec!["policy", "list"],
    ];
    for args in &commands {
        let run = authed(&lazyimg, args);
        let stderr = run.stderr();
        assert!(!run.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(&format!("approved-image list {}: line 3:", path.display()))
                && stderr.contains("unknown field `tag`"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("hint:"), "{stderr}");
    }
    assert!(lazyimg.cached_blobs().is_empty());
    assert!(!is_mounted(&mnt));

    std::fs::remove_file(&path).unwrap();
    for args in &commands {
        let run = authed(&lazyimg, args);
        assert!(!run.success(), "{args:?} succeeded");
        assert!(
            run.stderr().contains(&format!(
                "approved-image list {}: cannot read it",
                path.display()
            )),
            "{args:?}: {}",
            run.stderr()
        );
    }
    assert!(lazyimg.cached_blobs().is_empty());
}

#[test]
fn policy_check_and_list_explain_the_decisions() {
    let env = testenv();
    let list = format!(
        "# kept by the IG\n[[image]]\nrepository = \"{}/policy/*\"\ntags = [\"v1\"]\nnote = \"IG approval 2026-114\"\n",
        env.upstream()
    );
    let (lazyimg, path) = with_list(env, &list, "");
    let approved = format!("{}/policy/tool:v1", env.upstream());
    let check = lazyimg.run(&["policy", "check", &approved]);
    assert_eq!(check.output.status.code(), Some(0), "{}", check.stderr());
    let line = check.stdout();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains(&format!(
            "{approved} is approved by the list {}",
            path.display()
        )) && line.contains("rule 1 (line 2)")
            && line.contains("IG approval 2026-114"),
        "{line}"
    );

    let refused = format!("{}/other/tool:v1", env.upstream());
    let check = lazyimg.run(&["policy", "check", &refused]);
    assert_eq!(check.output.status.code(), Some(1), "{}", check.stderr());
    assert!(
        check.stdout().contains(&format!(
            "no rule for {}/other/tool; approvers would add",
            env.upstream()
        )),
        "{}",
        check.stdout()
    );

    let json = lazyimg.run(&["policy", "check", "--json", &approved]);
    let value: serde_json::Value = serde_json::from_str(&json.stdout()).unwrap();
    assert_eq!(value["approved"], true);
    assert_eq!(value["rule"]["note"], "IG approval 2026-114");
    assert_eq!(value["list"], path.to_str().unwrap());
    let json = lazyimg.run(&["policy", "check", "--json", &refused]);
    assert!(!json.success());
    let value: serde_json::Value = serde_json::from_str(&json.stdout()).unwrap();
    assert_eq!(value["approved"], false);
    assert!(value["rule"].is_null());

    let listing = lazyimg.run(&["policy", "list"]).ok();
    let out = listing.stdout();
    assert!(
        out.contains(&format!("{}: 1 rule", path.display()))
            && out.contains(&format!("rule 1 (line 2): {}/policy/*", env.upstream()))
            && out.contains("note:   IG approval 2026-114"),
        "{out}"
    );

    // Without a list, everything is allowed and `policy` says so.
    let open = Lazyimg::new(env);
    let check = open.run(&["policy", "check", &refused]).ok();
    assert!(check.stdout().contains("no approved list is configured"));
}

#[test]
fn proxy_references_are_checked_under_the_name_they_have_upstream() {
    let env = testenv();
    let (reference, image) = push(env, "proxied", "policy/proxied:v1");
    let (other, _) = push(env, "proxied-other", "policy/proxied-other:v1");
    // The upstream plays the site proxy for ghcr.io, and users name it directly.
    let mapping = format!(
        "[[registry]]\nprefix = \"ghcr.io\"\nlocation = {:?}\n",
        env.upstream()
    );
    let list = "[[image]]\nrepository = \"ghcr.io/policy/proxied\"\n";
    let (lazyimg, _) = with_list(env, list, &mapping);

    let pull = authed(&lazyimg, &["pull", &reference]).ok();
    assert_eq!(pull.stdout().trim(), image.manifest.digest);
    let check = lazyimg.run(&["policy", "check", &reference]).ok();
    assert!(
        check
            .stdout()
            .contains("checked as ghcr.io/policy/proxied:v1: allowed by rule 1"),
        "{}",
        check.stdout()
    );

    // A fresh cache, so that nothing cached means nothing from this refusal.
    let (fresh, path) = with_list(env, list, &mapping);
    let refused = authed(&fresh, &["pull", &other]);
    assert_refused(
        &fresh,
        &refused,
        &path,
        "checked as ghcr.io/policy/proxied-other:v1: no rule for ghcr.io/policy/proxied-other; \
         approvers would add [[image]] repository = \"ghcr.io/policy/proxied-other\"",
    );
}
