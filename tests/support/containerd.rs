//! A containerd of the test's own (Debian's 1.6.20, root, state and sockets
//! under a temp dir) with `lazyimg snapshotter` as its proxy snapshotter
//! `lazyimg`, and the `ctr` / `ctr-remote` clients pointed at it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::testenv::Lazyimg;

/// containerd's namespace for `ctr` (CRI uses `k8s.io`).
pub const NAMESPACE: &str = "default";

/// A running `lazyimg snapshotter` with state under `root`; killed (SIGTERM)
/// and its layer store unmounted when dropped.
pub struct Snapshotter {
    pub root: PathBuf,
    pub socket: PathBuf,
    /// What `lazyimg snapshotter --print-config` gives for the socket: the
    /// containerd config lines that use this snapshotter.
    pub containerd_config: String,
    child: Child,
    log: PathBuf,
}

impl Snapshotter {
    /// Starts the snapshotter of `lazyimg`'s sandbox (its cache, config),
    /// state in `root`, and waits for its socket.
    pub fn start(lazyimg: &Lazyimg, root: &Path) -> Snapshotter {
        let socket = root.join("sn.sock");
        let log = root.join("snapshotter.log");
        let containerd_config = lazyimg
            .run(&[
                "snapshotter",
                "--print-config",
                "--socket",
                socket.to_str().unwrap(),
            ])
            .ok()
            .stdout();
        let child = lazyimg
            .cmd()
            .args(["-v", "snapshotter", "--socket"])
            .arg(&socket)
            .arg("--root")
            .arg(root)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("lazyimg snapshotter starts");
        let mut started = Snapshotter {
            root: root.to_path_buf(),
            socket,
            containerd_config,
            child,
            log,
        };
        started.wait_for_socket();
        started
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.socket.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("lazyimg snapshotter exited ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "no socket:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its log so far (stderr, with `-v`), then its layer store's (the
    /// daemon's log path is in the message that started it).
    pub fn log(&self) -> String {
        let own = std::fs::read_to_string(&self.log).unwrap_or_default();
        let store_log = own
            .lines()
            .find_map(|l| l.split(", log ").nth(1)?.strip_suffix(')'))
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default();
        format!("{own}\n--- layer store:\n{store_log}")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash: nothing is cleaned up.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let _ = std::fs::remove_file(&self.socket);
    }

    /// The layer store the snapshotter serves remote layers from.
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        // The layer store outlives the snapshotter on purpose; not the test.
        let _ = Command::new("umount").arg("-l").arg(self.store()).status();
    }
}

/// A containerd whose root, state and sockets are under one temp dir.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    /// Starts containerd with `snapshotter_config` (the lines `lazyimg
    /// snapshotter --print-config` gives) in its config (version 2), plain
    /// HTTP to `plain_registry` for CRI pulls, and `extra` config lines.
    pub fn start(snapshotter_config: &str, plain_registry: &str, extra: &str) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("lazyimg-ctd-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path().display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
             {snapshotter_config}\n\
             [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{plain_registry}\"]\n  \
             endpoint = [\"http://{plain_registry}\"]\n{extra}"
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("containerd.log")).unwrap())
            .spawn()
            .expect("containerd starts (scripts/setup-runtimes.sh installs it)");
        let containerd = Containerd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !containerd.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr ARGS` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.client("ctr", args)
    }

    /// `ctr-remote ARGS` against this containerd (its `image rpull` adds
    /// the labels naming each layer's image).
    pub fn ctr_remote(&self, args: &[&str]) -> Output {
        self.client("ctr-remote", args)
    }

    fn client(&self, program: &str, args: &[&str]) -> Output {
        Command::new(program)
            .arg("--address")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"))
    }

    /// `ctr ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        checked("ctr", args, self.ctr(args), || self.log())
    }

    /// `ctr-remote ARGS`, which must succeed; its stdout.
    pub fn remote_ok(&self, args: &[&str]) -> String {
        checked("ctr-remote", args, self.ctr_remote(args), || self.log())
    }
}

fn checked(program: &str, args: &[&str], out: Output, log: impl Fn() -> String) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{program} {args:?}:\n{stdout}\n{stderr}\ncontainerd log:\n{}",
        log()
    );
    stdout
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks and containers first: their shims outlive containerd (by
        // design) and would keep its mounts and the layer store busy.
        let list = |what: &str| -> Vec<String> {
            let out = self.ctr(&[what, "ls", "-q"]);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        };
        for task in list("task") {
            let _ = self.ctr(&["task", "delete", "--force", &task]);
        }
        for container in list("container") {
            let _ = self.ctr(&["container", "rm", &container]);
        }
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        // Whatever containerd left mounted under its root.
        let root = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = Command::new("umount").arg("-l").arg(point).status();
        }
    }
}
