//! The command line: argument parsing, wiring, and turning errors into one line
//! plus a hint. Everything below this module returns typed errors.

mod browse_cmds;
mod cache;
mod docs_cmds;
mod image_cmds;
mod key_cmds;
mod layer_store_cmd;
mod mount_cmds;
mod nginx_cmd;
mod policy_cmds;
mod progress;
mod rootless;
mod seed_cmds;
mod snapshotter_cmd;
mod stats_cmd;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime as _, SystemTime};

use crate::config::Config;
use crate::image::{self, Platform};
use crate::reference::ImageRef;
use crate::registry::{ClientOptions, RegistryClient, credentials};
use crate::secret::{Credentials, Secret};
use crate::store::Store;
use crate::timeline::Recorder;

#[derive(Parser, Debug)]
#[command(
    name = "lazyimg",
    version,
    about = "Container images usable in seconds: verified, cached, mounted without unpacking",
    propagate_version = true,
    after_help = "Configuration: --config FILE, else $LAZYIMG_CONFIG, else \
        $XDG_CONFIG_HOME/lazyimg/config.toml (~/.config/lazyimg/config.toml), else \
        /etc/lazyimg/config.toml."
)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Invocation,
}

/// What the command line asks for: the work, which needs the configuration,
/// or documentation generated from these definitions, which must not (an
/// install step writes it before any configuration exists).
// Parsed once per process: boxing the large variant would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Invocation {
    #[command(flatten)]
    Work(Command),
    #[command(flatten)]
    Docs(docs_cmds::DocsCommand),
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fetch an image's manifest, config and layers into the cache, verifying every digest.
    #[command(after_help = "Examples:\n  \
        lazyimg pull ghcr.io/example-lab/cuda-sample:nbody-cuda11.7.1\n  \
        echo \"$TOKEN\" | lazyimg pull --username alice --password-stdin ghcr.io/alice/tool:1.0\n  \
        lazyimg pull --platform linux/arm64 tre-ghcr-proxy.nsh.loc:5000/alice/tool@sha256:…")]
    Pull(image_cmds::PullArgs),
    /// Show an image's digest, platform and layers without downloading layers.
    #[command(after_help = "Examples:\n  \
        lazyimg inspect ghcr.io/example-lab/cuda-sample:nbody-cuda11.7.1\n  \
        lazyimg inspect --json busybox")]
    Inspect(image_cmds::InspectArgs),
    /// Build lazyimg's seek index of an image's gzip and tar layers; with --push,
    /// store it beside the image so every mount reads those layers lazily.
    #[command(after_help = "Examples:\n  \
        lazyimg index ghcr.io/example-lab/cuda-sample:nbody-cuda11.7.1\n  \
        lazyimg index --push tre-ghcr-proxy.nsh.loc:5000/example-lab/cuda-sample:nbody-cuda11.7.1")]
    Index(image_cmds::IndexArgs),
    /// List an image's files from its metadata alone: no content fetched, no
    /// FUSE or root needed.
    #[command(after_help = "Examples:\n  \
        lazyimg ls ghcr.io/example-lab/cuda-sample:nbody-cuda11.7.1 /usr/local\n  \
        lazyimg ls -l -R --json tre-ghcr-proxy.nsh.loc:5000/alice/tool:1.0 /opt")]
    Ls(browse_cmds::LsArgs),
    /// Print files of an image, fetched lazily and verified; symlinks resolve
    /// inside the image, never on the host.
    #[command(after_help = "Example:\n  lazyimg cat ghcr.io/alice/tool:1.0 /etc/os-release")]
    Cat(browse_cmds::CatArgs),
    /// Search an image's files by type, name, size, date, xattr or setuid bit,
    /// from its metadata alone.
    #[command(after_help = "Examples:\n  \
        lazyimg find ghcr.io/alice/tool:1.0 --setuid\n  \
        lazyimg find ghcr.io/alice/tool:1.0 / --xattr security.capability\n  \
        lazyimg find ghcr.io/alice/tool:1.0 /data --type f --size +100M --json")]
    Find(browse_cmds::FindArgs),
    /// Compare two images' trees: entries added, removed and changed, with
    /// the changed attributes named; content compared by digest where the
    /// images' metadata allows, else fetched (not with --no-fetch).
    #[command(after_help = "Examples:\n  \
        lazyimg diff ghcr.io/alice/tool:1.0 ghcr.io/alice/tool:1.1\n  \
        lazyimg diff --no-fetch --json ghcr.io/alice/tool:1.0 ghcr.io/alice/tool:1.1 /etc")]
    Diff(browse_cmds::DiffArgs),
    /// Mount an image's merged root filesystem read-only; file contents are
    /// fetched when first read.
    #[command(after_help = "Examples:\n  \
        lazyimg mount ghcr.io/example-lab/cuda-sample:nbody-cuda11.7.1 /mnt/cuda\n  \
        lazyimg mount --owner-self --foreground tre-ghcr-proxy.nsh.loc:5000/alice/tool:1.0 ~/img\n  \
        lazyimg umount /mnt/cuda")]
    Mount(mount_cmds::MountArgs),
    /// Serve Podman's additional layer store at DIR: approved images' layers,
    /// read lazily, found on first lookup.
    #[command(after_help = "Examples:\n  \
        lazyimg layer-store /var/lib/lazyimg/layer-store\n  \
        lazyimg layer-store --print-config /var/lib/lazyimg/layer-store >> /etc/containers/storage.conf\n  \
        podman --storage-opt overlay.additionallayerstore=/var/lib/lazyimg/layer-store:ref pull IMAGE")]
    LayerStore(layer_store_cmd::LayerStoreArgs),
    /// Serve containerd's snapshots API as a remote snapshotter: layers of
    /// approved images with a table of contents or lazyimg index are read
    /// lazily instead of downloaded; others are unpacked as usual.
    #[command(after_help = "Examples:\n  \
        lazyimg snapshotter --print-config >> /etc/containerd/config.toml\n  \
        lazyimg snapshotter --socket /run/lazyimg/snapshotter.sock --root /var/lib/lazyimg/snapshotter\n  \
        ctr-remote image rpull --snapshotter lazyimg IMAGE")]
    Snapshotter(snapshotter_cmd::SnapshotterArgs),
    /// Show a mount's transfers: bytes fetched and served, chunks, cache hits,
    /// verification failures, fetch latency.
    #[command(
        after_help = "Examples:\n  lazyimg stats /mnt/cuda\n  lazyimg stats --json /mnt/cuda"
    )]
    Stats(stats_cmd::StatsArgs),
    /// Unmount a lazyimg mount (same as `fusermount3 -u`).
    #[command(after_help = "Example:\n  lazyimg umount /mnt/cuda")]
    Umount(mount_cmds::UmountArgs),
    /// Run a command in an image with podman, charliecloud or apptainer, straight
    /// from a lazyimg mount; exits with the command's status.
    #[command(after_help = "Examples:\n  \
        lazyimg run ghcr.io/example-lab/cuda-sample:nbody-cuda11.7.1 -- nbody -benchmark\n  \
        lazyimg run --runtime charliecloud --bind /data:/mnt --env OMP_NUM_THREADS=8 IMAGE -- python3 job.py\n\n\
        Environment: the container sees the image's Env, then each --env, and the host's TERM;\n\
        no other host variable, whichever runtime runs it.")]
    Run(mount_cmds::RunArgs),
    /// List, verify or shrink the local content cache.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Check an image against the approved list, or show the list (`approved_images`).
    #[command(
        subcommand,
        after_help = "Examples:\n  \
        lazyimg policy check ghcr.io/example-lab/cuda-sample:nbody-cuda11.7.1\n  \
        lazyimg policy check --json tre-ghcr-proxy.nsh.loc:5000/example-lab/cuda-sample:nbody-cuda11.7.1\n  \
        lazyimg policy list"
    )]
    Policy(policy_cmds::PolicyCommand),
    /// Print an nginx.conf for a blob-range cache in front of the site proxy, so
    /// many nodes starting one image fetch each piece of it upstream once.
    #[command(after_help = "Example:\n  \
        lazyimg nginx-config --upstream http://tre-ghcr-proxy.nsh.loc:5000 \\\n    \
        --listen 0.0.0.0:5001 --cache-dir /var/cache/lazyimg-nginx > /etc/lazyimg/nginx.conf\n  \
        nginx -c /etc/lazyimg/nginx.conf\n\n\
        Nodes then reach it with [[registry]] prefix = \"tre-ghcr-proxy.nsh.loc:5000\" location = \"HOST:5001\".")]
    NginxConfig(nginx_cmd::NginxConfigArgs),
    /// Keys that sign lazyimg indexes (`[index_signing]`, `trusted_index_keys`).
    #[command(subcommand)]
    Key(key_cmds::KeyCommand),
    /// Copy an image (every platform, byte for byte) into the site proxy registry.
    #[command(after_help = "Examples:\n  \
        lazyimg seed ghcr.io/example-lab/cuda-sample:nbody-cuda11.7.1\n  \
        lazyimg seed --to tre-ghcr-proxy.nsh.loc:5000 --json ghcr.io/alice/tool:1.0\n  \
        lazyimg seed --mode pull-through --to tre-ghcr-proxy.nsh.loc:5000 ghcr.io/alice/tool:1.0\n\n\
        The target and mode default to the [seed] table of the configuration.")]
    Seed(seed_cmds::SeedArgs),
    /// The site's approved pull step: `ces-pull [RUNTIME] USER TOKEN ghcr.io/NS/NAME:TAG`
    /// (also installed as the `ces-pull` executable).
    #[command(
        name = "ces-pull",
        after_help = "Examples:\n  \
        lazyimg ces-pull alice ghp_… ghcr.io/alice/tool:1.0\n  \
        echo \"$TOKEN\" | lazyimg ces-pull charliecloud alice - ghcr.io/alice/tool:1.0 --squashfs tool.sqfs"
    )]
    CesPull(seed_cmds::CesPullArgs),
}

impl Command {
    /// The registry options of a command that talks to registries.
    fn connect(&self) -> Option<&ConnectArgs> {
        Some(match self {
            Command::Pull(args) => &args.registry.connect,
            Command::Inspect(args) => &args.registry.connect,
            Command::Index(args) => &args.registry.connect,
            Command::Ls(args) => &args.registry.connect,
            Command::Cat(args) => &args.registry.connect,
            Command::Find(args) => &args.registry.connect,
            Command::Diff(args) => &args.registry.connect,
            Command::Mount(args) => &args.registry.connect,
            Command::Run(args) => &args.registry.connect,
            Command::Policy(policy_cmds::PolicyCommand::Check(args)) => &args.registry.connect,
            Command::LayerStore(args) => &args.connect,
            Command::Snapshotter(args) => &args.connect,
            Command::Seed(args) => &args.target.connect,
            Command::CesPull(args) => &args.target.connect,
            Command::Umount(_)
            | Command::Stats(_)
            | Command::Cache(_)
            | Command::Policy(policy_cmds::PolicyCommand::List(_))
            | Command::NginxConfig(_)
            | Command::Key(_) => return None,
        })
    }
}

/// Options for reaching a registry, shared by every command that does.
#[derive(Args, Debug)]
struct RegistryArgs {
    /// Platform to choose from a multi-platform image (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = image::parse_platform)]
    platform: Option<Platform>,
    /// User name for the registry; the token is read from standard input.
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the token (or password) for --username from standard input.
    #[arg(long, requires = "username")]
    password_stdin: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// How to reach registries, as podman spells it: shared by every command
/// that talks to one.
#[derive(Args, Debug, Clone)]
struct ConnectArgs {
    /// Auth file (containers-auth.json(5)) searched first, in place of
    /// $REGISTRY_AUTH_FILE or $XDG_RUNTIME_DIR/containers/auth.json; then
    /// ~/.config/containers/auth.json and ~/.docker/config.json.
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
    /// Verify registries' TLS certificates; --tls-verify=false treats every
    /// registry as registries.conf's `insecure = true` (TLS not verified,
    /// plain HTTP where HTTPS is not spoken).
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    tls_verify: bool,
}

impl Default for ConnectArgs {
    /// What a command line without these options means.
    fn default() -> Self {
        ConnectArgs {
            authfile: None,
            tls_verify: true,
        }
    }
}

impl ConnectArgs {
    /// The auth files to search, in order (see [`credentials::auth_file_paths`]).
    ///
    /// # Errors
    /// When --authfile names a file that cannot be opened: as with podman, a
    /// named file must be there rather than silently skipped.
    fn auth_files(&self) -> anyhow::Result<Vec<PathBuf>> {
        if let Some(file) = &self.authfile {
            std::fs::File::open(file).with_context(|| format!("--authfile {}", file.display()))?;
        }
        Ok(credentials::auth_files(self.authfile.as_deref()))
    }

    /// These options as command-line arguments, for a child lazyimg.
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        if let Some(file) = &self.authfile {
            args.push("--authfile".into());
            args.push(file.clone().into_os_string());
        }
        args.push(format!("--tls-verify={}", self.tls_verify).into());
        args
    }

    /// Applies what changes how references resolve (`--tls-verify`) to `config`.
    fn apply(&self, config: &mut Config) {
        config.skip_tls_verify = !self.tls_verify;
    }
}

/// What every command needs: the configuration and how chatty to be.
struct Context {
    config: Config,
    quiet: bool,
    /// The auth files to search, in order (`--authfile` or the defaults).
    auth_files: Vec<PathBuf>,
}

impl Context {
    /// The key `[index_signing]` names, if any: the seeding step signs with it.
    fn index_signer(&self) -> anyhow::Result<Option<crate::signing::IndexSigner>> {
        Ok(match &self.config.index_signing {
            Some(signing) => Some(crate::signing::IndexSigner::load(&signing.key_file)?),
            None => None,
        })
    }

    fn open_store(&self) -> anyhow::Result<Arc<Store>> {
        Ok(Arc::new(Store::open(
            &self.config.cache_dir(),
            self.config.cache_max_size(),
        )?))
    }

    fn image(&self, text: &str) -> anyhow::Result<ImageRef> {
        Ok(ImageRef::parse(text, &self.config)?)
    }

    /// A client for the registry `image` is fetched from, with the first credentials
    /// found: the command line, then the auth files.
    fn registry(&self, image: &ImageRef, args: &RegistryArgs) -> anyhow::Result<RegistryClient> {
        let creds = self.credentials(image, args)?;
        self.registry_with(image, creds.as_ref())
    }

    /// The credentials for `image`: `--username` with the token on standard input
    /// (read once, here), else the auth files.
    fn credentials(
        &self,
        image: &ImageRef,
        args: &RegistryArgs,
    ) -> anyhow::Result<Option<Credentials>> {
        Ok(match &args.username {
            Some(username) => Some(Credentials::password(
                username.clone(),
                read_secret_from_stdin("--password-stdin")?,
            )),
            None => credentials::lookup(
                &self.auth_files,
                &image.endpoint.host,
                image.source.repository(),
            )?,
        })
    }

    /// A client reading `image` through its mirrors (credentials from the
    /// auth files), then its location with `creds`.
    fn registry_with(
        &self,
        image: &ImageRef,
        creds: Option<&Credentials>,
    ) -> anyhow::Result<RegistryClient> {
        Ok(RegistryClient::for_image(
            image,
            creds,
            &self.auth_files,
            &ClientOptions::from_config(&self.config.network),
        )?)
    }

    fn platform(&self, args: &RegistryArgs) -> Platform {
        args.platform.clone().unwrap_or_else(image::host_platform)
    }
}

/// Reads a token from standard input (so it never shows in `ps`); `option` names
/// what asked for it in the error when the input is empty.
fn read_secret_from_stdin(option: &str) -> anyhow::Result<Secret> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read the token from standard input")?;
    let token = text.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(!token.is_empty(), "{option}: standard input was empty");
    Ok(Secret::new(token))
}

/// Parses the command line and runs it; the process's whole life.
pub fn main() -> ExitCode {
    started();
    let cli = Cli::try_parse().unwrap_or_else(|err| {
        // `lazyimg run` with a bad option is lazyimg's own failure: 125, as
        // `podman run` exits; other usage errors keep clap's 2.
        if err.use_stderr() && invoked_run(std::env::args_os()) {
            let _ = err.print();
            std::process::exit(125);
        }
        err.exit()
    });
    init_logging(cli.verbose, cli.quiet);
    // `lazyimg run` exits as `podman run` does: its own failures must not look
    // like the command's status (runtime module doc, "Exit status").
    let failure = if matches!(cli.command, Invocation::Work(Command::Run(_))) {
        run_failure_status
    } else {
        general_failure_status
    };
    finish("lazyimg", run(cli), failure)
}

/// Whether the command line `args` names the `run` subcommand, read leniently
/// (it failed to parse).
fn invoked_run(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    use clap::CommandFactory;
    Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .is_ok_and(|m| m.subcommand_name() == Some("run"))
}

/// 126/127 for a command that cannot be invoked or is missing, else 125.
fn run_failure_status(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<crate::runtime::RuntimeError>())
        .map_or(125, crate::runtime::RuntimeError::exit_status)
}

fn general_failure_status(_: &anyhow::Error) -> u8 {
    1
}

/// The `ces-pull` executable: the site's syntax, the same work as `lazyimg ces-pull`.
pub fn ces_pull_main() -> ExitCode {
    let cli = seed_cmds::CesPullCli::parse();
    init_logging(cli.verbose, cli.quiet);
    let run = || -> anyhow::Result<ExitCode> {
        let mut config = Config::load(cli.config.as_deref())?;
        let connect = &cli.args.target.connect;
        connect.apply(&mut config);
        let ctx = Context {
            config,
            quiet: cli.quiet,
            auth_files: connect.auth_files()?,
        };
        async_runtime()?.block_on(seed_cmds::ces_pull(&ctx, cli.args))
    };
    finish("ces-pull", run(), general_failure_status)
}

fn async_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The exit code for `result`, reporting an error as `program` on the way out
/// and exiting with `failure`'s status for it.
fn finish(
    program: &str,
    result: anyhow::Result<ExitCode>,
    failure: fn(&anyhow::Error) -> u8,
) -> ExitCode {
    result.unwrap_or_else(|err| {
        // A reader that stopped reading (`lazyimg ls … | head`) is no error:
        // exit as a program killed by SIGPIPE does, silently (128 + 13).
        if err.chain().any(|e| {
            e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            return ExitCode::from(141);
        }
        report(program, &err);
        ExitCode::from(failure(&err))
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Invocation::Docs(command) => docs_cmds::run(command),
        Invocation::Work(command) => work(command, cli.config.as_deref(), cli.quiet),
    }
}

/// Runs `command` with the configuration (`--config` is `explicit`) loaded.
fn work(
    command: Command,
    explicit: Option<&std::path::Path>,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let mut config = {
        let _phase = crate::timeline::phase("config").entered();
        Config::load(explicit)?
    };
    let connect = command.connect().cloned().unwrap_or_default();
    connect.apply(&mut config);
    let ctx = Context {
        config,
        quiet,
        auth_files: connect.auth_files()?,
    };
    let runtime = async_runtime()?;
    match command {
        Command::Pull(args) => runtime.block_on(image_cmds::pull(&ctx, args)),
        Command::Inspect(args) => runtime.block_on(image_cmds::inspect(&ctx, args)),
        Command::Index(args) => runtime.block_on(image_cmds::index(&ctx, args)),
        Command::Ls(args) => runtime.block_on(browse_cmds::ls(&ctx, args)),
        Command::Cat(args) => runtime.block_on(browse_cmds::cat(&ctx, args)),
        Command::Find(args) => runtime.block_on(browse_cmds::find(&ctx, args)),
        Command::Diff(args) => runtime.block_on(browse_cmds::diff(&ctx, args)),
        Command::Mount(args) => runtime.block_on(mount_cmds::mount(&ctx, args)),
        Command::Umount(args) => mount_cmds::umount(args),
        Command::LayerStore(args) => runtime.block_on(layer_store_cmd::layer_store(&ctx, args)),
        Command::Snapshotter(args) => {
            runtime.block_on(snapshotter_cmd::snapshotter(&ctx, args, explicit))
        }
        Command::Stats(args) => stats_cmd::stats(args),
        Command::Run(args) => runtime.block_on(mount_cmds::run(&ctx, args, explicit)),
        Command::Cache(command) => cache::run(&ctx, command),
        Command::Policy(policy_cmds::PolicyCommand::Check(args)) => {
            runtime.block_on(policy_cmds::check(&ctx, args))
        }
        Command::Policy(policy_cmds::PolicyCommand::List(args)) => policy_cmds::list(&ctx, args),
        Command::Key(key_cmds::KeyCommand::Generate(args)) => key_cmds::generate(args),
        Command::NginxConfig(args) => nginx_cmd::nginx_config(args),
        Command::Seed(args) => runtime.block_on(seed_cmds::seed(&ctx, args)),
        Command::CesPull(args) => runtime.block_on(seed_cmds::ces_pull(&ctx, args)),
    }
}

/// One line for the error (with its causes), then the library's hint if it has one.
fn report(program: &str, err: &anyhow::Error) {
    use std::io::Write as _;
    let stamp = line_stamp();
    // Not eprintln!: with standard error closed it would panic (exit 101).
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{stamp}{program}: error: {}", one_line(err));
    let hint = err.chain().find_map(|e| {
        e.downcast_ref::<crate::Error>()
            .and_then(crate::Error::hint)
            .or_else(|| {
                e.downcast_ref::<crate::runtime::RuntimeError>()
                    .and_then(|e| e.hint())
            })
    });
    if let Some(hint) = hint {
        let _ = writeln!(stderr, "{stamp}hint: {hint}");
    }
}

/// The error and its causes joined by ": ", skipping a cause whose text the
/// message already contains (errors that print their source would say it twice).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// Sets up `tracing` on stderr, and the [`timeline`](crate::timeline) recorder
/// ([`phases`]). A mount daemon's stderr is its log file, read long after the
/// fact: there every line starts with the time (RFC 3339, UTC, microseconds);
/// on a terminal the time is noise and is left out. Colors: see [`color_wanted`].
fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let default = match (quiet, verbose) {
        (true, _) => "error",
        // The TLS verifier logs each refused certificate as an error of its
        // own; lazyimg reports it (with the host and a hint) once, at the end.
        (false, 0) => "lazyimg=info,warn,rustls_platform_verifier=off",
        (false, 1) => "lazyimg=debug,info",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAZYIMG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(color_wanted(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ));
    let log = if crate::mount::is_daemon() {
        log.with_timer(SystemTime).boxed()
    } else {
        log.without_time().boxed()
    };
    // The log shows phase spans like any other; the recorder sees nothing else.
    let log = log.with_filter(
        filter.add_directive(
            format!("{}=off", crate::timeline::TARGET)
                .parse()
                .expect("a valid directive"),
        ),
    );
    let recorder = RECORDER.get_or_init(Recorder::default).clone().with_filter(
        tracing_subscriber::filter::Targets::new()
            .with_target(crate::timeline::TARGET, tracing::Level::TRACE),
    );
    tracing_subscriber::registry()
        .with(log)
        .with(recorder)
        .init();
}

/// Whether log lines on stderr may carry ANSI colors: only on a terminal
/// (`terminal`), and never while `NO_COLOR` (`no_color`) is set to anything
/// but the empty string (no-color.org). tracing's own check of `NO_COLOR`
/// would not do: an explicit `with_ansi` overrides it.
fn color_wanted(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

/// The phases this process has finished so far (see [`crate::timeline`]).
fn phases() -> Vec<crate::timeline::Phase> {
    RECORDER.get().map(Recorder::phases).unwrap_or_default()
}

static RECORDER: std::sync::OnceLock<Recorder> = std::sync::OnceLock::new();

/// When this process started (the first call, first thing in [`main`]).
fn started() -> std::time::Instant {
    static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *STARTED.get_or_init(std::time::Instant::now)
}

/// What starts each line this process writes to stderr outside `tracing`: the
/// time as `tracing` writes it, plus a space, in a mount daemon (see
/// [`init_logging`]); nothing elsewhere.
fn line_stamp() -> String {
    let mut stamp = String::new();
    if crate::mount::is_daemon() && SystemTime.format_time(&mut Writer::new(&mut stamp)).is_ok() {
        stamp.push(' ');
    }
    stamp
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn usage_errors_of_run_are_told_from_others() {
        let invoked = |args: &[&str]| super::invoked_run(args.iter().map(Into::into));
        assert!(invoked(&["lazyimg", "run", "--bind", "/a:/b:xx", "x"]));
        assert!(invoked(&["lazyimg", "-v", "run", "--nosuch", "x"]));
        assert!(invoked(&["lazyimg", "--config", "/c", "run"]));
        assert!(!invoked(&["lazyimg", "ls", "--nosuch"]));
        assert!(!invoked(&["lazyimg", "--nosuch"]));
    }

    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_work_after_the_subcommand() {
        let cli = Cli::try_parse_from(["lazyimg", "pull", "busybox", "--config", "/x.toml", "-v"])
            .unwrap();
        assert_eq!(cli.config.as_deref(), Some(std::path::Path::new("/x.toml")));
        assert_eq!(cli.verbose, 1);
    }

    #[test]
    fn no_color_set_non_empty_turns_colors_off_on_a_terminal() {
        let set = |value: &'static str| Some(std::ffi::OsStr::new(value));
        assert!(color_wanted(true, None));
        assert!(color_wanted(true, set("")), "empty means unset");
        assert!(!color_wanted(true, set("1")));
        assert!(!color_wanted(true, set("false")), "any value counts");
        assert!(!color_wanted(false, None), "not on a file or pipe");
    }

    #[test]
    fn registry_options_default_to_verifying_tls() {
        assert!(ConnectArgs::default().tls_verify);
        let cli = Cli::try_parse_from(["lazyimg", "pull", "x"]).unwrap();
        let Invocation::Work(command) = cli.command else {
            panic!("pull is work")
        };
        assert!(command.connect().unwrap().tls_verify);
        let cli = Cli::try_parse_from(["lazyimg", "pull", "--tls-verify=false", "x"]).unwrap();
        let Invocation::Work(command) = cli.command else {
            panic!("pull is work")
        };
        assert!(!command.connect().unwrap().tls_verify);
    }

    #[test]
    fn username_requires_password_stdin() {
        assert!(Cli::try_parse_from(["lazyimg", "pull", "--username", "u", "busybox"]).is_err());
        assert!(
            Cli::try_parse_from([
                "lazyimg",
                "pull",
                "--username",
                "u",
                "--password-stdin",
                "x"
            ])
            .is_ok()
        );
    }
}
