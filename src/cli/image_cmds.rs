//! `lazyimg pull`, `inspect` and `index`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use bytesize::ByteSize;
use clap::Args;
use oci_client::RegistryOperation;
use serde::Serialize;

use super::progress::Reporter;
use super::{Context, RegistryArgs};
use crate::image::{self, Descriptor, DescriptorExt, LayerFormat, Manifest};
use crate::lazy::index_artifact::{self, IndexSources};
use crate::pull::{self, PullReport};
use crate::reference::ImageRef;
use crate::registry::RegistryClient;
use crate::store::Store;

#[derive(Args, Debug)]
pub(super) struct PullArgs {
    /// Image reference: ghcr.io/NS/NAME:TAG, HOST:PORT/NAME@sha256:…, or a Docker Hub name.
    reference: String,
    #[command(flatten)]
    pub(super) registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub(super) struct IndexArgs {
    /// Image reference.
    reference: String,
    /// Store the index in the image's registry, beside the image, so mounts on
    /// every machine read its gzip layers lazily.
    #[arg(long)]
    push: bool,
    /// With --push: store this list of files (one path per line, as `mount
    /// --record` writes it) with the index; every mount fetches them first.
    #[arg(long, value_name = "FILE", requires = "push")]
    prefetch: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub(super) registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub(super) struct InspectArgs {
    /// Image reference.
    reference: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(super) registry: RegistryArgs,
}

/// Pulls an approved image whole: every blob fetched and verified.
async fn approved_pull(
    ctx: &Context,
    reference: &str,
    args: &RegistryArgs,
) -> anyhow::Result<(ImageRef, Arc<Store>, RegistryClient, PullReport)> {
    let image = ctx.image(reference)?;
    // Refuse unapproved images before touching the cache or the registry.
    let approval = crate::policy::enforce(&ctx.config, &image)?;
    let store = ctx.open_store()?;
    let registry = ctx.registry(&image, args)?;
    let reporter = Reporter::new(ctx.quiet);
    let report = pull::pull_gated(
        &store,
        &registry,
        &image,
        &ctx.platform(args),
        &reporter,
        &crate::policy::gate(approval.as_ref()),
    )
    .await?;
    Ok((image, store, registry, report))
}

pub(super) async fn pull(ctx: &Context, args: PullArgs) -> anyhow::Result<std::process::ExitCode> {
    let (_, store, _, report) = approved_pull(ctx, &args.reference, &args.registry).await?;
    // Unpack and index the layers now, once, so the first mount is as quick as any.
    tokio::task::block_in_place(|| {
        crate::mount::open_image(&store, &report.manifest, &report.name, None)
    })?;
    if !ctx.quiet {
        eprintln!(
            "pulled {} ({}, {} layers): {} fetched, {} already cached",
            report.name,
            report.platform,
            report.layers,
            ByteSize::b(report.bytes_fetched).display().iec(),
            ByteSize::b(report.bytes_cached).display().iec(),
        );
    }
    // The digest alone on stdout, so scripts can capture it.
    println!("{}", report.digest);
    Ok(std::process::ExitCode::SUCCESS)
}

pub(super) async fn index(ctx: &Context, args: IndexArgs) -> anyhow::Result<ExitCode> {
    // Indexes are built from verified blobs only: pull them first.
    let (image, store, registry, report) =
        approved_pull(ctx, &args.reference, &args.registry).await?;
    let manifest_bytes = store.require(&report.manifest)?;
    let Manifest::Image(manifest) = Manifest::parse(manifest_bytes.bytes(), &report.name)? else {
        anyhow::bail!("{}: the resolved manifest is an index", report.name);
    };
    let config = image::parse_config(
        store.require(&manifest.config().sha256()?)?.bytes(),
        &report.name,
    )?;
    let diff_ids = image::diff_ids(&config, &report.name)?;
    if diff_ids.len() != manifest.layers().len() {
        anyhow::bail!(
            "{}: its config lists {} diff_ids for {} layers",
            report.name,
            diff_ids.len(),
            manifest.layers().len()
        );
    }
    let started = Instant::now();
    let mut built = Vec::new();
    for (layer, diff_id) in manifest.layers().iter().zip(&diff_ids) {
        let index =
            tokio::task::block_in_place(|| index_artifact::build_layer(&store, layer, diff_id))?;
        match index {
            Some(index) => {
                eprintln!(
                    "  {}  {:<12} {:>6} entries, {:>5} chunks, {} of windows",
                    layer.digest(),
                    LayerFormat::of(layer).to_string(),
                    index.file.chunked.table.entries.len(),
                    index.file.chunked.chunks.len(),
                    ByteSize::b(index.windows.len() as u64).display().iec()
                );
                built.push(index);
            }
            None => eprintln!(
                "  {}  {:<12} not indexable: a plain zstd layer is one frame, fetched whole",
                layer.digest(),
                LayerFormat::of(layer).to_string()
            ),
        }
    }
    tokio::task::block_in_place(|| {
        index_artifact::check_tree(&store, &report.name, manifest.layers(), &built)
    })?;
    let compressed: u64 = manifest.layers().iter().map(|l| l.size()).sum();
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "indexed {} of {} layers of {} in {elapsed:.2} s ({:.0} MB/s of layer data)",
        built.len(),
        manifest.layers().len(),
        report.name,
        compressed as f64 / 1e6 / elapsed.max(1e-9)
    );
    if args.push {
        let media_type = manifest
            .media_type()
            .as_ref()
            .map_or("application/vnd.oci.image.manifest.v1+json".into(), |m| {
                m.to_string()
            });
        let subject = image::descriptor(
            &media_type,
            &report.manifest,
            manifest_bytes.bytes().len() as u64,
            Default::default(),
        );
        let prefetch = match &args.prefetch {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("cannot read the prefetch list {}", path.display()))?,
            ),
            None => None,
        };
        let signer = ctx.index_signer()?;
        let pushed = index_artifact::push(
            &store,
            &registry,
            &image,
            &subject,
            &built,
            prefetch.as_deref(),
            signer.as_ref(),
        )
        .await?;
        eprintln!("pushed lazyimg index {pushed} for {}", report.name);
        println!("{pushed}");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct Inspection {
    name: String,
    source: String,
    digest: String,
    manifest: String,
    media_type: Option<String>,
    platform: String,
    layers: Vec<LayerInfo>,
    total_size: u64,
}

#[derive(Serialize)]
struct LayerInfo {
    digest: String,
    media_type: String,
    compression: String,
    size: u64,
    /// How a mount reads it: from a table of contents, a lazyimg index, or whole.
    lazy: &'static str,
}

pub(super) async fn inspect(
    ctx: &Context,
    args: InspectArgs,
) -> anyhow::Result<std::process::ExitCode> {
    let image = ctx.image(&args.reference)?;
    let registry = ctx.registry(&image, &args.registry)?;
    registry
        .authenticate(&image.source, RegistryOperation::Pull)
        .await?;
    let resolved = pull::resolve(&registry, &image, &ctx.platform(&args.registry)).await?;
    let manifest = &resolved.manifest;
    let platform = match resolved.platform.clone() {
        Some(platform) => platform,
        // A single-platform manifest says its platform only in the (small) config.
        None => {
            let mut config = Vec::new();
            let mut sink = ConfigSink(&mut config);
            let what = format!("config of {image}");
            registry
                .fetch_blob(
                    &image.source,
                    &manifest.config().sha256()?,
                    manifest.config().size(),
                    &mut sink,
                    &mut |_| {},
                )
                .await?;
            pull::check_descriptor(manifest.config(), &config, &what)?;
            image::config_platform(&image::parse_config(&config, &what)?)
        }
    };
    let sources = IndexSources::for_image(&ctx.config, &ctx.auth_files, &image, Vec::new())?;
    let indexed =
        match index_artifact::find(&registry, &image, &resolved.manifest_digest, &sources).await {
            Ok(found) => found
                .map(|found| index_artifact::indexed_layers(&found.artifact))
                .unwrap_or_default(),
            Err(e) => {
                tracing::warn!("cannot look for a lazyimg index: {e}");
                Vec::new()
            }
        };
    let inspection = Inspection {
        name: image.to_string(),
        source: image.source.whole(),
        digest: resolved.digest.to_string(),
        manifest: resolved.manifest_digest.to_string(),
        media_type: manifest.media_type().as_ref().map(|m| m.to_string()),
        platform: image::platform_name(&platform),
        total_size: manifest.layers().iter().map(|l| l.size()).sum(),
        layers: manifest
            .layers()
            .iter()
            .map(|l| LayerInfo {
                digest: l.digest().to_string(),
                media_type: l.media_type().to_string(),
                compression: LayerFormat::of(l).to_string(),
                size: l.size(),
                lazy: lazy_source(l, &indexed),
            })
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inspection)?);
    } else {
        print_inspection(&inspection);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn print_inspection(i: &Inspection) {
    println!("Name:       {}", i.name);
    if i.source != i.name {
        println!("Fetched as: {}", i.source);
    }
    println!("Digest:     {}", i.digest);
    if i.manifest != i.digest {
        println!("Manifest:   {}", i.manifest);
    }
    println!(
        "Media type: {}",
        i.media_type.as_deref().unwrap_or("(not given)")
    );
    println!("Platform:   {}", i.platform);
    println!(
        "Layers:     {} ({})",
        i.layers.len(),
        ByteSize::b(i.total_size).display().iec()
    );
    // Numbered from 0 = bottom, as `ls -l` and `--json` number layers.
    for (n, layer) in i.layers.iter().enumerate() {
        println!(
            "  {:>3}  {}  {:<14} {:>10}  {}",
            n,
            layer.digest,
            layer.compression,
            ByteSize::b(layer.size).display().iec().to_string(),
            layer.lazy
        );
    }
}

/// How a mount will read `layer`, given the layers the image's lazyimg index covers.
fn lazy_source(layer: &Descriptor, indexed: &[String]) -> &'static str {
    if indexed.contains(&layer.digest().to_string()) {
        return "lazy: lazyimg index";
    }
    match LayerFormat::of(layer) {
        LayerFormat::Estargz => "lazy: eStargz table of contents",
        LayerFormat::ZstdChunked => "lazy: zstd:chunked table of contents",
        LayerFormat::Gzip | LayerFormat::Tar => {
            "fetched whole (`lazyimg index --push` makes it lazy)"
        }
        LayerFormat::Zstd => "fetched whole (plain zstd is one frame: not seekable)",
        LayerFormat::Unknown(_) => "not a layer lazyimg can read",
    }
}

/// Collects a small blob in memory; used only for image configs.
struct ConfigSink<'a>(&'a mut Vec<u8>);

impl crate::store::BlobSink for ConfigSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> crate::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn restart(&mut self) -> crate::Result<()> {
        self.0.clear();
        Ok(())
    }

    fn written(&self) -> u64 {
        self.0.len() as u64
    }
}
