//! `lazyimg run --runtime podman` as an unprivileged user (issue 13,
//! acceptance 7): rootless Podman keeps every container in the user and mount
//! namespace of its pause process, so on a host whose `/` is a private mount a
//! FUSE mount made outside that namespace after its start is invisible to the
//! container (it failed with "executable file not found", rc 127, from the
//! second run on). Three runs in a row, in a mount namespace made private for
//! the test whatever the host's propagation.
//!
//! Needs root (runuser, unshare) and the test user of scripts/setup-runtimes.sh.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use support::pushed::sh;
use support::site::{containers_conf, demo_layout};
use support::testenv::{nonce, testenv};

const USER: &str = "lazyimg-test";

#[test]
fn rootless_podman_runs_three_times_in_a_row_on_a_private_root() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let reference = format!("{}/rootless/demo-{}:v1", env.plain(), nonce());
    sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:v1 docker://{reference}",
        demo_layout(work.path()).display()
    ));
    // What the user may read and write: a config, a cache, Podman's config.
    let home = tempfile::Builder::new()
        .prefix("lazyimg-rootless-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = home.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "cache_dir = {:?}\n[[registry]]\nprefix = {:?}\ninsecure = true\n",
            home.path().join("cache"),
            env.plain()
        ),
    )
    .unwrap();
    let conf = home.path().join("containers.conf");
    std::fs::copy(containers_conf(), &conf).unwrap();
    sh(&format!("chown -R {USER}: {}", home.path().display()));

    let script = format!(
        "for i in 1 2 3; do {exe} --config {config} -q run --runtime podman {reference} -- cat /hello.txt || exit $?; done",
        exe = env!("CARGO_BIN_EXE_lazyimg"),
        config = config.display(),
    );
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "runuser",
            "-u",
            USER,
            "--",
        ])
        .args(["env", &format!("CONTAINERS_CONF={}", conf.display())])
        .args(["sh", "-c", &script])
        .current_dir(home.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert_eq!(stdout, "hello from lazyimg\n".repeat(3), "{stderr}");
    // Nothing left mounted where Podman's namespace would keep it.
    let leftover = Command::new("runuser")
        .args(["-u", USER, "--", "env"])
        .arg(format!("CONTAINERS_CONF={}", conf.display()))
        .args(["podman", "unshare", "cat", "/proc/self/mountinfo"])
        .current_dir(home.path())
        .output()
        .unwrap();
    let mounts = String::from_utf8_lossy(&leftover.stdout);
    assert!(!mounts.contains("lazyimg-run-"), "{mounts}");
}
