//! `lazyimg mount`, `umount` and `run`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::progress::Reporter;
use super::{Context, RegistryArgs};
use crate::digest::Digest;
use crate::fuse::{self, MountOptions};
use crate::image::{ImageConfig, Manifest};
use crate::lazy::LazyOptions;
use crate::lazy::prefetch::{Recorder, prefetch_files};
use crate::lazy::source::{RangeSource, RegistryRanges};
use crate::pull::PullPolicy;
use crate::reference::ImageRef;
use crate::registry::RegistryClient;
use crate::rootfs::{self, RootFs};
use crate::runtime::{self, Bind, RunSpec, Runtime};
use crate::secret::Credentials;
use crate::store::{DAEMON_LOG_MAX_AGE, Derived, Store};

/// Set in the environment of the daemon `lazyimg mount` starts.
const DAEMON_ENV: &str = "LAZYIMG_MOUNT_DAEMON";
/// How often `lazyimg mount` says it is still waiting for its daemon.
const PREPARE_NOTE: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub(super) struct MountArgs {
    /// Image reference.
    reference: String,
    /// Directory to mount the image's root filesystem on (read-only).
    mountpoint: PathBuf,
    /// Stay attached and log to stderr instead of starting a daemon.
    #[arg(long)]
    foreground: bool,
    #[command(flatten)]
    mount: MountFlags,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Args, Debug)]
struct MountFlags {
    /// Let other users (e.g. a runtime that switches uid) use the mount. Non-root
    /// users need `user_allow_other` in /etc/fuse.conf.
    #[arg(long)]
    allow_other: bool,
    /// Report every file as owned by the mounting user (what Charliecloud and
    /// rootless users want).
    #[arg(long)]
    owner_self: bool,
    /// When to contact the registry.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pull: PullPolicy,
    /// Write the path of every file read, in the order first read, to FILE
    /// (a list for --prefetch).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Fetch the files FILE lists (one path per line, as --record writes)
    /// first, in the background.
    #[arg(long, value_name = "FILE")]
    prefetch: Option<PathBuf>,
    /// Then fetch the rest of the image in the background, so it keeps working
    /// if the network goes.
    #[arg(long)]
    background_fetch: bool,
    /// Limit --background-fetch to this many MB/s.
    #[arg(long, value_name = "MB/S", requires = "background_fetch")]
    max_rate: Option<f64>,
}

#[derive(Args, Debug)]
pub(super) struct UmountArgs {
    /// Where a lazyimg image is mounted.
    mountpoint: PathBuf,
}

#[derive(Args, Debug)]
pub(super) struct RunArgs {
    /// Container runtime: podman, charliecloud (ch-run) or apptainer.
    #[arg(long, default_value = "podman")]
    runtime: Runtime,
    /// Bind a host path into the container (SRC[:DST]); repeatable.
    #[arg(long = "bind", value_name = "SRC[:DST]")]
    binds: Vec<Bind>,
    /// Set a variable in the container (K=V); repeatable. No host variable is passed.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory in the container (default: the image's, else /).
    #[arg(long)]
    workdir: Option<String>,
    #[command(flatten)]
    mount: MountFlags,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Image reference.
    reference: String,
    /// Command and arguments (default: the image's entrypoint and cmd).
    #[arg(last = true)]
    command: Vec<String>,
}

/// Whether this process is the daemon a `lazyimg mount` started (its stdout
/// and stderr are its log file).
pub(super) fn is_daemon() -> bool {
    std::env::var_os(DAEMON_ENV).is_some()
}

pub(super) async fn mount(ctx: &Context, args: MountArgs) -> anyhow::Result<ExitCode> {
    let daemon = is_daemon();
    clear_stale_mount(&args.mountpoint)?;
    let image = ctx.image(&args.reference)?;
    let credentials = ctx.credentials(&image, &args.registry)?;
    if !(args.foreground || daemon) {
        // Refuse an unapproved image here, where the user sees it. The daemon does
        // the rest, so metadata and contents share its connections and token.
        crate::policy::enforce(&ctx.config, &image)?;
        let store = ctx.open_store()?;
        return start_daemon(&store, &image, &args.mountpoint, credentials.as_ref());
    }
    let registry = Arc::new(ctx.registry_with(&image, credentials.as_ref())?);
    let (store, manifest) =
        prepare(ctx, &image, &args.registry, &registry, args.mount.pull).await?;
    let rootfs = open(ctx, &store, &manifest, &image, registry, &args.mount)?;
    let options = mount_options(&args.mount, &image);
    // Registered before the mount exists, so a signal sent as soon as it shows
    // is not lost; one that came earlier killed us with nothing mounted.
    let signals = UnmountSignals::register()?;
    tracing::info!("serving {image} at {}", args.mountpoint.display());
    fuse::mount_foreground_with(rootfs, &args.mountpoint, &options, |unmounter| {
        tokio::spawn(signals.unmount_on_first(unmounter));
    })?;
    tracing::info!("unmounted {}", args.mountpoint.display());
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM, SIGINT and SIGHUP, caught: their default action would kill the
/// serving process and leave the mount point answering ENOTCONN until someone
/// runs `fusermount3 -u`. Each of them unmounts instead, and the process then
/// exits with status 0.
struct UnmountSignals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl UnmountSignals {
    /// Installs the handlers (from then on these signals no longer kill us).
    ///
    /// # Errors
    /// When a handler cannot be installed (tokio's signal driver is missing).
    fn register() -> anyhow::Result<UnmountSignals> {
        let install = |kind: SignalKind| signal(kind).context("cannot handle signals");
        Ok(UnmountSignals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }

    /// Waits for the first of the signals, then unmounts.
    async fn unmount_on_first(mut self, unmounter: fuse::Unmounter) {
        let name = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        };
        tracing::info!("{name}: unmounting");
        match tokio::task::spawn_blocking(|| unmounter.unmount()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("{name}: cannot unmount: {e}"),
            Err(e) => tracing::error!("{name}: unmounting stopped: {e}"),
        }
    }
}

pub(super) fn umount(args: UmountArgs) -> anyhow::Result<ExitCode> {
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(&args.mountpoint)
        .output()
        .context("cannot run fusermount3 (Debian package fuse3)")?;
    if !out.status.success() {
        bail!(
            "cannot unmount {}: {}",
            args.mountpoint.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn run(ctx: &Context, args: RunArgs) -> anyhow::Result<ExitCode> {
    runtime::check_available(args.runtime)?;
    let image = ctx.image(&args.reference)?;
    let credentials = ctx.credentials(&image, &args.registry)?;
    let registry = Arc::new(ctx.registry_with(&image, credentials.as_ref())?);
    let (store, manifest) =
        prepare(ctx, &image, &args.registry, &registry, args.mount.pull).await?;
    let config = image_config(&store, &manifest, &image)?;
    let runtime_config = config.config.unwrap_or_default();
    let command = if args.command.is_empty() {
        let default: Vec<String> = [runtime_config.entrypoint, runtime_config.cmd]
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        if default.is_empty() {
            bail!("{image} defines no entrypoint or cmd: give a command after `--`");
        }
        default
    } else {
        args.command
    };
    let env = args
        .env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--env {kv:?}: expected K=V"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let rootfs = open(ctx, &store, &manifest, &image, registry, &args.mount)?;
    let mountpoint = tempfile::Builder::new()
        .prefix("lazyimg-run-")
        .tempdir()
        .context("cannot create a mount point")?;
    // Root's mount is used by runtimes that switch to other uids (podman's runc,
    // ch-run's user namespace): let them in.
    let mut options = mount_options(&args.mount, &image);
    options.allow_other |= is_root();
    let session = fuse::spawn_mount(rootfs, mountpoint.path(), &options)?;

    let mut spec = RunSpec::new(mountpoint.path().to_path_buf(), command);
    spec.image_env = runtime_config.env.unwrap_or_default();
    spec.env = env;
    spec.binds = args.binds;
    spec.workdir = args
        .workdir
        .or(runtime_config.working_dir.filter(|w| !w.is_empty()));
    let status = runtime::run(args.runtime, &spec);
    drop(session);
    let code = status?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Makes sure `image` is mountable (pulling lazily as `policy` says): returns the
/// store and the image's manifest digest.
async fn prepare(
    ctx: &Context,
    image: &ImageRef,
    registry_args: &RegistryArgs,
    registry: &RegistryClient,
    policy: PullPolicy,
) -> anyhow::Result<(Arc<Store>, Digest)> {
    // Refuse unapproved images before touching the cache or the registry.
    let approval = crate::policy::enforce(&ctx.config, image)?;
    let store = ctx.open_store()?;
    let reporter = Reporter::new(ctx.quiet);
    let manifest = crate::lazy::prepare::ensure_mountable(
        &store,
        image,
        &ctx.platform(registry_args),
        policy,
        registry,
        &reporter,
        &crate::policy::gate(approval.as_ref()),
    )
    .await?;
    Ok((store, manifest))
}

/// Opens the prepared image; layers not in the cache are read lazily from the
/// registry it came from. Starts the prefetching `flags` ask for.
fn open(
    ctx: &Context,
    store: &Arc<Store>,
    manifest: &Digest,
    image: &ImageRef,
    registry: Arc<RegistryClient>,
    flags: &MountFlags,
) -> anyhow::Result<Arc<RootFs>> {
    let options = LazyOptions::from_config(&ctx.config);
    let source = RegistryRanges {
        registry,
        image: image.clone(),
        store: Arc::clone(store),
        runtime: tokio::runtime::Handle::current(),
        read_deadline: options.read_deadline,
        whole_blob_deadline: options.whole_blob_deadline,
    };
    let lazy: (Arc<dyn RangeSource>, LazyOptions) = (Arc::new(source), options);
    // Decompressing and indexing layers is blocking work the first time.
    let mut rootfs = tokio::task::block_in_place(|| {
        rootfs::open_image(store, manifest, &image.to_string(), Some(lazy))
    })?;
    if let Some(list) = &flags.record {
        let recorder = Recorder::new(&rootfs.tree, Arc::clone(&rootfs.content), list)?;
        rootfs.content = Arc::new(recorder);
    }
    let rootfs = Arc::new(rootfs);
    // A list given here wins over the one pushed with the image's index.
    let list = match &flags.prefetch {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("cannot read the prefetch list {}", path.display()))?,
        ),
        None => store.read_derived(Derived::PrefetchList, manifest)?,
    };
    start_prefetch(&rootfs, list, flags);
    Ok(rootfs)
}

/// Runs the prefetch `list` and `--background-fetch` on a thread of their own:
/// the mount serves meanwhile, and reads of what is being fetched wait for it.
fn start_prefetch(rootfs: &Arc<RootFs>, list: Option<Vec<u8>>, flags: &MountFlags) {
    if list.is_none() && !flags.background_fetch {
        return;
    }
    let max_rate = flags.max_rate.map(|mb| (mb * 1e6) as u64);
    let background = flags.background_fetch;
    let rootfs = Arc::clone(rootfs);
    let spawned = std::thread::Builder::new()
        .name("lazyimg-prefetch".into())
        .spawn(move || {
            if let Some(list) = list {
                let done = prefetch_files(&rootfs, &list);
                tracing::info!(
                    "prefetched {} files ({} bytes); {} listed paths skipped",
                    done.files,
                    done.bytes,
                    done.skipped
                );
            }
            if background {
                match rootfs.content.fill(max_rate) {
                    Ok(bytes) => tracing::info!("background fetch done: {bytes} bytes fetched"),
                    Err(e) => tracing::warn!("background fetch stopped: {e}"),
                }
            }
        });
    // Prefetching only saves time later; the mount works without it.
    if let Err(e) = spawned {
        tracing::warn!("cannot start prefetching: {e}");
    }
}

fn image_config(store: &Store, manifest: &Digest, image: &ImageRef) -> anyhow::Result<ImageConfig> {
    let what = image.to_string();
    let Manifest::Image(manifest) = Manifest::parse(store.require(manifest)?.bytes(), &what)?
    else {
        bail!("{what}: the cached manifest is an index");
    };
    Ok(ImageConfig::parse(
        store.require(&manifest.config.digest)?.bytes(),
        &what,
    )?)
}

fn mount_options(flags: &MountFlags, image: &ImageRef) -> MountOptions {
    MountOptions {
        allow_other: flags.allow_other,
        // SAFETY: getuid/getgid have no preconditions and cannot fail.
        owner: flags
            .owner_self
            .then(|| unsafe { (libc::getuid(), libc::getgid()) }),
        fsname: format!("lazyimg:{image}"),
        threads: 4,
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Starts `lazyimg mount --foreground` detached (its own session, logging to a
/// file in the cache) and returns once it serves the tree, or with its log if it fails.
fn start_daemon(
    store: &Store,
    image: &ImageRef,
    mountpoint: &Path,
    credentials: Option<&Credentials>,
) -> anyhow::Result<ExitCode> {
    let logs = store.logs_dir();
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    // Each mount adds a log: drop the old ones here too, so they stay few even
    // where nobody runs `lazyimg cache prune`.
    if let Err(e) = store.prune_logs(DAEMON_LOG_MAX_AGE) {
        tracing::warn!("cannot prune old daemon logs: {e}");
    }
    // The daemon's pid is known only once it runs: its log is created under our
    // pid (the daemon inherits it as stdout and stderr) and renamed after it.
    let starting = logs.join(format!(".mount-starting-{}.log", std::process::id()));
    let log = std::fs::File::create(&starting)
        .with_context(|| format!("cannot create {}", starting.display()))?;
    let exe = std::env::current_exe().context("cannot find the lazyimg executable")?;
    let mut daemon = Command::new(exe);
    daemon
        .args(std::env::args_os().skip(1))
        .env(DAEMON_ENV, "1")
        // A token given on our standard input goes to the daemon's the same way:
        // never through its arguments or environment.
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our terminal
    // so closing the shell does not unmount the image.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut daemon, || {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = match daemon.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = std::fs::remove_file(&starting);
            return Err(e).context("cannot start the mount daemon");
        }
    };
    let log_path = store.daemon_log_path(child.id());
    let log_path = match std::fs::rename(&starting, &log_path) {
        Ok(()) => log_path,
        Err(e) => {
            // The log is still complete under its first name.
            tracing::warn!(
                "cannot rename {} to {}: {e}",
                starting.display(),
                log_path.display()
            );
            starting
        }
    };
    let mut stdin = child.stdin.take().expect("stdin is piped");
    if let Some(credentials) = credentials.filter(|_| passes_token_on_stdin()) {
        stdin
            .write_all(credentials.secret.expose().as_bytes())
            .context("cannot hand the token to the mount daemon")?;
    }
    drop(stdin);
    let mut next_note = Instant::now() + PREPARE_NOTE;
    loop {
        if is_mounted(mountpoint) {
            eprintln!(
                "mounted {image} at {} (daemon pid {}, log {})",
                mountpoint.display(),
                child.id(),
                log_path.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if child.try_wait()?.is_some() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(DaemonFailed::from_log(&log, &log_path).into());
        }
        // Fetching layers that cannot be read lazily can take a while: say so.
        if Instant::now() >= next_note {
            eprintln!("still preparing {image}; see {}", log_path.display());
            next_note += PREPARE_NOTE;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon's own error line and hint, taken from its log.
#[derive(Debug)]
struct DaemonFailed {
    message: String,
    hint: Option<String>,
    log: PathBuf,
}

impl DaemonFailed {
    fn from_log(log: &str, path: &Path) -> DaemonFailed {
        // The daemon's lines start with the time (see `line_stamp`).
        let lines = || {
            log.lines()
                .rev()
                .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest))
        };
        let error = lines().find_map(|l| l.strip_prefix("lazyimg: error: "));
        let hint = lines().find_map(|l| l.strip_prefix("hint: "));
        DaemonFailed {
            message: error
                .unwrap_or("the mount daemon exited before mounting")
                .to_string(),
            hint: hint.map(str::to_string),
            log: path.to_path_buf(),
        }
    }
}

impl std::fmt::Display for DaemonFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (log: {})", self.message, self.log.display())?;
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DaemonFailed {}

/// Whether this command line took its token from standard input.
fn passes_token_on_stdin() -> bool {
    std::env::args_os().any(|arg| arg == "--password-stdin")
}

/// Whether a FUSE filesystem is mounted at `path` (per /proc/self/mountinfo).
fn is_mounted(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mountinfo.lines().any(|line| {
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4).map(unescape_mountinfo);
        let fs_type = line
            .split(" - ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next());
        mount_point.as_deref() == Some(path.as_os_str().to_str().unwrap_or_default())
            && fs_type.is_some_and(|t| t.starts_with("fuse"))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        match u8::from_str_radix(rest.get(pos + 1..pos + 4).unwrap_or(""), 8) {
            Ok(byte) => {
                out.push(byte as char);
                rest = &rest[pos + 4..];
            }
            Err(_) => {
                out.push('\\');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A daemon killed with SIGKILL leaves its mount point answering ENOTCONN; unmount
/// it so the new mount can take its place.
fn clear_stale_mount(mountpoint: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!("{}: clearing a stale lazyimg mount", mountpoint.display());
            umount(UmountArgs {
                mountpoint: mountpoint.to_path_buf(),
            })?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("mount point {}", mountpoint.display())),
        Ok(meta) if !meta.is_dir() => {
            bail!("mount point {} is not a directory", mountpoint.display())
        }
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b\134c"), r"/tmp/a b\c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn the_daemon_error_and_hint_are_found_behind_their_timestamps() {
        let log = "2026-01-02T03:04:05.678901Z  INFO pulling\n\
                   2026-01-02T03:04:06.000001Z lazyimg: error: manifest unknown\n\
                   2026-01-02T03:04:06.000002Z hint: check the tag\n";
        let failed = DaemonFailed::from_log(log, Path::new("/x.log"));
        assert_eq!(failed.message, "manifest unknown");
        assert_eq!(failed.hint.as_deref(), Some("check the tag"));
    }
}
