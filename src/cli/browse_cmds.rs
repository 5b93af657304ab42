//! `lazyimg ls`, `cat`, `find` and `diff`: an image's tree read without a
//! mount (no FUSE, no root). Listings come from metadata alone; `cat` fetches
//! only the files it prints, verified as a mount would; `diff` fetches only
//! files whose bytes nothing else tells apart.

use std::ffi::{CString, OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::json;

use super::mount_cmds::prepare;
use super::{Context, RegistryArgs};
use crate::lazy::index_artifact::IndexStore;
use crate::mount;
use crate::pull::PullPolicy;
use crate::rootfs::{RootFs, same_content};
use crate::tree::{
    Attribute, Change, ChangeKind, FileType, FindQuery, Ino, Inode, InodeKind, ResolveError,
    SizeTest, Tree,
};

/// Bytes `cat` asks the content reader for at once.
const CAT_PIECE: usize = 1 << 20;

#[derive(Args, Debug)]
pub(super) struct LsArgs {
    /// Image reference.
    reference: String,
    /// Path inside the image (default: its root). Symlinks resolve inside the image.
    path: Option<OsString>,
    /// Long format: type and mode, links, owner, size, mtime, symlink target.
    #[arg(short, long)]
    long: bool,
    /// Everything below PATH, not just its entries.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// One JSON object per line: path, type, mode, uid, gid, size, mtime, nlink,
    /// ino, target, dev, xattrs (hex).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(super) registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub(super) struct CatArgs {
    /// Image reference.
    reference: String,
    /// Files inside the image; symlinks resolve inside the image, never on the host.
    #[arg(required = true)]
    paths: Vec<OsString>,
    #[command(flatten)]
    pub(super) registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub(super) struct FindArgs {
    /// Image reference.
    reference: String,
    /// Where to start inside the image (default: its root).
    path: Option<OsString>,
    /// Only this type: f d l c b p.
    #[arg(long = "type", value_name = "TYPE")]
    file_type: Option<FileType>,
    /// Only names matching this shell pattern (like find -name).
    #[arg(long, value_name = "GLOB")]
    name: Option<OsString>,
    /// Only sizes [+-]N[ckMG], rounded up to whole units as find -size does.
    #[arg(long, value_name = "[+-]N[ckMG]", allow_hyphen_values = true)]
    size: Option<SizeTest>,
    /// Only entries modified after DATE (YYYY-MM-DD or RFC 3339, UTC).
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    newer: Option<crate::layer::Timestamp>,
    /// Only entries carrying this extended attribute (e.g. security.capability).
    #[arg(long, value_name = "NAME")]
    xattr: Option<String>,
    /// Only setuid or setgid entries.
    #[arg(long)]
    setuid: bool,
    /// One JSON object per line, as `lazyimg ls --json` prints them.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(super) registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub(super) struct DiffArgs {
    /// The image compared from.
    reference_a: String,
    /// The image compared to.
    reference_b: String,
    /// Where to compare inside both images (default: their roots).
    path: Option<OsString>,
    /// One JSON object per line: status, path, changes, content_unknown,
    /// mtime, and the entry in each image (`a`, `b`) as `ls --json` prints it.
    #[arg(long)]
    json: bool,
    /// Fetch no file content: files that only reading could tell apart are
    /// reported as maybe changed (`?`).
    #[arg(long)]
    no_fetch: bool,
    #[command(flatten)]
    pub(super) registry: RegistryArgs,
}

pub(super) async fn ls(ctx: &Context, args: LsArgs) -> anyhow::Result<ExitCode> {
    let rootfs = open(ctx, &args.reference, &args.registry).await?;
    let tree = &rootfs.tree;
    let path = args.path.unwrap_or_default();
    // As ls(1): a symlink named on the command line is shown, not followed, in
    // long format.
    let start = tree.resolve_in_image(&path, !args.long)?;
    let shown = display_root(&path);
    let entries: Vec<(OsString, Ino)> = match tree.children(start) {
        _ if args.recursive => tree.walk(start, &shown).collect(),
        Some(children) => children
            .iter()
            .map(|entry| {
                let mut path = shown.as_bytes().to_vec();
                if !path.ends_with(b"/") {
                    path.push(b'/');
                }
                path.extend_from_slice(entry.name.as_bytes());
                (OsStr::from_bytes(&path).to_os_string(), entry.ino)
            })
            .collect(),
        None => vec![(shown, start)],
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (path, ino) in entries {
        print_entry(&mut out, tree, &path, ino, args.long, args.json)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn cat(ctx: &Context, args: CatArgs) -> anyhow::Result<ExitCode> {
    let rootfs = open(ctx, &args.reference, &args.registry).await?;
    let mut out = std::io::stdout().lock();
    for path in &args.paths {
        let ino = rootfs.tree.resolve_in_image(path, true)?;
        let inode = rootfs.tree.attr(ino).expect("resolved inodes exist");
        let InodeKind::Regular(location) = &inode.kind else {
            anyhow::bail!("{}: not a regular file in the image", path.display());
        };
        let mut offset = 0;
        while offset < location.size {
            let len = CAT_PIECE.min((location.size - offset) as usize);
            // Reads may wait on the network through this runtime.
            let bytes = tokio::task::block_in_place(|| rootfs.content.read(location, offset, len))?;
            out.write_all(&bytes)?;
            offset += bytes.len() as u64;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn find(ctx: &Context, args: FindArgs) -> anyhow::Result<ExitCode> {
    let query = FindQuery {
        file_type: args.file_type,
        name: args
            .name
            .as_ref()
            .map(|n| CString::new(n.as_bytes()))
            .transpose()
            .context("--name holds a NUL byte")?,
        size: args.size,
        newer: args.newer,
        xattr: args.xattr.clone(),
        setuid: args.setuid,
    };
    let rootfs = open(ctx, &args.reference, &args.registry).await?;
    let tree = &rootfs.tree;
    let path = args.path.unwrap_or_default();
    let start = tree.resolve_in_image(&path, true)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (path, ino) in tree.walk(start, &display_root(&path)) {
        let inode = tree.attr(ino).expect("walked inodes exist");
        let name = path.as_bytes().rsplit(|&b| b == b'/').next().unwrap_or(b"");
        if query.matches(OsStr::from_bytes(name), inode) {
            print_entry(&mut out, tree, &path, ino, false, args.json)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn diff(ctx: &Context, args: DiffArgs) -> anyhow::Result<ExitCode> {
    let a = open(ctx, &args.reference_a, &args.registry).await?;
    let b = open(ctx, &args.reference_b, &args.registry).await?;
    let path = args.path.unwrap_or_default();
    // A path in one image only is all added (or all removed), as diff -r
    // reports a directory present on one side.
    let start = |tree: &crate::tree::Tree, reference: &str| match tree.resolve_in_image(&path, true)
    {
        Ok(ino) => Ok(Some(ino)),
        Err(ResolveError::NotFound(_)) => Ok(None),
        Err(e) => Err(anyhow::Error::from(e).context(format!("in {reference}"))),
    };
    let a_start = start(&a.tree, &args.reference_a)?;
    let b_start = start(&b.tree, &args.reference_b)?;
    if a_start.is_none() && b_start.is_none() {
        bail!("{path:?}: no such file or directory in either image");
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // Comparing content may wait on the network through this runtime.
    tokio::task::block_in_place(|| {
        a.tree.diff(
            a_start,
            &b.tree,
            b_start,
            &display_root(&path),
            |x, y| {
                Ok(same_content(
                    &*a.content,
                    x,
                    &*b.content,
                    y,
                    !args.no_fetch,
                )?)
            },
            |change| {
                let line = match args.json {
                    true => change_json(&change, &a.tree, &b.tree).to_string(),
                    false => change_line(&change),
                };
                writeln!(out, "{line}").map_err(anyhow::Error::from)
            },
        )
    })?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// How `diff` reports one change.
struct Status {
    /// `A` added, `D` removed, `M` changed, `?` perhaps changed in content
    /// only (not fetched), `T` only the mtime changed.
    letter: char,
    /// The attributes that differ, mtime aside.
    changes: Vec<&'static str>,
    /// The content may differ: only reading it could tell.
    content_unknown: bool,
    /// The mtime differs too (rebuilds change it on their own).
    mtime: bool,
}

impl Status {
    fn of(change: &Change) -> Status {
        let (letter, differ, content_unknown) = match &change.kind {
            ChangeKind::Added(_) => ('A', &[][..], false),
            ChangeKind::Removed(_) => ('D', &[][..], false),
            ChangeKind::Changed {
                differ,
                content_unknown,
                ..
            } => ('M', &differ[..], *content_unknown),
        };
        let changes: Vec<&str> = differ
            .iter()
            .filter(|&&a| a != Attribute::Mtime)
            .map(|a| a.name())
            .collect();
        let letter = match (letter, changes.is_empty(), content_unknown) {
            ('M', true, true) => '?',
            ('M', true, false) => 'T',
            _ => letter,
        };
        Status {
            letter,
            changes,
            content_unknown,
            mtime: differ.contains(&Attribute::Mtime),
        }
    }
}

/// `A PATH`, `D PATH`, `M PATH (mode, content; mtime)`, `? PATH (content?)`,
/// `T PATH (mtime)`: the changes, then `content?`, then mtime after a `;`.
fn change_line(change: &Change) -> String {
    let status = Status::of(change);
    let mut names = status.changes.clone();
    if status.content_unknown {
        names.push("content?");
    }
    let mut named = names.join(", ");
    if status.mtime {
        named.push_str(if named.is_empty() { "mtime" } else { "; mtime" });
    }
    let path = change.path.to_string_lossy();
    match named.is_empty() {
        true => format!("{} {path}", status.letter),
        false => format!("{} {path} ({named})", status.letter),
    }
}

/// One change as `diff --json` prints it (the README documents the schema).
fn change_json(change: &Change, a: &Tree, b: &Tree) -> serde_json::Value {
    let status = Status::of(change);
    let mut value = json!({
        "status": status.letter.to_string(),
        "changes": status.changes,
        "content_unknown": status.content_unknown,
        "mtime": status.mtime,
    });
    match change.path.to_str() {
        Some(text) => value["path"] = json!(text),
        None => value["path_hex"] = json!(hex::encode(change.path.as_bytes())),
    }
    let (a_ino, b_ino) = match change.kind {
        ChangeKind::Added(ino) => (None, Some(ino)),
        ChangeKind::Removed(ino) => (Some(ino), None),
        ChangeKind::Changed { a, b, .. } => (Some(a), Some(b)),
    };
    for (side, tree, ino) in [("a", a, a_ino), ("b", b, b_ino)] {
        if let Some(ino) = ino {
            let inode = tree.attr(ino).expect("changed inodes exist");
            value[side] = entry_json(&change.path, ino, inode);
        }
    }
    value
}

/// The image `reference`, approved, prepared (metadata only) and opened.
async fn open(
    ctx: &Context,
    reference: &str,
    registry_args: &RegistryArgs,
) -> anyhow::Result<RootFs> {
    let image = ctx.image(reference)?;
    let credentials = ctx.credentials(&image, registry_args)?;
    let registry = Arc::new(ctx.registry_with(&image, credentials.as_ref())?);
    let (store, manifest) =
        prepare(ctx, &image, registry_args, &registry, PullPolicy::Missing).await?;
    let index_store = IndexStore::for_image(&ctx.config, &ctx.auth_files, &image)?;
    mount::open_reading(
        &ctx.config,
        &store,
        &manifest,
        &image,
        registry,
        index_store,
    )
}

/// How a starting path is shown: absolute, as inside the image.
fn display_root(path: &OsStr) -> OsString {
    let bytes = path.as_bytes();
    let start = bytes.iter().take_while(|&&b| b == b'/').count();
    let end = bytes.len()
        - bytes[start..]
            .iter()
            .rev()
            .take_while(|&&b| b == b'/')
            .count();
    let mut shown = b"/".to_vec();
    shown.extend_from_slice(&bytes[start..end]);
    OsString::from(std::ffi::OsStr::from_bytes(&shown))
}

fn print_entry(
    out: &mut impl Write,
    tree: &Tree,
    path: &OsStr,
    ino: Ino,
    long: bool,
    json: bool,
) -> std::io::Result<()> {
    let inode = tree.attr(ino).expect("listed inodes exist");
    if json {
        writeln!(out, "{}", entry_json(path, ino, inode))
    } else if long {
        writeln!(out, "{}", long_line(path, inode))
    } else {
        out.write_all(path.as_bytes())?;
        out.write_all(b"\n")
    }
}

/// One entry as `--json` prints it. `path` is a string when it is UTF-8, else
/// `path_hex` holds its bytes (names are bytes in tar).
fn entry_json(path: &OsStr, ino: Ino, inode: &Inode) -> serde_json::Value {
    let mut entry = json!({
        "type": FileType::of(inode).name(),
        "mode": inode.mode,
        "uid": inode.uid,
        "gid": inode.gid,
        "size": inode.size(),
        "mtime": inode.mtime.secs,
        "nlink": inode.nlink,
        "ino": ino,
        "layer": inode.layer,
        "xattrs": inode.xattrs.iter()
            .map(|(name, value)| (name.clone(), json!(hex::encode(value))))
            .collect::<serde_json::Map<_, _>>(),
    });
    match path.to_str() {
        Some(text) => entry["path"] = json!(text),
        None => entry["path_hex"] = json!(hex::encode(path.as_bytes())),
    }
    match &inode.kind {
        InodeKind::Symlink(target) => {
            entry["target"] = json!(target.to_string_lossy());
        }
        InodeKind::CharDevice(dev) | InodeKind::BlockDevice(dev) => {
            entry["dev"] = json!([dev.major, dev.minor]);
        }
        _ => {}
    }
    entry
}

/// `ls -l`'s columns: type and permissions, links, uid, gid, size, mtime (UTC),
/// the layer that last wrote the entry (0 = bottom, `-` for directories no
/// layer names), path, and ` -> target` for symlinks.
fn long_line(path: &OsStr, inode: &Inode) -> String {
    let letter = match FileType::of(inode) {
        FileType::Regular => '-',
        other => other.letter(),
    };
    let mtime = chrono::DateTime::from_timestamp(inode.mtime.secs, 0).map_or_else(
        || inode.mtime.secs.to_string(),
        |t| t.format("%Y-%m-%d %H:%M").to_string(),
    );
    let layer = inode.layer.map_or("-".to_string(), |n| n.to_string());
    let mut line = format!(
        "{letter}{} {:>3} {:>5} {:>5} {:>10} {mtime} {layer:>3} {}",
        permissions(inode.mode),
        inode.nlink,
        inode.uid,
        inode.gid,
        inode.size(),
        path.to_string_lossy()
    );
    if let InodeKind::Symlink(target) = &inode.kind {
        line.push_str(" -> ");
        line.push_str(&target.to_string_lossy());
    }
    line
}

/// `rwxr-xr-x` with s/S and t/T as ls(1) shows setuid, setgid and sticky.
fn permissions(mode: u32) -> String {
    let triplet = |shift: u32, special: u32, set: char| {
        let bits = mode >> shift;
        let exec = match (bits & 1 != 0, mode & special != 0) {
            (true, true) => set,
            (false, true) => set.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        };
        format!(
            "{}{}{exec}",
            if bits & 4 != 0 { 'r' } else { '-' },
            if bits & 2 != 0 { 'w' } else { '-' }
        )
    };
    triplet(6, 0o4000, 's') + &triplet(3, 0o2000, 's') + &triplet(0, 0o1000, 't')
}

/// `YYYY-MM-DD` (midnight UTC) or an RFC 3339 time.
fn parse_date(text: &str) -> anyhow::Result<crate::layer::Timestamp> {
    let time = chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.to_utc())
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
        })
        .with_context(|| format!("{text:?} is no date: use YYYY-MM-DD or RFC 3339"))?;
    Ok(crate::layer::Timestamp {
        secs: time.timestamp(),
        nanos: time.timestamp_subsec_nanos(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_as_ls_shows_them() {
        assert_eq!(permissions(0o755), "rwxr-xr-x");
        assert_eq!(permissions(0o4755), "rwsr-xr-x");
        assert_eq!(permissions(0o2644), "rw-r-Sr--");
        assert_eq!(permissions(0o1777), "rwxrwxrwt");
    }

    #[test]
    fn dates_are_days_or_rfc_3339() {
        assert_eq!(parse_date("1970-01-02").unwrap().secs, 86_400);
        assert_eq!(parse_date("1970-01-01T00:01:00Z").unwrap().secs, 60);
        assert!(parse_date("yesterday").is_err());
    }

    #[test]
    fn changes_print_their_letter_and_names_mtime_last() {
        let changed = |differ: Vec<Attribute>, content_unknown| Change {
            path: OsString::from("/etc/x"),
            kind: ChangeKind::Changed {
                a: 2,
                b: 2,
                differ,
                content_unknown,
            },
        };
        let line = |change: Change| change_line(&change);
        use Attribute::{Content, Mode, Mtime};
        assert_eq!(
            line(changed(vec![Mode, Content, Mtime], false)),
            "M /etc/x (mode, content; mtime)"
        );
        assert_eq!(line(changed(vec![Mode], true)), "M /etc/x (mode, content?)");
        assert_eq!(
            line(changed(vec![Mtime], true)),
            "? /etc/x (content?; mtime)"
        );
        assert_eq!(line(changed(vec![Mtime], false)), "T /etc/x (mtime)");
        let added = Change {
            path: OsString::from("/new"),
            kind: ChangeKind::Added(3),
        };
        assert_eq!(line(added), "A /new");
    }

    #[test]
    fn starting_paths_show_as_absolute() {
        assert_eq!(display_root(OsStr::new("")), "/");
        assert_eq!(display_root(OsStr::new("etc/")), "/etc");
        assert_eq!(display_root(OsStr::new("/usr/bin")), "/usr/bin");
    }
}
