//! `lazyimg cache ls | verify | prune`, each with `--json` for scripts.

use std::process::ExitCode;

use bytesize::ByteSize;
use clap::{Args, Subcommand};

use super::Context;
use crate::store::DAEMON_LOG_MAX_AGE;

#[derive(Subcommand, Debug)]
pub(super) enum CacheCommand {
    /// List cached images and blobs, least recently used blobs first.
    #[command(after_help = "Examples:\n  lazyimg cache ls\n  lazyimg cache ls --json")]
    Ls(LsArgs),
    /// Re-hash every cached blob; corrupt ones are removed. Exits 1 if any were.
    #[command(after_help = "Examples:\n  lazyimg cache verify\n  lazyimg cache verify --json")]
    Verify(VerifyArgs),
    /// Evict least recently used blobs until the cache fits the size cap, and
    /// remove mount daemons' logs last written over 7 days ago by daemons no
    /// longer running.
    #[command(
        after_help = "Examples:\n  lazyimg cache prune\n  lazyimg cache prune --max-size 20GiB --json\n  \
        lazyimg cache prune --max-size 0     # empty the cache"
    )]
    Prune(PruneArgs),
}

#[derive(Args, Debug)]
pub(super) struct LsArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(super) struct VerifyArgs {
    /// Print the result as one JSON object on stdout: `verified` (blobs
    /// re-hashed), `corrupt` (those removed: `digest`, `size` in bytes).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(super) struct PruneArgs {
    /// Size to shrink to (default: the configured cache_max_size), e.g. 20GiB.
    #[arg(long, value_name = "SIZE")]
    max_size: Option<ByteSize>,
    /// Print the result as one JSON object on stdout: `blobs` (`removed`,
    /// `freed`, `remaining`, `derived_removed`) and `daemon_logs` (`removed`,
    /// `freed`), sizes in bytes.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(ctx: &Context, command: CacheCommand) -> anyhow::Result<ExitCode> {
    let store = ctx.open_store()?;
    let human = |n: u64| ByteSize::b(n).display().iec().to_string();
    match command {
        CacheCommand::Ls(args) => {
            let images = store.image_records()?;
            let blobs = store.list()?;
            let total: u64 = blobs.iter().map(|b| b.size).sum();
            if args.json {
                let listing = serde_json::json!({
                    "cache_dir": store.root(),
                    "images": images,
                    "blobs": blobs,
                    "total_size": total,
                    "max_size": store.max_size(),
                });
                println!("{}", serde_json::to_string_pretty(&listing)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "cache {}: {} in {} blobs (cap {})",
                store.root().display(),
                human(total),
                blobs.len(),
                human(store.max_size())
            );
            for image in &images {
                println!(
                    "image  {}  {}  {}",
                    image.name, image.platform, image.digest
                );
            }
            for blob in &blobs {
                println!("blob   {}  {:>10}", blob.digest, human(blob.size));
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Verify(args) => {
            let mut count = 0;
            let mut corrupt = Vec::new();
            store.verify(|blob, ok| {
                count += 1;
                if !ok {
                    // Said at once: a verify of a large cache takes minutes.
                    if !args.json {
                        eprintln!("corrupt: {} ({}), removed", blob.digest, human(blob.size));
                    }
                    corrupt.push(serde_json::json!({"digest": blob.digest, "size": blob.size}));
                }
            })?;
            if args.json {
                let result = serde_json::json!({
                    "cache_dir": store.root(),
                    "verified": count,
                    "corrupt": corrupt,
                });
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                eprintln!("{count} blobs verified, {} corrupt", corrupt.len());
            }
            Ok(if corrupt.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        CacheCommand::Prune(args) => {
            let max = args.max_size.map_or(store.max_size(), |s| s.as_u64());
            let report = store.prune(max, &[])?;
            let logs = store.prune_logs(DAEMON_LOG_MAX_AGE)?;
            if args.json {
                let result = serde_json::json!({
                    "cache_dir": store.root(),
                    "max_size": max,
                    "blobs": report,
                    "daemon_logs": logs,
                });
                println!("{}", serde_json::to_string_pretty(&result)?);
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "removed {} blobs ({}); {} remain; removed {} derived files of removed blobs \
                 and {} old daemon logs ({})",
                report.removed,
                human(report.freed),
                human(report.remaining),
                report.derived_removed,
                logs.removed,
                human(logs.freed)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
