//! The FUSE adapter against the kernel: a mounted torture image must list
//! exactly like umoci's unpack of it, refuse writes, report read failures as
//! EIO, and keep answering metadata while a content read is stuck.
//!
//! Needs root and /dev/fuse; without them these tests fail, they do not skip.

mod support;

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fuser::BackgroundSession;
use lazyimg::fuse::{MountOptions, mount_foreground, spawn_mount};
use lazyimg::rootfs::{ContentReader, RootFs};
use lazyimg::tree::{ContentLocation, Tree};
use tempfile::TempDir;

use support::image::{
    BuiltLayer, Compression, ImageSpec, LayerSpec, OciLayout, build_layer, dir, file, torture_image,
};
use support::listing::{diff_listings, listing};
use support::tools::{is_root, unpack_with_umoci};
use support::torture::{RANDOM_FILE_SIZE, prng_bytes};

const EROFS: i32 = 30;
const EIO: i32 = 5;

fn require_fuse() {
    assert!(
        is_root(),
        "tests/fuse_mount.rs must run as root: it mounts FUSE filesystems"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: load the fuse module (modprobe fuse)"
    );
}

/// A broken adapter can make a listing loop forever. The server runs in this
/// very process, so exiting would deadlock on the request in flight; instead,
/// after 120 s the watchdog force-unmounts (`MNT_FORCE` aborts the FUSE
/// connection), every pending request fails and the test fails with it.
/// Dropping the returned sender disarms it.
fn watchdog(mountpoint: &Path) -> mpsc::Sender<()> {
    let target = cstring(mountpoint);
    let (guard, dropped) = mpsc::channel::<()>();
    thread::spawn(move || {
        if dropped.recv_timeout(Duration::from_secs(120)) == Err(mpsc::RecvTimeoutError::Timeout) {
            eprintln!("{target:?} hung for 120 s: aborting its FUSE connection");
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_FORCE) };
        }
    });
    guard
}

struct Image {
    spec: ImageSpec,
    layers: Vec<BuiltLayer>,
}

fn torture() -> Image {
    let spec = torture_image(Compression::Gzip);
    let layers = spec.layers.iter().map(build_layer).collect();
    Image { spec, layers }
}

/// umoci's unpack of `image`: the independent oracle.
fn umoci_rootfs(image: &Image, dir: &Path) -> PathBuf {
    let mut layout = OciLayout::create(&dir.join("layout"));
    let built = layout.add_image_from_layers(&image.spec, &image.layers);
    layout.tag("torture", &built.manifest);
    unpack_with_umoci(&layout.dir, "torture", &dir.join("bundle")).expect("umoci unpack")
}

/// lazyimg's side: decompress each blob the way a pull would, index it and
/// merge; returns the tree and the uncompressed layer tars.
fn lazy_tree(image: &Image) -> (Tree, Vec<Vec<u8>>) {
    let mut tars = Vec::new();
    let mut indexes = Vec::new();
    for layer in &image.layers {
        let compression = lazyimg::layer::Compression::from_media_type(&layer.media_type)
            .expect("tar layer media type");
        let mut tar = Vec::new();
        lazyimg::layer::decompress(compression, &layer.blob[..])
            .expect("decompressor")
            .read_to_end(&mut tar)
            .expect("decompress layer");
        assert_eq!(
            tar, layer.tar,
            "decompressed blob differs from the built tar"
        );
        indexes.push(lazyimg::layer::read_entries(&tar[..]).expect("index layer"));
        tars.push(tar);
    }
    (Tree::build(&indexes).expect("build tree"), tars)
}

/// Serves file bytes straight from the in-memory layer tars.
struct MemReader {
    tars: Vec<Vec<u8>>,
}

impl ContentReader for MemReader {
    fn read(&self, location: &ContentLocation, offset: u64, len: usize) -> lazyimg::Result<Bytes> {
        let tar = &self.tars[location.layer as usize];
        let start = location.offset + offset.min(location.size);
        let end = location.offset + location.size.min(offset + len as u64);
        Ok(Bytes::copy_from_slice(&tar[start as usize..end as usize]))
    }
}

/// `MemReader` that fails every read of one file and stalls reads of others.
struct FaultyReader {
    inner: MemReader,
    failing: ContentLocation,
    slow: Vec<ContentLocation>,
    delay: Duration,
    /// Told when a slow read starts.
    slow_started: Mutex<mpsc::Sender<()>>,
}

impl ContentReader for FaultyReader {
    fn read(&self, location: &ContentLocation, offset: u64, len: usize) -> lazyimg::Result<Bytes> {
        if *location == self.failing {
            return Err(lazyimg::Error::Network {
                registry: "test.invalid".into(),
                reason: "injected failure".into(),
            });
        }
        if self.slow.contains(location) {
            let _ = self.slow_started.lock().unwrap().send(());
            thread::sleep(self.delay);
        }
        self.inner.read(location, offset, len)
    }
}

fn location(tree: &Tree, path: &str) -> ContentLocation {
    let ino = tree
        .resolve_path(path)
        .unwrap_or_else(|| panic!("{path} in tree"));
    tree.attr(ino)
        .unwrap()
        .content()
        .expect("regular file")
        .clone()
}

/// A live mount; dropping it unmounts, then removes the mountpoint.
struct Mounted {
    session: BackgroundSession,
    _watchdog: mpsc::Sender<()>,
    dir: TempDir,
}

impl Mounted {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

fn options(owner: Option<(u32, u32)>) -> MountOptions {
    MountOptions {
        allow_other: false,
        owner,
        fsname: "lazyimg:test/torture:latest".into(),
        threads: 4,
    }
}

fn mount(tree: Tree, content: Arc<dyn ContentReader>, opts: &MountOptions) -> Mounted {
    let dir = tempfile::tempdir().expect("mountpoint");
    let rootfs = Arc::new(RootFs {
        tree,
        content,
        stats: None,
    });
    let session = spawn_mount(rootfs, dir.path(), opts).expect("mount");
    Mounted {
        session,
        _watchdog: watchdog(dir.path()),
        dir,
    }
}

fn mount_image(image: &Image, owner: Option<(u32, u32)>) -> Mounted {
    let (tree, tars) = lazy_tree(image);
    mount(tree, Arc::new(MemReader { tars }), &options(owner))
}

/// The `/proc/self/mounts` line of `mountpoint`, if mounted.
fn mount_line(mountpoint: &Path) -> Option<String> {
    let mountpoint = mountpoint.to_str().expect("UTF-8 temp path");
    fs::read_to_string("/proc/self/mounts")
        .expect("read /proc/self/mounts")
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(mountpoint))
        .map(str::to_string)
}

fn errno<T: std::fmt::Debug>(result: io::Result<T>) -> Option<i32> {
    result.expect_err("operation should fail").raw_os_error()
}

fn cstring(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

#[test]
fn mounted_torture_image_lists_like_umoci_and_unmounts() {
    require_fuse();
    let image = torture();
    let work = tempfile::tempdir().unwrap();
    let oracle = listing(&umoci_rootfs(&image, work.path())).expect("oracle listing");
    assert!(oracle.len() > 60, "oracle listing suspiciously short");

    let mounted = mount_image(&image, None);
    let mountpoint = mounted.path().canonicalize().unwrap();
    let line = mount_line(&mountpoint).expect("mounted");
    assert!(line.starts_with("lazyimg:test/torture:latest "), "{line}");
    for option in ["ro", "nosuid", "nodev", "default_permissions"] {
        assert!(
            line.split([' ', ',']).any(|o| o == option),
            "{option} missing: {line}"
        );
    }

    let mounted_listing = listing(mounted.path()).expect("listing of the mount");
    let diff = diff_listings(&oracle, &mounted_listing);
    assert!(
        diff.is_empty(),
        "mount differs from umoci's unpack (- umoci, + mount):\n{}",
        diff.join("\n")
    );

    let Mounted { session, dir, .. } = mounted;
    drop(session);
    assert_eq!(mount_line(&mountpoint), None, "still mounted after drop");
    drop(dir);
}

#[test]
fn writes_are_erofs_missing_names_enoent_and_tools_work() {
    require_fuse();
    let image = torture();
    let m = mount_image(&image, None);

    // Writes of every kind.
    assert_eq!(errno(fs::File::create(m.join("new-file"))), Some(EROFS));
    assert_eq!(errno(fs::create_dir(m.join("new-dir"))), Some(EROFS));
    let write_open = fs::OpenOptions::new()
        .write(true)
        .open(m.join("etc/hostname"));
    assert_eq!(errno(write_open), Some(EROFS));
    let chmod = fs::set_permissions(m.join("etc/hostname"), fs::Permissions::from_mode(0o600));
    assert_eq!(errno(chmod), Some(EROFS));
    assert_eq!(errno(fs::remove_file(m.join("etc/hostname"))), Some(EROFS));
    assert_eq!(
        errno(fs::rename(m.join("etc/hostname"), m.join("etc/x"))),
        Some(EROFS)
    );
    assert_eq!(
        errno(std::os::unix::fs::symlink("x", m.join("link"))),
        Some(EROFS)
    );
    let path = cstring(&m.join("etc/hostname"));
    let name = CString::new("user.new").unwrap();
    // SAFETY: valid NUL-terminated strings and a 1-byte value buffer.
    let rc = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!(rc, -1);
    assert_eq!(io::Error::last_os_error().raw_os_error(), Some(EROFS));

    // Missing names, twice (the second answer comes from the negative cache).
    for _ in 0..2 {
        let missing = fs::symlink_metadata(m.join("etc/does-not-exist"));
        assert_eq!(errno(missing), Some(libc::ENOENT));
    }
    assert_eq!(
        errno(fs::symlink_metadata(m.join("nope/deeper"))),
        Some(libc::ENOENT)
    );
    assert_eq!(
        errno(fs::symlink_metadata(m.join("etc/hostname/x"))),
        Some(libc::ENOTDIR)
    );

    // The real `ls -la` (readdirplus, with `.` and `..`).
    let ls = Command::new("ls")
        .args(["-la", "--time-style=+%s"])
        .arg(m.path())
        .env("LC_ALL", "C")
        .output()
        .expect("run ls");
    let out = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.status.success(),
        "ls -la failed: {}",
        String::from_utf8_lossy(&ls.stderr)
    );
    let line = |name: &str| {
        out.lines()
            .find(|l| l.ends_with(&format!(" {name}")) || l.contains(&format!(" {name} -> ")))
            .unwrap_or_else(|| panic!("{name} not in ls -la output:\n{out}"))
            .to_string()
    };
    for name in [".", "..", "bin", "etc", "dev", "data"] {
        line(name);
    }
    assert!(line("tmp").starts_with("drwxrwxrwt"), "{out}");
    assert!(line("lib").starts_with("lrwxrwxrwx"), "{out}");
    assert!(line("lib").ends_with("lib -> usr/lib"), "{out}");

    let ls_dev = Command::new("ls")
        .arg("-la")
        .arg(m.join("dev"))
        .output()
        .expect("run ls");
    let dev = String::from_utf8_lossy(&ls_dev.stdout);
    assert!(
        dev.lines()
            .any(|l| l.starts_with('c') && l.ends_with(" null")),
        "{dev}"
    );
    assert!(
        dev.lines()
            .any(|l| l.starts_with('b') && l.ends_with(" sda")),
        "{dev}"
    );
    assert!(
        dev.lines()
            .any(|l| l.starts_with('p') && l.ends_with(" fifo")),
        "{dev}"
    );

    // getfattr, and the size-probe protocol underneath it.
    let getfattr = Command::new("getfattr")
        .args(["--only-values", "-n", "user.comment"])
        .arg(m.join("etc/commented"))
        .output()
        .expect("run getfattr");
    assert!(
        getfattr.status.success(),
        "{}",
        String::from_utf8_lossy(&getfattr.stderr)
    );
    assert_eq!(getfattr.stdout, b"hello from a PAX xattr");
    let dump = Command::new("getfattr")
        .args(["-d", "-m", "-", "-e", "hex"])
        .arg(m.join("etc/commented"))
        .output()
        .expect("run getfattr");
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("user.binary=0x000102ff"), "{dump}");
    assert!(dump.contains("user.comment=0x"), "{dump}");

    let path = cstring(&m.join("etc/commented"));
    let name = CString::new("user.comment").unwrap();
    let mut small = [0u8; 4];
    // SAFETY: valid strings; null/zero-size and 4-byte buffers as passed.
    unsafe {
        assert_eq!(
            libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0),
            22
        );
        let rc = libc::getxattr(path.as_ptr(), name.as_ptr(), small.as_mut_ptr().cast(), 4);
        assert_eq!(
            (rc, io::Error::last_os_error().raw_os_error()),
            (-1, Some(libc::ERANGE))
        );
        assert_eq!(libc::listxattr(path.as_ptr(), std::ptr::null_mut(), 0), 25);
        let rc = libc::listxattr(path.as_ptr(), small.as_mut_ptr().cast(), 4);
        assert_eq!(
            (rc, io::Error::last_os_error().raw_os_error()),
            (-1, Some(libc::ERANGE))
        );
        let absent = CString::new("user.absent").unwrap();
        let rc = libc::getxattr(path.as_ptr(), absent.as_ptr(), std::ptr::null_mut(), 0);
        assert_eq!(
            (rc, io::Error::last_os_error().raw_os_error()),
            (-1, Some(libc::ENODATA))
        );
    }

    // statfs: read-only, one file slot per inode, blocks cover the content.
    let root = cstring(m.path());
    // SAFETY: statvfs fills the zeroed struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(root.as_ptr(), &mut st) }, 0);
    assert_ne!(st.f_flag & libc::ST_RDONLY, 0);
    assert_eq!(st.f_namemax, 255);
    let (tree, _) = lazy_tree(&image);
    assert_eq!(st.f_files, tree.inode_count() as u64);
    assert!(st.f_blocks * st.f_frsize >= RANDOM_FILE_SIZE as u64);
    assert_eq!(st.f_bavail, 0);
}

#[test]
fn failing_read_is_eio_and_slow_read_does_not_block_metadata() {
    require_fuse();
    let image = torture();
    let (tree, tars) = lazy_tree(&image);
    let (started_tx, started) = mpsc::channel();
    // More stalled reads than the adapter has /dev/fuse loop threads: if a
    // read ran on a loop thread, nothing else could be answered meanwhile.
    let slow_files = ["usr/lib/libfoo.so.1", "etc/old-mtime", "etc/future-mtime"];
    let reader = FaultyReader {
        failing: location(&tree, "etc/hostname"),
        slow: slow_files.iter().map(|p| location(&tree, p)).collect(),
        delay: Duration::from_secs(2),
        slow_started: Mutex::new(started_tx),
        inner: MemReader { tars },
    };
    let m = mount(tree, Arc::new(reader), &options(None));

    // The failing file: EIO on every read, metadata still fine.
    for _ in 0..2 {
        assert_eq!(errno(fs::read(m.join("etc/hostname"))), Some(EIO));
    }
    assert_eq!(fs::metadata(m.join("etc/hostname")).unwrap().len(), 11);
    assert_eq!(fs::read(m.join("etc/commented")).unwrap(), b"has xattrs\n");

    // Reads stuck for 2 s must not hold up lookups, listings or other reads.
    let slow: Vec<_> = slow_files
        .iter()
        .map(|p| {
            let path = m.join(p);
            thread::spawn(move || {
                let start = Instant::now();
                (fs::read(path), start.elapsed())
            })
        })
        .collect();
    // Checked under catch_unwind so the stalled readers are joined before
    // any failure unwinds: unmounting under a blocked reader of this very
    // process can hang the test binary instead of failing it.
    let checks = panic::catch_unwind(AssertUnwindSafe(|| {
        // All of them in flight at once (well before the first could
        // finish), so the checks below run while every one is stuck.
        let deadline = Instant::now() + Duration::from_millis(1500);
        for _ in &slow_files {
            let left = deadline.saturating_duration_since(Instant::now());
            started
                .recv_timeout(left)
                .expect("the stalled reads were not all in flight at once");
        }
        let start = Instant::now();
        for path in [
            "bin/busybox",
            "names/with space.txt",
            "hl/b",
            "dev/sda",
            "gone-dir/reborn",
        ] {
            fs::symlink_metadata(m.join(path)).unwrap_or_else(|e| panic!("stat {path}: {e}"));
        }
        for dir in ["names", "opaque", "long", "gnu"] {
            let n = fs::read_dir(m.join(dir)).unwrap().count();
            assert!(n > 0, "{dir} is empty");
        }
        assert_eq!(fs::read(m.join("changes.txt")).unwrap(), b"v3\n");
        let meanwhile = start.elapsed();
        assert!(
            meanwhile < Duration::from_millis(500),
            "metadata and other reads took {meanwhile:?} while reads were stuck"
        );
    }));
    let slow: Vec<_> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    if let Err(failure) = checks {
        panic::resume_unwind(failure);
    }

    let expected: [&[u8]; 3] = [b"ELF-ish\n", b"old\n", b"future\n"];
    for ((bytes, took), expected) in slow.into_iter().zip(expected) {
        assert_eq!(bytes.unwrap(), expected);
        assert!(
            took >= Duration::from_secs(2),
            "a slow read took only {took:?}"
        );
    }
}

#[test]
fn large_directory_lists_completely_and_repeatably() {
    require_fuse();
    // Far more entries than one readdir reply holds, so listing resumes from
    // our cookies many times; the second pass may come from the kernel's
    // directory cache and must agree.
    let mut entries = vec![dir("big")];
    let names: Vec<String> = (0..3000)
        .map(|i| format!("entry-{i:05}-{}", "n".repeat(i % 40)))
        .collect();
    entries.extend(
        names
            .iter()
            .map(|n| file(&format!("big/{n}"), n.as_bytes())),
    );
    let image = Image {
        spec: ImageSpec::new(vec![]),
        layers: vec![build_layer(&LayerSpec::new(entries))],
    };
    let m = mount_image(&image, None);
    for pass in 0..2 {
        let mut listed: Vec<String> = fs::read_dir(m.join("big"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        listed.sort();
        assert_eq!(listed, names, "pass {pass}");
    }
    let last = &names[2999];
    assert_eq!(fs::read(m.join("big").join(last)).unwrap(), last.as_bytes());
}

#[test]
fn owner_override_reports_every_inode_as_owned() {
    require_fuse();
    let m = mount_image(&torture(), Some((1234, 1234)));
    let lines = listing(m.path()).expect("listing");
    assert!(lines.len() > 60);
    for line in &lines {
        assert!(
            line.contains(" uid=1234 gid=1234"),
            "not overridden: {line}"
        );
    }
    // Modes are untouched by the override.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("\"bin/suid\" file mode=4755 "))
    );
}

#[test]
fn concurrent_reads_of_a_large_file_all_match_the_oracle() {
    require_fuse();
    let image = torture();
    let work = tempfile::tempdir().unwrap();
    let expected = fs::read(umoci_rootfs(&image, work.path()).join("data/random.bin")).unwrap();
    assert_eq!(expected, prng_bytes(42, RANDOM_FILE_SIZE));
    let expected = Arc::new(expected);

    let m = mount_image(&image, None);
    let path = m.join("data/random.bin");
    let barrier = Arc::new(Barrier::new(16));
    let readers: Vec<_> = (0..16u64)
        .map(|i| {
            let (path, barrier, expected) = (path.clone(), barrier.clone(), expected.clone());
            thread::spawn(move || {
                barrier.wait();
                if i % 2 == 0 {
                    assert!(
                        fs::read(&path).unwrap() == *expected,
                        "reader {i}: bytes differ"
                    );
                } else {
                    // Odd threads read with unaligned offsets and sizes.
                    let file = fs::File::open(&path).unwrap();
                    let chunk = 4096 * (i as usize) + 777 * (i as usize);
                    let mut offset = 0;
                    while offset < expected.len() {
                        let mut buf = vec![0; chunk.min(expected.len() - offset)];
                        file.read_exact_at(&mut buf, offset as u64).unwrap();
                        assert!(
                            buf == expected[offset..offset + buf.len()],
                            "reader {i}: bytes differ at {offset}"
                        );
                        offset += buf.len();
                    }
                    let mut past_end = [0u8; 16];
                    assert_eq!(
                        file.read_at(&mut past_end, expected.len() as u64).unwrap(),
                        0
                    );
                }
            })
        })
        .collect();
    for reader in readers {
        reader.join().expect("reader thread");
    }
}

#[test]
fn foreground_mount_returns_once_unmounted() {
    require_fuse();
    let (tree, tars) = lazy_tree(&torture());
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().canonicalize().unwrap();
    let rootfs = Arc::new(RootFs {
        tree,
        content: Arc::new(MemReader { tars }),
        stats: None,
    });
    let serving = {
        let mountpoint = mountpoint.clone();
        thread::spawn(move || mount_foreground(rootfs, &mountpoint, &options(None)))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while mount_line(&mountpoint).is_none() {
        assert!(Instant::now() < deadline, "mount did not appear");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        fs::read(mountpoint.join("etc/hostname")).unwrap(),
        b"torture-v2\n"
    );

    let target = cstring(&mountpoint);
    // SAFETY: valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::umount(target.as_ptr()) },
        0,
        "{}",
        io::Error::last_os_error()
    );
    serving
        .join()
        .unwrap()
        .expect("foreground mount ends cleanly");
    assert_eq!(mount_line(&mountpoint), None);
}

#[test]
fn mounting_on_a_missing_directory_is_an_error() {
    let (tree, tars) = lazy_tree(&torture());
    let rootfs = Arc::new(RootFs {
        tree,
        content: Arc::new(MemReader { tars }),
        stats: None,
    });
    let missing = Path::new("/nonexistent/lazyimg-mountpoint");
    let err = spawn_mount(rootfs, missing, &options(None)).expect_err("mount must fail");
    assert!(
        err.to_string().contains("/nonexistent/lazyimg-mountpoint"),
        "{err}"
    );
}
