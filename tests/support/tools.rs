//! Wrappers around the external oracles: skopeo (push / inspect) and umoci (unpack).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Run `program args...`; `Ok(stdout)` on success, `Err` with the command line,
/// exit status and stderr otherwise.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// `skopeo inspect [extra...] IMAGE` parsed as JSON (use `--raw` in `extra`
/// for the raw manifest / index).
pub fn skopeo_inspect(image: &str, extra: &[&str]) -> Result<serde_json::Value, String> {
    let mut args = vec!["inspect"];
    args.extend_from_slice(extra);
    args.push(image);
    let out = run("skopeo", &args)?;
    serde_json::from_str(&out)
        .map_err(|e| format!("skopeo inspect output is not JSON ({e}): {out}"))
}

/// `oci:DIR:TAG` reference for skopeo.
pub fn oci_ref(layout_dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", layout_dir.display())
}

/// Options for [`push_layout`].
#[derive(Clone, Debug, Default)]
pub struct PushOpts {
    /// `--dest-creds USER:PASS`
    pub creds: Option<(String, String)>,
    /// `--dest-cert-dir DIR` (CA as `*.crt`, client cert/key as `*.cert`/`*.key`)
    pub cert_dir: Option<PathBuf>,
    /// `--dest-tls-verify=BOOL`; false also allows plain HTTP.
    pub tls_verify: bool,
    /// `--format v2s2`: convert to Docker schema 2 manifests (digests change;
    /// impossible for zstd layers, which Docker schema 2 cannot describe).
    pub format_v2s2: bool,
}

/// `skopeo copy --all oci:DIR:TAG docker://DEST` (DEST = `host:port/ns/name:tag`).
/// Adds `--preserve-digests` (when skopeo knows it and no format conversion is
/// asked for), so the pushed manifest keeps the builder's digest.
/// Runs with `--insecure-policy` so the host's policy.json does not matter.
pub fn push_layout(layout_dir: &Path, tag: &str, dest: &str, opts: PushOpts) -> Result<(), String> {
    let src = oci_ref(layout_dir, tag);
    let dst = format!("docker://{dest}");
    let creds = opts.creds.as_ref().map(|(u, p)| format!("{u}:{p}"));
    let cert_dir = opts.cert_dir.as_ref().map(|d| d.display().to_string());
    let tls = format!("--dest-tls-verify={}", opts.tls_verify);
    let mut args = vec![
        "--insecure-policy",
        "copy",
        "--all",
        "--quiet",
        tls.as_str(),
    ];
    if opts.format_v2s2 {
        args.extend(["--format", "v2s2"]);
    } else if supports_preserve_digests() {
        args.push("--preserve-digests");
    }
    if let Some(c) = &creds {
        args.extend(["--dest-creds", c.as_str()]);
    }
    if let Some(d) = &cert_dir {
        args.extend(["--dest-cert-dir", d.as_str()]);
    }
    args.extend([src.as_str(), dst.as_str()]);
    run("skopeo", &args).map(|_| ())
}

fn supports_preserve_digests() -> bool {
    static CACHE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CACHE.get_or_init(|| {
        Command::new("skopeo")
            .args(["copy", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("--preserve-digests"))
            .unwrap_or(false)
    })
}

/// `umoci unpack --image DIR:TAG OUT`; returns `OUT/rootfs`.
/// `out_dir` must not exist (an existing empty directory is removed first).
/// Adds `--rootless` when not running as root (ownership, devices and
/// `security.*` xattrs are then not reproduced faithfully).
///
/// umoci 0.4.7 cannot unpack zstd layers (`+zstd` media type): for zstd
/// images use another oracle (e.g. the same spec built with gzip).
pub fn unpack_with_umoci(layout_dir: &Path, tag: &str, out_dir: &Path) -> Result<PathBuf, String> {
    if out_dir.is_dir()
        && std::fs::read_dir(out_dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
    {
        std::fs::remove_dir(out_dir).map_err(|e| format!("rmdir {}: {e}", out_dir.display()))?;
    }
    let image = format!("{}:{tag}", layout_dir.display());
    let out = out_dir.display().to_string();
    let mut args = vec!["unpack"];
    if !is_root() {
        args.push("--rootless");
    }
    args.extend(["--image", image.as_str(), out.as_str()]);
    run("umoci", &args)?;
    Ok(out_dir.join("rootfs"))
}

/// Effective uid is 0 (read from /proc/self/status; no libc needed).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
