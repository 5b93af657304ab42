//! `lazyimg stats MNT`: a running mount's transfer counters.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use bytesize::ByteSize;
use clap::Args;

use crate::fuse::STATS_XATTR;
use crate::rootfs::StatsReport;

#[derive(Args, Debug)]
pub(super) struct StatsArgs {
    /// Where a lazyimg image is mounted.
    mountpoint: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let report = read_stats(&args.mountpoint)?;
    // A layer that failed its whole-layer check served bytes its digest does
    // not vouch for: scripts checking a mount must see that as a failure.
    let verdict = if report.bad_layers > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(verdict);
    }
    let latency = &report.fetch_latency_ms;
    println!(
        "fetched from registry  {} in {} requests ({} chunks)",
        ByteSize(report.bytes_fetched),
        report.requests,
        report.chunks_fetched
    );
    println!("served to readers      {}", ByteSize(report.bytes_served));
    println!("chunks from cache      {}", report.cache_hits);
    println!("chunks from shared     {}", report.shared_cache_hits);
    println!("verification failures  {}", report.verification_failures);
    println!("fetch failures         {}", report.fetch_failures);
    println!("whole-blob fallbacks   {}", report.whole_blob_fallbacks);
    println!("layers failing check   {}", report.bad_layers);
    println!(
        "fetch latency          p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latency.p50, latency.p90, latency.p99, latency.max
    );
    if report.bad_layers > 0 {
        eprintln!(
            "lazyimg: {} layer(s) of this mount failed the whole-layer check: their index does not \
             match their bytes (the mount log names them)\n  hint: remount; the verified layer is read whole",
            report.bad_layers
        );
    }
    Ok(verdict)
}

/// Asks the mount's daemon through an attribute of the mount's root.
fn read_stats(mountpoint: &std::path::Path) -> anyhow::Result<StatsReport> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())
        .context("the mount point contains a NUL byte")?;
    let name = CString::new(STATS_XATTR).expect("constant has no NUL");
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let len = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if len < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENODATA) {
            bail!(
                "{} is not a lazyimg mount (or one that fetches nothing)",
                mountpoint.display()
            );
        }
        return Err(err).with_context(|| format!("cannot ask {}", mountpoint.display()));
    }
    buf.truncate(len as usize);
    serde_json::from_slice(&buf).context("the mount answered with unreadable statistics")
}
