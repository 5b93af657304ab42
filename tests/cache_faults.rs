//! The cache under faults of the machine, not the registry (issue 15,
//! acceptance 3): a full disk, and mount daemons killed while they write
//! chunks. Real FUSE mounts of an eStargz image on the testenv's upstream
//! (HTTPS, token auth); a tmpfs of a few MiB is the full disk.
//!
//! Needs root (FUSE, mount -t tmpfs).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::estargz::build_estargz_layer;
use support::image::{ImageSpec, LayerSpec, dir, file};
use support::layer::sha256_hex;
use support::testenv::{
    Lazyimg, Mounted, TestEnv, authed, build_layout_from_layers, nonce, testenv,
};
use support::torture::prng_bytes;

/// An eStargz image (64 KiB chunks) with `data/small.txt` and `count` files
/// `data/big-I.bin` of `size` incompressible bytes each, pushed to the
/// upstream. Returns the reference and the big files' bytes.
fn push_image(
    env: &TestEnv,
    work: &Path,
    label: &str,
    count: usize,
    size: usize,
) -> (String, Vec<Vec<u8>>) {
    let n = nonce();
    let bigs: Vec<Vec<u8>> = (0..count)
        .map(|i| [n.as_bytes(), &prng_bytes(7 + i as u64, size)].concat())
        .collect();
    let mut entries = vec![
        dir("data"),
        file("data/small.txt", format!("{label} {n}\n")),
    ];
    for (i, big) in bigs.iter().enumerate() {
        entries.push(file(&format!("data/big-{i}.bin"), big.clone()));
    }
    let spec = ImageSpec::new(vec![LayerSpec::new(entries)]);
    let layers = vec![build_estargz_layer(&spec.layers[0], 64 << 10)];
    let (layout, _) = build_layout_from_layers(&work.join(label), &spec, &layers, label);
    let repo_tag = format!("faults/{label}:{n}");
    env.push_upstream(&layout.dir, label, &repo_tag, false);
    (format!("{}/{repo_tag}", env.upstream()), bigs)
}

/// A tmpfs of `mib` MiB mounted on `dir` until dropped: a disk that fills.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, mib: u32) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs (needs root)");
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `lazyimg cache verify --json`: the corrupt entries it found (and removed).
fn corrupt_entries(lazyimg: &Lazyimg) -> Vec<serde_json::Value> {
    let out = lazyimg.run(&["cache", "verify", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out.stdout())
        .unwrap_or_else(|e| panic!("cache verify --json: {e}\n{}", out.stderr()));
    report["corrupt"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_full_cache_disk_fails_pulls_clearly_and_mounts_keep_serving_verified_bytes() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let (reference, bigs) = push_image(env, work.path(), "full", 1, 8 << 20);
    let big = &bigs[0];
    let lazyimg = Lazyimg::new(env);
    let _disk = SmallDisk::mount(&lazyimg.cache(), 4);

    // A pull needs the 8 MiB layer whole: ENOSPC, named, nothing partial left.
    let pull = authed(&lazyimg, &["pull", &reference]);
    assert!(!pull.success(), "a pull into a 4 MiB cache succeeded");
    let stderr = pull.stderr();
    assert!(
        stderr.contains("no space left on the device holding")
            && stderr.contains(lazyimg.cache().to_str().unwrap()),
        "{stderr}"
    );
    assert_eq!(
        lazyimg.leftover_downloads(),
        0,
        "a partial download was left"
    );
    assert_eq!(corrupt_entries(&lazyimg), Vec::<serde_json::Value>::new());

    // A mount still serves every byte, verified: chunks that cannot be
    // cached are served from memory, and the log says why they were not kept.
    let (mounted, daemon) = Mounted::with_daemon(&lazyimg, &reference, &[]);
    let small = std::fs::read_to_string(mounted.path.join("data/small.txt")).unwrap();
    assert!(small.starts_with("full "), "{small}");
    let read = std::fs::read(mounted.path.join("data/big-0.bin")).unwrap();
    assert_eq!(
        sha256_hex(&read),
        sha256_hex(big),
        "big-0.bin read back wrong"
    );
    let log = daemon.log();
    assert!(log.contains("no space left on the device holding"), "{log}");
    // What was cached before the disk filled keeps working.
    let again = std::fs::read_to_string(mounted.path.join("data/small.txt")).unwrap();
    assert_eq!(again, small);
    drop(mounted);
    assert_eq!(corrupt_entries(&lazyimg), Vec::<serde_json::Value>::new());
}

/// A small deterministic generator for the kill moments (xorshift64*), seeded
/// per run and printed, so a failure can be replayed.
struct Moments(u64);

impl Moments {
    fn next_ms(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % below
    }
}

#[test]
fn mount_daemons_killed_while_writing_chunks_leave_a_consistent_cache() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    // A file of its own per round, so every round's daemon is fetching and
    // writing chunks nobody cached yet when it is killed.
    let (reference, bigs) = push_image(env, work.path(), "crash", 21, 4 << 20);
    let lazyimg = Lazyimg::new(env);
    // Kill moments fall within the time a whole read of a file nobody read
    // takes here (timed on file 20, which no round reads), so most kills
    // land mid-read however fast this machine and registry are.
    let read_ms = {
        let (mounted, _daemon) = Mounted::with_daemon(&lazyimg, &reference, &[]);
        let start = std::time::Instant::now();
        std::fs::read(mounted.path.join("data/big-20.bin")).unwrap();
        start.elapsed().as_millis() as u64
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill moments seeded with {seed}, within {read_ms} ms");
    let mut moments = Moments(seed);
    let mut interrupted = 0;
    for round in 0..20 {
        let (mounted, daemon) = Mounted::with_daemon(&lazyimg, &reference, &[]);
        let mut reader = Command::new("cat")
            .arg(mounted.path.join(format!("data/big-{round}.bin")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Not in the first fifth: the read has started fetching by then.
        let delay = read_ms / 5 + moments.next_ms((read_ms * 4 / 5).max(1));
        std::thread::sleep(Duration::from_millis(delay));
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(daemon.pid, libc::SIGKILL) };
        let whole = reader.wait().unwrap().success();
        interrupted += usize::from(!whole);
        let _ = Command::new("umount").arg("-l").arg(&mounted.path).status();
        let cached = lazyimg.cached_blobs().len();
        eprintln!(
            "round {round}: killed after {delay} ms; read whole: {whole}; {cached} blobs cached"
        );
    }
    // Most kills must land while the daemon was still fetching and writing
    // chunks (the reader saw its read fail), or the test proves nothing.
    assert!(
        interrupted >= 10,
        "only {interrupted} of 20 kills interrupted a read"
    );
    assert_eq!(corrupt_entries(&lazyimg), Vec::<serde_json::Value>::new());
    let mounted = Mounted::new(&lazyimg, &reference, &[]);
    for (i, big) in bigs.iter().enumerate() {
        let read = std::fs::read(mounted.path.join(format!("data/big-{i}.bin"))).unwrap();
        assert_eq!(
            sha256_hex(&read),
            sha256_hex(big),
            "big-{i}.bin read back wrong after the kills"
        );
    }
}
