//! The mount daemon's lifecycle: `lazyimg mount` starts itself again detached,
//! waits until the daemon serves the tree (or reports the error from its
//! log), and the daemon serves until SIGTERM, SIGINT or SIGHUP unmounts it.

use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

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
/// by anyone or by SIGTERM, SIGINT or SIGHUP. `on_live` is called once the
/// mount is live (mounted; the kernel holds requests until FUSE init is
/// answered, which serving does next), after the `fuse mount` phase.
pub fn serve_until_signalled(
    rootfs: Arc<RootFs>,
    mountpoint: &Path,
    options: &MountOptions,
    on_live: impl FnOnce(),
) -> anyhow::Result<()> {
    until_signalled(
        |on_mounted| fuse::mount_foreground_with(rootfs, mountpoint, options, on_mounted),
        on_live,
    )
}

/// [`serve_until_signalled`] for Podman's additional layer store `store`.
pub fn serve_layer_store_until_signalled(
    store: Arc<LayerStore>,
    mountpoint: &Path,
    options: &MountOptions,
    on_live: impl FnOnce(),
) -> anyhow::Result<()> {
    until_signalled(
        |on_mounted| fuse::mount_layer_store_with(store, mountpoint, options, on_mounted),
        on_live,
    )
}

/// Runs `serve`, which mounts, hands its argument the mount's unmounter and
/// serves until unmounted; the first of the signals unmounts. `on_live` runs
/// once mounted, after the `fuse mount` phase.
fn until_signalled<'a>(
    serve: impl FnOnce(Box<dyn FnOnce(fuse::Unmounter) + 'a>) -> crate::Result<()>,
    on_live: impl FnOnce() + 'a,
) -> anyhow::Result<()> {
    // Registered before the mount exists, so a signal sent as soon as it shows
    // is not lost; one that came earlier killed us with nothing mounted.
    let signals = UnmountSignals::register()?;
    let mounting = crate::timeline::phase("fuse mount");
    serve(Box::new(move |unmounter| {
        drop(mounting);
        tokio::spawn(signals.unmount_on_first(unmounter));
        on_live();
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
    // fusermount3 says only "Invalid argument" for a path nothing is mounted on.
    // The kernel lists the path with symlinks resolved: resolve the parent's
    // (never the mount point itself: a hung mount would hang the lookup).
    let resolved = match (mountpoint.parent(), mountpoint.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => parent
            .canonicalize()
            .map_or_else(|_| mountpoint.to_path_buf(), |p| p.join(name)),
        _ => mountpoint.to_path_buf(),
    };
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts")
        && !is_fuse_mount(&mounts, mountpoint)
        && !is_fuse_mount(&mounts, &resolved)
    {
        bail!(
            "{} is not mounted: no lazyimg (FUSE) mount there",
            mountpoint.display()
        );
    }
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

/// Whether `mounts` (proc_pid_mounts(5) text) lists a FUSE file system at
/// `mountpoint` (made absolute first; fields escape space, tab, newline and
/// backslash in octal, as getmntent(3) reads them).
fn is_fuse_mount(mounts: &str, mountpoint: &Path) -> bool {
    let wanted = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let wanted = wanted.to_string_lossy();
    let wanted = wanted.trim_end_matches('/');
    let escaped = wanted
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    mounts.lines().any(|line| {
        let mut fields = line.split(' ');
        let (Some(_), Some(dir), Some(fstype)) = (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        (dir == escaped || (escaped.is_empty() && dir == "/")) && fstype.starts_with("fuse")
    })
}

/// A mount daemon that serves its image.
#[derive(Debug)]
pub struct Started {
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
    /// Its start-up phases, one line each (see [`crate::timeline::Phase::line`]).
    pub timeline: Vec<String>,
}

/// Starts this command line again as a detached daemon (its own session,
/// logging to a file in the cache, [`is_daemon`] true) and returns the moment
/// it reports, through a pipe, that its mount is live ([`report_live`]), or
/// with its log if it fails. `waiting` is called with the log's path every so
/// often while the daemon prepares.
pub fn start_daemon(
    store: &Store,
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
    let (status, status_writer) = status_pipe_pair()?;
    let writer_fd = status_writer.as_raw_fd();
    let exe = std::env::current_exe().context("cannot find the lazyimg executable")?;
    let mut daemon = Command::new(exe);
    daemon
        .args(std::env::args_os().skip(1))
        .env(DAEMON_ENV, "1")
        .env(STATUS_FD_ENV, writer_fd.to_string())
        // A token given on our standard input goes to the daemon's the same way:
        // never through its arguments or environment.
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid and fcntl are async-signal-safe. setsid detaches the daemon
    // from our terminal so closing the shell does not unmount the image; the
    // status pipe's write end is the one descriptor it inherits on purpose.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut daemon, move || {
            libc::setsid();
            if libc::fcntl(writer_fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = daemon.spawn();
    // Only the daemon may hold the write end: its exit is then our end of file.
    drop(status_writer);
    let mut child = match spawned {
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
    let mut status = StatusReader::new(status);
    loop {
        // Fetching layers that cannot be read lazily can take a while: say so
        // every PREPARE_NOTE.
        match status.next_line(PREPARE_NOTE)? {
            StatusLine::Timeout => waiting(&log_path),
            StatusLine::Line(line) if line == LIVE => {
                return Ok(Started {
                    pid: child.id(),
                    log: log_path,
                    timeline: status.phases,
                });
            }
            StatusLine::Line(line) => match line.strip_prefix(PHASE_PREFIX) {
                Some(phase) => status.phases.push(phase.to_string()),
                None => tracing::debug!("mount daemon status: {line}"),
            },
            StatusLine::End => {
                // Its log is complete once it has exited.
                child.wait()?;
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(DaemonFailed::from_log(&log, &log_path).into());
            }
        }
    }
}

/// Set in the daemon's environment: the descriptor of the status pipe's write
/// end, on which it reports its phases and then [`LIVE`].
const STATUS_FD_ENV: &str = "LAZYIMG_MOUNT_STATUS_FD";
/// The status pipe's last line: the mount is live.
const LIVE: &str = "live";
/// Starts a status line carrying one phase of the timeline.
const PHASE_PREFIX: &str = "phase ";

/// A pipe whose both ends are closed on exec (the daemon's end is opened up
/// in its child only): (read end, write end).
fn status_pipe_pair() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(std::io::Error::last_os_error()).context("cannot create the status pipe");
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads the daemon's status pipe line by line, with a timeout.
struct StatusReader {
    pipe: std::fs::File,
    pending: Vec<u8>,
    phases: Vec<String>,
}

enum StatusLine {
    Line(String),
    /// Nothing arrived in time.
    Timeout,
    /// The daemon closed the pipe (it exited) without reporting the mount live.
    End,
}

impl StatusReader {
    fn new(pipe: OwnedFd) -> StatusReader {
        StatusReader {
            pipe: pipe.into(),
            pending: Vec::new(),
            phases: Vec::new(),
        }
    }

    /// The next complete line, waiting at most `timeout` for more bytes.
    fn next_line(&mut self, timeout: Duration) -> anyhow::Result<StatusLine> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]).into_owned();
                return Ok(StatusLine::Line(line));
            }
            let mut poll = libc::pollfd {
                fd: self.pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd, for the length given.
            match unsafe { libc::poll(&mut poll, 1, millis) } {
                0 => return Ok(StatusLine::Timeout),
                -1 => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e).context("cannot wait for the mount daemon");
                }
                _ => {}
            }
            let mut buf = [0; 4096];
            match self.pipe.read(&mut buf) {
                Ok(0) => return Ok(StatusLine::End),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("cannot read the mount daemon's status"),
            }
        }
    }
}

/// The status pipe the starter handed this daemon, if any: taken from the
/// environment once, and closed on exec from then on, so that children
/// (fusermount3) do not hold it open after the daemon is gone.
fn status_pipe() -> &'static Mutex<Option<std::fs::File>> {
    static PIPE: OnceLock<Mutex<Option<std::fs::File>>> = OnceLock::new();
    PIPE.get_or_init(|| {
        let fd = std::env::var(STATUS_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<RawFd>().ok())
            .filter(|_| is_daemon())
            // SAFETY: F_SETFD on any number is harmless; it fails unless open.
            .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == 0);
        // SAFETY: the starter opened this descriptor for this daemon alone, and
        // nothing else in the process knows its number.
        Mutex::new(fd.map(|fd| unsafe { std::fs::File::from_raw_fd(fd) }))
    })
}

/// Takes the status pipe out of the environment's reach (see [`status_pipe`]);
/// the daemon calls this before it starts any other process.
pub fn claim_status_pipe() {
    status_pipe();
}

/// Tells the starter that the mount is live, with the start-up `timeline`
/// (one line per phase), and closes the status pipe: the starter returns at
/// once. Does nothing outside a daemon, or the second time.
pub fn report_live(timeline: &[String]) {
    let Some(mut pipe) = status_pipe()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        return;
    };
    let mut text = String::new();
    for line in timeline {
        text.push_str(PHASE_PREFIX);
        text.push_str(line);
        text.push('\n');
    }
    text.push_str(LIVE);
    text.push('\n');
    // A starter that is gone (killed) reads nothing: the mount serves anyway.
    if let Err(e) = pipe.write_all(text.as_bytes()) {
        tracing::warn!("cannot tell the starter the mount is live: {e}");
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
    fn the_daemon_error_and_hint_are_found_behind_their_timestamps() {
        let log = "2026-01-02T03:04:05.678901Z  INFO pulling\n\
                   2026-01-02T03:04:06.000001Z lazyimg: error: manifest unknown\n\
                   2026-01-02T03:04:06.000002Z hint: check the tag\n";
        let failed = DaemonFailed::from_log(log, Path::new("/x.log"));
        assert_eq!(failed.message, "manifest unknown");
        assert_eq!(failed.hint.as_deref(), Some("check the tag"));
    }

    #[test]
    fn fuse_mounts_are_found_by_their_escaped_directory() {
        let mounts = "lazyimg:ghcr.io/a/b:1 /mnt/my\\040image fuse.lazyimg ro 0 0\n\
                      /dev/vda / ext4 rw 0 0\n";
        assert!(is_fuse_mount(mounts, Path::new("/mnt/my image")));
        assert!(is_fuse_mount(mounts, Path::new("/mnt/my image/")));
        assert!(!is_fuse_mount(mounts, Path::new("/mnt")));
        assert!(!is_fuse_mount(mounts, Path::new("/")), "not FUSE");
    }
}
