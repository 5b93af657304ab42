//! The mount daemon's life: `lazyimg mount` against the real HTTPS + token
//! upstream, then SIGTERM, SIGINT or SIGHUP to the daemon must unmount within
//! 2 s and leave a plain empty directory (no ENOTCONN); its log is named after
//! the daemon's pid, every line starts with an RFC 3339 UTC time, and `lazyimg
//! cache prune` removes old logs of daemons no longer running. `mount --json`
//! names the mount point, the daemon and its log.
//!
//! Needs root, /dev/fuse and `scripts/testenv.sh`; without them these tests
//! fail, they do not skip.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use support::testenv::{Daemon, Lazyimg, Mounted, authed, build_layout, testenv, unique_image};

/// How long a signalled daemon may take to unmount (the acceptance).
const UNMOUNT_LIMIT: Duration = Duration::from_secs(2);

/// A small image of our own on the upstream, pushed once per test binary.
fn image() -> &'static str {
    static REFERENCE: OnceLock<String> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let env = testenv();
        let work = tempfile::tempdir().unwrap();
        let (layout, _) = build_layout(&work.path().join("oci"), &unique_image("daemon", 2), "1");
        env.push_upstream(&layout.dir, "1", "daemon/small:1", false);
        format!("{}/daemon/small:1", env.upstream())
    })
}

/// Mounts the test image; the daemon as `lazyimg mount` reports it.
fn mount(lazyimg: &Lazyimg) -> (Mounted, Daemon) {
    let (mounted, daemon) = Mounted::with_daemon(lazyimg, image(), &[]);
    assert!(is_mounted(&mounted.path), "{}", daemon.log());
    (mounted, daemon)
}

fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == path.to_str())
}

fn is_running(pid: i32) -> bool {
    // Not reaped by us (the daemon is `lazyimg mount`'s child), so a zombie
    // cannot linger: it goes as soon as it exits.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Waits up to `limit` for `done`; returns how long it took, or `None`.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(start.elapsed())
}

fn signal_unmounts_cleanly(signal: i32, name: &str) {
    let lazyimg = Lazyimg::new(testenv());
    let (mounted, daemon) = mount(&lazyimg);
    let mnt = &mounted.path;
    let label = std::fs::read_to_string(mnt.join("layer1/label.txt")).unwrap();
    assert!(label.contains("daemon"), "{label}");

    assert_eq!(unsafe { libc::kill(daemon.pid, signal) }, 0);
    let took = wait_for(UNMOUNT_LIMIT, || !is_mounted(mnt));
    let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    assert!(
        took.is_some(),
        "{name}: still mounted after {UNMOUNT_LIMIT:?}; daemon log:\n{log}"
    );
    // A plain empty directory again: no ENOTCONN, nothing mounted.
    let meta = std::fs::metadata(mnt)
        .unwrap_or_else(|e| panic!("{name}: stat of the mount point: {e}; log:\n{log}"));
    assert!(meta.is_dir());
    assert_eq!(std::fs::read_dir(mnt).unwrap().count(), 0, "{name}");
    let mountpoint = Command::new("mountpoint")
        .arg("-q")
        .arg(mnt)
        .status()
        .unwrap();
    assert!(!mountpoint.success(), "{name}: mountpoint -q says mounted");
    assert!(
        wait_for(Duration::from_secs(5), || !is_running(daemon.pid)).is_some(),
        "{name}: the daemon is still running after unmounting"
    );
}

#[test]
fn mount_json_names_the_mount_point_the_running_daemon_and_its_log() {
    let lazyimg = Lazyimg::new(testenv());
    let mounted = Mounted {
        path: lazyimg.dir.path().join("mnt"),
    };
    std::fs::create_dir_all(&mounted.path).unwrap();

    let run = authed(
        &lazyimg,
        &["mount", "--json", image(), mounted.path.to_str().unwrap()],
    )
    .ok();

    let result: serde_json::Value = serde_json::from_str(&run.stdout())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{}", run.stdout()));
    assert_eq!(result["mountpoint"].as_str(), mounted.path.to_str());
    assert!(is_mounted(&mounted.path), "{result}");
    let pid = result["daemon_pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no daemon_pid in {result}")) as i32;
    assert!(is_running(pid), "daemon {pid} is not running");
    let log = lazyimg.cache().join(format!("logs/mount-{pid}.log"));
    assert_eq!(result["log"].as_str(), log.to_str(), "{result}");
    assert!(log.is_file(), "{} is missing", log.display());
    assert!(
        !run.stderr().contains("daemon pid"),
        "the message repeats the JSON on stderr: {}",
        run.stderr()
    );
}

#[test]
fn sigterm_unmounts_within_two_seconds_and_leaves_no_enotconn() {
    signal_unmounts_cleanly(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_unmounts_within_two_seconds_and_leaves_no_enotconn() {
    signal_unmounts_cleanly(libc::SIGINT, "SIGINT");
}

#[test]
fn sighup_unmounts_within_two_seconds_and_leaves_no_enotconn() {
    signal_unmounts_cleanly(libc::SIGHUP, "SIGHUP");
}

#[test]
fn sigterm_detaches_a_busy_mount_and_the_daemon_ends_when_it_is_let_go() {
    let lazyimg = Lazyimg::new(testenv());
    let (mounted, daemon) = mount(&lazyimg);
    let mnt = &mounted.path;
    // A process whose working directory is inside keeps the mount busy.
    let mut user = Command::new("sleep")
        .arg("60")
        .current_dir(mnt.join("layer0"))
        .spawn()
        .unwrap();

    assert_eq!(unsafe { libc::kill(daemon.pid, libc::SIGTERM) }, 0);
    let detached = wait_for(UNMOUNT_LIMIT, || !is_mounted(mnt));
    let still_serving = is_running(daemon.pid);
    user.kill().unwrap();
    user.wait().unwrap();
    let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    assert!(detached.is_some(), "still mounted; log:\n{log}");
    assert_eq!(std::fs::read_dir(mnt).unwrap().count(), 0);
    assert!(
        still_serving,
        "the daemon left its busy mount's user behind"
    );
    assert!(
        wait_for(Duration::from_secs(5), || !is_running(daemon.pid)).is_some(),
        "the daemon did not end once its last user let go; log:\n{log}"
    );
}

/// Whether `line` starts with a time as the daemon writes it:
/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` (RFC 3339, UTC) and a space.
fn starts_with_utc_time(line: &str) -> bool {
    let Some((time, _)) = line.split_once(' ') else {
        return false;
    };
    let Some(time) = time.strip_suffix('Z') else {
        return false;
    };
    let (whole, frac) = time.split_once('.').unwrap_or((time, "0"));
    let shape = "dddd-dd-ddTdd:dd:dd";
    whole.len() == shape.len()
        && whole.chars().zip(shape.chars()).all(|(c, s)| match s {
            'd' => c.is_ascii_digit(),
            s => c == s,
        })
        && !frac.is_empty()
        && frac.chars().all(|c| c.is_ascii_digit())
}

fn assert_every_line_timestamped(log_path: &Path) -> String {
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(!log.trim().is_empty(), "{} is empty", log_path.display());
    for line in log.lines() {
        assert!(
            starts_with_utc_time(line),
            "a line without a time in {}: {line:?}\n{log}",
            log_path.display()
        );
    }
    log
}

#[test]
fn the_daemon_log_carries_the_daemon_pid_and_a_time_on_every_line() {
    let lazyimg = Lazyimg::new(testenv());
    let (mounted, daemon) = mount(&lazyimg);
    assert_eq!(
        daemon.log,
        lazyimg
            .cache()
            .join("logs")
            .join(format!("mount-{}.log", daemon.pid)),
        "the log is named after the daemon's pid"
    );
    lazyimg
        .run(&["umount", mounted.path.to_str().unwrap()])
        .ok();
    assert!(wait_for(Duration::from_secs(5), || !is_running(daemon.pid)).is_some());
    let log = assert_every_line_timestamped(&daemon.log);
    assert!(log.contains("serving"), "{log}");
    assert_eq!(
        std::fs::read_dir(lazyimg.cache().join("logs"))
            .unwrap()
            .count(),
        1,
        "one log per daemon, nothing else"
    );
}

#[test]
fn a_failing_daemon_still_reports_its_error_from_a_timestamped_log() {
    let env = testenv();
    let lazyimg = Lazyimg::new(env);
    let mnt = lazyimg.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let missing = format!("{}/daemon/small:no-such-tag", env.upstream());
    let run = authed(&lazyimg, &["mount", &missing, mnt.to_str().unwrap()]);
    assert!(!run.success());
    let stderr = run.stderr();
    // The daemon's own error line, not the fallback for a daemon that said nothing.
    assert!(
        stderr.contains("no-such-tag") && !stderr.contains("exited before mounting"),
        "{stderr}"
    );
    let log_path = stderr
        .split_once("(log: ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(path, _)| PathBuf::from(path))
        .unwrap_or_else(|| panic!("no log path in: {stderr}"));
    let log = assert_every_line_timestamped(&log_path);
    assert!(log.contains("lazyimg: error: "), "{log}");
}

#[test]
fn cache_prune_removes_old_logs_of_finished_daemons_only() {
    let lazyimg = Lazyimg::new(testenv());
    let (finished_mount, finished) = mount(&lazyimg);
    lazyimg
        .run(&["umount", finished_mount.path.to_str().unwrap()])
        .ok();
    assert!(wait_for(Duration::from_secs(5), || !is_running(finished.pid)).is_some());
    let (_running_mount, running) = mount(&lazyimg);
    let eight_days_ago = SystemTime::now() - Duration::from_secs(8 * 24 * 3600);
    for log in [&finished.log, &running.log] {
        std::fs::File::options()
            .append(true)
            .open(log)
            .unwrap()
            .set_modified(eight_days_ago)
            .unwrap();
    }

    let prune = lazyimg.run(&["cache", "prune"]).ok();

    assert!(
        prune.stderr().contains(" and 1 old daemon logs"),
        "{}",
        prune.stderr()
    );
    assert!(
        !finished.log.exists(),
        "the finished daemon's old log stays"
    );
    assert!(running.log.exists(), "a running daemon's log was removed");
}
