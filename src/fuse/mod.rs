//! The FUSE edge: mounts a [`RootFs`] read-only. Every answer comes from the
//! tree (metadata) or the content reader (file bytes); nothing here knows
//! about layers, chunks or registries.
//!
//! Mount options, and why:
//! - `ro`: the image is immutable; write-type operations also answer `EROFS`.
//! - `default_permissions`: the kernel checks the real modes we report, so
//!   `access`/`open` need no permission logic of their own.
//! - `nodev`: device nodes are still listed as devices (listings compare
//!   types), the kernel just refuses to open them from this mount.
//! - `nosuid`: setuid/setgid bits are still reported in `st_mode`; they are
//!   only not honoured on exec (nor file capabilities), which is what an
//!   unprivileged mount of untrusted content needs anyway.
//! - `fsname`/`subtype`: identify the mount in `/proc/mounts`. fuser's direct
//!   mount (as root) keeps the type `fuse` and only uses the name as source;
//!   through fusermount3 (non-root) the type is `fuse.lazyimg`.
//! - No `auto_unmount`: fuser only accepts it together with `allow_other` or
//!   `allow_root` and then always goes through fusermount3; callers unmount
//!   by dropping the session or with `fusermount3 -u`/`umount`.
//!
//! `allow_other` as non-root needs `user_allow_other` in `/etc/fuse.conf`.

mod adapter;
pub use adapter::STATS_XATTR;
mod attr;
mod errno;
mod layer_store;
mod read_pool;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use fuser::{BackgroundSession, Config, Filesystem, MountOption, Session, SessionACL};

use crate::error::{Error, Result};
use crate::rootfs::RootFs;
use crate::rootfs::layer_store::LayerStore;

use adapter::Adapter;
use layer_store::StoreAdapter;

/// Threads reading `/dev/fuse`. Metadata answers are in-memory, so two
/// (one per core here) keep lookups flowing while the other sends a reply.
const LOOP_THREADS: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Let users other than the mounting one use the mount.
    pub allow_other: bool,
    /// Report every inode as owned by this uid/gid (`--owner-self`).
    pub owner: Option<(u32, u32)>,
    /// Source shown in `/proc/mounts`, e.g. `lazyimg:ghcr.io/ns/name:tag`.
    pub fsname: String,
    /// Content reads in flight at once (each may wait on the network); at
    /// least one.
    pub threads: usize,
}

/// Mounts `rootfs` at `mountpoint` and serves it from background threads.
/// Returns once the kernel has completed the FUSE handshake, so the mount is
/// usable; dropping the session unmounts it.
pub fn spawn_mount(
    rootfs: Arc<RootFs>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<BackgroundSession> {
    session(rootfs, mountpoint, opts)?
        .spawn()
        .map_err(|e| Error::io(mountpoint, e))
}

/// Mounts `rootfs` at `mountpoint` and serves it on this thread until the
/// filesystem is unmounted (`fusermount3 -u`, `umount`).
pub fn mount_foreground(rootfs: Arc<RootFs>, mountpoint: &Path, opts: &MountOptions) -> Result<()> {
    mount_foreground_with(rootfs, mountpoint, opts, drop)
}

/// Like [`mount_foreground`], handing `on_mounted` an [`Unmounter`] once the
/// filesystem is mounted, before serving starts, so that another thread (a
/// signal handler) can end the mount; this function then returns `Ok`.
pub fn mount_foreground_with(
    rootfs: Arc<RootFs>,
    mountpoint: &Path,
    opts: &MountOptions,
    on_mounted: impl FnOnce(Unmounter),
) -> Result<()> {
    serve(session(rootfs, mountpoint, opts)?, mountpoint, on_mounted)
}

/// Like [`mount_foreground_with`], serving Podman's additional layer store
/// `store` (always `allow_other`: overlayfs and Podman read it). Not
/// mounted `ro`: the kernel would then answer Podman's `use` and `rmdir`
/// notifications with EROFS itself, which Podman logs as a warning.
pub fn mount_layer_store_with(
    store: Arc<LayerStore>,
    mountpoint: &Path,
    opts: &MountOptions,
    on_mounted: impl FnOnce(Unmounter),
) -> Result<()> {
    let adapter =
        StoreAdapter::new(store, opts.threads.max(1)).map_err(|e| Error::io(mountpoint, e))?;
    let mut config = config(opts);
    config.mount_options.retain(|o| *o != MountOption::RO);
    config.acl = SessionACL::All;
    let session =
        Session::new(adapter, mountpoint, &config).map_err(|e| mount_error(mountpoint, e))?;
    serve(session, mountpoint, on_mounted)
}

fn serve<FS: Filesystem>(
    mut session: Session<FS>,
    mountpoint: &Path,
    on_mounted: impl FnOnce(Unmounter),
) -> Result<()> {
    on_mounted(Unmounter {
        session: session.unmount_callable(),
        mountpoint: mountpoint.to_path_buf(),
    });
    session.run().map_err(|e| Error::io(mountpoint, e))
}

/// Ends a mount served by [`mount_foreground_with`] from any thread.
pub struct Unmounter {
    session: fuser::SessionUnmounter,
    mountpoint: PathBuf,
}

impl Unmounter {
    /// Unmounts; when the mount is busy (a process has a file open or its
    /// working directory inside), detaches it instead (`fusermount3 -u -z`):
    /// the directory is an empty one again at once, and the session ends when
    /// the last user lets go. Either way nothing is left answering ENOTCONN.
    ///
    /// # Errors
    /// [`Error::Io`] on the mount point when neither works.
    pub fn unmount(mut self) -> Result<()> {
        match self.session.unmount() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => detach(&self.mountpoint),
            done => done.map_err(|e| Error::io(&self.mountpoint, e)),
        }
    }
}

/// Lazily unmounts `mountpoint` (`fusermount3 -u -z`, which works for root and
/// for the user who mounted it alike).
fn detach(mountpoint: &Path) -> Result<()> {
    let out = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(mountpoint)
        .output()
        .map_err(|e| Error::io(Path::new("fusermount3"), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::io(
        mountpoint,
        std::io::Error::other(format!(
            "fusermount3 -u -z: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    ))
}

fn session(
    rootfs: Arc<RootFs>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<Session<Adapter>> {
    let adapter = Adapter::new(rootfs, opts.owner, opts.threads.max(1))
        .map_err(|e| Error::io(mountpoint, e))?;
    Session::new(adapter, mountpoint, &config(opts)).map_err(|e| mount_error(mountpoint, e))
}

/// fuser opens /dev/fuse itself before trying fusermount3, so a device that only
/// root may open (common in containers without udev) fails with a bare EACCES.
fn mount_error(mountpoint: &Path, err: std::io::Error) -> Error {
    let device = Path::new("/dev/fuse");
    let device_closed = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
    if err.kind() == std::io::ErrorKind::PermissionDenied && device_closed {
        Error::FuseDevice {
            path: device.to_path_buf(),
        }
    } else {
        Error::io(mountpoint, err)
    }
}

fn config(opts: &MountOptions) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        // fusermount3 splits its option string at commas.
        MountOption::FSName(opts.fsname.replace(',', "_")),
        MountOption::Subtype("lazyimg".to_string()),
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(LOOP_THREADS);
    // One /dev/fuse fd per loop thread, so they do not contend on one queue.
    config.clone_fd = true;
    config
}
