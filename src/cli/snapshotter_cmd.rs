//! `lazyimg snapshotter`: containerd's remote snapshotter, served lazily.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;

use super::Context;
use crate::mount;
use crate::snapshotter::remote::{LayerStoreDir, is_live_fuse_mount};
use crate::snapshotter::{Snapshotter, service};

/// Where containerd's proxy plugin and the systemd unit expect the socket.
const DEFAULT_SOCKET: &str = "/run/lazyimg/snapshotter.sock";
const DEFAULT_ROOT: &str = "/var/lib/lazyimg/snapshotter";

#[derive(Args, Debug)]
pub(super) struct SnapshotterArgs {
    /// Unix socket to serve containerd's snapshots API on.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Directory for snapshots, their records and the layer store mount
    /// (keep it short: overlayfs mount options must fit in one page).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Print the containerd config.toml lines that name this snapshotter, and exit.
    #[arg(long)]
    print_config: bool,
    /// Handed to the layer store it starts.
    #[command(flatten)]
    pub(super) connect: super::ConnectArgs,
}

pub(super) async fn snapshotter(
    ctx: &Context,
    args: SnapshotterArgs,
    config_file: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let socket = std::path::absolute(&args.socket)
        .with_context(|| format!("cannot make {} absolute", args.socket.display()))?;
    if args.print_config {
        print!("{}", containerd_config(&socket));
        return Ok(ExitCode::SUCCESS);
    }
    let root = std::path::absolute(&args.root)
        .with_context(|| format!("cannot make {} absolute", args.root.display()))?;
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let store = root.join("store");
    ensure_layer_store(ctx, &store, config_file, &args.connect)?;
    let snapshotter = Snapshotter::open(&root, Box::new(LayerStoreDir(store)))?;
    tracing::info!("serving containerd snapshots at {}", socket.display());
    if !ctx.quiet {
        eprintln!(
            "serving containerd snapshots at {} (state in {})",
            socket.display(),
            root.display()
        );
    }
    service::serve(Arc::new(snapshotter), &socket, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Starts `lazyimg layer-store STORE` as its own daemon unless one already
/// serves there. Remote snapshots are that daemon's directories, mounted as
/// overlayfs lower layers of running containers; as a process of its own it
/// outlives a restart (or a crash) of the snapshotter, so those containers
/// keep reading.
fn ensure_layer_store(
    ctx: &Context,
    store: &Path,
    config_file: Option<&Path>,
    connect: &super::ConnectArgs,
) -> anyhow::Result<()> {
    if is_live_fuse_mount(store) {
        tracing::info!("the layer store at {} is already served", store.display());
        return Ok(());
    }
    match std::fs::symlink_metadata(store) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(store)
            .with_context(|| format!("creating {}", store.display()))?,
        _ => mount::clear_stale_mount(store)?,
    }
    let exe = std::env::current_exe().context("cannot find the lazyimg executable")?;
    let mut command = std::process::Command::new(exe);
    if let Some(file) = config_file {
        command.arg("--config").arg(file);
    }
    if ctx.quiet {
        command.arg("--quiet");
    }
    let status = command
        .arg("layer-store")
        .args(connect.to_args())
        .arg(store)
        .status()
        .context("cannot start the layer store")?;
    if !status.success() {
        bail!(
            "the layer store at {} did not start ({status})",
            store.display()
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The containerd config.toml (version 2) lines that make `socket` the
/// snapshotter named `lazyimg` (containerd docs/PLUGINS.md "Proxy Plugins"),
/// and make CRI use it with the labels that name each layer's image
/// (`disable_snapshot_annotations = false`).
fn containerd_config(socket: &Path) -> String {
    format!(
        "# lazyimg's remote snapshotter: merge into containerd's config.toml (version = 2).\n\
         [proxy_plugins.lazyimg]\n  type = \"snapshot\"\n  address = \"{}\"\n\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"lazyimg\"\n  \
         disable_snapshot_annotations = false\n",
        socket.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_socket_and_keeps_the_labels() {
        let text = containerd_config(Path::new("/run/lazyimg/snapshotter.sock"));
        let parsed: toml::Table = text.parse().unwrap();
        assert_eq!(
            parsed["proxy_plugins"]["lazyimg"]["address"].as_str(),
            Some("/run/lazyimg/snapshotter.sock")
        );
        let cri = &parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"];
        assert_eq!(cri["disable_snapshot_annotations"].as_bool(), Some(false));
        assert_eq!(cri["snapshotter"].as_str(), Some("lazyimg"));
    }
}
