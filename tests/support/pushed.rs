//! Images pushed to the local plain registry for the runtime tests (Podman's
//! layer store, containerd's snapshotter), and what the registry says of them.

use std::path::Path;
use std::process::Command;

use super::image::{BuiltLayer, Compression};
use super::site::demo_layout;
use super::testenv::{TestEnv, nonce};
use super::tools::skopeo_inspect;

/// Size of `/work/big.bin` in [`push_image`]'s image: the 256 MiB file of
/// issue 11's acceptance 2.
pub const BIG: u64 = 256 << 20;

/// The demo image (busybox) plus a layer of its own holding `/work`, owned by
/// 1000:1000, with `label.txt` and [`BIG`] random bytes in `big.bin`, and a
/// config naming that user, workdir and an env variable; pushed to the plain
/// registry. Returns the reference and the label that `/work/label.txt` and
/// `$GREETING` hold.
pub fn push_image(env: &TestEnv, work: &Path) -> (String, String) {
    let label = format!("als-{}", nonce());
    let layout = demo_layout(work);
    let script = format!(
        "set -e; cd {work}; umoci unpack --image oci:v1 bundle >/dev/null; \
         mkdir -p bundle/rootfs/work; echo {label} > bundle/rootfs/work/label.txt; \
         head -c {BIG} /dev/urandom > bundle/rootfs/work/big.bin; \
         chown -R 1000:1000 bundle/rootfs/work; \
         umoci repack --image oci:v1 bundle; \
         umoci config --image oci:v1 --config.user 1000:1000 --config.workingdir /work \
           --config.env GREETING={label}; \
         umoci gc --layout oci",
        work = work.display()
    );
    assert_eq!(layout, work.join("oci"));
    sh(&script);
    let reference = format!("{}/als/{label}:v1", env.plain());
    sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci:{}:v1 docker://{reference}",
        layout.display()
    ));
    (reference, label)
}

pub fn sh_out(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh(script: &str) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image's layer digests and sizes, from the registry's manifest.
pub fn layer_sizes(reference: &str) -> Vec<(String, u64)> {
    let raw = super::site::raw_manifest(&format!("docker://{reference}"), &["--tls-verify=false"]);
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    (manifest["layers"].as_array().unwrap().iter())
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The image's layer digests, as the registry's manifest names them.
pub fn layers(reference: &str) -> Vec<String> {
    let info = skopeo_inspect(&format!("docker://{reference}"), &["--tls-verify=false"])
        .expect("skopeo inspect");
    info["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

/// The TOC digests the image's layers are annotated with (eStargz,
/// zstd:chunked as skopeo 1.9 writes it).
pub fn toc_digests(reference: &str) -> Vec<String> {
    let raw = super::site::raw_manifest(&format!("docker://{reference}"), &["--tls-verify=false"]);
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let keys = [
        "containerd.io/snapshot/stargz/toc.digest",
        "io.containers.zstd-chunked.manifest-checksum",
    ];
    let tocs: Vec<String> = (manifest["layers"].as_array().unwrap().iter())
        .filter_map(|l| keys.iter().find_map(|k| l["annotations"][k].as_str()))
        .map(str::to_string)
        .collect();
    assert!(!tocs.is_empty(), "{reference} has no TOC layer");
    tocs
}

/// The image's DiffIDs, from the registry's config.
pub fn diff_ids(reference: &str) -> Vec<String> {
    let config = skopeo_inspect(
        &format!("docker://{reference}"),
        &["--tls-verify=false", "--config"],
    )
    .expect("skopeo inspect --config");
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

pub fn sha256_file(path: &Path) -> String {
    super::layer::sha256_digest(&std::fs::read(path).unwrap())
}

/// The demo image's busybox layer, gzip-compressed: the base of these images.
pub fn busybox_layer(work: &Path) -> BuiltLayer {
    BuiltLayer::from_tar(busybox_tar(work), Compression::Gzip, Default::default())
}

/// The demo image's busybox layer as a tar.
pub fn busybox_tar(work: &Path) -> Vec<u8> {
    let layout = demo_layout(work);
    let blob = |digest: &str| {
        let (_, hex) = digest.split_once(':').unwrap();
        std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let gzip = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gzip[..]), &mut tar).unwrap();
    tar
}

/// `base64(reference)`, as containers/storage names the store's directories.
pub fn reference_dir(reference: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(reference)
}

/// Bytes lazyimg (its User-Agent) fetched of blob `layer`, summed over the
/// registry access-log `lines` (the size field after the status).
pub fn lazyimg_fetched(lines: &[String], layer: &str) -> u64 {
    lines
        .iter()
        .filter(|l| l.contains(&format!("/blobs/{layer} ")) && l.contains("lazyimg/"))
        .filter_map(|l| {
            l.split("\" ")
                .nth(1)?
                .split(' ')
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}
