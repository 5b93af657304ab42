//! `lazyimg layer-store`: Podman's additional layer store, served lazily.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;

use super::Context;
use crate::fuse::MountOptions;
use crate::image::{self, Platform};
use crate::mount::{self, RegistryImages};
use crate::rootfs::layer_store::LayerStore;
use crate::tree::OverlayXattrs;

#[derive(Args, Debug)]
pub(super) struct LayerStoreArgs {
    /// Directory to serve the store at (Podman needs it absolute, without
    /// `:` or `,`).
    dir: PathBuf,
    /// Stay attached and log to stderr instead of starting a daemon.
    #[arg(long)]
    foreground: bool,
    /// Print the storage.conf lines that point Podman at DIR, and exit.
    #[arg(long)]
    print_config: bool,
    /// Platform to choose from multi-platform images (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = image::parse_platform)]
    platform: Option<Platform>,
    #[command(flatten)]
    pub(super) connect: super::ConnectArgs,
}

pub(super) async fn layer_store(ctx: &Context, args: LayerStoreArgs) -> anyhow::Result<ExitCode> {
    let dir = store_dir(&args.dir)?;
    if args.print_config {
        print!("{}", storage_conf(&dir));
        return Ok(ExitCode::SUCCESS);
    }
    if mount::is_daemon() {
        mount::claim_status_pipe();
    }
    mount::clear_stale_mount(&dir)?;
    if !(args.foreground || mount::is_daemon()) {
        let store = ctx.open_store()?;
        let started = mount::start_daemon(&store, None, |_| {})?;
        eprintln!(
            "serving Podman's layer store at {} (daemon pid {}, log {})",
            dir.display(),
            started.pid,
            started.log.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let resolver = RegistryImages {
        config: ctx.config.clone(),
        auth_files: ctx.auth_files.clone(),
        store: ctx.open_store()?,
        platform: args.platform.unwrap_or_else(image::host_platform),
        runtime: tokio::runtime::Handle::current(),
        xattrs: overlay_xattrs(),
    };
    let store = Arc::new(LayerStore::new(Box::new(resolver)));
    let options = MountOptions {
        allow_other: true,
        owner: None,
        fsname: "lazyimg-layer-store".to_string(),
        threads: 4,
    };
    tracing::info!("serving Podman's layer store at {}", dir.display());
    // Resolving an image blocks on the runtime from FUSE threads, which
    // therefore must not be this runtime's own worker.
    let serving = dir.clone();
    tokio::task::spawn_blocking(move || {
        mount::serve_layer_store_until_signalled(store, &serving, &options, || {
            mount::report_live(&[])
        })
    })
    .await
    .context("the layer store stopped")??;
    tracing::info!("unmounted {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The overlay markers Podman's overlay mounts will read. Podman as root
/// reads `trusted.overlay.*`; rootless Podman mounts with `userxattr`, which
/// reads `user.overlay.*`, and its store must be started inside `podman
/// unshare`, i.e. in a user namespace other than the initial one.
fn overlay_xattrs() -> OverlayXattrs {
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    if in_initial_user_namespace(&uid_map) {
        OverlayXattrs::Trusted
    } else {
        OverlayXattrs::User
    }
}

/// Whether `uid_map` (`/proc/self/uid_map`) is the initial namespace's:
/// every uid mapped to itself (user_namespaces(7)).
fn in_initial_user_namespace(uid_map: &str) -> bool {
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

/// `dir` made absolute, as containers/storage requires (overlay.go
/// `parseOptions`: `additionallayerstore` paths must be absolute and the
/// option is split at `,` and `:`).
fn store_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = std::path::absolute(dir)
        .with_context(|| format!("cannot make {} absolute", dir.display()))?;
    let text = dir.to_string_lossy();
    if text.contains([':', ',']) {
        bail!("{text}: Podman cannot use a layer store whose path holds ':' or ','");
    }
    Ok(dir)
}

/// The storage.conf lines that point Podman at the store in `dir`.
fn storage_conf(dir: &Path) -> String {
    format!(
        "[storage.options]\nadditionallayerstores = [\"{}:ref\"]\n",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_store_with_references() {
        assert_eq!(
            storage_conf(Path::new("/var/lib/lazyimg-als")),
            "[storage.options]\nadditionallayerstores = [\"/var/lib/lazyimg-als:ref\"]\n"
        );
        assert!(store_dir(Path::new("/a:b")).is_err());
        assert!(store_dir(Path::new("rel")).unwrap().is_absolute());
    }

    #[test]
    fn a_user_namespace_is_told_from_the_initial_one() {
        assert!(in_initial_user_namespace(
            "         0          0 4294967295\n"
        ));
        // `podman unshare` of a user with subordinate ids.
        assert!(!in_initial_user_namespace(
            "         0       1001          1\n         1     165536      65536\n"
        ));
    }
}
