//! The blob-range cache `lazyimg nginx-config` writes, run by Debian's nginx in
//! front of a real registry: two nodes with empty caches read the same files
//! through it, and the second one's reads never reach the registry.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::image::*;
use support::registry::Registry;
use support::testenv::{Lazyimg, Mounted, build_layout, run, testenv};
use support::tools::push_layout;

/// nginx started from a generated config; stopped when dropped.
struct Nginx {
    dir: tempfile::TempDir,
    addr: String,
}

impl Nginx {
    fn start(lazyimg: &Lazyimg, upstream: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let conf = lazyimg
            .run(&[
                "nginx-config",
                "--upstream",
                &format!("http://{upstream}"),
                "--listen",
                &addr,
                "--cache-dir",
                dir.path().to_str().unwrap(),
            ])
            .ok()
            .stdout();
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        run(Command::new("nginx").arg("-c").arg(&path)).ok();
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx { dir, addr }
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = self.dir.path().join("nginx.pid");
        let _ = Command::new("nginx")
            .args(["-s", "stop", "-c"])
            .arg(self.dir.path().join("nginx.conf"))
            .status();
        for _ in 0..100 {
            if !pid.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Requests for bytes of `layer` that reached the registry.
fn upstream_layer_gets(registry: &Registry, layer: &str) -> usize {
    registry.blob_gets(layer, 0).len()
}

fn read_files(mounted: &Path, files: &[(&str, &[u8])]) {
    for (path, content) in files {
        assert!(
            std::fs::read(mounted.join(path)).unwrap() == *content,
            "{path}: wrong bytes"
        );
    }
}

#[test]
fn a_second_node_reads_through_the_cache_without_reaching_the_registry() {
    let registry = Registry::start_logging().unwrap();
    let small = prng_bytes(11, 200 << 10);
    let big = prng_bytes(12, 24 << 20);
    let spec = ImageSpec::new(vec![LayerSpec::new(vec![
        dir("app"),
        file("app/start.sh", small.clone()),
        file("app/weights.bin", big.clone()),
    ])]);
    let work = tempfile::tempdir().unwrap();
    let (layout, image) = build_layout(&work.path().join("img"), &spec, "1");
    let reference = registry.reference("nodes/app:1");
    push_layout(&layout.dir, "1", &reference, registry.push_opts()).unwrap();
    let direct = format!(
        "[[registry]]\nprefix = {:?}\ninsecure = true\n",
        registry.addr
    );
    Lazyimg::with_config(testenv(), &direct)
        .run(&["index", "--push", &reference])
        .ok();

    let admin = Lazyimg::with_config(testenv(), "");
    let nginx = Nginx::start(&admin, &registry.addr);
    // No readahead: both nodes then ask for exactly what they read, so the
    // second one's requests are the first one's, whatever the timing.
    let via_cache = format!(
        "[lazy]\nreadahead = \"0\"\n[[registry]]\nprefix = {:?}\nlocation = {:?}\ninsecure = true\n",
        registry.addr, nginx.addr
    );
    let layer = image.layers[0].digest.clone();
    // Node 1: the start script and 5 MiB of the big file from 8 MiB in, cold;
    // node 2 then reads the first 1 MiB of that, so whatever the kernel's own
    // readahead asks beyond it, node 1 fetched it whole before unmounting.
    let offset = 8 << 20;
    let read_slice = |mounted: &Mounted, len: usize| {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(mounted.path.join("app/weights.bin")).unwrap();
        file.seek(SeekFrom::Start(offset as u64)).unwrap();
        let mut piece = vec![0; len];
        file.read_exact(&mut piece).unwrap();
        assert!(
            piece == big[offset..offset + len],
            "wrong bytes in the slice"
        );
    };
    let first = Lazyimg::with_config(testenv(), &via_cache);
    {
        let mounted = Mounted::new(&first, &reference, &[]);
        read_files(&mounted.path, &[("app/start.sh", &small)]);
        read_slice(&mounted, 5 << 20);
    }
    let after_first = upstream_layer_gets(&registry, &layer);
    assert!(after_first > 0, "node 1 read nothing from the registry");

    // Node 2, empty cache, same reads: every slice is a cache hit.
    let second = Lazyimg::with_config(testenv(), &via_cache);
    let mounted = Mounted::new(&second, &reference, &[]);
    read_files(&mounted.path, &[("app/start.sh", &small)]);
    read_slice(&mounted, 1 << 20);
    assert_eq!(
        upstream_layer_gets(&registry, &layer),
        after_first,
        "node 2 reached the registry for layer bytes:\n{}",
        nginx.access_log()
    );
    let log = nginx.access_log();
    let layer_lines: Vec<&str> = log.lines().filter(|l| l.contains(&layer)).collect();
    assert!(layer_lines.iter().any(|l| l.contains("cache=HIT")), "{log}");
    assert!(second.stats(&mounted)["verification_failures"] == 0);
}
