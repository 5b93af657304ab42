//! `lazyimg ls`, `find` and `cat` against a real registry, without a mount:
//! listings come from metadata alone (the registry's log shows no layer blob
//! request), they agree with a mount and with GNU find over umoci's unpack,
//! and `cat` resolves symlinks inside the image.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

use support::image::*;
use support::listing::listing;
use support::registry::Registry;
use support::testenv::{Lazyimg, Mounted, build_layout, run};
use support::tools::{push_layout, unpack_with_umoci};

/// The unprivileged user `scripts/setup-runtimes.sh` creates.
const TEST_USER: &str = "lazyimg-test";

struct Indexed {
    registry: Registry,
    reference: String,
    image: BuiltImage,
    /// umoci's unpack of the same image: the oracle for `find`.
    unpacked: tempfile::TempDir,
    /// Bytes of the registry's log once the image and its index were pushed
    /// (indexing pulled the layers): later requests are the test's.
    log_mark: usize,
}

/// The gzip torture image on a fresh plain registry, with its lazyimg index
/// pushed beside it, and umoci's unpack of it.
fn indexed_torture_image() -> Indexed {
    let registry = Registry::start_logging().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (layout, image) = build_layout(
        &work.path().join("img"),
        &torture_image(Compression::Gzip),
        "gz",
    );
    let reference = registry.reference("browse/torture:gz");
    push_layout(&layout.dir, "gz", &reference, registry.push_opts()).unwrap();
    Lazyimg::for_registry(&registry)
        .run(&["index", "--push", &reference])
        .ok();
    let unpacked = tempfile::tempdir().unwrap();
    let rootfs = unpack_with_umoci(&layout.dir, "gz", &unpacked.path().join("bundle"))
        .expect("umoci unpack");
    assert_eq!(rootfs, unpacked.path().join("bundle/rootfs"));
    let log_mark = registry.log().len();
    Indexed {
        registry,
        reference,
        image,
        unpacked,
        log_mark,
    }
}

/// Registry log lines that fetched one of the image's layer blobs since the
/// image was pushed and indexed.
fn layer_gets(indexed: &Indexed) -> Vec<String> {
    let gets: Vec<String> = indexed
        .image
        .layers
        .iter()
        .flat_map(|layer| indexed.registry.blob_gets(&layer.digest, indexed.log_mark))
        .collect();
    // The log is on, and the test's command fetched the manifest: no empty check.
    let since = indexed.registry.log()[indexed.log_mark..].to_string();
    assert!(
        since.contains("\"GET /v2/browse/torture/manifests/"),
        "{since}"
    );
    gets
}

/// `ls -l -R --json` output as lines of tests/support/listing.rs's format,
/// without the content columns (`size=` and `sha256=` of regular files, which
/// `ls` does not read) so it compares with a mount's listing stripped likewise.
fn json_listing(stdout: &str) -> Vec<String> {
    let entries: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    // Hardlink groups by inode, named by their smallest path, as listing.rs does.
    let mut groups: HashMap<u64, (String, usize)> = HashMap::new();
    for e in &entries {
        if e["type"] != "dir" {
            let path = e["path"]
                .as_str()
                .unwrap()
                .trim_start_matches('/')
                .to_string();
            let group = groups
                .entry(e["ino"].as_u64().unwrap())
                .or_insert((path.clone(), 0));
            group.0 = group.0.clone().min(path);
            group.1 += 1;
        }
    }
    let mut lines: Vec<(String, String)> = Vec::new();
    for e in &entries {
        let path = e["path"].as_str().unwrap().trim_start_matches('/');
        if path.is_empty() {
            continue;
        }
        let kind = e["type"].as_str().unwrap();
        let mut line = format!(
            "{path:?} {kind} mode={:04o} uid={} gid={}",
            e["mode"].as_u64().unwrap(),
            e["uid"],
            e["gid"]
        );
        if let Some(target) = e["target"].as_str() {
            line += &format!(" target={target:?}");
        }
        if let Some(dev) = e["dev"].as_array() {
            line += &format!(" dev={}:{}", dev[0], dev[1]);
        }
        if kind != "dir" {
            line += &format!(" mtime={}", e["mtime"]);
            let (first, count) = &groups[&e["ino"].as_u64().unwrap()];
            if *count > 1 {
                line += &format!(" hardlink={first:?}");
            }
        }
        let xattrs: BTreeMap<&String, &serde_json::Value> =
            e["xattrs"].as_object().unwrap().iter().collect();
        for (name, value) in xattrs {
            line += &format!(" xattr.{name}={}", value.as_str().unwrap());
        }
        lines.push((path.to_string(), line));
    }
    lines.sort();
    lines.into_iter().map(|(_, line)| line).collect()
}

/// A mount listing without the content columns (see [`json_listing`]).
fn without_content(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .map(|line| {
            line.split(' ')
                .filter(|field| !field.starts_with("size=") && !field.starts_with("sha256="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn ls_lists_the_image_like_its_mount_from_metadata_alone() {
    let indexed = indexed_torture_image();
    let lazyimg = Lazyimg::for_registry(&indexed.registry);
    let out = lazyimg
        .run(&["ls", "-l", "-R", "--json", &indexed.reference])
        .ok();
    assert!(layer_gets(&indexed).is_empty(), "ls fetched layer blobs");
    let cached = lazyimg.cached_blobs();
    assert!(
        indexed
            .image
            .layers
            .iter()
            .all(|l| !cached.contains(&l.digest)),
        "a layer was fetched whole"
    );
    let from_ls = json_listing(&out.stdout());

    let mounter = Lazyimg::for_registry(&indexed.registry);
    let mounted = Mounted::new(&mounter, &indexed.reference, &[]);
    let from_mount = without_content(listing(&mounted.path).unwrap());
    assert_eq!(from_ls, from_mount);

    // The text forms: `ls DIR` lists the directory's entries, `ls -l` has
    // the mode column and symlink targets.
    let top = lazyimg.run(&["ls", &indexed.reference]).ok().stdout();
    let mut expected: Vec<String> = std::fs::read_dir(&mounted.path)
        .unwrap()
        .map(|e| format!("/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    expected.sort();
    assert_eq!(top.lines().collect::<Vec<_>>(), expected);
    let long = lazyimg
        .run(&["ls", "-l", "-R", &indexed.reference])
        .ok()
        .stdout();
    assert!(long.lines().any(|l| l.starts_with("drwx")), "{long}");
    assert!(
        long.lines()
            .any(|l| l.starts_with('l') && l.contains(" -> ")),
        "{long}"
    );
}

#[test]
fn ls_works_for_a_user_without_root_or_dev_fuse() {
    let indexed = indexed_torture_image();
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "cache_dir = {:?}\n[[registry]]\nprefix = {:?}\ninsecure = true\n",
            home.path().join("cache"),
            indexed.registry.addr
        ),
    )
    .unwrap();
    let status = Command::new("chown")
        .args(["-R", &format!("{TEST_USER}:{TEST_USER}")])
        .arg(home.path())
        .status()
        .unwrap();
    assert!(status.success());
    // /dev/fuse hidden in a mount namespace of its own, then the test user.
    let script = format!(
        "mount --bind /dev/null /dev/fuse && exec setpriv --reuid={TEST_USER} --regid={TEST_USER} \
         --init-groups env HOME={home} {bin} --config {config} ls -R {reference} /shared",
        home = home.path().display(),
        bin = env!("CARGO_BIN_EXE_lazyimg"),
        config = config.display(),
        reference = indexed.reference,
    );
    let out = run(Command::new("unshare").args(["-m", "sh", "-c", &script])).ok();
    assert!(
        out.stdout().lines().any(|l| l == "/shared/base-file"),
        "{}",
        out.stdout()
    );
    assert!(layer_gets(&indexed).is_empty(), "ls fetched layer blobs");
}

/// `lazyimg find REFERENCE TESTS…`'s paths, sorted.
fn lazyimg_find(lazyimg: &Lazyimg, reference: &str, tests: &[&str]) -> Vec<String> {
    let mut args = vec!["find", reference];
    args.extend(tests);
    let mut found: Vec<String> = lazyimg
        .run(&args)
        .ok()
        .stdout()
        .lines()
        .map(String::from)
        .collect();
    found.sort();
    found
}

/// GNU find's answer over the unpacked image, as `/`-rooted paths.
fn gnu_find(root: &Path, tests: &[&str]) -> Vec<String> {
    let out = run(Command::new("find").arg(".").args(tests).current_dir(root)).ok();
    let mut paths: Vec<String> = out
        .stdout()
        .lines()
        .map(|p| p.trim_start_matches('.').to_string())
        .map(|p| if p.is_empty() { "/".into() } else { p })
        .collect();
    paths.sort();
    paths
}

#[test]
fn find_answers_as_gnu_find_over_the_unpacked_image() {
    let indexed = indexed_torture_image();
    let lazyimg = Lazyimg::for_registry(&indexed.registry);
    let rootfs = indexed.unpacked.path().join("bundle/rootfs");
    for (ours, theirs) in [
        (vec!["--setuid"], vec!["-perm", "/6000"]),
        (vec!["--size", "+2k"], vec!["-size", "+2k"]),
        (vec!["--type", "l"], vec!["-type", "l"]),
        (vec!["--name", "*link*"], vec!["-name", "*link*"]),
    ] {
        let found = lazyimg_find(&lazyimg, &indexed.reference, &ours);
        let expected = gnu_find(&rootfs, &theirs);
        assert!(!expected.is_empty(), "{theirs:?} found nothing to compare");
        assert_eq!(found, expected, "lazyimg find {ours:?} vs find {theirs:?}");
    }
    // GNU find has no xattr test: getfattr lists the files carrying one.
    let found = lazyimg_find(
        &lazyimg,
        &indexed.reference,
        &["--xattr", "security.capability"],
    );
    let getfattr = run(Command::new("getfattr")
        .args(["-R", "-P", "-h", "-m", "^security\\.capability$", "."])
        .current_dir(&rootfs))
    .ok();
    let mut expected: Vec<String> = getfattr
        .stdout()
        .lines()
        .filter_map(|l| l.strip_prefix("# file: "))
        .map(|path| format!("/{}", path.trim_start_matches("./")))
        .collect();
    expected.sort();
    assert!(
        !expected.is_empty(),
        "the torture image has a file capability"
    );
    assert_eq!(found, expected, "lazyimg find --xattr vs getfattr");
    assert!(layer_gets(&indexed).is_empty(), "find fetched layer blobs");
}

#[test]
fn cat_resolves_symlinks_inside_the_image_and_names_missing_files() {
    let indexed = indexed_torture_image();
    let lazyimg = Lazyimg::for_registry(&indexed.registry);
    let mounter = Lazyimg::for_registry(&indexed.registry);
    let mounted = Mounted::new(&mounter, &indexed.reference, &[]);
    // Every symlink to a regular file in the image: cat through it equals the
    // image's own file at the link's target. An absolute target is taken from
    // the mount's root here (the kernel would take it from the host's).
    let mut checked = 0;
    let mut absolute = 0;
    for line in lazyimg
        .run(&["find", &indexed.reference, "--type", "l"])
        .ok()
        .stdout()
        .lines()
    {
        let link = mounted.path.join(line.trim_start_matches('/'));
        let target = std::fs::read_link(&link).unwrap();
        let in_mount = match target.strip_prefix("/") {
            Ok(inside) => {
                absolute += 1;
                mounted.path.join(inside)
            }
            Err(_) => link,
        };
        if !std::fs::metadata(&in_mount).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let expected = std::fs::read(&in_mount).unwrap();
        let out = lazyimg.run(&["cat", &indexed.reference, line]).ok();
        assert!(
            out.output.stdout == expected,
            "cat {line} differs from the mount"
        );
        checked += 1;
    }
    assert!(
        checked > 2 && absolute > 0,
        "{checked} links checked, {absolute} absolute"
    );
    let missing = lazyimg.run(&["cat", &indexed.reference, "/no/such/file"]);
    assert!(!missing.success());
    assert!(
        missing.stderr().contains("no such file"),
        "{}",
        missing.stderr()
    );
}
