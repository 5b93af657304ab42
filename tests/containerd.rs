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
use support::cri::{
    CONTAINER_EXITED, ContainerConfig, ContainerMetadata, Cri, ImageSpec as CriImage,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NAMESPACE_NODE, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata,
};
use support::estargz::build_estargz_layer;
use support::image::{
    BuiltLayer, Compression, ImageSpec, LayerSpec, build_layer, dir, file, torture_image,
};
use support::listing::{diff_listings, listing};
use support::pushed::{
    busybox_layer, layer_sizes, layers, lazyimg_fetched, push_image, sh, sh_out,
};
use support::site::{demo_layout, plain_log_len, plain_log_since};
use support::testenv::{Lazyimg, authed, build_layout_from_layers, nonce, testenv};
use support::tools::unpack_with_umoci;
use support::zstd_chunked::convert_to_zstd_chunked;

/// containerd's GETs of blob `digest` in registry log `lines` (its
/// User-Agent is `containerd/1.6.20…`).
fn containerd_gets<'a>(lines: &'a [String], digest: &str) -> Vec<&'a String> {
    lines
        .iter()
        .filter(|l| l.contains(&format!("/blobs/{digest} ")) && l.contains("containerd/"))
        .collect()
}

/// GETs of blob `digest` answered whole (status 200, not a 206 range), by
/// anyone, in registry log `lines`.
fn whole_gets<'a>(lines: &'a [String], digest: &str) -> Vec<&'a String> {
    lines
        .iter()
        .filter(|l| l.contains("GET /v2/") && l.contains(&format!("/blobs/{digest} ")))
        .filter(|l| l.contains("\" 200 "))
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
    let state = state_dir();
    let mut snapshotter = Snapshotter::start(&lazyimg, state.path());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&snapshotter.socket)
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "only root may ask for mounts");
    let containerd = Containerd::start(&snapshotter.containerd_config, env.plain(), "");
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
    // Range requests only: no layer was fetched whole, by anyone.
    let lines = plain_log_since(env, log_start);
    for layer in &layers {
        assert_eq!(whole_gets(&lines, layer), Vec::<&String>::new());
    }

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

/// `ctr-remote image rpull` of `reference` through the lazyimg snapshotter.
fn rpull(containerd: &Containerd, reference: &str) {
    containerd.remote_ok(&[
        "image",
        "rpull",
        "--plain-http",
        "--snapshotter",
        "lazyimg",
        reference,
    ]);
}

/// `ctr run --rm` of `reference` through the lazyimg snapshotter: `sh -c
/// script`'s stdout.
fn run_sh(containerd: &Containerd, reference: &str, script: &str) -> String {
    let id = format!("c-{}", nonce());
    containerd.ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "lazyimg",
        reference,
        &id,
        "sh",
        "-c",
        script,
    ])
}

/// Pushes the OCI layout at `layout` (tag `v1`) to the plain registry as
/// `reference`.
fn push(layout: &Path, reference: &str) {
    sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:v1 docker://{reference}",
        layout.display()
    ));
}

#[test]
fn estargz_and_zstd_chunked_images_run_from_lazy_layers() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let label = format!("ctd-toc-{}", nonce());
    let data = support::image::prng_bytes(12, 300 << 10);
    let files = LayerSpec::new(vec![
        dir("work"),
        file("work/label.txt", format!("{label}\n")),
        file("work/data.bin", data.clone()),
    ]);
    let busybox = busybox_layer(work.path());
    let spec = ImageSpec::new(Vec::new()).env(&["PATH=/bin"]);
    // eStargz files over the busybox layer (gzip, made lazy by an index).
    let estargz = [busybox.clone(), build_estargz_layer(&files, 64 << 10)];
    let (layout, _) = build_layout_from_layers(&work.path().join("esgz"), &spec, &estargz, "v1");
    let estargz_ref = format!("{}/ctd/{label}-estargz:v1", env.plain());
    push(&layout.dir, &estargz_ref);
    authed(&Lazyimg::new(env), &["index", "--push", &estargz_ref]).ok();
    // Both layers zstd:chunked, converted by skopeo.
    let gzip = [busybox, build_layer(&files)];
    let (layout, _) = build_layout_from_layers(&work.path().join("gz"), &spec, &gzip, "v1");
    let converted = convert_to_zstd_chunked(&layout.dir, "v1", &work.path().join("zstd")).unwrap();
    let chunked_ref = format!("{}/ctd/{label}-zstd-chunked:v1", env.plain());
    push(&converted.layout_dir, &chunked_ref);

    let lazyimg = Lazyimg::new(env);
    let node = Node::start(&lazyimg);
    let containerd = &node.containerd;
    let data_sum = support::layer::sha256_hex(&data);
    for reference in [&estargz_ref, &chunked_ref] {
        let log_start = plain_log_len(env);
        rpull(containerd, reference);
        let out = run_sh(
            containerd,
            reference,
            "cat /work/label.txt; cd /work; sha256sum data.bin",
        );
        assert_eq!(
            out,
            format!("{label}\n{data_sum}  data.bin\n"),
            "{reference}"
        );
        let layers = layers(reference);
        let lines = plain_log_since(env, log_start);
        for layer in &layers {
            let gets = containerd_gets(&lines, layer);
            assert!(
                gets.is_empty(),
                "{reference}: {gets:#?}\n{}",
                node.snapshotter.log()
            );
            assert_eq!(
                whole_gets(&lines, layer),
                Vec::<&String>::new(),
                "{reference}"
            );
        }
        assert_eq!(stored_layers(containerd, &layers), Vec::<String>::new());
    }
}

#[test]
fn layers_lazyimg_cannot_serve_are_unpacked_by_containerd() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let label = format!("ctd-local-{}", nonce());
    // Indexed gzip layers under a plain zstd one: the bottom two are served,
    // containerd downloads and unpacks the top one into a local snapshot.
    let built = [
        busybox_layer(work.path()),
        build_layer(&LayerSpec::new(vec![
            dir("work"),
            file("work/label.txt", format!("{label}\n")),
        ])),
        build_layer(
            &LayerSpec::new(vec![file("work/top.txt", format!("zstd {label}\n"))])
                .compression(Compression::Zstd),
        ),
    ];
    let spec = ImageSpec::new(Vec::new()).env(&["PATH=/bin"]);
    let (layout, _) = build_layout_from_layers(&work.path().join("img"), &spec, &built, "v1");
    let zstd_ref = format!("{}/ctd/{label}-zstd:v1", env.plain());
    push(&layout.dir, &zstd_ref);
    authed(&Lazyimg::new(env), &["index", "--push", &zstd_ref]).ok();
    // The demo image with no index, and again under an unapproved name.
    let demo = demo_layout(work.path());
    let plain_ref = format!("{}/ctd/{label}-no-index:v1", env.plain());
    push(&demo, &plain_ref);
    let unapproved_ref = format!("{}/elsewhere/{label}:v1", env.plain());
    push(&demo, &unapproved_ref);
    authed(&Lazyimg::new(env), &["index", "--push", &unapproved_ref]).ok();

    let lazyimg = Lazyimg::with_config(env, "approved_images = \"approved.toml\"");
    std::fs::write(
        lazyimg.dir.path().join("approved.toml"),
        format!("[[image]]\nrepository = \"{}/ctd/*\"\n", env.plain()),
    )
    .unwrap();
    let node = Node::start(&lazyimg);
    let log_start = plain_log_len(env);
    rpull(&node.containerd, &zstd_ref);
    let lines = plain_log_since(env, log_start);
    let (lazy, local) = (&built[..2], &built[2]);
    for layer in lazy {
        assert!(
            containerd_gets(&lines, &layer.digest).is_empty(),
            "{lines:#?}"
        );
    }
    assert_eq!(
        containerd_gets(&lines, &local.digest).len(),
        1,
        "{lines:#?}"
    );
    let out = run_sh(
        &node.containerd,
        &zstd_ref,
        "cat /work/label.txt /work/top.txt",
    );
    assert_eq!(out, format!("{label}\nzstd {label}\n"));
    let top = chain_top(&node.containerd, &zstd_ref);
    let info = node
        .containerd
        .ok(&["snapshots", "--snapshotter", "lazyimg", "info", &top]);
    assert!(
        !info.contains("lazyimg.remote"),
        "the zstd layer is local: {info}"
    );

    // Each on a node of its own: the demo image's layers are not shared.
    for reference in [&plain_ref, &unapproved_ref] {
        let node = Node::start(&lazyimg);
        let log_start = plain_log_len(env);
        rpull(&node.containerd, reference);
        let lines = plain_log_since(env, log_start);
        for layer in layers(reference) {
            assert_eq!(
                containerd_gets(&lines, &layer).len(),
                1,
                "{reference}: {lines:#?}"
            );
        }
        let out = run_sh(&node.containerd, reference, "cat /hello.txt");
        assert_eq!(out, "hello from lazyimg\n");
        let log = node.snapshotter.log();
        assert!(log.contains("not served lazily"), "{log}");
    }
}

/// A node: containerd with the lazyimg snapshotter, state in temp dirs.
/// Fields drop in order: containerd (and its containers) before the
/// snapshotter and its layer store.
struct Node {
    containerd: Containerd,
    snapshotter: Snapshotter,
    _state: tempfile::TempDir,
}

impl Node {
    fn start(lazyimg: &Lazyimg) -> Node {
        Node::start_with(lazyimg, "")
    }

    /// A node whose containerd config also holds `extra`.
    fn start_with(lazyimg: &Lazyimg, extra: &str) -> Node {
        let state = state_dir();
        let snapshotter = Snapshotter::start(lazyimg, state.path());
        Node {
            containerd: Containerd::start(&snapshotter.containerd_config, testenv().plain(), extra),
            snapshotter,
            _state: state,
        }
    }
}

/// The chain ID of `reference`'s top layer: the committed snapshot its
/// containers start from (`ctr image` reports it as the image's snapshot).
fn chain_top(containerd: &Containerd, reference: &str) -> String {
    let id = format!("probe-{}", nonce());
    containerd.ok(&[
        "container",
        "create",
        "--snapshotter",
        "lazyimg",
        reference,
        &id,
    ]);
    let info = containerd.ok(&["snapshots", "--snapshotter", "lazyimg", "info", &id]);
    containerd.ok(&["container", "rm", &id]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    info["Parent"].as_str().unwrap().to_string()
}

/// A short state directory (overlayfs mount options must fit in a page).
fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lazyimg-sn-")
        .tempdir_in("/tmp")
        .unwrap()
}

#[test]
fn a_torture_image_through_the_snapshotter_lists_like_umocis_unpack() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let spec = torture_image(Compression::Gzip);
    let built: Vec<BuiltLayer> = spec.layers.iter().map(build_layer).collect();
    let (layout, _) = build_layout_from_layers(&work.path().join("t"), &spec, &built, "v1");
    let reference = format!("{}/ctd/torture-{}:v1", env.plain(), nonce());
    push(&layout.dir, &reference);
    authed(&Lazyimg::new(env), &["index", "--push", &reference]).ok();
    let oracle = unpack_with_umoci(&layout.dir, "v1", &work.path().join("bundle")).unwrap();
    let oracle = listing(&oracle).unwrap();

    let lazyimg = Lazyimg::new(env);
    let node = Node::start(&lazyimg);
    let log_start = plain_log_len(env);
    rpull(&node.containerd, &reference);
    let lines = plain_log_since(env, log_start);
    for layer in &built {
        assert!(
            containerd_gets(&lines, &layer.digest).is_empty(),
            "{lines:#?}"
        );
    }
    // A container's root, mounted exactly as containerd mounts it for runc:
    // `ctr snapshots mounts` prints the mount(8) command of the container's
    // snapshot (overlayfs over the layer store's per-layer trees).
    let id = format!("torture-{}", nonce());
    let ctr = &node.containerd;
    ctr.ok(&[
        "container",
        "create",
        "--snapshotter",
        "lazyimg",
        &reference,
        &id,
    ]);
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let mount = ctr.ok(&[
        "snapshots",
        "--snapshotter",
        "lazyimg",
        "mounts",
        rootfs.to_str().unwrap(),
        &id,
    ]);
    assert!(mount.contains("lowerdir="), "{mount}");
    sh(&mount);
    let got = listing(&rootfs);
    sh(&format!("umount {}", rootfs.display()));
    ctr.ok(&["container", "rm", &id]);
    let differences = diff_listings(&oracle, &got.unwrap());
    assert!(
        differences.is_empty(),
        "container root vs umoci:\n{}",
        differences.join("\n")
    );
}

#[test]
fn a_cri_pull_is_lazy_and_a_pod_runs_its_container() {
    let env = testenv();
    let work = tempfile::tempdir().unwrap();
    let label = format!("ctd-cri-{}", nonce());
    let built = [
        busybox_layer(work.path()),
        build_layer(&LayerSpec::new(vec![
            dir("work"),
            file("work/label.txt", format!("{label}\n")),
        ])),
    ];
    let spec = ImageSpec::new(Vec::new()).env(&["PATH=/bin"]);
    let (layout, _) = build_layout_from_layers(&work.path().join("img"), &spec, &built, "v1");
    let reference = format!("{}/ctd/{label}:v1", env.plain());
    push(&layout.dir, &reference);
    authed(&Lazyimg::new(env), &["index", "--push", &reference]).ok();

    // The pods' sandbox ("pause") image: busybox sleeping, no index (so
    // containerd unpacks it into a local snapshot).
    let pause_spec = ImageSpec::new(Vec::new())
        .env(&["PATH=/bin"])
        .cmd(&["sleep", "3600"]);
    let pause_layers = [busybox_layer(work.path())];
    let (pause, _) =
        build_layout_from_layers(&work.path().join("pause"), &pause_spec, &pause_layers, "v1");
    let pause_ref = format!("{}/ctd/pause-{label}:v1", env.plain());
    push(&pause.dir, &pause_ref);

    let lazyimg = Lazyimg::new(env);
    // restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, so it may not
    // lower an oom_score_adj (CRI's default for a sandbox is -998) and runc's
    // init dies ("can't get final child's PID from pipe").
    let node = Node::start_with(
        &lazyimg,
        &format!(
            "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{pause_ref}\"\n  \
             restrict_oom_score_adj = true\n"
        ),
    );
    let mut cri = Cri::connect(&node.containerd.socket()).unwrap();
    let log_start = plain_log_len(env);
    // As the kubelet would: CRI's PullImage, CRI's snapshotter and labels
    // from `lazyimg snapshotter --print-config`.
    let image_id = cri
        .pull_image(&reference)
        .unwrap_or_else(|e| panic!("PullImage: {e}\n{}", node.containerd.log()));
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    let lines = plain_log_since(env, log_start);
    for layer in &built {
        let gets = containerd_gets(&lines, &layer.digest);
        assert!(gets.is_empty(), "{gets:#?}\n{}", node.snapshotter.log());
    }
    // The CRI labels arrived with each layer and stay on its snapshot.
    let ctr = |args: &[&str]| node.containerd.ok(&[&["-n", "k8s.io"], args].concat());
    let names: Vec<String> = ctr(&["snapshots", "--snapshotter", "lazyimg", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(names.len(), built.len(), "{names:?}");
    for name in &names {
        let info = ctr(&["snapshots", "--snapshotter", "lazyimg", "info", name]);
        assert!(
            info.contains("containerd.io/snapshot/cri.image-ref"),
            "{info}"
        );
        assert!(info.contains("lazyimg.remote"), "{info}");
    }
    let content = ctr(&["content", "ls", "-q"]);
    for layer in &built {
        assert!(!content.contains(&layer.digest), "{content}");
    }
    let id = format!("cri-{}", nonce());
    let out = ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "lazyimg",
        &reference,
        &id,
        "cat",
        "/work/label.txt",
    ]);
    assert_eq!(out, format!("{label}\n"));

    // A pod with one container of the image, as the kubelet runs a job (host
    // network: this node has no CNI plugins configured).
    let logs = tempfile::tempdir().unwrap();
    let sandbox = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "lazy-job".into(),
            uid: nonce(),
            namespace: "default".into(),
        }),
        // The node's own, as for the kubelet's host-network pods.
        hostname: String::new(),
        log_directory: logs.path().to_str().unwrap().into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NAMESPACE_NODE,
                }),
            }),
        }),
    };
    let pod = cri
        .run_pod(&sandbox)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", node.containerd.log()));
    let job = ContainerConfig {
        metadata: Some(ContainerMetadata { name: "job".into() }),
        image: Some(CriImage {
            image: reference.clone(),
            annotations: Default::default(),
        }),
        command: vec!["cat".into(), "/work/label.txt".into()],
        log_path: "job.log".into(),
    };
    let job = cri
        .start_container(&pod, job, &sandbox)
        .unwrap_or_else(|e| {
            panic!(
                "CreateContainer/StartContainer: {e}\n{}",
                node.containerd.log()
            )
        });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        let status = cri.container_status(&job).unwrap();
        if status.state == CONTAINER_EXITED {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job still runs: {status:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status.exit_code, 0, "{status:?}");
    // CRI's log format: "TIME stdout F LINE".
    let log = std::fs::read_to_string(logs.path().join("job.log")).unwrap();
    assert!(
        log.trim_end().ends_with(&format!("stdout F {label}")),
        "{log}"
    );
    cri.remove_pod(&pod).unwrap();
}

/// The snippet and systemd unit in scripts/containerd are what the command
/// prints and accepts: they cannot drift from it.
#[test]
fn the_committed_containerd_snippet_and_unit_match_the_command() {
    let lazyimg = Lazyimg::new(testenv());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/containerd");
    let printed = lazyimg
        .run(&["snapshotter", "--print-config"])
        .ok()
        .stdout();
    let committed = std::fs::read_to_string(repo.join("config-snippet.toml")).unwrap();
    assert_eq!(
        committed, printed,
        "regenerate with: lazyimg snapshotter --print-config"
    );
    let unit = std::fs::read_to_string(repo.join("lazyimg-snapshotter.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(args[1], "snapshotter", "{exec}");
    let socket = args[args.iter().position(|a| *a == "--socket").unwrap() + 1];
    assert!(
        printed.contains(&format!("address = \"{socket}\"")),
        "{printed}"
    );
    // The unit's options are the command's own.
    let help = lazyimg.run(&["snapshotter", "--help"]).ok().stdout();
    for option in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(option),
            "{option} is not an option of lazyimg snapshotter"
        );
    }
    assert!(
        unit.contains("KillMode=process"),
        "the layer store must outlive restarts"
    );
}
