//! `lazyimg seed` and `ces-pull` (also `lazyimg ces-pull`): copy an approved image
//! into the site proxy registry and, for ces-pull, hand it to a container runtime.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use bytesize::ByteSize;
use clap::{Args, Parser};

use super::Context;
use super::progress::Reporter;
use crate::config::SeedMode;
use crate::fuse::{self, MountOptions};
use crate::image;
use crate::lazy::index_artifact::IndexStore;
use crate::reference::ImageRef;
use crate::registry::{ClientOptions, RegistryClient, credentials};
use crate::runtime::{self, Runtime};
use crate::secret::{Credentials, Secret};
use crate::seed::{self, SeedReport, Seeder, Target};
use crate::store::Store;

#[derive(Args, Debug)]
pub(super) struct SeedArgs {
    /// Image to copy: ghcr.io/NS/NAME:TAG (any reference; every platform is copied).
    reference: String,
    #[command(flatten)]
    pub(super) target: TargetArgs,
    /// Print the report as JSON on standard output.
    #[arg(long)]
    json: bool,
    /// User name for the source registry; the token is read from standard input.
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the token for --username from standard input.
    #[arg(long, requires = "username")]
    password_stdin: bool,
}

#[derive(Args, Debug)]
pub(super) struct TargetArgs {
    /// Registry to copy into, HOST[:PORT][/PREFIX] (default: `[seed] target`).
    #[arg(long, value_name = "HOST[/PREFIX]")]
    to: Option<String>,
    /// push: upload to a registry that accepts pushes; pull-through: fetch everything
    /// through a pull-through cache of the source (default: `[seed] mode`, else push).
    #[arg(long, value_enum)]
    mode: Option<SeedMode>,
    /// Blobs copied at once.
    #[arg(long, value_name = "N", default_value_t = seed::DEFAULT_JOBS)]
    jobs: usize,
    #[command(flatten)]
    pub(super) connect: super::ConnectArgs,
}

#[derive(Args, Debug)]
pub(super) struct CesPullArgs {
    /// With charliecloud or apptainer: also write a SquashFS image of the merged
    /// tree to FILE (run it with `ch-run FILE -- CMD`).
    #[arg(long, value_name = "FILE")]
    squashfs: Option<PathBuf>,
    #[command(flatten)]
    pub(super) target: TargetArgs,
    /// [RUNTIME] USER TOKEN ghcr.io/NS/NAME:TAG. RUNTIME is podman (default),
    /// apptainer or charliecloud; a TOKEN of `-` is read from standard input.
    #[arg(required = true, num_args = 1.., value_name = "ARGS")]
    args: Vec<String>,
}

/// `ces-pull` as its own executable: the site's syntax plus lazyimg's global options.
#[derive(Parser, Debug)]
#[command(
    name = "ces-pull",
    version,
    about = "Copy an approved image from ghcr.io into the site proxy registry and hand it \
             to podman, apptainer or charliecloud",
    after_help = "Examples:\n  \
        ces-pull alice ghp_… ghcr.io/alice/tool:1.0\n  \
        echo \"$TOKEN\" | ces-pull charliecloud alice - ghcr.io/alice/tool:1.0 --squashfs tool.sqfs\n\n\
        The token is used for ghcr.io only, whatever auth files exist; `-` reads it from\n\
        standard input so it never shows in `ps`. The copy goes to `[seed] target`.\n\
        Configuration: --config FILE, else $LAZYIMG_CONFIG, else\n\
        $XDG_CONFIG_HOME/lazyimg/config.toml (~/.config/lazyimg/config.toml), else\n\
        /etc/lazyimg/config.toml."
)]
pub struct CesPullCli {
    /// Configuration file (TOML).
    #[arg(long, global = true, value_name = "FILE")]
    pub(super) config: Option<PathBuf>,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(super) verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(super) quiet: bool,
    #[command(flatten)]
    pub(super) args: CesPullArgs,
}

pub(super) async fn seed(ctx: &Context, args: SeedArgs) -> anyhow::Result<ExitCode> {
    let credentials = match &args.username {
        Some(username) => Some(Credentials::password(
            username.clone(),
            super::read_secret_from_stdin("--password-stdin")?,
        )),
        None => None,
    };
    let seeded = seed_image(ctx, &args.reference, credentials, &args.target).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&seeded.report)?);
    } else {
        summarise(ctx, &seeded.report);
        println!("{}", seeded.report.digest);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn ces_pull(ctx: &Context, args: CesPullArgs) -> anyhow::Result<ExitCode> {
    // Never echo the arguments back: one of them is a token.
    let (runtime, user, token, reference) = match &args.args[..] {
        [user, token, reference] => (Runtime::Podman, user, token, reference),
        [runtime, user, token, reference] => (runtime.parse::<Runtime>()?, user, token, reference),
        other => bail!(
            "expected [RUNTIME] USER TOKEN ghcr.io/NS/NAME:TAG, got {} arguments",
            other.len()
        ),
    };
    if args.squashfs.is_some() && runtime == Runtime::Podman {
        bail!(
            "--squashfs is for charliecloud and apptainer; podman gets the image in its own store"
        );
    }
    let secret = if token == "-" {
        super::read_secret_from_stdin("TOKEN `-`")?
    } else {
        Secret::new(token.as_str())
    };
    let credentials = Credentials::password(user.clone(), secret);
    let seeded = seed_image(ctx, reference, Some(credentials), &args.target).await?;
    summarise(ctx, &seeded.report);

    // 5. Hand the image to the runtime.
    let target = &seeded.target;
    match runtime {
        Runtime::Podman => {
            let id = podman_handoff(&seeded.image, target)?;
            if !ctx.quiet {
                eprintln!(
                    "podman has {} and {} (image {})",
                    seeded.image,
                    target.source.whole(),
                    &id[..id.len().min(12)]
                );
            }
            println!("podman run --rm {} CMD…", seeded.image);
        }
        Runtime::Charliecloud | Runtime::Apptainer => {
            if let Some(file) = &args.squashfs {
                write_squashfs(ctx, &seeded, file).await?;
                if !ctx.quiet {
                    eprintln!("wrote {}", file.display());
                }
                if runtime == Runtime::Charliecloud {
                    println!("ch-run {} -- CMD…", file.display());
                } else {
                    println!("apptainer exec {} CMD…", file.display());
                }
            }
            println!(
                "lazyimg run --runtime {} {} -- CMD…",
                runtime.name(),
                target.source.whole()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What [`seed_image`] leaves for the runtime step.
struct Seeded {
    /// The image as the user named it (ghcr.io/…).
    image: ImageRef,
    /// Its name at the target (the site proxy).
    target: ImageRef,
    report: SeedReport,
    store: Arc<Store>,
    target_client: RegistryClient,
}

/// Steps 1–4 of ces-pull, and all of `lazyimg seed`: policy, source
/// authentication, manifests, approval of the digest, then the copy.
async fn seed_image(
    ctx: &Context,
    reference: &str,
    source_credentials: Option<Credentials>,
    args: &TargetArgs,
) -> anyhow::Result<Seeded> {
    let started = Instant::now();
    let image = ctx.image(reference)?;
    // 1. The approved list, before any registry is contacted.
    let approval = crate::policy::enforce(&ctx.config, &image)?;

    let seed_config = ctx.config.seed.clone().unwrap_or_default();
    let target_text = args.to.clone().or(seed_config.target).context(
        "no target registry: give --to HOST[:PORT][/PREFIX] or set `target` in the [seed] \
         table of the configuration",
    )?;
    let mode = args.mode.or(seed_config.mode).unwrap_or_default();
    let target_spec: Target = target_text.parse()?;
    let target = target_spec.image_ref(&image, &ctx.config)?;
    let store = ctx.open_store()?;
    let options = ClientOptions::from_config(&ctx.config.network);
    let auth_files = &ctx.auth_files;

    // 2. Authenticate to the source (a wrong token stops here) and read every manifest.
    let source_credentials = match source_credentials {
        Some(c) => Some(c),
        None => credentials::lookup(auth_files, &image.endpoint.host, image.source.repository())?,
    };
    let source = ctx.registry_with(&image, source_credentials.as_ref())?;
    let plan = seed::plan(&store, &source, &image).await?;
    if let Some(approval) = &approval {
        approval.check_digest(&plan.digest())?;
    }
    // 3. Copy into the target, with the target's own credentials (auth files).
    let target_credentials = credentials::lookup(
        auth_files,
        &target.endpoint.host,
        target.source.repository(),
    )?;
    let target_client =
        RegistryClient::new(&target.endpoint, target_credentials.as_ref(), &options)?;
    let reporter = Reporter::new(ctx.quiet);
    let signer = ctx.index_signer()?;
    let index_store = IndexStore::for_image(&ctx.config, auth_files, &target)?;
    let seeder = Seeder {
        store: &store,
        source: &source,
        target: &target_client,
        progress: &reporter,
        jobs: args.jobs,
        signer: signer.as_ref(),
        index_store: index_store.as_ref(),
    };
    // 4. lazyimg's index beside the image and in the index store, so GPU
    // nodes mount it lazily.
    let mut report = seeder.copy_and_index(&plan, &target, mode).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(Seeded {
        image,
        target,
        report,
        store,
        target_client,
    })
}

fn summarise(ctx: &Context, r: &SeedReport) {
    if ctx.quiet {
        return;
    }
    let size = |n: u64| ByteSize::b(n).display().iec().to_string();
    let mut parts = vec![format!(
        "{} blobs copied ({})",
        r.blobs_copied,
        size(r.bytes_copied)
    )];
    parts.push(format!(
        "{} skipped as already there ({})",
        r.blobs_skipped,
        size(r.bytes_skipped)
    ));
    if r.blobs_mounted > 0 {
        parts.push(format!(
            "{} mounted from other repositories ({})",
            r.blobs_mounted,
            size(r.bytes_mounted)
        ));
    }
    if !r.lazy_indexes.is_empty() {
        parts.push(format!("{} lazyimg index(es) pushed", r.lazy_indexes.len()));
    }
    if !r.stored_indexes.is_empty() {
        parts.push(format!(
            "{} lazyimg index(es) pushed to the index store",
            r.stored_indexes.len()
        ));
    }
    eprintln!(
        "seeded {} to {} ({}, {}, {} manifests): {}; {} newly cached locally; {:.1} s",
        r.image,
        r.target,
        r.digest,
        r.mode,
        r.manifests,
        parts.join(", "),
        size(r.bytes_downloaded),
        r.seconds
    );
}

/// Pulls the image from the target into podman's store (podman never sees the
/// GHCR token) and tags it with the name the user gave, so both names share one
/// image ID. Returns the ID.
fn podman_handoff(image: &ImageRef, target: &ImageRef) -> anyhow::Result<String> {
    runtime::check_available(Runtime::Podman)?;
    let mut pull = Command::new("podman");
    pull.arg("pull").arg("--quiet");
    if target.endpoint.insecure {
        pull.arg("--tls-verify=false");
    }
    pull.arg(target.source.whole());
    let out = output(&mut pull)?;
    let id = String::from_utf8_lossy(&out)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    anyhow::ensure!(!id.is_empty(), "podman pull printed no image ID");
    match image.name.tag() {
        Some(tag) => {
            let name = format!(
                "{}/{}:{tag}",
                image.name.registry(),
                image.name.repository()
            );
            output(Command::new("podman").args(["tag", &id, &name]))?;
        }
        None => tracing::warn!("{image} has no tag: podman knows it only as {}", target),
    }
    Ok(id)
}

/// Runs `cmd`; its stdout, or an error with its stderr.
fn output(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Mounts the image (this machine's platform) from the cache and writes its
/// merged tree to a SquashFS file with mksquashfs.
async fn write_squashfs(ctx: &Context, seeded: &Seeded, file: &Path) -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if runtime::find_program("mksquashfs", &path).is_none() {
        bail!("mksquashfs is not installed (Debian: apt-get install squashfs-tools)");
    }
    // Every blob is cached by now: this only records the image and picks the platform.
    let reporter = Reporter::new(ctx.quiet);
    let pulled = crate::pull::pull(
        &seeded.store,
        &seeded.target_client,
        &seeded.target,
        &image::host_platform(),
        &reporter,
    )
    .await?;
    let name = seeded.target.to_string();
    let rootfs = tokio::task::block_in_place(|| {
        crate::mount::open_image(&seeded.store, &pulled.manifest, &name, None)
    })?;
    let mountpoint = tempfile::Builder::new()
        .prefix("lazyimg-squash-")
        .tempdir()
        .context("cannot create a mount point")?;
    // SAFETY: getuid/getgid/geteuid have no preconditions and cannot fail.
    let owner = unsafe { (libc::geteuid() != 0).then(|| (libc::getuid(), libc::getgid())) };
    let options = MountOptions {
        allow_other: false,
        owner,
        fsname: format!("lazyimg:{name}"),
        threads: 4,
    };
    let session = fuse::spawn_mount(Arc::new(rootfs), mountpoint.path(), &options)?;
    let mut mksquashfs = Command::new("mksquashfs");
    mksquashfs
        .arg(mountpoint.path())
        .arg(file)
        .args(["-noappend", "-quiet", "-no-progress"]);
    let result = tokio::task::block_in_place(|| output(&mut mksquashfs));
    drop(session);
    result.map(|_| ())
}
