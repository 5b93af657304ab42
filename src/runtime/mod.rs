//! Running a command in a mounted image with Podman, Charliecloud (`ch-run`) or
//! Apptainer.
//!
//! lazyimg mounts the image's root filesystem read-only and hands that directory
//! to a container runtime. [`command`] builds the runtime's command line from a
//! [`RunSpec`] without looking at the host (unit tests assert its argv);
//! [`run`] checks that the runtime is installed ([`check_available`]) and that
//! Charliecloud's bind targets exist ([`check_binds`]), runs the command and
//! returns its exit status the way a shell reports it ([`exit_code`]: the
//! command's status, or 128+N when a signal N killed it). `lazyimg run` exits
//! with that status.
//!
//! # Exit status
//!
//! `lazyimg run` exits as `podman run` does, whichever runtime runs the command:
//! the command's own status (128+N when signal N killed it); 125 when lazyimg
//! itself fails (pulling, mounting, a spec no runtime can express, a bind
//! Charliecloud cannot mount: [`RuntimeError::exit_status`]); 126 when the
//! command cannot be invoked and 127 when it is not found. Podman reports 126
//! and 127 itself; Charliecloud and Apptainer fold them into their generic
//! failure (ch-run 1, apptainer 255), so [`check_command`] looks the command up
//! in the image before starting them. A runtime's own failure after it started
//! (ch-run's 1, apptainer's 255) is passed on as is: it cannot be told from the
//! command's own status of the same value.
//!
//! # Environment policy
//!
//! The container sees the same variables whichever runtime runs it:
//!
//! 1. the image config's `Env`, in order;
//! 2. the host variables `--env-host NAME` names (names or shell patterns such
//!    as `SLURM_*`), and with `--gpus` the host's GPU selection
//!    (`CUDA_VISIBLE_DEVICES`, `NVIDIA_VISIBLE_DEVICES`; see [`Gpus`] and the
//!    `gpu` module for what each runtime gets), replacing image values;
//! 3. each `--env K=V` given to `lazyimg run`, replacing an earlier value of the
//!    same name (a later `--env` replaces an earlier one);
//! 4. `PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin` if
//!    none of 1–3 set `PATH`;
//! 5. the host's `TERM`, if it is set and none of 1–3 set `TERM`.
//!
//! Values are passed verbatim: no runtime expands `$VAR` in them. No other host
//! variable reaches the container (no tokens, no `LD_LIBRARY_PATH`, no proxy
//! settings), except what each runtime sets itself:
//!
//! | runtime      | `HOME`                                   | `USER`        | also set by the runtime |
//! |--------------|------------------------------------------|---------------|-------------------------|
//! | podman       | from the image's `/etc/passwd` (`/root`) | unset         | `HOSTNAME` |
//! | charliecloud | the host's `$HOME` (not mounted)         | the host's    | `CH_RUNNING` |
//! | apptainer    | the host's home, bound in                | the host's    | `APPTAINER_*`, `SINGULARITY_*`, `PS1`, `LD_LIBRARY_PATH=/.singularity.d/libs` |
//!
//! Steps 1–3 override `HOME` and `USER` too, except under Apptainer, which
//! never lets `HOME` be overridden.
//!
//! How each runtime is made to follow it: podman starts from a clean environment
//! (`--unsetenv-all` also drops podman's and containers.conf's defaults) and gets
//! `--env K=V`; ch-run passes the host environment through, so it gets
//! `--unset-env='*' --env-no-expand` then `--set-env=K='V'` per variable;
//! Apptainer gets `--cleanenv --no-eval` and `APPTAINERENV_K=V` in its own
//! environment (its `--env` flag splits values at commas), and the host's
//! proxy variables and `APPTAINERENV_*`/`SINGULARITYENV_*` are removed from
//! apptainer's environment (`--cleanenv` would pass them on).
//!
//! # Other choices
//!
//! * Network: podman runs with `--network host`. Charliecloud and Apptainer
//!   always share the host's network; HPC jobs expect the host's name, its
//!   interfaces (MPI, NCCL) and license servers reachable as on the host.
//!   Podman still has its own PID and IPC namespaces: the command is PID 1
//!   there, so a signal it has no handler for (e.g. SIGTERM to `sh`) is ignored.
//! * Working directory: [`RunSpec::workdir`] (the image's `WorkingDir` or
//!   `--workdir`), else `/`, for all three (not the host's current directory).
//! * User: podman runs the command as the image's `User` (root when it names
//!   none; under rootless podman, container root is the invoking user), as
//!   `podman run IMAGE` does; Charliecloud and Apptainer as the invoking user.
//! * Writes: podman mounts the image with `--rootfs DIR:O`, a writable overlay
//!   discarded at exit; Charliecloud and Apptainer see it read-only (writes fail
//!   with EROFS outside `/tmp`, binds and, for Apptainer, the home directory).
//! * Binds: `:ro` becomes podman's and Apptainer's `:ro`; ch-run 0.31 has no
//!   read-only bind, so Charliecloud refuses one ([`RuntimeError::ReadOnlyBind`]).
//!   Podman and Apptainer create a missing target; Charliecloud cannot
//!   create one inside a read-only image, and a target under `/tmp`, `/dev`,
//!   `/proc` or `/sys` (which it binds from the host) fails, so [`check_binds`]
//!   refuses those before starting it.
//! * Podman output goes only to the terminal (`--log-driver none`), not also to
//!   a container log file.
//! * Apptainer is not packaged for Debian 12: its command line is built and unit
//!   tested, but not run by the integration tests. `singularity` is accepted as a
//!   runtime name and runs the `apptainer` program.

mod binds;
mod exec;
mod gpu;
pub mod nvidia;
pub mod singularity;
mod spec;

use std::ffi::OsString;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::str::FromStr;

pub use binds::{missing_bind_targets, resolve_in_root};
pub use exec::check_command;
pub use gpu::{GpuHost, Gpus, check_gpus};
pub use spec::{Bind, HostEnv, RunSpec};

/// `PATH` given to the container when neither the image nor `--env` sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host proxy variables Apptainer's `--cleanenv` would pass through.
const APPTAINER_ALWAYS_PASSED: &[&str] = &[
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "ftp_proxy",
    "FTP_PROXY",
];

/// Container paths Charliecloud bind-mounts from the host: a bind target at or
/// below one of them cannot be mounted.
const CHARLIECLOUD_HOST_BOUND: &[&str] = &["/tmp", "/dev", "/proc", "/sys"];

/// Container paths Apptainer binds from the host by default (the home
/// directories among them; a site's `bind path` entries are not known here).
const APPTAINER_HOST_BOUND: &[&str] = &[
    "/tmp", "/var/tmp", "/home", "/root", "/dev", "/proc", "/sys",
];

/// A container runtime lazyimg can start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Podman,
    Charliecloud,
    Apptainer,
}

impl Runtime {
    pub const ALL: [Runtime; 3] = [Runtime::Podman, Runtime::Charliecloud, Runtime::Apptainer];

    /// The name users type (`--runtime NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Podman => "podman",
            Runtime::Charliecloud => "charliecloud",
            Runtime::Apptainer => "apptainer",
        }
    }

    /// The program run.
    pub fn program(self) -> &'static str {
        match self {
            Runtime::Podman => "podman",
            Runtime::Charliecloud => "ch-run",
            Runtime::Apptainer => "apptainer",
        }
    }

    /// Whether the runtime creates a bind target missing from the image.
    pub fn creates_bind_targets(self) -> bool {
        !matches!(self, Runtime::Charliecloud)
    }

    /// Container paths the runtime mounts from the host itself: their contents
    /// are not the image's.
    fn host_bound(self) -> &'static [&'static str] {
        match self {
            Runtime::Podman => &[],
            Runtime::Charliecloud => CHARLIECLOUD_HOST_BOUND,
            Runtime::Apptainer => APPTAINER_HOST_BOUND,
        }
    }

    /// How to get the runtime when it is missing.
    fn install_hint(self) -> &'static str {
        match self {
            Runtime::Podman => {
                "install podman (Debian/Ubuntu: apt-get install podman runc), \
                 or use --runtime charliecloud"
            }
            Runtime::Charliecloud => {
                "install Charliecloud (Debian/Ubuntu: apt-get install charliecloud-runtime) \
                 or load your site's charliecloud module, or use --runtime podman"
            }
            Runtime::Apptainer => {
                "apptainer is not packaged for Debian 12: install it from apptainer.org \
                 or load your site's module, or use --runtime charliecloud or podman"
            }
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Runtime {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "podman" => Ok(Runtime::Podman),
            "charliecloud" | "ch-run" => Ok(Runtime::Charliecloud),
            "apptainer" | "singularity" => Ok(Runtime::Apptainer),
            _ => Err(RuntimeError::UnknownRuntime(s.to_owned())),
        }
    }
}

/// Why a container could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("unknown runtime {0:?}")]
    UnknownRuntime(String),

    #[error("{program} ({runtime}) is not installed or not on PATH")]
    NotInstalled {
        runtime: Runtime,
        program: &'static str,
    },

    #[error("{0}")]
    InvalidSpec(String),

    #[error(
        "bind target{} {} {} not exist in the image; charliecloud cannot create {}",
        if targets.len() == 1 { "" } else { "s" },
        targets.iter().map(|t| t.display().to_string()).collect::<Vec<_>>().join(", "),
        if targets.len() == 1 { "does" } else { "do" },
        if targets.len() == 1 { "it" } else { "them" }
    )]
    MissingBindTargets { targets: Vec<PathBuf> },

    #[error("{runtime} cannot bind {} read-only", target.display())]
    ReadOnlyBind { runtime: Runtime, target: PathBuf },

    #[error(
        "--gpus: no NVIDIA driver libraries found on this host (ldconfig -p, nvidia-container-cli)"
    )]
    NoGpuDriver,

    #[error("--gpus: no NVIDIA GPU on this host ({} does not exist)", .0.display())]
    NoGpu(PathBuf),

    #[error(
        "--gpus: podman needs a CDI spec for nvidia.com/gpu, and there is none in {}",
        .0.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" or ")
    )]
    NoCdiSpec(Vec<PathBuf>),

    #[error("bind source {} does not exist", .0.display())]
    MissingBindSource(PathBuf),

    #[error("bind target {target} is inside {shared}, which charliecloud mounts from the host")]
    HostBoundTarget {
        target: PathBuf,
        shared: &'static str,
    },

    #[error("{command}: command not found in the image")]
    CommandNotFound { command: String },

    #[error("{}: {why}: cannot run it", path.display())]
    CommandNotExecutable { path: PathBuf, why: &'static str },

    #[error("cannot start {program}: {source}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            RuntimeError::UnknownRuntime(_) => {
                "runtimes are podman, charliecloud (ch-run) and apptainer"
            }
            RuntimeError::NotInstalled { runtime, .. } => runtime.install_hint(),
            RuntimeError::InvalidSpec(_) => return None,
            RuntimeError::MissingBindTargets { .. } => {
                "pick an existing directory such as /mnt (see `ls /mnt` in the image), \
                 or use --runtime podman, which creates it"
            }
            RuntimeError::HostBoundTarget { .. } => "pick another target, such as /mnt",
            RuntimeError::MissingBindSource(_) => return None,
            RuntimeError::NoGpuDriver => {
                "install the NVIDIA driver on this node, or run the job on a GPU node"
            }
            RuntimeError::NoGpu(_) => {
                "run the job on a GPU node (the scheduler's GPU partition), or drop --gpus"
            }
            RuntimeError::NoCdiSpec(_) => {
                "generate it as root: nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"
            }
            RuntimeError::ReadOnlyBind { .. } => {
                "ch-run 0.31 has no read-only binds: drop :ro (the job may then write \
                 to the host), or use --runtime podman or apptainer"
            }
            RuntimeError::CommandNotFound { .. } => {
                "check the name and the image's PATH (`lazyimg find REF --name NAME` lists matches)"
            }
            RuntimeError::CommandNotExecutable { .. } => return None,
            RuntimeError::Spawn { .. } => return None,
        })
    }

    /// What `lazyimg run` exits with when this error stops it: 127 for a command
    /// not found, 126 for one that cannot be invoked, else 125 (lazyimg's own
    /// failure), as `podman run` does.
    pub fn exit_status(&self) -> u8 {
        match self {
            RuntimeError::CommandNotFound { .. } => 127,
            RuntimeError::CommandNotExecutable { .. } => 126,
            _ => 125,
        }
    }
}

fn invalid(message: String) -> RuntimeError {
    RuntimeError::InvalidSpec(message)
}

/// The runtime's command line for `spec` (see the module doc for what each flag
/// is for). Pure: reads neither the host environment nor the file system.
pub fn command(runtime: Runtime, spec: &RunSpec) -> Result<Command, RuntimeError> {
    spec.validate()?;
    let env = spec.effective_env(runtime);
    let mut cmd = Command::new(runtime.program());
    match runtime {
        Runtime::Podman => {
            let rootfs = spec.rootfs.to_string_lossy();
            if rootfs.contains(':') {
                return Err(invalid(format!(
                    "podman cannot use root filesystem {rootfs:?}: the path contains ':'"
                )));
            }
            cmd.args(["run", "--rm", "-i"]);
            if spec.tty {
                cmd.arg("-t");
            }
            cmd.args([
                "--network",
                "host",
                "--log-driver",
                "none",
                "--unsetenv-all",
            ]);
            for (k, v) in &env {
                cmd.arg("--env").arg(format!("{k}={v}"));
            }
            for b in &spec.binds {
                cmd.arg("--volume").arg(bind_arg(b));
            }
            for device in spec.gpus.iter().flat_map(gpu::podman_devices) {
                cmd.arg("--device").arg(device);
            }
            cmd.arg("--workdir").arg(spec.workdir());
            if let Some(user) = spec.user.as_deref().filter(|u| !u.is_empty()) {
                cmd.arg("--user").arg(user);
            }
            // --rootfs is a switch: the first operand is the directory (":O":
            // a writable overlay over it), and everything after it is the command.
            cmd.arg("--rootfs").arg(format!("{rootfs}:O"));
            cmd.args(&spec.command);
        }
        Runtime::Charliecloud => {
            // ch-run will not start without $USER (even for --help).
            if let Some(user) = &spec.host.user {
                cmd.env("USER", user);
            }
            cmd.arg("--unset-env=*").arg("--env-no-expand");
            // HOME and USER stay the host's, as ch-run leaves them, unless set.
            for (k, v) in [("HOME", &spec.host.home), ("USER", &spec.host.user)] {
                if let Some(v) = v
                    && !env.iter().any(|(name, _)| name == k)
                {
                    cmd.arg(charliecloud_set_env(k, v));
                }
            }
            for (k, v) in &env {
                cmd.arg(charliecloud_set_env(k, v));
            }
            for b in &spec.binds {
                if b.read_only {
                    return Err(RuntimeError::ReadOnlyBind {
                        runtime,
                        target: b.target.clone(),
                    });
                }
                cmd.arg("-b").arg(bind_arg(b));
            }
            cmd.arg("-c").arg(spec.workdir());
            cmd.arg(&spec.rootfs).arg("--").args(&spec.command);
        }
        Runtime::Apptainer => {
            for name in APPTAINER_ALWAYS_PASSED {
                cmd.env_remove(name);
            }
            for name in &spec.host.apptainer_env_names {
                cmd.env_remove(name);
            }
            for (k, v) in &env {
                // Apptainer refuses to let APPTAINERENV_HOME override HOME.
                if k != "HOME" {
                    cmd.env(format!("APPTAINERENV_{k}"), v);
                }
            }
            cmd.args(["exec", "--cleanenv", "--no-eval"]);
            if spec.gpus.is_some() {
                cmd.args(gpu::apptainer_flags(&spec.host.gpu));
            }
            for b in &spec.binds {
                cmd.arg("--bind").arg(bind_arg(b));
            }
            cmd.arg("--pwd").arg(spec.workdir());
            cmd.arg(&spec.rootfs).args(&spec.command);
        }
    }
    Ok(cmd)
}

/// `SRC:DST`, with `:ro` for a read-only bind (podman's `--volume` and
/// Apptainer's `--bind` spell it the same way).
fn bind_arg(b: &Bind) -> OsString {
    let mut s = b.source.clone().into_os_string();
    s.push(":");
    s.push(&b.target);
    if b.read_only {
        s.push(":ro");
    }
    s
}

/// `--set-env=K='V'`: ch-run strips one pair of single quotes around a value,
/// so quoting every value keeps values that are themselves quoted intact.
fn charliecloud_set_env(k: &str, v: &str) -> String {
    format!("--set-env={k}='{v}'")
}

/// Whether `runtime`'s program is on `PATH` (and executable). The error's
/// [`RuntimeError::hint`] says how to get it.
pub fn check_available(runtime: Runtime) -> Result<(), RuntimeError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    match find_program(runtime.program(), &path) {
        Some(_) => Ok(()),
        None => Err(RuntimeError::NotInstalled {
            runtime,
            program: runtime.program(),
        }),
    }
}

/// The first executable regular file `name` in the directories of `path`.
pub fn find_program(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Refuses binds `runtime` cannot mount into the image at `spec.rootfs`: every
/// source must exist on the host (else ch-run fails with the status 1 a job
/// could have returned, and apptainer with 255); Charliecloud needs every
/// target to exist already, and not under a path it binds from the host
/// itself. Podman and Apptainer create targets.
pub fn check_binds(runtime: Runtime, spec: &RunSpec) -> Result<(), RuntimeError> {
    if let Some(b) = spec.binds.iter().find(|b| !b.source.exists()) {
        return Err(RuntimeError::MissingBindSource(b.source.clone()));
    }
    if runtime.creates_bind_targets() {
        return Ok(());
    }
    for b in &spec.binds {
        for shared in runtime.host_bound() {
            if b.target.starts_with(shared) {
                return Err(RuntimeError::HostBoundTarget {
                    target: b.target.clone(),
                    shared,
                });
            }
        }
    }
    let targets = missing_bind_targets(&spec.rootfs, &spec.binds);
    if targets.is_empty() {
        Ok(())
    } else {
        Err(RuntimeError::MissingBindTargets { targets })
    }
}

/// The status a shell would report: the exit code, or 128+N for signal N.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 128, // stopped/continued: not reported by wait() here
    }
}

/// Checks, then runs `spec` with `runtime` in the foreground and returns its
/// [`exit_code`]. Like `system(3)`, this process ignores SIGINT and SIGQUIT
/// while the container runs (the terminal sends them to the container too),
/// so lazyimg outlives the command and can keep serving and then unmount the
/// image.
pub fn run(runtime: Runtime, spec: &RunSpec) -> Result<i32, RuntimeError> {
    check_available(runtime)?;
    check_gpus(runtime, spec.gpus.as_ref(), &spec.host.gpu)?;
    check_binds(runtime, spec)?;
    check_command(runtime, spec)?;
    let mut cmd = command(runtime, spec)?;
    let spawn_err = |source| RuntimeError::Spawn {
        program: runtime.program(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let _ignore = IgnoreInterrupts::new();
    let status = child.wait().map_err(spawn_err)?;
    Ok(exit_code(status))
}

/// Ignores SIGINT and SIGQUIT until dropped, then restores the previous actions
/// (whole `sigaction`s, so handlers installed by e.g. tokio keep their flags).
/// Installed after spawning, so the child keeps the default dispositions.
struct IgnoreInterrupts {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl IgnoreInterrupts {
    fn new() -> Self {
        let mut previous = Vec::new();
        for sig in [libc::SIGINT, libc::SIGQUIT] {
            // SAFETY: plain sigaction calls with zeroed, fully initialised structs;
            // SIG_IGN runs no code in this process.
            unsafe {
                let mut ignore: libc::sigaction = std::mem::zeroed();
                ignore.sa_sigaction = libc::SIG_IGN;
                libc::sigemptyset(&mut ignore.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &ignore, &mut old) == 0 {
                    previous.push((sig, old));
                }
            }
        }
        IgnoreInterrupts { previous }
    }
}

impl Drop for IgnoreInterrupts {
    fn drop(&mut self) {
        for (sig, old) in &self.previous {
            // SAFETY: restores exactly the action sigaction returned above.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
    }
}

#[cfg(test)]
mod tests;
