//! `lazyimg mount`, `umount` and `run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;

use super::progress::Reporter;
use super::rootless::PodmanNamespaceMount;
use super::{Context, RegistryArgs};
use crate::digest::Digest;
use crate::fuse::{self, MountOptions};
use crate::lazy::index_artifact::{IndexSources, IndexStore};
use crate::mount::{self, Prefetching};
use crate::pull::PullPolicy;
use crate::reference::ImageRef;
use crate::registry::RegistryClient;
use crate::rootfs::synthetic::SyntheticFiles;
use crate::runtime::nvidia::DriverFiles;
use crate::runtime::{self, Bind, Gpus, HostEnv, RunSpec, Runtime};
use crate::store::Store;
use crate::timeline::{self, Phase};

#[derive(Args, Debug)]
pub(super) struct MountArgs {
    /// Image reference.
    reference: String,
    /// Directory to mount the image's root filesystem on (read-only).
    mountpoint: PathBuf,
    /// Stay attached and log to stderr instead of starting a daemon.
    #[arg(long)]
    foreground: bool,
    /// Once the mount is live, print one JSON object on stdout instead of the
    /// message on stderr: `mountpoint` (absolute), `daemon_pid`, `log` (the
    /// daemon's log file).
    #[arg(long, conflicts_with = "foreground")]
    json: bool,
    #[command(flatten)]
    mount: MountFlags,
    #[command(flatten)]
    pub(super) registry: RegistryArgs,
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
    /// Add /.singularity.d (the image's env script, runscript, labels) as
    /// Apptainer's own conversion writes it, so `apptainer exec|run MNT`
    /// behaves as with a SIF of the image (implied by `run --runtime
    /// apptainer`). The image's own files are unchanged.
    #[arg(long)]
    apptainer: bool,
}

impl MountFlags {
    /// These flags as `lazyimg mount` options, for a mount daemon started on
    /// this command's behalf (`--owner-self`, `--allow-other` and `--pull`
    /// are the caller's to choose).
    fn forwarded(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(file) = &self.record {
            args.extend(["--record".into(), file.into()]);
        }
        if let Some(file) = &self.prefetch {
            args.extend(["--prefetch".into(), file.into()]);
        }
        if self.background_fetch {
            args.push("--background-fetch".into());
        }
        if let Some(rate) = self.max_rate {
            args.extend(["--max-rate".into(), rate.to_string().into()]);
        }
        args
    }
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
    /// Bind a host path into the container (SRC[:DST[:ro|rw]]); repeatable, or
    /// a comma-separated list as Apptainer takes it. Charliecloud cannot bind
    /// read-only and refuses :ro.
    #[arg(long = "bind", value_name = "SRC[:DST[:ro|rw]]", value_delimiter = ',')]
    binds: Vec<Bind>,
    /// Set a variable in the container (K=V); repeatable. No host variable is
    /// passed unless --env-host names it.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Pass the host's variable NAME (a shell pattern such as 'SLURM_*' passes
    /// all that match); repeatable.
    #[arg(long = "env-host", value_name = "NAME")]
    env_host: Vec<String>,
    /// NVIDIA GPUs for the container: all, or host indices N[,M…] (apptainer:
    /// --nv; podman: CDI devices; charliecloud: the host driver injected into the mount).
    #[arg(long, value_name = "all|N[,M…]")]
    gpus: Option<Gpus>,
    /// Same as --gpus all (Apptainer's spelling).
    #[arg(long, conflicts_with = "gpus")]
    nv: bool,
    /// Working directory in the container (default: the image's, else /).
    #[arg(long)]
    workdir: Option<String>,
    #[command(flatten)]
    mount: MountFlags,
    #[command(flatten)]
    pub(super) registry: RegistryArgs,
    /// Image reference.
    reference: String,
    /// Command and arguments (default: the image's entrypoint and cmd).
    #[arg(last = true)]
    command: Vec<String>,
}

impl RunArgs {
    /// `--gpus`, or `all` for `--nv`.
    fn gpus(&self) -> Option<Gpus> {
        self.gpus.clone().or(self.nv.then_some(Gpus::All))
    }
}

pub(super) async fn mount(ctx: &Context, args: MountArgs) -> anyhow::Result<ExitCode> {
    let daemon = mount::is_daemon();
    if daemon {
        mount::claim_status_pipe();
    }
    mount::clear_stale_mount(&args.mountpoint)?;
    let image = ctx.image(&args.reference)?;
    let credentials = {
        let _phase = timeline::phase("credentials").entered();
        ctx.credentials(&image, &args.registry)?
    };
    if !(args.foreground || daemon) {
        // Refuse an unapproved image here, where the user sees it. The daemon does
        // the rest, so metadata and contents share its connections and token.
        {
            let _phase = timeline::phase("policy").entered();
            crate::policy::enforce(&ctx.config, &image)?;
        }
        // Before the daemon starts: failing after it would leave it serving.
        let mountpoint = std::path::absolute(&args.mountpoint)
            .with_context(|| format!("mount point {}", args.mountpoint.display()))?;
        let store = ctx.open_store()?;
        let started = {
            let _phase = timeline::phase("daemon").entered();
            mount::start_daemon(&store, credentials.as_ref(), |log| {
                eprintln!("still preparing {image}; see {}", log.display())
            })?
        };
        print_timeline(&super::phases(), &started.timeline);
        if args.json {
            let mounted = serde_json::json!({
                "mountpoint": mountpoint,
                "daemon_pid": started.pid,
                "log": started.log,
            });
            println!("{}", serde_json::to_string_pretty(&mounted)?);
        } else {
            eprintln!(
                "mounted {image} at {} (daemon pid {}, log {})",
                args.mountpoint.display(),
                started.pid,
                started.log.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Made now, connecting nowhere: the first request that needs the registry
    // (never, for a cached image whose contents are all cached) connects.
    let registry = Arc::new(ctx.registry_with(&image, credentials.as_ref())?);
    let (store, manifest) =
        prepare(ctx, &image, &args.registry, &registry, args.mount.pull).await?;
    let rootfs = open(
        ctx,
        &store,
        &manifest,
        &image,
        Arc::clone(&registry),
        &args.mount,
        None,
    )?;
    let options = mount_options(&args.mount, &image);
    tracing::info!("serving {image} at {}", args.mountpoint.display());
    mount::serve_until_signalled(rootfs, &args.mountpoint, &options, || {
        let timeline: Vec<String> = super::phases().iter().map(Phase::line).collect();
        if daemon {
            mount::report_live(&timeline);
        } else {
            print_timeline(&[], &timeline);
        }
        // The first read of content not cached should not also wait for the
        // CA store; an error here is the first request's to report.
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || runtime.block_on(registry.make_ready()));
    })?;
    tracing::info!("unmounted {}", args.mountpoint.display());
    Ok(ExitCode::SUCCESS)
}

/// The start-up timeline at debug level (`-v`): this process's phases, then
/// the daemon's (as it reported them), then how long until the mount was live.
fn print_timeline(own: &[Phase], daemon: &[String]) {
    for phase in own {
        tracing::debug!("timeline: {}", phase.line());
    }
    for line in daemon {
        tracing::debug!("timeline: daemon: {line}");
    }
    tracing::debug!(
        "timeline: live after {:.1} ms",
        super::started().elapsed().as_secs_f64() * 1e3
    );
}

pub(super) fn umount(args: UmountArgs) -> anyhow::Result<ExitCode> {
    mount::umount(&args.mountpoint)?;
    Ok(ExitCode::SUCCESS)
}

/// Where `run` serves the image from; dropping it unmounts.
enum Mounted {
    /// A FUSE session of this process.
    Here { _session: fuser::BackgroundSession },
    /// A mount daemon inside rootless Podman's namespace.
    InPodmanNamespace { _mount: PodmanNamespaceMount },
}

/// `lazyimg run`; `config_file` is `--config`, which a mount daemon started
/// for rootless Podman is given too.
pub(super) async fn run(
    ctx: &Context,
    mut args: RunArgs,
    config_file: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    args.mount.apptainer |= args.runtime == Runtime::Apptainer;
    runtime::check_available(args.runtime)?;
    let gpus = args.gpus();
    // Before pulling or mounting: a GPU job on a node without GPUs starts nothing.
    let host = HostEnv::from_process();
    runtime::check_gpus(args.runtime, gpus.as_ref(), &host.gpu)?;
    let image = ctx.image(&args.reference)?;
    let credentials = ctx.credentials(&image, &args.registry)?;
    let registry = Arc::new(ctx.registry_with(&image, credentials.as_ref())?);
    let (store, manifest) =
        prepare(ctx, &image, &args.registry, &registry, args.mount.pull).await?;
    let config = mount::image_config(&store, &manifest, &image)?;
    let runtime_config = config.config().clone().unwrap_or_default();
    let command = if args.command.is_empty() {
        let default: Vec<String> = [runtime_config.entrypoint(), runtime_config.cmd()]
            .into_iter()
            .flatten()
            .flatten()
            .cloned()
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

    let mountpoint = tempfile::Builder::new()
        .prefix("lazyimg-run-")
        .tempdir()
        .context("cannot create a mount point")?;
    let mounted = if args.runtime == Runtime::Podman && !is_root() {
        Mounted::InPodmanNamespace {
            _mount: PodmanNamespaceMount::start(
                config_file,
                args.mount.forwarded(),
                credentials.as_ref(),
                &image.to_string(),
                mountpoint.path(),
            )?,
        }
    } else {
        // Charliecloud's GPU jobs get the host's driver in the tree.
        let driver = match (&gpus, args.runtime) {
            (Some(_), Runtime::Charliecloud) => Some(DriverFiles::find(&host.gpu)?),
            _ => None,
        };
        let rootfs = open(
            ctx,
            &store,
            &manifest,
            &image,
            registry,
            &args.mount,
            driver.as_ref(),
        )?;
        // Root's mount is used by runtimes that switch to other uids (podman's
        // runc, ch-run's user namespace): let them in.
        let mut options = mount_options(&args.mount, &image);
        options.allow_other |= is_root();
        Mounted::Here {
            _session: fuse::spawn_mount(rootfs, mountpoint.path(), &options)?,
        }
    };

    let mut spec = RunSpec::new(mountpoint.path().to_path_buf(), command);
    spec.host = host;
    spec.image_env = runtime_config.env().clone().unwrap_or_default();
    spec.env = env;
    spec.env_host = args.env_host;
    spec.gpus = gpus;
    spec.binds = args.binds;
    spec.workdir = args.workdir.or(runtime_config
        .working_dir()
        .clone()
        .filter(|w| !w.is_empty()));
    spec.user = runtime_config.user().clone().filter(|u| !u.is_empty());
    let status = runtime::run(args.runtime, &spec);
    drop(mounted);
    let code = status?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Makes sure `image` is mountable (pulling lazily as `policy` says): returns the
/// store and the image's manifest digest.
pub(super) async fn prepare(
    ctx: &Context,
    image: &ImageRef,
    registry_args: &RegistryArgs,
    registry: &RegistryClient,
    policy: PullPolicy,
) -> anyhow::Result<(Arc<Store>, Digest)> {
    // Refuse unapproved images before touching the cache or the registry.
    let approval = {
        let _phase = timeline::phase("policy").entered();
        crate::policy::enforce(&ctx.config, image)?
    };
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
        &IndexSources::for_image(
            &ctx.config,
            &ctx.auth_files,
            image,
            approval
                .as_ref()
                .map(|a| a.index_pins())
                .unwrap_or_default(),
        )?,
    )
    .await?;
    Ok((store, manifest))
}

/// Opens the prepared image with the recording and prefetching `flags` ask
/// for, `/.singularity.d` if they ask for it, and the host's NVIDIA `driver`
/// injected if given.
fn open(
    ctx: &Context,
    store: &Arc<Store>,
    manifest: &Digest,
    image: &ImageRef,
    registry: Arc<RegistryClient>,
    flags: &MountFlags,
    driver: Option<&DriverFiles>,
) -> anyhow::Result<Arc<crate::rootfs::RootFs>> {
    let prefetching = Prefetching {
        record: flags.record.clone(),
        list: flags.prefetch.clone(),
        background: flags.background_fetch,
        max_rate: flags.max_rate.map(|mb| (mb * 1e6) as u64),
    };
    let runtime_config = flags
        .apptainer
        .then(|| mount::image_config(store, manifest, image))
        .transpose()?
        .map(|c| c.config().clone().unwrap_or_default());
    let extra = |tree: &crate::tree::Tree| -> anyhow::Result<Option<SyntheticFiles>> {
        if runtime_config.is_none() && driver.is_none() {
            return Ok(None);
        }
        let mut files = match &runtime_config {
            Some(config) => runtime::singularity::singularity_files(config),
            None => SyntheticFiles::default(),
        };
        if let Some(driver) = driver {
            driver
                .inject(tree, &mut files)
                .context("cannot read the host's NVIDIA driver files")?;
        }
        Ok(Some(files))
    };
    let index_store = IndexStore::for_image(&ctx.config, &ctx.auth_files, image)?;
    mount::open_lazy(
        &ctx.config,
        store,
        manifest,
        image,
        (registry, index_store),
        &prefetching,
        extra,
    )
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn bind_lists_split_at_commas_as_apptainer_does() {
        let cli = Cli::try_parse_from(["lazyimg", "--bind", "/a:/b:ro,/c", "--bind", "/d", "img"])
            .unwrap();
        assert_eq!(cli.run.gpus(), None);
        assert_eq!(
            cli.run.binds,
            [
                Bind::new("/a", "/b").read_only(),
                Bind::new("/c", "/c"),
                Bind::new("/d", "/d")
            ]
        );
    }

    #[test]
    fn nv_is_gpus_all() {
        let cli = Cli::try_parse_from(["lazyimg", "--gpus", "0,2", "img"]).unwrap();
        assert_eq!(cli.run.gpus(), Some(Gpus::Devices(vec![0, 2])));
        let cli = Cli::try_parse_from(["lazyimg", "--nv", "img"]).unwrap();
        assert_eq!(cli.run.gpus(), Some(Gpus::All));
        assert!(Cli::try_parse_from(["lazyimg", "--nv", "--gpus", "0", "img"]).is_err());
        assert!(Cli::try_parse_from(["lazyimg", "--gpus", "one", "img"]).is_err());
    }
}
