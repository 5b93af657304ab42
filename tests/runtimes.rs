//! lazyimg's runtime command lines against the real runtimes: a Debian 12 image
//! (scripts/build-debian-image.sh, debootstrap cached under /var/tmp) unpacked by
//! umoci and bind-mounted read-only, standing in for the FUSE mount, run with
//! ch-run and podman (runc, CONTAINERS_CONF from scripts/setup-runtimes.sh).
//!
//! Needs root (debootstrap, mounts, runuser). A missing runtime, tool or user
//! makes these tests fail, never skip. Apptainer is not packaged for Debian 12:
//! only its command line is tested, by the unit tests in src/runtime.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use lazyimg::runtime::{self, Bind, Gpus, RunSpec, Runtime, RuntimeError};

const TAG: &str = "bookworm";
const MARKER: &str = "lazyimg debian test image\n";
const TEST_USER: &str = "lazyimg-test";
const SECRET: (&str, &str) = ("LAZYIMG_HOST_SECRET", "x");
/// Prefix of this binary's scratch directories (with the pid, to clean up after
/// killed runs).
const SCRATCH_PREFIX: &str = "lazyimg-runtimes-";

struct Fixture {
    /// The unpacked image, bind-mounted read-only onto itself.
    rootfs: PathBuf,
    /// The image config's Env, as `lazyimg run` would pass it.
    image_env: Vec<String>,
    containers_conf: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();
static SCRATCH: OnceLock<(PathBuf, PathBuf)> = OnceLock::new(); // (dir, mounted rootfs)

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let t0 = Instant::now();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "these tests need root");
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");

        let out = run_ok(Command::new(scripts.join("setup-runtimes.sh")));
        let containers_conf = out
            .lines()
            .find_map(|l| l.strip_prefix("export CONTAINERS_CONF="))
            .unwrap_or_else(|| panic!("setup-runtimes.sh printed no CONTAINERS_CONF:\n{out}"))
            .into();

        remove_stale_scratch();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{SCRATCH_PREFIX}{}-", std::process::id()))
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let layout = dir.join("oci");
        let mut build = Command::new(scripts.join("build-debian-image.sh"));
        build.arg(&layout).arg(TAG);
        run_ok(build);

        let config = run_ok(with_args(
            "skopeo",
            &[
                "inspect",
                "--config",
                &format!("oci:{}:{TAG}", layout.display()),
            ],
        ));
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        let image_env = config["config"]["Env"]
            .as_array()
            .expect("image config has Env")
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();

        let bundle = dir.join("bundle");
        run_ok(with_args(
            "umoci",
            &[
                "unpack",
                "--image",
                &format!("{}:{TAG}", layout.display()),
                bundle.to_str().unwrap(),
            ],
        ));
        // The unprivileged user must reach the rootfs: tempdir and umoci's bundle are 0700.
        for d in [&dir, &bundle] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let rootfs = bundle.join("rootfs");
        let r = rootfs.to_str().unwrap();
        SCRATCH.set((dir.clone(), rootfs.clone())).unwrap();
        // SAFETY: registers a plain extern "C" fn; it runs at exit, after the tests.
        unsafe { libc::atexit(cleanup) };
        run_ok(with_args("mount", &["--bind", r, r]));
        run_ok(with_args("mount", &["-o", "remount,bind,ro", r]));

        // A host variable that must not reach any container.
        // SAFETY: set once, before any test spawns a runtime (they all wait on
        // this OnceLock), and nothing here reads the environment concurrently
        // outside std's own lock.
        unsafe { std::env::set_var(SECRET.0, SECRET.1) };
        // So that runtime::run, which podman inherits its environment from, works.
        // SAFETY: as above.
        unsafe { std::env::set_var("CONTAINERS_CONF", &containers_conf) };
        eprintln!("fixture ready in {:.1?}", t0.elapsed());
        Fixture {
            rootfs,
            image_env,
            containers_conf,
        }
    })
}

extern "C" fn cleanup() {
    if let Some((dir, rootfs)) = SCRATCH.get() {
        unmount(rootfs);
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn unmount(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// Unmounts and removes scratch directories of earlier runs that were killed.
fn remove_stale_scratch() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(SCRATCH_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let rootfs = e.path().join("bundle/rootfs");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        if mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == rootfs.to_str())
        {
            unmount(&rootfs);
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

fn with_args(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Runs to completion; stdout on success, panics with everything otherwise.
fn run_ok(mut cmd: Command) -> String {
    let (code, stdout, stderr) = output(&mut cmd);
    assert_eq!(code, 0, "{cmd:?} failed:\n{stderr}{stdout}");
    stdout
}

/// (exit code as a shell reports it, stdout, stderr).
fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .current_dir("/")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        runtime::exit_code(out.status),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn spec(command: &[&str]) -> RunSpec {
    let f = fixture();
    let mut s = RunSpec::new(&f.rootfs, command.iter().map(|s| s.to_string()).collect());
    s.image_env = f.image_env.clone();
    s.tty = false;
    s
}

/// The runtime's command for `spec`, ready to run here.
fn command(rt: Runtime, spec: &RunSpec) -> Command {
    runtime::check_available(rt).unwrap_or_else(|e| panic!("{e}; {}", e.hint().unwrap_or("")));
    let mut cmd = runtime::command(rt, spec).unwrap();
    if rt == Runtime::Podman {
        cmd.env("CONTAINERS_CONF", &fixture().containers_conf);
    }
    cmd
}

fn run_in(rt: Runtime, spec: &RunSpec) -> (i32, String, String) {
    let t = Instant::now();
    let mut cmd = command(rt, spec);
    let out = output(&mut cmd);
    eprintln!("{rt} {:?}: {:.2?}", spec.command, t.elapsed());
    out
}

fn assert_runs_debian(rt: Runtime) {
    let (code, out, err) = run_in(
        rt,
        &spec(&[
            "sh",
            "-c",
            "cat /etc/os-release /etc/lazyimg-test; ls /usr/share/doc",
        ]),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\""),
        "{out}"
    );
    assert!(out.contains("VERSION_CODENAME=bookworm\n"), "{out}");
    assert!(out.contains(MARKER), "layer 2's marker missing:\n{out}");
    let docs: Vec<&str> = out.lines().collect();
    assert!(docs.contains(&"apt"), "{out}");
    assert!(
        !docs.contains(&"debconf"),
        "layer 3's whiteout ignored:\n{out}"
    );
}

#[test]
fn charliecloud_runs_debian_12() {
    assert_runs_debian(Runtime::Charliecloud);
}

#[test]
fn podman_runs_debian_12() {
    assert_runs_debian(Runtime::Podman);
}

/// Podman runs as the image's `User`, as `podman run IMAGE` does;
/// Charliecloud as the invoking user, whatever the image says.
#[test]
fn podman_runs_as_the_images_user_and_charliecloud_as_the_caller() {
    let mut s = spec(&["sh", "-c", "id -un; id -u"]);
    s.user = Some("nobody".into());
    let (code, out, err) = run_in(Runtime::Podman, &s);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "nobody\n65534\n");
    s.user = Some("65534:65534".into());
    s.command = vec!["id".into()];
    let (_, out, err) = run_in(Runtime::Podman, &s);
    assert!(
        out.starts_with("uid=65534(nobody) gid=65534(nogroup)"),
        "{out}{err}"
    );
    s.command = vec!["id".into(), "-u".into()];
    let (code, out, err) = run_in(Runtime::Charliecloud, &s);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "0\n", "ch-run as root, not the image's user");
}

#[test]
fn exit_status_comes_back() {
    for rt in [Runtime::Charliecloud, Runtime::Podman] {
        let mut s = spec(&["sh", "-c", "exit 7"]);
        if rt == Runtime::Podman {
            // runtime::run inherits the environment; CONTAINERS_CONF goes in via
            // the podman Command instead.
            let (code, _, err) = run_in(rt, &s);
            assert_eq!(code, 7, "{rt}: {err}");
        } else {
            assert_eq!(runtime::run(rt, &s).unwrap(), 7, "{rt}");
        }
        s.command = vec!["sh".into(), "-c".into(), "exit 0".into()];
        assert_eq!(run_in(rt, &s).0, 0, "{rt}");
    }
    // No PID namespace under ch-run: a signal kills the command, 128+N comes back.
    let s = spec(&["sh", "-c", "kill -KILL $$"]);
    assert_eq!(run_in(Runtime::Charliecloud, &s).0, 137);
}

/// What `lazyimg run` exits with for `spec`: [`runtime::run`]'s status, or its
/// error's.
fn run_status(rt: Runtime, spec: &RunSpec) -> i32 {
    match runtime::run(rt, spec) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{rt}: {e}");
            e.exit_status().into()
        }
    }
}

#[test]
fn job_status_and_lazyimg_failures_are_told_apart() {
    for rt in [Runtime::Charliecloud, Runtime::Podman] {
        assert_eq!(run_status(rt, &spec(&["sh", "-c", "exit 1"])), 1, "{rt}");
        assert_eq!(run_status(rt, &spec(&["no-such-command"])), 127, "{rt}");
        assert_eq!(run_status(rt, &spec(&["/etc/passwd"])), 126, "{rt}");
        assert_eq!(run_status(rt, &spec(&["/usr/bin"])), 126, "{rt}");
        // A command the job runs is its own business: sh's 127 passes through.
        assert_eq!(
            run_status(rt, &spec(&["sh", "-c", "no-such-command"])),
            127,
            "{rt}"
        );
        // lazyimg (or the runtime) cannot start the job: 125.
        let mut s = spec(&["true"]);
        s.binds = vec![Bind::new("/nonexistent-lazyimg-source", "/mnt")];
        assert_eq!(run_status(rt, &s), 125, "{rt}");
    }
}

fn env_of(rt: Runtime, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut s = spec(&["env", "-0"]);
    s.env = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.host.term = Some("xterm-lazyimg".into());
    let (code, out, err) = run_in(rt, &s);
    assert_eq!(code, 0, "{rt}: {err}");
    out.split('\0')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn environment_policy_holds_for_both_runtimes() {
    fixture();
    assert_eq!(std::env::var(SECRET.0).as_deref(), Ok(SECRET.1));
    // Control: ch-run passes host variables on unless told otherwise.
    let mut leaky = Command::new("ch-run");
    leaky.arg(&fixture().rootfs).args(["--", "env"]);
    leaky.env("USER", "root");
    let (_, out, err) = output(&mut leaky);
    assert!(
        out.contains("LAZYIMG_HOST_SECRET=x\n"),
        "control failed: {err}{out}"
    );

    let tricky = "a b,c $HOME 'q' \"d\"\nline2";
    let extra = [("LAZYIMG_CLI", "from-cli"), ("LAZYIMG_TRICKY", tricky)];
    let image_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for rt in [Runtime::Charliecloud, Runtime::Podman] {
        let env = env_of(rt, &extra);
        assert_eq!(
            env.get(SECRET.0),
            None,
            "{rt} leaked a host variable: {env:?}"
        );
        assert_eq!(env["LAZYIMG_IMAGE_ENV"], "from-image", "{rt}");
        assert_eq!(env["LAZYIMG_CLI"], "from-cli", "{rt}");
        assert_eq!(
            env["LAZYIMG_TRICKY"], tricky,
            "{rt}: values must pass verbatim"
        );
        assert_eq!(env["PATH"], image_path, "{rt}");
        assert_eq!(env["TERM"], "xterm-lazyimg", "{rt}");
        // Exactly the policy's variables plus what the module doc says the runtime adds.
        let runtime_adds: &[&str] = match rt {
            Runtime::Charliecloud => &["HOME", "USER", "CH_RUNNING"],
            Runtime::Podman => &["HOME", "HOSTNAME"],
            Runtime::Apptainer => unreachable!(),
        };
        let mut want: Vec<&str> = [
            "LAZYIMG_IMAGE_ENV",
            "LAZYIMG_CLI",
            "LAZYIMG_TRICKY",
            "PATH",
            "TERM",
        ]
        .into_iter()
        .chain(runtime_adds.iter().copied())
        .collect();
        want.sort();
        let got: Vec<&str> = env.keys().map(|k| k.as_str()).collect();
        assert_eq!(got, want, "{rt}: {env:?}");
        assert_eq!(env["HOME"], "/root", "{rt}");

        // --env overrides the image, including PATH.
        let env = env_of(
            rt,
            &[("LAZYIMG_IMAGE_ENV", "from-cli"), ("PATH", "/bin:/usr/bin")],
        );
        assert_eq!(env["LAZYIMG_IMAGE_ENV"], "from-cli", "{rt}");
        assert_eq!(env["PATH"], "/bin:/usr/bin", "{rt}");
    }
}

#[test]
fn image_stays_read_only_and_binds_work() {
    let f = fixture();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("input"), "bound\n").unwrap();
    let script = "cat /mnt/input && pwd && touch /etc/written && echo wrote";

    // ch-run: the image is read-only; an existing target works.
    let mut s = spec(&["sh", "-c", script]);
    s.binds = vec![Bind::new(data.path(), "/mnt")];
    s.workdir = Some("/usr".into());
    runtime::check_binds(Runtime::Charliecloud, &s).unwrap();
    let (code, out, err) = run_in(Runtime::Charliecloud, &s);
    assert_ne!(code, 0, "wrote into the image:\n{out}");
    assert_eq!(out, "bound\n/usr\n", "{err}");
    assert!(err.contains("Read-only file system"), "{err}");

    // podman: writes go to a throwaway overlay; a missing target is created.
    s.binds = vec![Bind::new(data.path(), "/data")];
    s.command[2] = script.replace("/mnt/", "/data/");
    let (code, out, err) = run_in(Runtime::Podman, &s);
    assert_eq!((code, out.as_str()), (0, "bound\n/usr\nwrote\n"), "{err}");
    assert!(!f.rootfs.join("etc/written").exists());

    // ... which charliecloud cannot do: refused before starting it.
    let e = runtime::check_binds(Runtime::Charliecloud, &s).unwrap_err();
    assert!(matches!(e, RuntimeError::MissingBindTargets { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "bind target /data does not exist in the image; charliecloud cannot create it"
    );
    let e = runtime::run(Runtime::Charliecloud, &s).unwrap_err();
    assert!(matches!(e, RuntimeError::MissingBindTargets { .. }), "{e}");
}

#[test]
fn read_only_binds_cannot_be_written() {
    let data = tempfile::tempdir().unwrap();
    let mut s = spec(&["sh", "-c", "cat /mnt/input && touch /mnt/written"]);
    std::fs::write(data.path().join("input"), "bound\n").unwrap();
    s.binds = vec![Bind::new(data.path(), "/mnt").read_only()];
    let (code, out, err) = run_in(Runtime::Podman, &s);
    assert_eq!((code, out.as_str()), (1, "bound\n"), "{err}");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!data.path().join("written").exists());

    // Charliecloud cannot: refused before starting, with lazyimg's 125.
    let e = runtime::run(Runtime::Charliecloud, &s).unwrap_err();
    assert!(matches!(e, RuntimeError::ReadOnlyBind { .. }), "{e}");
    assert_eq!(e.exit_status(), 125);
    // The same bind read-write is writable (the control).
    s.binds[0].read_only = false;
    let (code, _, err) = run_in(Runtime::Charliecloud, &s);
    assert_eq!(code, 0, "{err}");
    assert!(data.path().join("written").exists());
}

/// A CDI spec in /var/run/cdi (podman 4.3.1 reads no other directory) for
/// `nvidia.com/gpu` devices `0` and `all`: a fake device node made with mknod
/// and a stub library, both in a temp dir. Removed when dropped.
struct FakeCdiSpec {
    spec: PathBuf,
    dir: tempfile::TempDir,
}

impl FakeCdiSpec {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // 195/0: the real /dev/nvidia0's numbers; nothing here opens it.
        let node = d.join("nvidia0");
        run_ok(with_args(
            "mknod",
            &[node.to_str().unwrap(), "c", "195", "0"],
        ));
        std::fs::write(d.join("libcuda.so.1"), "stub driver\n").unwrap();
        let edits = format!(
            "  containerEdits:\n    deviceNodes:\n    - path: /dev/nvidia0\n      hostPath: {}\n",
            node.display()
        );
        let yaml = format!(
            "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: \"0\"\n{edits}- name: all\n{edits}\
             containerEdits:\n  mounts:\n  - hostPath: {}\n    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.1\n    options: [ro, nosuid, nodev, bind]\n",
            d.join("libcuda.so.1").display()
        );
        std::fs::create_dir_all("/var/run/cdi").unwrap();
        let spec = PathBuf::from(format!(
            "/var/run/cdi/{SCRATCH_PREFIX}{}.yaml",
            std::process::id()
        ));
        std::fs::write(&spec, yaml).unwrap();
        FakeCdiSpec { spec, dir }
    }
}

impl Drop for FakeCdiSpec {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.spec);
    }
}

#[test]
fn podman_gets_gpus_through_cdi() {
    let mut s = spec(&[
        "sh",
        "-c",
        "ls -l /dev/nvidia0 && cat /usr/lib/x86_64-linux-gnu/libcuda.so.1",
    ]);
    let no_gpu = tempfile::tempdir().unwrap();
    s.host.gpu.dev_dir = no_gpu.path().to_path_buf();
    s.host.gpu.cdi_dirs = vec![no_gpu.path().join("cdi")];
    s.gpus = Some(Gpus::All);
    // No GPU: refused before starting.
    let e = runtime::run(Runtime::Podman, &s).unwrap_err();
    assert!(matches!(e, RuntimeError::NoGpu(_)), "{e}");

    let fake = FakeCdiSpec::new();
    s.host.gpu.dev_dir = fake.dir.path().to_path_buf();
    // A GPU but no spec where lazyimg was told to look: the error names it.
    let e = runtime::run(Runtime::Podman, &s).unwrap_err();
    assert!(matches!(e, RuntimeError::NoCdiSpec(_)), "{e}");
    assert!(e.to_string().contains("/cdi"), "{e}");

    s.host.gpu.cdi_dirs = vec!["/var/run/cdi".into()];
    for gpus in ["all", "0"] {
        s.gpus = Some(gpus.parse().unwrap());
        let (code, out, err) = run_in(Runtime::Podman, &s);
        assert_eq!(code, 0, "--gpus {gpus}: {err}");
        assert!(out.starts_with("crw-"), "--gpus {gpus}: {out}");
        assert!(out.contains("195, 0"), "--gpus {gpus}: {out}");
        assert!(out.ends_with("stub driver\n"), "--gpus {gpus}: {out}");
    }
}

#[test]
fn charliecloud_runs_as_an_unprivileged_user() {
    let f = fixture();
    let uid = run_ok(with_args("id", &["-u", TEST_USER]));
    let home = run_ok(with_args(
        "sh",
        &["-c", &format!("getent passwd {TEST_USER} | cut -d: -f6")],
    ));
    let mut s = spec(&["sh", "-c", "id -u && cat /etc/lazyimg-test && true"]);
    s.host.user = Some(TEST_USER.into());
    s.host.home = Some(home.trim().into());
    let inner = command(Runtime::Charliecloud, &s);
    // runuser keeps the environment (and sets USER/HOME/LOGNAME/SHELL itself).
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", TEST_USER, "--"])
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let t = Instant::now();
    let (code, out, err) = output(&mut cmd);
    eprintln!("runuser ch-run: {:.2?}", t.elapsed());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{}{MARKER}", uid), "{err}");

    // Sanity: the same user cannot write into the image either.
    let mut s = spec(&["touch", "/etc/lazyimg-unpriv"]);
    s.host.user = Some(TEST_USER.into());
    let inner = command(Runtime::Charliecloud, &s);
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", TEST_USER, "--"])
        .arg(inner.get_program())
        .args(inner.get_args());
    assert_ne!(output(&mut cmd).0, 0);
    assert!(!f.rootfs.join("etc/lazyimg-unpriv").exists());
}
