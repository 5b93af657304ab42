//! Canonical listing of a directory tree: the oracle format used to compare
//! a lazily mounted image with an independent unpack (umoci) of it.
//!
//! One line per path below `root` (the root itself is not listed), sorted by
//! path bytes:
//!
//! ```text
//! "PATH" TYPE mode=MMMM uid=U gid=G [size=N sha256=HEX] [target="T"] [dev=MAJ:MIN] [mtime=S] [hardlink="P"] [xattr.NAME=HEX]...
//! ```
//!
//! * PATH, T, P: Rust `{:?}` quoting of the relative path / symlink target /
//!   hardlink group (escapes `"`, `\` and control characters; UTF-8 stays readable).
//! * TYPE: `dir`, `file`, `symlink`, `char`, `block`, `fifo`, `socket`.
//! * mode: 4 octal digits, permission bits incl. setuid/setgid/sticky.
//! * size + sha256: regular files only (of the bytes actually read; if
//!   `st_size` disagrees, ` stat_size=N` follows). target: symlinks. dev: char/block.
//! * mtime (seconds): every type except directories (unpacking a directory's
//!   children changes its mtime, so it is not comparable).
//! * hardlink: only when 2+ listed paths share one inode (same st_dev and
//!   st_ino); names the smallest such path, so trees compare by structure.
//! * xattr.NAME=HEX: every extended attribute (`getfattr -m -`), sorted by name;
//!   an empty value prints as `xattr.NAME=`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Canonical listing of `root` (see the module docs for the line format).
/// Needs `getfattr` (Debian package `attr`); returns an error if it is missing.
pub fn listing(root: &Path) -> Result<Vec<String>, String> {
    let root =
        fs::canonicalize(root).map_err(|e| format!("canonicalize {}: {e}", root.display()))?;
    let mut entries: Vec<(Vec<u8>, fs::Metadata)> = Vec::new();
    walk(&root, &mut Vec::new(), &mut entries)?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let xattrs = read_xattrs(&root)?;

    let mut groups: HashMap<(u64, u64), (Vec<u8>, usize)> = HashMap::new();
    for (p, m) in &entries {
        if !m.is_dir() {
            let g = groups
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| (p.clone(), 0));
            g.1 += 1; // entries are sorted, so the first path seen is the smallest
        }
    }

    let mut out = Vec::with_capacity(entries.len());
    for (p, m) in &entries {
        let ft = m.file_type();
        let ty = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else {
            "unknown"
        };
        let mut line = format!(
            "{} {ty} mode={:04o} uid={} gid={}",
            quote(p),
            m.mode() & 0o7777,
            m.uid(),
            m.gid()
        );
        let full = root.join(std::ffi::OsStr::from_bytes(p));
        if ft.is_file() {
            let data = fs::read(&full).map_err(|e| format!("read {}: {e}", full.display()))?;
            line += &format!(
                " size={} sha256={}",
                data.len(),
                hex::encode(Sha256::digest(&data))
            );
            if data.len() as u64 != m.size() {
                line += &format!(" stat_size={}", m.size());
            }
        }
        if ft.is_symlink() {
            let t =
                fs::read_link(&full).map_err(|e| format!("readlink {}: {e}", full.display()))?;
            line += &format!(" target={}", quote(t.as_os_str().as_bytes()));
        }
        if ft.is_char_device() || ft.is_block_device() {
            let (maj, min) = dev_major_minor(m.rdev());
            line += &format!(" dev={maj}:{min}");
        }
        if !ft.is_dir() {
            line += &format!(" mtime={}", m.mtime());
            let (first, n) = &groups[&(m.dev(), m.ino())];
            if *n > 1 {
                line += &format!(" hardlink={}", quote(first));
            }
        }
        if let Some(xs) = xattrs.get(p) {
            for (name, val) in xs {
                line += &format!(" xattr.{}={}", String::from_utf8_lossy(name), val);
            }
        }
        out.push(line);
    }
    Ok(out)
}

/// Lines only in `a` (prefixed `-`) or only in `b` (prefixed `+`), as a
/// multiset difference, sorted by line (so a changed path shows `-` then `+`).
pub fn diff_listings(a: &[String], b: &[String]) -> Vec<String> {
    let mut count: BTreeMap<&str, i64> = BTreeMap::new();
    for l in a {
        *count.entry(l).or_default() += 1;
    }
    for l in b {
        *count.entry(l).or_default() -= 1;
    }
    let mut out = Vec::new();
    for (l, n) in count {
        let sign = if n > 0 { '-' } else { '+' };
        for _ in 0..n.abs() {
            out.push(format!("{sign}{l}"));
        }
    }
    out
}

/// Glibc's `major()`/`minor()` of an `st_rdev`.
pub fn dev_major_minor(rdev: u64) -> (u64, u64) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major, minor)
}

fn quote(p: &[u8]) -> String {
    match std::str::from_utf8(p) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!(
            "{:?}<non-utf8:{}>",
            String::from_utf8_lossy(p),
            hex::encode(p)
        ),
    }
}

fn walk(
    dir: &Path,
    rel: &mut Vec<u8>,
    out: &mut Vec<(Vec<u8>, fs::Metadata)>,
) -> Result<(), String> {
    let rd = fs::read_dir(dir).map_err(|e| format!("read_dir {}: {e}", dir.display()))?;
    for ent in rd {
        let ent = ent.map_err(|e| format!("read_dir {}: {e}", dir.display()))?;
        let path = ent.path();
        let m =
            fs::symlink_metadata(&path).map_err(|e| format!("lstat {}: {e}", path.display()))?;
        let len = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(ent.file_name().as_bytes());
        let is_dir = m.is_dir();
        out.push((rel.clone(), m));
        if is_dir {
            walk(&path, rel, out)?;
        }
        rel.truncate(len);
    }
    Ok(())
}

/// xattrs of every path below `root`, via one `getfattr -R` run.
/// Map: relative path -> sorted (name, hex value).
type XattrMap = BTreeMap<Vec<u8>, Vec<(Vec<u8>, String)>>;

fn read_xattrs(root: &Path) -> Result<XattrMap, String> {
    let out = Command::new("getfattr")
        .args([
            "-R",
            "-P",
            "-h",
            "-d",
            "-m",
            "-",
            "-e",
            "hex",
            "--absolute-names",
        ])
        .arg(root)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| {
            format!(
                "cannot run getfattr ({e}): install the `attr` package (apt-get install -y attr)"
            )
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("getfattr failed ({}): {stderr}", out.status));
    }
    let mut prefix = root.as_os_str().as_bytes().to_vec();
    prefix.push(b'/');
    let mut map = XattrMap::new();
    let mut cur: Option<Vec<u8>> = None;
    for line in out.stdout.split(|&c| c == b'\n') {
        if let Some(p) = line.strip_prefix(b"# file: ") {
            let p = unescape(p);
            cur = p.strip_prefix(&prefix[..]).map(|rel| rel.to_vec()); // None: the root itself
        } else if !line.is_empty() {
            let Some(path) = &cur else { continue };
            let (name, val) = match line.iter().position(|&c| c == b'=') {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, &b""[..]),
            };
            let val = String::from_utf8_lossy(val);
            let val = val.trim_matches('"').trim_start_matches("0x").to_string();
            map.entry(path.clone())
                .or_default()
                .push((unescape(name), val));
        }
    }
    for v in map.values_mut() {
        v.sort();
    }
    Ok(map)
}

/// Undo getfattr's `\ooo` octal escapes.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(((s[i + 1] - b'0') << 6) | ((s[i + 2] - b'0') << 3) | (s[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// Convenience: `Path` for a listing-relative byte path.
pub fn rel_path(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(std::ffi::OsString::from_vec(rel.to_vec()))
}
