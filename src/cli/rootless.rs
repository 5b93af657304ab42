//! `lazyimg run --runtime podman` as an unprivileged user: the image mounted
//! inside rootless Podman's own user and mount namespace.
//!
//! Rootless Podman runs every container in one user and mount namespace that
//! its pause process keeps (podman-unshare(1)). A FUSE mount made outside it
//! after the pause process started is not visible in it when the host's `/`
//! is a private mount (mount_namespaces(7): no propagation), and `podman run
//! --rootfs` then finds an empty directory. So the mount is made inside:
//! `podman unshare lazyimg mount …` starts the mount daemon in that namespace,
//! and `podman unshare lazyimg umount` ends it.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::secret::Credentials;

/// A mount daemon serving an image inside rootless Podman's namespace;
/// unmounted (the same way) when dropped.
pub(super) struct PodmanNamespaceMount {
    exe: PathBuf,
    mountpoint: PathBuf,
}

impl PodmanNamespaceMount {
    /// Runs `podman unshare lazyimg [--config FILE] -q mount --owner-self
    /// --allow-other --pull never MOUNT_ARGS REFERENCE MOUNTPOINT`: files owned
    /// by the namespace's root (the invoking user), readable by the other
    /// uids the container may run as. The image must be in the cache already
    /// (`--pull never`). `credentials` given on the command line reach the
    /// daemon on its standard input, never in argv or the environment.
    ///
    /// Errors: podman cannot be run, or the mount fails (its stderr quoted).
    pub(super) fn start(
        config_file: Option<&Path>,
        mount_args: Vec<OsString>,
        credentials: Option<&Credentials>,
        reference: &str,
        mountpoint: &Path,
    ) -> anyhow::Result<PodmanNamespaceMount> {
        let exe = std::env::current_exe().context("cannot find the lazyimg executable")?;
        let mut cmd = Command::new("podman");
        cmd.arg("unshare").arg(&exe);
        if let Some(file) = config_file {
            cmd.arg("--config").arg(file);
        }
        cmd.args([
            "-q",
            "mount",
            "--owner-self",
            "--allow-other",
            "--pull",
            "never",
        ])
        .args(mount_args);
        if let Some(credentials) = credentials {
            cmd.args(["--username", &credentials.username, "--password-stdin"]);
        }
        cmd.arg(reference)
            .arg(mountpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("cannot run `podman unshare`")?;
        let mut stdin = child.stdin.take().expect("piped");
        if let Some(credentials) = credentials {
            stdin
                .write_all(credentials.secret.expose().as_bytes())
                .context("cannot hand the token to the mount daemon")?;
        }
        drop(stdin);
        let out = child
            .wait_with_output()
            .context("`podman unshare` failed")?;
        if !out.status.success() {
            bail!(
                "cannot mount the image inside rootless Podman's namespace ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(PodmanNamespaceMount {
            exe,
            mountpoint: mountpoint.to_path_buf(),
        })
    }
}

impl Drop for PodmanNamespaceMount {
    fn drop(&mut self) {
        let unmounted = Command::new("podman")
            .arg("unshare")
            .arg(&self.exe)
            .args(["-q", "umount"])
            .arg(&self.mountpoint)
            .status();
        if !matches!(unmounted, Ok(status) if status.success()) {
            tracing::warn!(
                "cannot unmount {} inside Podman's namespace: `podman unshare lazyimg umount {}`",
                self.mountpoint.display(),
                self.mountpoint.display()
            );
        }
    }
}
