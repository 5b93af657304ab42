//! The OCI / Docker v2 schema 2 documents lazyimg reads: manifests, indexes,
//! descriptors, platforms and the layer formats they announce.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::{
    Compression, ESTARGZ_TOC_ANNOTATION, ZSTD_CHUNKED_LEGACY_TOC_ANNOTATION,
    ZSTD_CHUNKED_TOC_ANNOTATION,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// In referrers lists: what kind of artifact the manifest is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// How a layer of image `image` is compressed; a layer that is no tar
    /// (an unknown media type) is an error naming it, the same wherever a
    /// layer is read.
    /// A layer its image marks non-distributable: OCI's
    /// `…layer.nondistributable.v1…`, Docker's `…rootfs.foreign.diff…`.
    pub fn is_non_distributable(&self) -> bool {
        let media_type = self.media_type.as_str();
        media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
            || media_type.starts_with("application/vnd.docker.image.rootfs.foreign.")
    }

    pub fn layer_compression(&self, image: &str) -> Result<Compression> {
        Compression::from_media_type(&self.media_type).ok_or_else(|| Error::Manifest {
            what: image.to_string(),
            reason: format!(
                "layer {} has unsupported media type {}",
                self.digest, self.media_type
            ),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Artifacts only: what they are, and the manifest they describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// A manifest document as fetched by reference.
// Parsed a few times per command and matched at once: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

impl Manifest {
    /// Parses manifest bytes; `what` names the document in errors.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Manifest> {
        let malformed = |reason: String| Error::Manifest {
            what: what.to_string(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| malformed(format!("not JSON: {e}")))?;
        let media_type = value
            .get("mediaType")
            .and_then(|m| m.as_str())
            .unwrap_or("");
        let is_index = media_type.contains("index")
            || media_type.contains("manifest.list")
            || (media_type.is_empty() && value.get("manifests").is_some());
        let manifest = if is_index {
            Manifest::Index(serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?)
        } else {
            let image: ImageManifest =
                serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
            if let Some(media_type) = &image.media_type
                && !media_type.ends_with("manifest.v1+json")
                && !media_type.ends_with("manifest.v2+json")
            {
                return Err(malformed(format!("unsupported media type {media_type}")));
            }
            Manifest::Image(image)
        };
        let schema = match &manifest {
            Manifest::Image(m) => m.schema_version,
            Manifest::Index(i) => i.schema_version,
        };
        if schema != 2 {
            return Err(malformed(format!("schemaVersion {schema}, expected 2")));
        }
        Ok(manifest)
    }
}

/// The parts of an image configuration lazyimg uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<RuntimeConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFsConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFsConfig {
    /// sha256 of each layer's uncompressed tar, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// Image labels (image-spec config.md `Labels`).
    #[serde(default)]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

impl ImageConfig {
    pub fn parse(bytes: &[u8], what: &str) -> Result<ImageConfig> {
        serde_json::from_slice(bytes).map_err(|e| Error::Manifest {
            what: what.to_string(),
            reason: format!("bad image configuration: {e}"),
        })
    }

    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on, in OCI terms.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    /// Whether an index entry for `candidate` serves this (wanted) platform. A wanted
    /// platform without a variant accepts any variant.
    pub fn accepts(&self, candidate: &Platform) -> bool {
        let variant_ok = match (&self.variant, &candidate.variant) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            // arm64 images often omit the implied v8.
            (Some(want), None) => self.architecture == "arm64" && want == "v8",
        };
        self.os == candidate.os && self.architecture == candidate.architecture && variant_ok
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) => write!(f, "/{variant}"),
            None => Ok(()),
        }
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts[..] {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts
                    .get(2)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.to_string()),
            }),
            _ => Err(format!(
                "{text:?} is not OS/ARCH[/VARIANT], e.g. linux/arm64"
            )),
        }
    }
}

impl ImageIndex {
    /// The manifest for `wanted`, skipping attestation entries (`unknown/unknown`).
    pub fn select(&self, wanted: &Platform) -> Result<&Descriptor> {
        self.manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| wanted.accepts(p)))
            .ok_or_else(|| Error::Platform {
                wanted: wanted.to_string(),
                available: self
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .filter(|p| p.os != "unknown")
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// How a layer blob is encoded, as its descriptor announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerFormat {
    Tar,
    Gzip,
    /// Gzip with a table of contents: lazily readable without an index.
    Estargz,
    Zstd,
    /// Zstd with a table of contents in a skippable frame.
    ZstdChunked,
    Unknown(String),
}

impl LayerFormat {
    pub fn of(layer: &Descriptor) -> LayerFormat {
        let media_type = layer.media_type.as_str();
        let base = media_type
            .strip_prefix("application/vnd.oci.image.layer.")
            .or_else(|| media_type.strip_prefix("application/vnd.docker.image.rootfs."));
        let base = base.map(|b| {
            b.trim_start_matches("nondistributable.")
                .trim_start_matches("foreign.")
        });
        match base {
            Some("v1.tar" | "diff.tar") => LayerFormat::Tar,
            Some("v1.tar+gzip" | "diff.tar.gzip")
                if layer.annotations.contains_key(ESTARGZ_TOC_ANNOTATION) =>
            {
                LayerFormat::Estargz
            }
            Some("v1.tar+gzip" | "diff.tar.gzip") => LayerFormat::Gzip,
            Some("v1.tar+zstd" | "diff.tar.zstd")
                if layer.annotations.contains_key(ZSTD_CHUNKED_TOC_ANNOTATION)
                    || layer
                        .annotations
                        .contains_key(ZSTD_CHUNKED_LEGACY_TOC_ANNOTATION) =>
            {
                LayerFormat::ZstdChunked
            }
            Some("v1.tar+zstd" | "diff.tar.zstd") => LayerFormat::Zstd,
            _ => LayerFormat::Unknown(media_type.to_string()),
        }
    }
}

impl fmt::Display for LayerFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayerFormat::Tar => "uncompressed",
            LayerFormat::Gzip => "gzip",
            LayerFormat::Estargz => "eStargz",
            LayerFormat::Zstd => "zstd",
            LayerFormat::ZstdChunked => "zstd:chunked",
            LayerFormat::Unknown(media_type) => media_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_distributable_layers_in_both_vocabularies() {
        let non_distributable = [
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        ];
        for media_type in non_distributable {
            assert!(
                layer(media_type, None).is_non_distributable(),
                "{media_type}"
            );
        }
        for media_type in [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ] {
            assert!(
                !layer(media_type, None).is_non_distributable(),
                "{media_type}"
            );
        }
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn layer(media_type: &str, annotation: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: D.parse().unwrap(),
            size: 0,
            annotations: annotation
                .map(|a| (a.to_string(), D.to_string()))
                .into_iter()
                .collect(),
            platform: None,
            artifact_type: None,
        }
    }

    #[test]
    fn layer_formats_follow_media_types_and_annotations() {
        let oci = "application/vnd.oci.image.layer.v1.tar";
        assert_eq!(LayerFormat::of(&layer(oci, None)), LayerFormat::Tar);
        assert_eq!(
            LayerFormat::of(&layer(&format!("{oci}+gzip"), None)),
            LayerFormat::Gzip
        );
        assert_eq!(
            LayerFormat::of(&layer(&format!("{oci}+gzip"), Some(ESTARGZ_TOC_ANNOTATION))),
            LayerFormat::Estargz
        );
        assert_eq!(
            LayerFormat::of(&layer(&format!("{oci}+zstd"), None)),
            LayerFormat::Zstd
        );
        assert_eq!(
            LayerFormat::of(&layer(
                &format!("{oci}+zstd"),
                Some(ZSTD_CHUNKED_TOC_ANNOTATION)
            )),
            LayerFormat::ZstdChunked
        );
        assert_eq!(
            LayerFormat::of(&layer(
                &format!("{oci}+zstd"),
                Some(ZSTD_CHUNKED_LEGACY_TOC_ANNOTATION)
            )),
            LayerFormat::ZstdChunked
        );
        let docker = "application/vnd.docker.image.rootfs.diff.tar.gzip";
        assert_eq!(LayerFormat::of(&layer(docker, None)), LayerFormat::Gzip);
        assert!(matches!(
            LayerFormat::of(&layer("text/plain", None)),
            LayerFormat::Unknown(_)
        ));
    }

    fn index() -> ImageIndex {
        let entry = |arch: &str, variant: Option<&str>| Descriptor {
            platform: Some(Platform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: variant.map(String::from),
            }),
            ..layer("application/vnd.oci.image.manifest.v1+json", None)
        };
        ImageIndex {
            schema_version: 2,
            media_type: None,
            manifests: vec![
                entry("amd64", None),
                entry("arm", Some("v7")),
                entry("arm64", None),
            ],
        }
    }

    #[test]
    fn platforms_select_the_right_entry() {
        let index = index();
        let pick = |p: &str| {
            index
                .select(&p.parse().unwrap())
                .map(|d| d.platform.clone().unwrap().to_string())
        };
        assert_eq!(pick("linux/amd64").unwrap(), "linux/amd64");
        assert_eq!(pick("linux/arm64/v8").unwrap(), "linux/arm64");
        assert_eq!(pick("linux/arm/v7").unwrap(), "linux/arm/v7");
        let err = pick("linux/s390x").unwrap_err().to_string();
        assert!(
            err.contains("linux/arm/v7") && err.contains("linux/s390x"),
            "{err}"
        );
        assert!("linux".parse::<Platform>().is_err());
    }

    #[test]
    fn malformed_manifests_are_explained() {
        let err = Manifest::parse(b"{]", "ghcr.io/x:y")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ghcr.io/x:y") && err.contains("not JSON"),
            "{err}"
        );
        let schema1 = br#"{"schemaVersion":1,"config":{"mediaType":"a","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":1},"layers":[]}"#;
        assert!(
            Manifest::parse(schema1, "x")
                .unwrap_err()
                .to_string()
                .contains("schemaVersion 1")
        );
        let bad_digest = br#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"md5:00","size":1},"layers":[]}"#;
        assert!(Manifest::parse(bad_digest, "x").is_err());
    }
}
