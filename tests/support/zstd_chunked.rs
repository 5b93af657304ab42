//! zstd:chunked images made by skopeo from an image in an OCI layout.
//!
//! skopeo 1.9.3 writes the `io.containers.zstd-chunked.*` annotations (the
//! older keys), no tar-split, and keeps the source config: its diff_ids stay
//! right only for tars that end in two zero blocks, as Go's archive/tar and
//! the tar crate end them (GNU tar's record padding is dropped).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::image::{Descriptor, REF_NAME};
use super::tools::{oci_ref, run};

/// An image skopeo wrote into an OCI layout.
#[derive(Clone, Debug)]
pub struct ConvertedImage {
    pub layout_dir: PathBuf,
    pub manifest_json: Vec<u8>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl ConvertedImage {
    /// The bytes of blob `digest` (`sha256:<hex>`) in the layout.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.trim_start_matches("sha256:");
        let path = self.layout_dir.join("blobs/sha256").join(hex);
        fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }
}

/// `skopeo copy --dest-compress-format zstd:chunked oci:SRC:TAG oci:DST:TAG`,
/// then the new manifest's layers. Copying between local layouts makes
/// skopeo recompress every layer rather than reuse blobs it knows.
pub fn convert_to_zstd_chunked(
    src_dir: &Path,
    tag: &str,
    dst_dir: &Path,
) -> Result<ConvertedImage, String> {
    run(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-compress-format",
            "zstd:chunked",
            &oci_ref(src_dir, tag),
            &oci_ref(dst_dir, tag),
        ],
    )?;
    let read = |path: PathBuf| -> Result<(Vec<u8>, Value), String> {
        let bytes = fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        Ok((bytes, value))
    };
    let (_, index) = read(dst_dir.join("index.json"))?;
    let manifest = (index["manifests"].as_array().into_iter().flatten())
        .find(|m| m["annotations"][REF_NAME] == tag)
        .ok_or_else(|| format!("no {tag} in {}", dst_dir.display()))?;
    let manifest = descriptor(manifest)?;
    let (manifest_json, parsed) = read(dst_dir.join("blobs/sha256").join(manifest.hex()))?;
    let layers = (parsed["layers"].as_array().into_iter().flatten())
        .map(descriptor)
        .collect::<Result<_, _>>()?;
    Ok(ConvertedImage {
        layout_dir: dst_dir.to_path_buf(),
        manifest_json,
        config: descriptor(&parsed["config"])?,
        layers,
    })
}

fn descriptor(v: &Value) -> Result<Descriptor, String> {
    let field = |name: &str| {
        v[name]
            .as_str()
            .map(String::from)
            .ok_or_else(|| format!("descriptor without {name}: {v}"))
    };
    let annotations: BTreeMap<String, String> = (v["annotations"].as_object().into_iter())
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    Ok(Descriptor {
        media_type: field("mediaType")?,
        digest: field("digest")?,
        size: v["size"]
            .as_u64()
            .ok_or_else(|| format!("descriptor without size: {v}"))?,
        annotations,
        platform: None,
    })
}
