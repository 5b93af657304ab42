//! Self-test of tests/support: the images it builds are valid for skopeo,
//! umoci and a real registry, and unpack to what the torture spec promises.

mod support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use support::image::*;
use support::listing::{dev_major_minor, diff_listings, listing};
use support::registry::Registry;
use support::tools::{PushOpts, oci_ref, push_layout, run, skopeo_inspect, unpack_with_umoci};
use support::torture::{RANDOM_FILE_SIZE, deep_file, long_component};

fn layer_digests(v: &serde_json::Value) -> Vec<String> {
    v["Layers"]
        .as_array()
        .expect("Layers")
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

fn built_digests(img: &BuiltImage) -> Vec<String> {
    img.layers.iter().map(|l| l.digest.clone()).collect()
}

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

fn torture_layout(dir: &Path, c: Compression) -> (OciLayout, BuiltImage) {
    let mut layout = OciLayout::create(dir);
    let img = layout.add_image(&torture_image(c));
    layout.tag("torture", &img.manifest);
    (layout, img)
}

#[test]
fn torture_gzip_is_valid_for_skopeo_and_umoci() {
    let tmp = tempfile::tempdir().unwrap();
    let oci = tmp.path().join("layout");
    let (_layout, img) = torture_layout(&oci, Compression::Gzip);
    assert_eq!(img.layers.len(), 3);
    assert!(
        img.layers
            .iter()
            .all(|l| l.media_type == MT_LAYER_GZIP && l.digest != l.diff_id)
    );

    // Deterministic: a second build gives the same manifest digest.
    let again =
        OciLayout::create(&tmp.path().join("again")).add_image(&torture_image(Compression::Gzip));
    assert_eq!(again.manifest.digest, img.manifest.digest);

    let v = skopeo_inspect(&oci_ref(&oci, "torture"), &[]).unwrap();
    assert_eq!(layer_digests(&v), built_digests(&img));
    assert_eq!(v["Digest"].as_str().unwrap(), img.manifest.digest);
    assert_eq!(v["Architecture"].as_str().unwrap(), "amd64");
    let raw = run("skopeo", &["inspect", "--raw", &oci_ref(&oci, "torture")]).unwrap();
    assert_eq!(raw.as_bytes(), &img.manifest_json[..]);
    let cfg = run(
        "skopeo",
        &["inspect", "--config", "--raw", &oci_ref(&oci, "torture")],
    )
    .unwrap();
    assert_eq!(cfg.as_bytes(), &img.config_json[..]);

    let rootfs = unpack_with_umoci(&oci, "torture", &tmp.path().join("bundle")).unwrap();
    let r = |p: &str| rootfs.join(p);
    let exists = |p: &str| fs::symlink_metadata(r(p)).is_ok();

    // Whiteouts.
    assert!(!exists("whiteout-me/doomed") && exists("whiteout-me/survivor"));
    assert!(!exists("whiteout-me/.wh.doomed") && !exists(".wh.gone-dir"));
    assert!(!exists("gone-dir/a") && !exists("gone-dir/sub") && exists("gone-dir/reborn"));
    // Opaque directory keeps only its own layer's entries.
    let mut names: Vec<String> = fs::read_dir(r("opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["new-after-marker", "new-before-marker", "oldsub"]);
    let sub: Vec<_> = fs::read_dir(r("opaque/oldsub"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(sub, ["fresh"]);
    assert_eq!(lstat(&r("opaque")).mode() & 0o7777, 0o750);
    // Hardlinks: within a layer, across layers, survivors of a whiteout.
    assert_eq!(
        lstat(&r("shared/upper-link")).ino(),
        lstat(&r("shared/base-file")).ino()
    );
    assert_eq!(lstat(&r("hl/b")).ino(), lstat(&r("hl/c")).ino());
    assert!(!exists("hl/a"));
    assert_eq!(
        lstat(&r(&deep_file())).ino(),
        lstat(&r("gnu/hardlink-long-target")).ino()
    );
    assert_eq!(
        lstat(&r(&deep_file())).ino(),
        lstat(&r("long/hardlink-long-target")).ino()
    );
    // Modes and owners.
    assert_eq!(lstat(&r("bin/suid")).mode() & 0o7777, 0o4755);
    let su = lstat(&r("bin/suid-user"));
    assert_eq!(
        (su.mode() & 0o7777, su.uid(), su.gid()),
        (0o4750, 1000, 1000)
    );
    assert_eq!(lstat(&r("bin/sgid")).mode() & 0o7777, 0o2755);
    assert_eq!(lstat(&r("tmp")).mode() & 0o7777, 0o1777);
    assert_eq!(lstat(&r("bin/no-perms")).mode() & 0o7777, 0);
    let nb = lstat(&r("nobody/owned"));
    assert_eq!((nb.uid(), nb.gid()), (65534, 65534));
    let mc = lstat(&r("meta-change"));
    assert_eq!((mc.mode() & 0o7777, mc.uid()), (0o600, 1000));
    assert_eq!(lstat(&r("etc/future-mtime")).mtime(), 4_000_000_000);
    // Devices and fifo.
    let null = lstat(&r("dev/null"));
    assert!(null.file_type().is_char_device());
    assert_eq!(dev_major_minor(null.rdev()), (1, 3));
    let big = lstat(&r("dev/bigminor"));
    assert!(big.file_type().is_block_device());
    assert_eq!(dev_major_minor(big.rdev()), (259, 65536));
    assert!(lstat(&r("dev/fifo")).file_type().is_fifo());
    // Long names and link targets.
    assert!(exists(&format!("long/{}", long_component("pax"))));
    assert!(exists(&format!("gnu/{}", long_component("gnu"))));
    assert!(deep_file().len() > 255 && exists(&deep_file()));
    assert_eq!(
        fs::read_link(r("long/symlink-long-target"))
            .unwrap()
            .to_str()
            .unwrap(),
        format!("/{}", deep_file())
    );
    assert_eq!(
        fs::read_link(r("gnu/symlink-long-target"))
            .unwrap()
            .to_str()
            .unwrap(),
        format!("../{}", deep_file())
    );
    // Symlinks, type changes, content changes.
    assert_eq!(
        fs::read_link(r("etc/dangling")).unwrap().to_str().unwrap(),
        "../nonexistent/target"
    );
    assert_eq!(
        fs::read_link(r("etc/abs-link")).unwrap().to_str().unwrap(),
        "/etc/commented"
    );
    assert!(lstat(&r("file-to-dir")).is_dir() && exists("file-to-dir/inside"));
    assert_eq!(
        fs::read_to_string(r("dir-to-file")).unwrap(),
        "directory replaced by a file\n"
    );
    assert!(lstat(&r("swap/file-to-symlink")).file_type().is_symlink());
    assert!(lstat(&r("swap/symlink-to-file")).is_file());
    assert_eq!(fs::read_to_string(r("changes.txt")).unwrap(), "v3\n");
    assert_eq!(
        fs::read(r("data/random.bin")).unwrap(),
        prng_bytes(42, RANDOM_FILE_SIZE)
    );
    assert!(exists("names/ünïcödé-日本語.txt") && exists("names/with space.txt"));
    assert_eq!(fs::metadata(r("etc/empty")).unwrap().len(), 0);

    // xattrs, through the listing oracle.
    let list = listing(&rootfs).unwrap();
    let line = |p: &str| {
        let q = format!("{p:?} ");
        list.iter()
            .find(|l| l.starts_with(&q))
            .unwrap_or_else(|| panic!("{p} not listed"))
            .clone()
    };
    assert!(line("etc/commented").contains(&format!(
        "xattr.user.comment={}",
        hex::encode("hello from a PAX xattr")
    )));
    assert!(line("etc/commented").contains("xattr.user.binary=000102ff"));
    assert!(line("etc/gnu-xattr").contains("xattr.user.gnu="));
    assert!(line("etc/xattr-dir").contains("xattr.user.dirattr="));
    assert!(
        line("bin/ping")
            .contains("xattr.security.capability=0100000200040000000000000000000000000000")
    );
    assert!(
        line("hl/b").contains(r#"hardlink="hl/b""#) && line("hl/c").contains(r#"hardlink="hl/b""#)
    );
    assert!(line("dev/sda").starts_with(r#""dev/sda" block mode=0660 uid=0 gid=6 dev=8:0 mtime="#));
    assert!(
        line("bin/sh")
            .starts_with(r#""bin/sh" symlink mode=0777 uid=0 gid=0 target="busybox" mtime="#)
    );
    assert!(line("tmp").starts_with(r#""tmp" dir mode=1777 uid=0 gid=0"#));
    assert_eq!(
        line("etc/empty"),
        format!(
            "\"etc/empty\" file mode=0644 uid=0 gid=0 size=0 sha256={} mtime={}",
            sha256_hex(b""),
            lstat(&r("etc/empty")).mtime()
        )
    );
    let dump = tmp.path().join("listing.txt");
    fs::write(&dump, list.join("\n")).unwrap();
    if std::env::var_os("SHOW_LISTING").is_some() {
        println!("{}", list.join("\n"));
    }
    // A tree compared with itself has no diff; a changed file shows -/+.
    assert!(diff_listings(&list, &listing(&rootfs).unwrap()).is_empty());
    fs::write(r("changes.txt"), "changed\n").unwrap();
    let d = diff_listings(&list, &listing(&rootfs).unwrap());
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d[0].starts_with("-\"changes.txt\" file") && d[1].starts_with("+\"changes.txt\" file"));
}

fn two_platforms(layout: &mut OciLayout) -> (BuiltImage, BuiltImage, Descriptor) {
    let amd = layout.add_image(&simple_image(2));
    let arm = layout.add_image(&simple_image(3).platform("linux", "arm64", Some("v8")));
    let idx = layout.add_index(&[
        ("linux", "amd64", None, &amd),
        ("linux", "arm64", Some("v8"), &arm),
    ]);
    layout.tag("multi", &idx);
    (amd, arm, idx)
}

#[test]
fn multi_arch_index() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(tmp.path());
    let (amd, arm, idx) = two_platforms(&mut layout);
    let image = oci_ref(tmp.path(), "multi");

    let raw = run("skopeo", &["inspect", "--raw", &image]).unwrap();
    assert_eq!(sha256_digest(raw.as_bytes()), idx.digest);
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["mediaType"], MT_INDEX);
    assert_eq!(
        v["manifests"][1]["digest"].as_str().unwrap(),
        arm.manifest.digest
    );
    assert_eq!(v["manifests"][1]["platform"]["variant"], "v8");

    let a = skopeo_inspect(&image, &["--override-arch", "arm64"]).unwrap();
    assert_eq!(a["Architecture"], "arm64");
    assert_eq!(layer_digests(&a), built_digests(&arm));
    let x = skopeo_inspect(&image, &["--override-arch", "amd64"]).unwrap();
    assert_eq!(x["Architecture"], "amd64");
    assert_eq!(layer_digests(&x), built_digests(&amd));
}

#[test]
fn push_to_local_registry() {
    let reg = Registry::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (mut layout, img) = torture_layout(tmp.path(), Compression::Gzip);
    let (_amd, _arm, idx) = two_platforms(&mut layout);

    let dest = reg.reference("lazyimg/torture:v1");
    push_layout(tmp.path(), "torture", &dest, PushOpts::default())
        .unwrap_or_else(|e| panic!("{e}\n{}", reg.log()));
    let v = skopeo_inspect(&format!("docker://{dest}"), &["--tls-verify=false"]).unwrap();
    assert_eq!(v["Digest"].as_str().unwrap(), img.manifest.digest);
    assert_eq!(layer_digests(&v), built_digests(&img));
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{dest}"),
        ],
    )
    .unwrap();
    assert_eq!(raw.as_bytes(), &img.manifest_json[..]);

    // Multi-arch index, digests preserved.
    let dest = reg.reference("lazyimg/multi:latest");
    push_layout(tmp.path(), "multi", &dest, PushOpts::default()).unwrap();
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{dest}"),
        ],
    )
    .unwrap();
    assert_eq!(sha256_digest(raw.as_bytes()), idx.digest);

    // Docker schema 2 conversion: new digest, same layers.
    let dest = reg.reference("lazyimg/torture-v2s2:v1");
    let opts = PushOpts {
        format_v2s2: true,
        ..Default::default()
    };
    push_layout(tmp.path(), "torture", &dest, opts).unwrap();
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{dest}"),
        ],
    )
    .unwrap();
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        m["layers"][0]["digest"].as_str().unwrap(),
        img.layers[0].digest
    );
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
}

#[test]
fn torture_zstd_and_uncompressed_are_accepted_by_skopeo() {
    let tmp = tempfile::tempdir().unwrap();
    let gz = OciLayout::create(&tmp.path().join("gz")).add_image(&torture_image(Compression::Gzip));
    for (c, mt) in [
        (Compression::Zstd, MT_LAYER_ZSTD),
        (Compression::None, MT_LAYER_TAR),
    ] {
        let dir = tmp.path().join(format!("{c:?}"));
        let (_layout, img) = torture_layout(&dir, c);
        assert!(img.layers.iter().all(|l| l.media_type == mt));
        // Same tars whatever the compression: same diff_ids.
        let diff_ids: Vec<_> = img.layers.iter().map(|l| &l.diff_id).collect();
        assert_eq!(
            diff_ids,
            gz.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()
        );
        let v = skopeo_inspect(&oci_ref(&dir, "torture"), &[]).unwrap();
        assert_eq!(layer_digests(&v), built_digests(&img));
        assert_eq!(v["Digest"].as_str().unwrap(), img.manifest.digest);
        // skopeo re-reads every blob (and checks digests) when copying.
        let copy = tmp.path().join(format!("{c:?}-copy"));
        run(
            "skopeo",
            &[
                "--insecure-policy",
                "copy",
                &oci_ref(&dir, "torture"),
                &oci_ref(&copy, "t"),
            ],
        )
        .unwrap();
    }
}

#[test]
fn tar_details() {
    // Long names: PAX records vs GNU LongLink entries, both read back by the tar crate.
    let long = format!("a/{}", "n".repeat(150));
    let target = format!("/{}", "t".repeat(150));
    for style in [LongNames::Pax, LongNames::Gnu] {
        let entries = vec![
            file(&long, "x").xattr("user.k", "v"),
            symlink("s", &target),
            hardlink("h", &long),
            whiteout("a/gone"),
            opaque("a"),
        ];
        let tar = build_tar(&entries, style);
        assert_eq!(tar.len() % 512, 0);
        let needle: &[u8] = if style == LongNames::Pax {
            b" path=a/nnn"
        } else {
            b"././@LongLink"
        };
        assert!(tar.windows(needle.len()).any(|w| w == needle), "{style:?}");
        let mut ar = tar::Archive::new(&tar[..]);
        let got: Vec<(String, Option<String>)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let p = e.path().unwrap().to_str().unwrap().to_string();
                let l = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_str().unwrap().to_string());
                (p, l)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (long.clone(), None),
                ("s".into(), Some(target.clone())),
                ("h".into(), Some(long.clone())),
                ("a/.wh.gone".into(), None),
                ("a/.wh..wh..opq".into(), None),
            ],
            "{style:?}"
        );
    }
    // Deterministic across builds and compressions.
    let spec = LayerSpec::new(vec![file("f", "x")])
        .compression(Compression::Zstd)
        .annotate("k", "v");
    let (a, b) = (build_layer(&spec), build_layer(&spec));
    assert_eq!((a.digest.clone(), a.diff_id.clone()), (b.digest, b.diff_id));
    assert_eq!(a.diff_id, sha256_digest(&a.tar));
    assert_eq!(zstd::stream::decode_all(&a.blob[..]).unwrap(), a.tar);
    assert_eq!(a.annotations["k"], "v");
}

#[test]
fn push_to_registry_with_tls_and_basic_auth() {
    use support::registry::RegistryOpts;
    let opts = RegistryOpts {
        basic_auth: Some(("tester".into(), "s3cret".into())),
        tls: true,
        ..Default::default()
    };
    let reg = Registry::start_with(&opts).unwrap();
    assert_eq!(reg.scheme, "https");
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(tmp.path());
    let img = layout.add_image(&simple_image(2));
    layout.tag("simple", &img.manifest);
    let dest = reg.reference("private/simple:1");

    // Wrong password and no CA are both refused.
    let mut bad = reg.push_opts();
    bad.creds = Some(("tester".into(), "wrong".into()));
    assert!(push_layout(tmp.path(), "simple", &dest, bad).is_err());
    let mut no_ca = reg.push_opts();
    no_ca.cert_dir = None;
    let e = push_layout(tmp.path(), "simple", &dest, no_ca).unwrap_err();
    assert!(e.contains("certificate"), "{e}");

    push_layout(tmp.path(), "simple", &dest, reg.push_opts())
        .unwrap_or_else(|e| panic!("{e}\n{}", reg.log()));
    let mut args: Vec<String> = vec!["inspect".into()];
    args.extend(reg.skopeo_src_args());
    args.push(format!("docker://{dest}"));
    let out = run(
        "skopeo",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Digest"].as_str().unwrap(), img.manifest.digest);
}
