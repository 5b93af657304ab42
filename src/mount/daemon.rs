//! The mount daemon's lifecycle: `lazyimg mount` starts itself again detached,
//! waits until the daemon serves the tree (or reports the error from its
//! log), and the daemon serves until SIGTERM, SIGINT or SIGHUP unmounts it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::fuse::{self, MountOptions};
use crate::rootfs::RootFs;
use crate::rootfs::layer_store::LayerStore;
use crate::secret::Credentials;
use crate::store::{DAEMON_LOG_MAX_AGE, Store};

/// Set in the environment of the daemon `lazyimg mount` starts.
const DAEMON_ENV: &str = "LAZYIMG_MOUNT_DAEMON";
/// How often the starter is told it is still waiting for its daemon.
const PREPARE_NOTE: Duration = Duration::from_secs(30);

/// Whether this process is the daemon a `lazyimg mount` started (its stdout
/// and stderr are its log file).
pub fn is_daemon() -> bool {
    std::env::var_os(DAEMON_ENV).is_some()
}

/// Serves `rootfs` at `mountpoint` in this process until it is unmounted,
/// by anyone or by SIGTERM, SIGINT or SIGHUP.
pub fn serve_until_signalled(
    rootfs: Arc<RootFs>,
    mountpoint: &Path,
    options: &MountOptions,
) -> anyhow::Result<()> {
    until_signalled(|on_mounted| {
        fuse::mount_foreground_with(rootfs, mountpoint, options, on_mounted)
    })
}

/// [`serve_until_signalled`] for Podman's additional layer store `store`.
pub fn serve_layer_store_until_signalled(
    store: Arc<LayerStore>,
    mountpoint: &Path,
    options: &MountOptions,
) -> anyhow::Result<()> {
    until_signalled(|on_mounted| {
        fuse::mount_layer_store_with(store, mountpoint, options, on_mounted)
    })
}

/// Runs `serve`, which mounts, hands its argument the mount's unmounter and
/// serves until unmounted; the first of the signals unmounts.
fn until_signalled(
    serve: impl FnOnce(Box<dyn FnOnce(fuse::Unmounter)>) -> crate::Result<()>,
) -> anyhow::Result<()> {
    // Registered before the mount exists, so a signal sent as soon as it shows
    // is not lost; one that came earlier killed us with nothing mounted.
    let signals = UnmountSignals::register()?;
    serve(Box::new(|unmounter| {
        tokio::spawn(signals.unmount_on_first(unmounter));
    }))?;
    Ok(())
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

/// Unmounts the FUSE filesystem at `mountpoint` with fusermount3.
pub fn umount(mountpoint: &Path) -> anyhow::Result<()> {
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(mountpoint)
        .output()
        .context("cannot run fusermount3 (Debian package fuse3)")?;
    if !out.status.success() {
        bail!(
            "cannot unmount {}: {}",
            mountpoint.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A mount daemon that serves its image.
#[derive(Debug)]
pub struct Started {
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
}

/// Starts this command line again as a detached daemon (its own session,
/// logging to a file in the cache, [`is_daemon`] true) and returns once it
/// serves the tree at `mountpoint`, or with its log if it fails. `waiting` is
/// called with the log's path every so often while the daemon prepares.
pub fn start_daemon(
    store: &Store,
    mountpoint: &Path,
    credentials: Option<&Credentials>,
    mut waiting: impl FnMut(&Path),
) -> anyhow::Result<Started> {
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
            return Ok(Started {
                pid: child.id(),
                log: log_path,
            });
        }
        if child.try_wait()?.is_some() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(DaemonFailed::from_log(&log, &log_path).into());
        }
        // Fetching layers that cannot be read lazily can take a while: say so.
        if Instant::now() >= next_note {
            waiting(&log_path);
            next_note += PREPARE_NOTE;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon's own error line and hint, taken from its log.
#[derive(Debug)]
pub struct DaemonFailed {
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
pub fn clear_stale_mount(mountpoint: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!("{}: clearing a stale lazyimg mount", mountpoint.display());
            umount(mountpoint)?;
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
