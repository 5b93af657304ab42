//! `lazyimg snapshotter` as containerd 1.6.20's remote snapshotter: the
//! test's own containerd (temp root, state, sockets; scripts/setup-runtimes.sh
//! installs it, runc and `ctr-remote`) pulls from the local plain registry
//! through `ctr-remote image rpull`, which labels each layer with its image,
//! and must skip every layer lazyimg serves, then run the image.
//!
//! Needs root (containerd, FUSE, overlayfs). A missing tool fails, never skips.

mod support;

use std::path::Path;

use support::containerd::{Containerd, Snapshotter};
use support::pushed::{layer_sizes, layers, lazyimg_fetched, push_image, sh_out};
use support::site::{plain_log_len, plain_log_since};
use support::testenv::{Lazyimg, authed, nonce, testenv};

/// containerd's GETs of blob `digest` in registry log `lines` (its
/// User-Agent is `containerd/1.6.20…`).
fn containerd_gets<'a>(lines: &'a [String], digest: &str) -> Vec<&'a String> {
    lines
        .iter()
        .filter(|l| l.contains(&format!("/blobs/{digest} ")) && l.contains("containerd/"))
        .collect()
}

/// The layer digests `ctr content ls` lists among `layers`.
fn stored_layers(containerd: &Containerd, layers: &[String]) -> Vec<String> {
    let content = containerd.ok(&["content", "ls", "-q"]);
    layers
        .iter()
        .filter(|l| content.lines().any(|c| c == l.as_str()))
        .cloned()
        .collect()
}

#[test]
fn an_indexed_gzip_image_runs_from_lazy_layers_and_survives_a_snapshotter_crash() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let (reference, label) = push_image(env, work.path());
    authed(&Lazyimg::new(env), &["index", "--push", &reference]).ok();
    let layers = layers(&reference);

    let lazyimg = Lazyimg::new(env);
    let state = tempfile::Builder::new()
        .prefix("lazyimg-sn-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut snapshotter = Snapshotter::start(&lazyimg, state.path());
    let containerd = Containerd::start(&snapshotter.socket, "");
    let log_start = plain_log_len(env);
    containerd.remote_ok(&[
        "image",
        "rpull",
        "--plain-http",
        "--snapshotter",
        "lazyimg",
        &reference,
    ]);

    // containerd skipped every layer: none downloaded, none in its store.
    let lines = plain_log_since(env, log_start);
    for layer in &layers {
        let gets = containerd_gets(&lines, layer);
        assert!(
            gets.is_empty(),
            "containerd fetched {layer}: {gets:#?}\n{}",
            snapshotter.log()
        );
    }
    assert_eq!(stored_layers(&containerd, &layers), Vec::<String>::new());
    let snapshots = containerd.ok(&["snapshots", "--snapshotter", "lazyimg", "ls"]);
    assert_eq!(
        snapshots
            .lines()
            .filter(|l| l.contains("Committed"))
            .count(),
        layers.len(),
        "{snapshots}"
    );

    // The container reads its files lazily: a 4 KiB slice of the 256 MiB
    // file costs under 2 % of its layer.
    // runc keeps container state per namespace host-wide: ids unique to this run.
    let id = |name: &str| format!("{name}-{}", nonce());
    let run = |name: &str, script: &str| {
        let id = id(name);
        containerd.ok(&[
            "run",
            "--rm",
            "--snapshotter",
            "lazyimg",
            &reference,
            &id,
            "sh",
            "-c",
            script,
        ])
    };
    let out = run(
        "c1",
        "id -u; cat /work/label.txt; dd if=/work/big.bin bs=4096 skip=40000 count=1 2>/dev/null | sha256sum",
    );
    let expected = sh_out(&format!(
        "umoci unpack --image {}:v1 {} >/dev/null && dd if={}/rootfs/work/big.bin bs=4096 skip=40000 count=1 2>/dev/null | sha256sum",
        work.path().join("oci").display(),
        work.path().join("check").display(),
        work.path().join("check").display(),
    ));
    assert_eq!(
        out,
        format!("1000\n{label}\n{expected}"),
        "{}",
        snapshotter.log()
    );
    let (big_layer, big_size) = layer_sizes(&reference).pop().unwrap();
    let fetched = lazyimg_fetched(&plain_log_since(env, log_start), &big_layer);
    eprintln!("4 KiB slice of big.bin: lazyimg fetched {fetched} of {big_size} bytes of its layer");
    assert!(
        fetched * 50 < big_size,
        "fetched {fetched} of {big_size} bytes of {big_layer}"
    );

    // kill -9 the snapshotter while a container runs: containerd's records
    // stay, the container keeps reading (its lowers are the layer store's,
    // a process of its own), and a restarted snapshotter starts new ones.
    let long = id("long");
    containerd.ok(&[
        "run",
        "-d",
        "--snapshotter",
        "lazyimg",
        &reference,
        &long,
        "sleep",
        "600",
    ]);
    let before = containerd.ok(&["snapshots", "--snapshotter", "lazyimg", "ls"]);
    snapshotter.kill();
    let read = containerd.ok(&[
        "task",
        "exec",
        "--exec-id",
        "r1",
        &long,
        "cat",
        "/work/label.txt",
    ]);
    assert_eq!(read, format!("{label}\n"));
    let restarted = Snapshotter::start(&lazyimg, state.path());
    assert!(
        restarted.log().contains("already served"),
        "{}",
        restarted.log()
    );
    // containerd's gRPC client reconnects with backoff (grpc-go): until then
    // calls fail as unavailable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !containerd
        .ctr(&["snapshots", "--snapshotter", "lazyimg", "ls"])
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "containerd did not reconnect"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        containerd.ok(&["snapshots", "--snapshotter", "lazyimg", "ls"]),
        before
    );
    let out = run("c2", "cat /work/label.txt; head -c 7 /bin/busybox | wc -c");
    assert_eq!(out, format!("{label}\n7\n"));
    containerd.ok(&["task", "kill", "-s", "SIGKILL", &long]);
    wait_for_stop(&containerd, &long);
    containerd.ok(&["task", "delete", &long]);
    containerd.ok(&["container", "rm", &long]);
    assert!(Path::new(&restarted.store()).exists());
}

/// Waits (up to 30 s) until task `id` has stopped.
fn wait_for_stop(containerd: &Containerd, id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let tasks = containerd.ok(&["task", "ls"]);
        if !tasks
            .lines()
            .any(|l| l.starts_with(id) && l.contains("RUNNING"))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} still runs:\n{tasks}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
