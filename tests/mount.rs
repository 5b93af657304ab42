//! `lazyimg mount` / `umount` / `run` end to end: images pushed to the real HTTPS +
//! token upstream, pulled and mounted over FUSE by the lazyimg binary, compared with
//! an independent unpack (umoci), and run with real Charliecloud and Podman.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::layer::Compression;
use support::listing::{diff_listings, listing};
use support::site::containers_conf;
use support::testenv::{Lazyimg, Mounted, TestEnv, build_layout, run, testenv};
use support::tools::unpack_with_umoci;
use support::torture::torture_image;

const TEST_USER: &str = "lazyimg-test";

fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == path.to_str())
}

/// The torture image with `compression`, pushed once; returns its reference and the
/// listing of the gzip build unpacked by umoci (zstd and gzip builds share their
/// tars, and umoci cannot read zstd layers).
fn torture(env: &TestEnv, compression: Compression, tag: &str) -> (String, Vec<String>) {
    let work = tempfile::tempdir().unwrap();
    let (layout, _) = build_layout(&work.path().join("img"), &torture_image(compression), tag);
    env.push_upstream(&layout.dir, tag, &format!("mount/torture:{tag}"), false);
    let (oracle_layout, _) = build_layout(
        &work.path().join("oracle"),
        &torture_image(Compression::Gzip),
        "gz",
    );
    let rootfs = unpack_with_umoci(&oracle_layout.dir, "gz", &work.path().join("bundle"))
        .expect("umoci unpack");
    let oracle = listing(&rootfs).expect("listing of the umoci unpack");
    (format!("{}/mount/torture:{tag}", env.upstream()), oracle)
}

fn assert_mount_matches(compression: Compression, tag: &str) {
    let env = testenv();
    let (reference, oracle) = torture(env, compression, tag);
    let lazyimg = Lazyimg::new(env);
    let mounted = Mounted::new(&lazyimg, &reference, &[]);
    let mounted_listing = listing(&mounted.path).expect("listing of the mount");
    let diff = diff_listings(&oracle, &mounted_listing);
    assert!(
        diff.is_empty(),
        "{} differences from umoci:\n{}",
        diff.len(),
        diff.join("\n")
    );
    assert!(
        oracle.len() > 50,
        "the torture image lists {} entries",
        oracle.len()
    );
}

#[test]
fn gzip_torture_image_mounts_identical_to_umoci_unpack() {
    assert_mount_matches(Compression::Gzip, "gzip");
}

#[test]
fn zstd_torture_image_mounts_identical_to_umoci_unpack() {
    assert_mount_matches(Compression::Zstd, "zstd");
}

#[test]
fn a_killed_daemon_leaves_no_stuck_mount_and_the_next_mount_needs_no_registry() {
    let env = testenv();
    let (reference, oracle) = torture(env, Compression::Gzip, "sigkill");
    let lazyimg = Lazyimg::new(env);
    let mounted = Mounted::new(&lazyimg, &reference, &[]);
    let daemon = daemon_pid(&mounted.path);
    assert_eq!(unsafe { libc::kill(daemon, libc::SIGKILL) }, 0);
    wait_for(
        || unsafe { libc::kill(daemon, 0) } != 0,
        "the daemon to die",
    );
    let err = std::fs::metadata(&mounted.path).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOTCONN),
        "a dead FUSE mount answers ENOTCONN"
    );
    lazyimg
        .run(&["umount", mounted.path.to_str().unwrap()])
        .ok();
    assert!(!is_mounted(&mounted.path));

    // Offline: a config that maps the registry to a closed port proves no contact.
    let offline = format!(
        "[[registry]]\nprefix = {:?}\nlocation = \"127.0.0.1:9\"\ninsecure = true\n",
        format!("{}/mount", env.upstream())
    );
    std::fs::write(
        &lazyimg.config,
        std::fs::read_to_string(&lazyimg.config).unwrap() + &offline,
    )
    .unwrap();
    lazyimg
        .run(&["mount", &reference, mounted.path.to_str().unwrap()])
        .ok();
    let again = listing(&mounted.path).unwrap();
    assert!(diff_listings(&oracle, &again).is_empty());
}

/// The pid of the daemon serving `mountpoint`, from `mount`'s own message.
fn daemon_pid(mountpoint: &Path) -> i32 {
    let out = Command::new("pgrep")
        .args(["-f", "lazyimg.*mount"])
        .output()
        .unwrap();
    let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid: &i32| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(mountpoint.to_str().unwrap()))
        })
        .collect();
    assert_eq!(
        pids.len(),
        1,
        "expected one daemon for {}: {pids:?}",
        mountpoint.display()
    );
    pids[0]
}

fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn writes_fail_with_erofs_and_unmount_is_clean() {
    let env = testenv();
    let (reference, _) = torture(env, Compression::Gzip, "erofs");
    let lazyimg = Lazyimg::new(env);
    let mounted = Mounted::new(&lazyimg, &reference, &[]);
    let err = std::fs::write(mounted.path.join("new-file"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = std::fs::create_dir(mounted.path.join("new-dir")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    lazyimg
        .run(&["umount", mounted.path.to_str().unwrap()])
        .ok();
    assert!(!is_mounted(&mounted.path));
    let twice = lazyimg.run(&["umount", mounted.path.to_str().unwrap()]);
    assert!(
        !twice.success() && twice.stderr().contains("is not mounted"),
        "{}",
        twice.stderr()
    );
}

/// A real Debian 12 (debootstrap minbase) image in the upstream, built once.
fn debian() -> &'static str {
    static REFERENCE: OnceLock<String> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let env = testenv();
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("oci");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-debian-image.sh");
        let built = Command::new("bash")
            .arg(script)
            .arg(&layout)
            .arg("12")
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "{}",
            String::from_utf8_lossy(&built.stderr)
        );
        env.push_upstream(&layout, "12", "mount/debian:12", false);
        format!("{}/mount/debian:12", env.upstream())
    })
}

#[test]
fn runtimes_start_from_the_mount() {
    let env = testenv();
    let reference = debian();
    let conf = containers_conf();
    let lazyimg = Lazyimg::new(env);
    let mounted = Mounted::new(&lazyimg, reference, &[]);
    let mnt = mounted.path.to_str().unwrap();

    let ch = Command::new("ch-run")
        .env("USER", "root")
        .args([mnt, "--", "cat", "/etc/os-release"])
        .output()
        .unwrap();
    assert!(
        ch.status.success(),
        "{}",
        String::from_utf8_lossy(&ch.stderr)
    );
    assert!(String::from_utf8_lossy(&ch.stdout).contains("bookworm"));

    let podman = Command::new("podman")
        .env("CONTAINERS_CONF", conf)
        .args([
            "run",
            "--rm",
            "--rootfs",
            &format!("{mnt}:O"),
            "cat",
            "/etc/os-release",
        ])
        .output()
        .unwrap();
    assert!(
        podman.status.success(),
        "{}",
        String::from_utf8_lossy(&podman.stderr)
    );
    assert!(String::from_utf8_lossy(&podman.stdout).contains("bookworm"));

    for runtime in ["charliecloud", "podman"] {
        let run = run(lazyimg
            .cmd()
            .env("CONTAINERS_CONF", conf)
            .env("USER", "root")
            .args(["run", "--runtime", runtime, reference, "--", "sh", "-c"])
            .arg("grep -q bookworm /etc/os-release && exit 7"));
        assert_eq!(
            run.output.status.code(),
            Some(7),
            "{runtime}: {}",
            run.stderr()
        );
    }
}

#[test]
fn an_unprivileged_user_mounts_and_runs_charliecloud() {
    let env = testenv();
    let reference = debian();
    containers_conf(); // creates the test user
    // The user gets its own cache and config, and the credentials as its own file.
    let home = tempfile::Builder::new()
        .prefix("lazyimg-user-")
        .tempdir_in("/tmp")
        .unwrap();
    let config = home.path().join("config.toml");
    let ca = home.path().join("ca.crt");
    std::fs::copy(env.ca(), &ca).unwrap();
    std::fs::write(
        &config,
        format!(
            "cache_dir = {:?}\n[[registry]]\nprefix = {:?}\nca_file = {ca:?}\n",
            home.path().join("cache"),
            env.upstream()
        ),
    )
    .unwrap();
    std::fs::copy(env.auth_file(), home.path().join("auth.json")).unwrap();
    let mnt = home.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let chown = Command::new("chown")
        .args(["-R", TEST_USER])
        .arg(home.path())
        .status()
        .unwrap();
    assert!(chown.success());

    let as_user = |args: &[&str]| {
        let out = Command::new("runuser")
            .args(["-u", TEST_USER, "--", "env", "USER=lazyimg-test"])
            .arg(format!(
                "REGISTRY_AUTH_FILE={}",
                home.path().join("auth.json").display()
            ))
            .arg(format!("HOME={}", home.path().display()))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let lazyimg = env!("CARGO_BIN_EXE_lazyimg");
    let (ok, _, err) = as_user(&[
        lazyimg,
        "--config",
        config.to_str().unwrap(),
        "mount",
        "--owner-self",
        reference,
        mnt.to_str().unwrap(),
    ]);
    assert!(ok, "unprivileged mount failed: {err}");
    let _unmount = Mounted { path: mnt.clone() };
    let (ok, out, err) = as_user(&[
        "ch-run",
        mnt.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "id -u; cat /etc/os-release",
    ]);
    assert!(ok, "ch-run as {TEST_USER} failed: {err}");
    assert!(out.contains("bookworm"), "{out}");
    let uid = Command::new("id").args(["-u", TEST_USER]).output().unwrap();
    assert!(
        out.starts_with(String::from_utf8_lossy(&uid.stdout).trim()),
        "{out}"
    );
}
