//! Layer inputs real tools write (issue 15), each run through every path
//! lazyimg reads a layer by, which must agree with each other and with Go's
//! archive/tar (umoci) and GNU tar where those two agree:
//!
//! - the whole-layer mount (no index: the layer is fetched and read whole);
//! - `index --push`, then a lazy mount through the pushed index;
//! - `pull` (which reads each layer whole, as the mount does);
//! - zstd:chunked, converted by skopeo (Go's archive/tar reads the tar, its
//!   table of contents is what lazyimg then reads), where the format holds
//!   the input.
//!
//! Inputs are built here: by GNU tar from files made on this machine, or
//! byte by byte where no tool writes them.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use support::estargz::build_estargz_layer;
use support::fake_registry::{FakeImage, FakeServer, Response};
use support::image::*;
use support::listing::{diff_listings, listing};
use support::testenv::{
    Lazyimg, Mounted, authed, build_layout_from_layers, nonce, testenv, unique_image,
};
use support::tools::unpack_with_umoci;
use support::zstd_chunked::convert_to_zstd_chunked;

const TAG: &str = "t";

/// One image made of `tars` (bottom first, gzip), in a layout and pushed.
struct Image {
    work: tempfile::TempDir,
    layout: PathBuf,
    reference: String,
}

impl Image {
    fn new(label: &str, tars: &[Vec<u8>]) -> Image {
        let work = tempfile::tempdir().unwrap();
        let layers: Vec<BuiltLayer> = (tars.iter())
            .map(|tar| BuiltLayer::from_tar(tar.clone(), Compression::Gzip, BTreeMap::new()))
            .collect();
        Self::from_layers(work, label, &layers)
    }

    fn from_layers(work: tempfile::TempDir, label: &str, layers: &[BuiltLayer]) -> Image {
        let layout = work.path().join("layout");
        build_layout_from_layers(&layout, &ImageSpec::new(vec![]), layers, TAG);
        let repo_tag = format!("hardening/{label}-{}:{TAG}", nonce());
        testenv().push_upstream(&layout, TAG, &repo_tag, false);
        let reference = format!("{}/{repo_tag}", testenv().upstream());
        Image {
            work,
            layout,
            reference,
        }
    }

    /// The whole-layer mount's listing, or lazyimg's error.
    fn whole_mount(&self) -> Result<Vec<String>, String> {
        mount_listing(&Lazyimg::new(testenv()), &self.reference)
    }

    /// `index --push`, then a lazy mount from an empty cache: its listing,
    /// or the error of whichever step failed.
    fn lazy_mount(&self) -> Result<Vec<String>, String> {
        let indexed = authed(
            &Lazyimg::new(testenv()),
            &["index", "--push", &self.reference],
        );
        if !indexed.success() {
            return Err(indexed.stderr());
        }
        let lazyimg = Lazyimg::new(testenv());
        let listed = mount_listing(&lazyimg, &self.reference)?;
        let stats = lazyimg
            .run(&[
                "stats",
                "--json",
                lazyimg.dir.path().join("mnt").to_str().unwrap(),
            ])
            .stdout();
        assert!(!stats.contains("\"whole_blob_fallbacks\":1"), "{stats}");
        Ok(listed)
    }

    fn pull(&self) -> Result<(), String> {
        let pulled = authed(&Lazyimg::new(testenv()), &["pull", &self.reference]);
        pulled
            .success()
            .then_some(())
            .ok_or_else(|| pulled.stderr())
    }

    /// The image converted to zstd:chunked by skopeo, mounted lazily.
    fn zstd_chunked_mount(&self) -> Result<Vec<String>, String> {
        let converted = self.work.path().join("zstd-chunked");
        convert_to_zstd_chunked(&self.layout, TAG, &converted)?;
        let repo_tag = format!("hardening/zstd-chunked-{}:{TAG}", nonce());
        testenv().push_upstream(&converted, TAG, &repo_tag, false);
        let reference = format!("{}/{repo_tag}", testenv().upstream());
        mount_listing(&Lazyimg::new(testenv()), &reference)
    }

    /// umoci's unpack (Go's archive/tar) of the gzip image.
    fn umoci(&self) -> Vec<String> {
        let bundle = self.work.path().join("umoci");
        let rootfs = unpack_with_umoci(&self.layout, TAG, &bundle).expect("umoci unpack");
        listing(&rootfs).unwrap()
    }

    /// Every path that can read the image agrees with `oracle`; `zstd`
    /// says whether the zstd:chunked copy is one of them.
    fn assert_every_path_lists(&self, oracle: &[String], zstd: bool) {
        let mut paths = vec![
            ("whole-layer mount", self.whole_mount()),
            ("lazy mount via index", self.lazy_mount()),
        ];
        if zstd {
            paths.push(("zstd:chunked mount", self.zstd_chunked_mount()));
        }
        for (path, listed) in paths {
            let listed = listed.unwrap_or_else(|e| panic!("{path} failed: {e}"));
            let diffs = diff_listings(oracle, &listed);
            assert!(diffs.is_empty(), "{path} differs:\n{}", diffs.join("\n"));
        }
        self.pull().expect("pull");
    }

    /// What each path said refusing the image; panics if one accepted it.
    fn refusals(&self) -> Vec<(&'static str, String)> {
        let outcomes = [
            ("whole-layer mount", self.whole_mount().map(drop)),
            ("index --push", self.lazy_mount().map(drop)),
            ("pull", self.pull()),
        ];
        (outcomes.into_iter())
            .map(|(path, outcome)| match outcome {
                Ok(()) => panic!("{path} accepted the image"),
                Err(e) => (path, e),
            })
            .collect()
    }

    /// Every path refuses the image, each saying `reason`.
    fn assert_every_path_refuses(&self, reason: &str) {
        for (path, error) in self.refusals() {
            assert!(error.contains(reason), "{path}: {error}");
        }
    }
}

/// Mounts `reference` under the sandbox and lists it; the mount is gone on return.
fn mount_listing(lazyimg: &Lazyimg, reference: &str) -> Result<Vec<String>, String> {
    let path = lazyimg.dir.path().join("mnt");
    std::fs::create_dir_all(&path).unwrap();
    let run = authed(lazyimg, &["mount", reference, path.to_str().unwrap()]);
    if !run.success() {
        return Err(run.stderr());
    }
    let mounted = Mounted { path };
    listing(&mounted.path)
}

/// Runs a shell script in `dir` (files for GNU tar to archive).
fn sh(dir: &Path, script: &str) {
    let status = Command::new("sh")
        .args(["-euc", script])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

/// GNU tar's archive of `names` in `dir`: blocking factor 1, so the archive
/// ends in two zero blocks as Go's does (skopeo's zstd:chunked needs that).
fn gnu_tar(dir: &Path, args: &[&str], names: &[&str]) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["-b", "1", "--numeric-owner", "-C"])
        .arg(dir)
        .args(args)
        .args(["-cf", "-"])
        .args(names)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// GNU tar's extraction of `tars` in order, listed.
fn gnu_tar_listing(tars: &[Vec<u8>]) -> Vec<String> {
    let root = tempfile::tempdir().unwrap();
    for tar in tars {
        let file = root.path().join(".layer.tar");
        std::fs::write(&file, tar).unwrap();
        let status = Command::new("tar")
            .args(["-xpf", ".layer.tar", "--numeric-owner", "--same-owner"])
            .args(["--xattrs", "--xattrs-include=*"])
            .current_dir(root.path())
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::remove_file(&file).unwrap();
    }
    listing(root.path()).unwrap()
}

/// Asserts two oracles agree, and returns one.
fn agreed(umoci: Vec<String>, gnu: Vec<String>) -> Vec<String> {
    let diffs = diff_listings(&umoci, &gnu);
    assert!(
        diffs.is_empty(),
        "umoci and GNU tar differ:\n{}",
        diffs.join("\n")
    );
    umoci
}

/// Kind 1: numeric header fields. GNU tar writes an mtime before 1970 and a
/// uid above 0o7777777 in base-256 (`--format=gnu`) or as PAX records
/// (`--format=pax`); both must read as umoci and GNU tar read them.
#[test]
fn numeric_fields_base256_and_pax_read_as_go_and_gnu_tar_do() {
    let files = tempfile::tempdir().unwrap();
    sh(
        files.path(),
        "mkdir d e; echo old > d/f; echo pax > e/g
         touch -d '1969-06-01 00:00:00 UTC' d/f e/g
         chown 3000000:1234 d/f d e/g; chown 1234:3000000 e",
    );
    let tars = [
        gnu_tar(files.path(), &["--format=gnu"], &["d"]),
        gnu_tar(files.path(), &["--format=pax"], &["e"]),
    ];
    // The GNU layer really holds base-256 fields (high bit of the first byte).
    assert_eq!(tars[0][512 + 136] & 0x80, 0x80, "mtime of d/f in base-256");
    let image = Image::new("numeric", &tars);
    let oracle = agreed(image.umoci(), gnu_tar_listing(&tars));
    assert!(
        oracle.iter().any(|l| l.contains("\"d/f\"")
            && l.contains("uid=3000000")
            && l.contains("mtime=-18489600")),
        "{oracle:#?}"
    );
    image.assert_every_path_lists(&oracle, true);
}

/// Kind 1: numeric fields left all NUL (some writers leave uid, gid and
/// mtime unset): Go reads 0, so umoci does, and so must every path.
#[test]
fn all_nul_numeric_fields_read_as_zero_as_go_does() {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    let old = header.as_old_mut();
    (old.uid, old.gid, old.mtime) = ([0; 8], [0; 8], [0; 12]);
    let mut builder = tar::Builder::new(Vec::new());
    header.set_size(2);
    builder.append_data(&mut header, "f", &b"f\n"[..]).unwrap();
    let tar = builder.into_inner().unwrap();
    let image = Image::new("all-nul", std::slice::from_ref(&tar));
    let oracle = image.umoci();
    assert!(
        oracle[0].starts_with("\"f\" file mode=0644 uid=0 gid=0") && oracle[0].contains("mtime=0"),
        "{oracle:?}"
    );
    image.assert_every_path_lists(&oracle, true);
}

/// A tar of `(typeflag, name, mode, data)` members written byte for byte
/// (the tar crate spells NUL as `0`), owned by 1234:1234.
fn typeflag_tar(members: &[(u8, &str, u32, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for &(flag, name, mode, data) in members {
        let mut header = tar::Header::new_ustar();
        header.set_path(name.trim_end_matches('/')).unwrap();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkflag = [flag];
        header.set_mode(mode);
        header.set_uid(1234);
        header.set_gid(1234);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Kind 2: an old-style regular entry (typeflag NUL) named `d/` is a
/// directory with its own mode, owner and mtime, for Go and GNU tar alike.
#[test]
fn nul_typeflag_with_a_trailing_slash_is_a_directory_everywhere() {
    let tar = typeflag_tar(&[
        (0, "d/", 0o750, b""),
        (0, "d/f", 0o640, b"old-style regular\n"),
    ]);
    let image = Image::new("typeflag-nul", std::slice::from_ref(&tar));
    let oracle = agreed(image.umoci(), gnu_tar_listing(std::slice::from_ref(&tar)));
    assert!(
        oracle[0].starts_with("\"d\" dir mode=0750 uid=1234"),
        "{oracle:?}"
    );
    image.assert_every_path_lists(&oracle, true);
}

/// Kind 2: `0` and `7` with a trailing slash are directories as GNU tar
/// reads them, `7` without one a regular file. umoci is no oracle here: it
/// refuses `7` ("unknown typeflag"), and skopeo's zstd:chunked cannot hold it.
#[test]
fn regular_and_contiguous_typeflags_read_as_gnu_tar_reads_them() {
    let tar = typeflag_tar(&[
        (b'0', "e/", 0o700, b""),
        (b'7', "c/", 0o705, b""),
        (b'7', "c/f", 0o600, b"contiguous\n"),
    ]);
    let image = Image::new("typeflag-0-7", std::slice::from_ref(&tar));
    let oracle = gnu_tar_listing(std::slice::from_ref(&tar));
    image.assert_every_path_lists(&oracle, false);
}

/// Kind 2: a typeflag lazyimg cannot represent (here a GNU volume label) is
/// refused on every path, naming the entry and the type, as umoci and
/// containers/storage refuse unknown types.
#[test]
fn unknown_typeflags_are_refused_on_every_path() {
    let tar = typeflag_tar(&[(b'V', "label", 0o644, b""), (b'0', "f", 0o644, b"")]);
    let image = Image::new("typeflag-unknown", &[tar]);
    image.assert_every_path_refuses("tar entry \"label\": unsupported entry type 0x56");
}

/// Kind 6: one rule for xattrs in every format: an empty value is no
/// attribute (Go's mergePAX skips it; POSIX pax: an empty record deletes the
/// keyword). PAX records through the tar paths and zstd:chunked, and an
/// eStargz TOC carrying the same empty value, against umoci.
#[test]
fn xattrs_with_empty_values_are_dropped_in_every_format() {
    let spec = LayerSpec::new(vec![
        dir("d").owner(1234, 1234).xattr("user.empty", ""),
        file("d/f", "f\n")
            .xattr("user.empty", "")
            .xattr("user.kept", "v"),
    ]);
    let image = Image::new("xattr-empty", &[build_layer(&spec).tar]);
    let oracle = image.umoci();
    assert!(
        oracle[1].ends_with(" xattr.user.kept=76") && !oracle.concat().contains("user.empty"),
        "{oracle:#?}"
    );
    image.assert_every_path_lists(&oracle, true);

    let estargz = build_estargz_layer(&spec, 1 << 16);
    let toc = String::from_utf8_lossy(&estargz.tar).into_owned();
    assert!(
        toc.contains("\"user.empty\": \"\""),
        "the TOC holds the empty value"
    );
    let image = Image::from_layers(tempfile::tempdir().unwrap(), "xattr-estargz", &[estargz]);
    let listed = mount_listing(&Lazyimg::new(testenv()), &image.reference).unwrap();
    let diffs = diff_listings(&oracle, &listed);
    assert!(
        diffs.is_empty(),
        "eStargz mount differs:\n{}",
        diffs.join("\n")
    );
}

/// What lazyimg's error output says went wrong: the error line, without
/// the hint or the mount daemon's log path.
fn error_line(stderr: &str) -> String {
    let line = (stderr.lines())
        .find_map(|line| line.split_once("error: ").map(|(_, error)| error))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"));
    line.split(" (log: ").next().unwrap().to_string()
}

/// Kind 8: `index --push` refuses, with the mount's own error, an image whose
/// tree cannot be merged: a hardlink to a path no layer holds, an entry with
/// an empty name (the root, as a regular file), a hardlink to a directory.
#[test]
fn index_refuses_what_the_mount_refuses_with_the_same_error() {
    let member = |flag: u8, name: &str, link: &str| {
        let mut header = tar::Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.as_old_mut().linkflag = [flag];
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_size(0);
        header.set_cksum();
        header
    };
    let tar = |members: &[tar::Header]| {
        let mut builder = tar::Builder::new(Vec::new());
        for header in members {
            builder.append(header, &[][..]).unwrap();
        }
        builder.into_inner().unwrap()
    };
    let cases = [
        (
            "dangling-hardlink",
            tar(&[member(b'0', "f", ""), member(b'1', "h", "missing")]),
            "hardlink \"h\" points to \"missing\", which does not exist",
        ),
        (
            "empty-name",
            tar(&[member(b'0', "", "")]),
            "the entry for the root directory is not a directory",
        ),
        (
            "hardlink-to-dir",
            tar(&[member(b'5', "d/", ""), member(b'1', "h", "d")]),
            "hardlink \"h\" points to directory \"d\"",
        ),
    ];
    for (label, tar, reason) in cases {
        let image = Image::new(label, &[tar]);
        let mount = error_line(&image.whole_mount().expect_err("the mount refuses"));
        assert!(mount.contains(reason), "{label}: {mount}");
        let index = authed(
            &Lazyimg::new(testenv()),
            &["index", "--push", &image.reference],
        );
        assert!(!index.success(), "{label}: index --push succeeded");
        assert_eq!(error_line(&index.stderr()), mount, "{label}");
        assert_eq!(error_line(&image.pull().expect_err("pull refuses")), mount);
    }
}

/// Kind 4: one decoding policy. A gzip layer followed by zero padding is
/// refused on every path, as Go's compress/gzip (umoci, Podman, containerd)
/// refuses it; so is other trailing garbage. Before, the index build skipped
/// the zeros and the lazy mount served what the whole-layer read refused.
#[test]
fn bytes_after_the_last_gzip_member_are_refused_on_every_path() {
    let tar = typeflag_tar(&[(b'0', "f", 0o644, b"f\n")]);
    for (label, tail) in [
        ("zero-padding", vec![0u8; 4096]),
        ("garbage", b"garbage".to_vec()),
    ] {
        let mut layer = BuiltLayer::from_tar(tar.clone(), Compression::Gzip, BTreeMap::new());
        layer.blob.extend(&tail);
        layer.digest = sha256_digest(&layer.blob);
        let image = Image::from_layers(tempfile::tempdir().unwrap(), label, &[layer]);
        let umoci = unpack_with_umoci(&image.layout, TAG, &image.work.path().join("umoci"));
        assert!(
            umoci
                .as_ref()
                .is_err_and(|e| e.contains("discard trailing archive bits")),
            "{label}: {umoci:?}"
        );
        let refusals = image.refusals();
        for (path, error) in refusals {
            let said = match path {
                "index --push" if tail[0] == 0 => "zero padding at offset",
                "index --push" => "corrupt gzip data",
                _ => "damaged after the end of the tar",
            };
            assert!(error.contains(said), "{label}: {path}: {error}");
        }
    }
}

/// Kind 3: names are bytes. Two files whose names differ only in bytes that
/// are not UTF-8, a symlink and a hardlink to them: the same bytes on every
/// path. The zstd:chunked TOC cannot carry them (Go's JSON writes U+FFFD for
/// both), so that layer is read whole rather than show one name for two.
#[test]
fn names_that_are_not_utf8_stay_bytes_on_every_path() {
    let files = tempfile::tempdir().unwrap();
    sh(
        files.path(),
        "mkdir d; e=$(printf 'caf\\351'); g=$(printf 'caf\\350')
         echo e > d/$e; echo g > d/$g; ln -s $e d/l; ln d/$g d/h
         chown -R 1234:1234 d",
    );
    let tar = gnu_tar(files.path(), &["--format=gnu"], &["d"]);
    let image = Image::new("names-bytes", std::slice::from_ref(&tar));
    let oracle = agreed(image.umoci(), gnu_tar_listing(std::slice::from_ref(&tar)));
    let raw = |hex: &str| {
        oracle
            .iter()
            .any(|l| l.contains(&format!("<non-utf8:{hex}>")))
    };
    assert!(raw("642f636166e8") && raw("642f636166e9"), "{oracle:#?}");
    image.assert_every_path_lists(&oracle, true);
}

/// Kind 7: registry errors name what is missing. A tag, a manifest digest,
/// a layer blob and the config blob missing from an image whose manifest
/// is there; a missing non-distributable layer says so.
#[test]
fn registry_errors_name_the_missing_tag_manifest_or_blob() {
    let env = testenv();
    let lazyimg = Lazyimg::new(env);
    let pull = |reference: &str| {
        let run = authed(&lazyimg, &["pull", reference]);
        assert!(!run.success(), "{reference}: pull succeeded");
        run.stderr()
    };
    let unique = |label: &str| unique_image(label, 1).layers.remove(0);

    let image = Image::new("missing", &[build_layer(&unique("tag")).tar]);
    let (repository, _) = image.reference.rsplit_once(':').unwrap();
    let err = pull(&format!("{repository}:no-such-tag"));
    assert!(
        err.contains(&format!("tag no-such-tag of {repository} not found")),
        "{err}"
    );
    assert!(err.contains("check the name and tag"), "{err}");
    let absent = format!("sha256:{}", "0".repeat(64));
    let err = pull(&format!("{repository}@{absent}"));
    assert!(
        err.contains(&format!("manifest {absent} of {repository} not found")),
        "{err}"
    );

    // A registry serving the manifest but not a blob it names: a fake, as
    // a real one cannot be made to lose a blob it still lists.
    let foreign = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    for (label, media_type) in [
        ("layer", None),
        ("config", None),
        ("foreign", Some(foreign)),
    ] {
        let mut layer = build_layer(&unique(label));
        if let Some(media_type) = media_type {
            layer.media_type = media_type.into();
        }
        let image = Arc::new(FakeImage::of(&layer));
        let gone = match label {
            "config" => image.config_digest.clone(),
            _ => image.layer_digest.clone(),
        };
        let served = Arc::clone(&image);
        let missing = gone.clone();
        let registry = FakeServer::start(move |request| {
            let unknown = format!(
                r#"{{"errors":[{{"code":"BLOB_UNKNOWN","message":"blob unknown to registry","detail":"{missing}"}}]}}"#
            );
            match served.answer(request) {
                _ if request.path.ends_with(&missing) => Response::Full(
                    404,
                    vec![("Content-Type".into(), "application/json".into())],
                    unknown.into_bytes(),
                ),
                Some(answer) => answer,
                None if request.path == "/v2/" => Response::Full(200, vec![], b"{}".to_vec()),
                None => Response::Full(200, vec![], served.layer.clone()),
            }
        });
        let config = format!(
            "[[registry]]\nprefix = {:?}\ninsecure = true\n",
            registry.addr
        );
        let lazyimg = Lazyimg::with_config(env, &config);
        let reference = format!("{}/ns/img:1", registry.addr);
        let run = lazyimg.run(&["pull", &reference]);
        assert!(!run.success(), "{label}: pull succeeded");
        let err = run.stderr();
        let expected = match label {
            "layer" => format!("layer 1/1 {gone} of {reference} not found in ns/img"),
            "config" => format!("config {gone} of {reference} not found in ns/img"),
            _ => format!(
                "layer 1/1 {gone} of {reference} is a non-distributable (foreign) layer, \
                 and {} does not hold it in ns/img",
                registry.addr
            ),
        };
        assert!(
            err.contains(&expected),
            "{label}: {err}\nexpected: {expected}"
        );
        assert!(!err.contains("check the name and tag"), "{label}: {err}");
        let mount = mount_listing(&Lazyimg::with_config(env, &config), &reference)
            .expect_err("the mount fails");
        assert!(
            mount.contains(&gone) && !mount.contains("check the name and tag"),
            "{label}: mount: {mount}"
        );
    }
}

/// Kind 5's inputs: holes at the start, in the middle and at the end, a file
/// that is all hole, one of 31 segments (old GNU headers need extension
/// blocks past 4), and a plain file after them; all owned by 1234.
const SPARSE_FILES: &[&str] = &["start", "middle", "end", "hole", "many", "plain"];

fn sparse_files() -> tempfile::TempDir {
    let files = tempfile::tempdir().unwrap();
    sh(
        files.path(),
        r#"mk() { yes "$2" | head -c 4096 | dd of="$1" bs=4096 seek="$3" conv=notrunc status=none; }
        mk start s 16
        mk middle m 0; mk middle m 25
        mk end e 0; truncate -s 1M end
        truncate -s 1M hole
        for i in $(seq 0 2 60); do mk many x $i; done
        echo plain > plain
        touch -d '2023-11-14 22:13:20 UTC' *; chown 1234:1234 *"#,
    );
    files
}

/// The members of kind 5, as GNU tar writes them: PAX sparse 0.0 (repeated
/// offset/numbytes records), 0.1 (`GNU.sparse.map`), 1.0 (the map in the
/// data area, the name in `GNU.sparse.name`) and old GNU (`S` headers with
/// extension blocks).
const SPARSE_FORMATS: [(&str, &[&str]); 4] = [
    ("pax-0.0", &["--format=pax", "--sparse-version=0.0", "-S"]),
    ("pax-0.1", &["--format=pax", "--sparse-version=0.1", "-S"]),
    ("pax-1.0", &["--format=pax", "--sparse-version=1.0", "-S"]),
    ("gnu", &["--format=gnu", "-S"]),
];

/// Kind 5: sparse files read as Go's archive/tar (umoci) and GNU tar
/// expand them, holes as zeros and the real size, through the whole-layer
/// mount, the lazy mount via the index, zstd:chunked (skopeo's, whose
/// `zeros` chunks are the holes) and pull. eStargz is not among them: its
/// TOC has no way to say "hole", and the peer writer here (stargz-snapshotter
/// 0.12's `ctr-remote image convert --estargz`) fails on these images
/// ("archive/tar: missed writing 119808 bytes" for `many`).
#[test]
fn sparse_files_read_as_go_and_gnu_tar_expand_them_on_every_path() {
    let files = sparse_files();
    for (label, format) in SPARSE_FORMATS {
        let tar = gnu_tar(files.path(), format, SPARSE_FILES);
        let image = Image::new(&format!("sparse-{label}"), std::slice::from_ref(&tar));
        let gnu = gnu_tar_listing(std::slice::from_ref(&tar));
        let oracle = if label == "gnu" {
            // Go's archive/tar expands an `S` member but keeps its
            // typeflag, which umoci (like containers/storage and
            // containerd) then refuses as unknown: GNU tar is the oracle.
            let bundle = image.work.path().join("umoci");
            let umoci = unpack_with_umoci(&image.layout, TAG, &bundle);
            assert!(
                umoci
                    .as_ref()
                    .is_err_and(|e| e.contains("unknown typeflag '\\x53'")),
                "{umoci:?}"
            );
            gnu
        } else {
            agreed(image.umoci(), gnu)
        };
        for (name, size) in [("hole", 1 << 20), ("many", 249_856), ("start", 69_632)] {
            assert!(
                oracle.iter().any(|l| l
                    .starts_with(&format!("\"{name}\" file mode=0644 uid=1234"))
                    && l.contains(&format!(" size={size} "))),
                "{label}: {oracle:#?}"
            );
        }
        // skopeo's zstd:chunked writer refuses `S` ("unknown tarball type:
        // 83"); it writes the PAX members' holes as `zeros` chunks.
        image.assert_every_path_lists(&oracle, label != "gnu");
    }
}

/// Kind 5, lazily: reading a sparse file's holes through a lazy mount
/// fetches nothing; reading its data then does. `lazyimg cat` expands it too.
#[test]
fn sparse_holes_read_lazily_fetch_nothing() {
    use std::os::unix::fs::FileExt;
    let files = sparse_files();
    let format = SPARSE_FORMATS[2].1;
    let tar = gnu_tar(files.path(), format, SPARSE_FILES);
    let image = Image::new("sparse-lazy", std::slice::from_ref(&tar));
    let indexed = authed(
        &Lazyimg::new(testenv()),
        &["index", "--push", &image.reference],
    );
    assert!(indexed.success(), "{}", indexed.stderr());
    let lazyimg = Lazyimg::new(testenv());
    let mounted = Mounted::new(&lazyimg, &image.reference, &[]);
    let read = |name: &str, offset: u64, len: usize| {
        let file = std::fs::File::open(mounted.path.join(name)).unwrap();
        let mut buf = vec![1u8; len];
        file.read_exact_at(&mut buf, offset).unwrap();
        buf
    };
    let fetched = || lazyimg.stats(&mounted)["chunks_fetched"].as_u64().unwrap();
    assert_eq!(read("hole", 0, 1 << 20), vec![0; 1 << 20]);
    assert_eq!(read("end", 8192, 512 << 10), vec![0; 512 << 10]);
    assert_eq!(fetched(), 0, "{}", lazyimg.stats(&mounted));
    assert_eq!(read("start", 65_536, 4), b"s\ns\n");
    assert!(fetched() > 0, "{}", lazyimg.stats(&mounted));
    // `cat` reads through the same content reader, without a mount.
    for name in ["start", "many"] {
        let cat = authed(&lazyimg, &["cat", &image.reference, name]).ok();
        let want = std::fs::read(files.path().join(name)).unwrap();
        assert!(cat.output.stdout == want, "cat {name}");
    }
}
