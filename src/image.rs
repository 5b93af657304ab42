//! The OCI / Docker v2 schema 2 documents lazyimg reads (manifests, indexes,
//! descriptors, image configurations, platforms) as oci-spec's types, and what
//! lazyimg asks of them: which manifest of an index serves a platform
//! (image-spec image-index.md), how a layer is encoded, and each descriptor's
//! digest as lazyimg's sha256-only [`Digest`], the boundary past which every
//! digest is one lazyimg can verify.
//!
//! Manifests are parsed for reading only: lazyimg re-serves and copies the
//! bytes it fetched, never a re-serialisation, so digests stay the
//! registry's.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

pub use oci_spec::image::{
    Arch, Config, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, ImageManifestBuilder,
    MediaType, Os, Platform,
};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::{
    Compression, ESTARGZ_TOC_ANNOTATION, ZSTD_CHUNKED_LEGACY_TOC_ANNOTATION,
    ZSTD_CHUNKED_TOC_ANNOTATION,
};

/// What lazyimg reads from a descriptor (image-spec descriptor.md), in its
/// own terms.
pub trait DescriptorExt {
    /// The descriptor's digest as a [`Digest`]. Documents parsed by
    /// [`Manifest::parse`] and [`parse_index`] hold sha256 digests only, so
    /// for them this never fails; otherwise an algorithm other than sha256 is
    /// [`Error::Manifest`].
    fn sha256(&self) -> Result<Digest>;
    /// The annotation `key`, if the descriptor has it.
    fn annotation(&self, key: &str) -> Option<&str>;
    /// A layer its image marks non-distributable: OCI's
    /// `…layer.nondistributable.v1…`, Docker's `…rootfs.foreign.diff…`.
    fn is_non_distributable(&self) -> bool;
    /// How a layer of image `image` is compressed; a layer that is no tar
    /// (an unknown media type) is an error naming it, the same wherever a
    /// layer is read.
    fn layer_compression(&self, image: &str) -> Result<Compression>;
}

impl DescriptorExt for Descriptor {
    fn sha256(&self) -> Result<Digest> {
        to_digest(self.digest())
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations()
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }

    fn is_non_distributable(&self) -> bool {
        let media_type = self.media_type().as_ref();
        media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
            || media_type.starts_with("application/vnd.docker.image.rootfs.foreign.")
    }

    fn layer_compression(&self, image: &str) -> Result<Compression> {
        Compression::from_media_type(self.media_type().as_ref()).ok_or_else(|| Error::Manifest {
            what: image.to_string(),
            reason: format!(
                "layer {} has unsupported media type {}",
                self.digest(),
                self.media_type()
            ),
        })
    }
}

/// `digest` as a [`Digest`]; any algorithm but sha256 is [`Error::Manifest`]
/// (lazyimg verifies sha256 only; the distribution spec makes it the one
/// registries must support).
pub fn to_digest(digest: &oci_spec::image::Digest) -> Result<Digest> {
    Digest::from_hex(digest.digest())
        .ok()
        .filter(|_| *digest.algorithm() == oci_spec::image::DigestAlgorithm::Sha256)
        .ok_or_else(|| Error::Manifest {
            what: digest.to_string(),
            reason: "not a sha256 digest, the only algorithm lazyimg verifies".into(),
        })
}

/// `digest` in oci-spec's type (always valid: a [`Digest`] is sha256).
pub fn oci_digest(digest: &Digest) -> oci_spec::image::Digest {
    oci_spec::image::Sha256Digest::from_str(&digest.hex())
        .expect("a Digest is 64 lowercase hex characters")
        .into()
}

/// A descriptor of `size` bytes of `media_type` at `digest`, with
/// `annotations` (none when empty).
pub fn descriptor(
    media_type: &str,
    digest: &Digest,
    size: u64,
    annotations: HashMap<String, String>,
) -> Descriptor {
    let mut descriptor = Descriptor::new(media_type.into(), size, oci_digest(digest));
    if !annotations.is_empty() {
        descriptor.set_annotations(Some(annotations));
    }
    descriptor
}

/// `document` as JSON with every object's keys sorted (serde_json's `Value`
/// map is ordered), so equal documents give equal bytes and digests although
/// oci-spec keeps annotations in `HashMap`s. For documents lazyimg writes
/// (index artifacts, referrers lists); fetched ones are copied as fetched.
pub fn to_json(document: &impl serde::Serialize) -> Vec<u8> {
    let value = serde_json::to_value(document).expect("OCI documents serialise");
    serde_json::to_vec(&value).expect("JSON values serialise")
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
    /// Parses manifest bytes; `what` names the document in errors
    /// ([`Error::Manifest`]: not JSON, not an image manifest or index of
    /// schemaVersion 2, a digest that is not sha256).
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
            .unwrap_or("")
            .to_string();
        let is_index = media_type.contains("index")
            || media_type.contains("manifest.list")
            || (media_type.is_empty() && value.get("manifests").is_some());
        let schema = value.get("schemaVersion").and_then(|v| v.as_u64());
        if schema != Some(2) {
            let schema = schema.map_or("missing".to_string(), |s| s.to_string());
            return Err(malformed(format!("schemaVersion {schema}, expected 2")));
        }
        let manifest = if is_index {
            let index: ImageIndex =
                serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
            check_digests(index.manifests().iter(), what)?;
            Manifest::Index(index)
        } else {
            let image: ImageManifest =
                serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
            if !(media_type.is_empty()
                || media_type.ends_with("manifest.v1+json")
                || media_type.ends_with("manifest.v2+json"))
            {
                return Err(malformed(format!("unsupported media type {media_type}")));
            }
            let descriptors = std::iter::once(image.config())
                .chain(image.layers())
                .chain(image.subject());
            check_digests(descriptors, what)?;
            Manifest::Image(image)
        };
        Ok(manifest)
    }
}

/// The layers of `manifest`, bottom first, each with its digest as a
/// [`Digest`] (see [`DescriptorExt::sha256`]).
pub fn layers(manifest: &ImageManifest) -> Result<Vec<(Digest, &Descriptor)>> {
    manifest
        .layers()
        .iter()
        .map(|layer| Ok((layer.sha256()?, layer)))
        .collect()
}

/// An image index read from `bytes` (a referrers list, image-spec
/// image-index.md), its entries' digests sha256; `what` names it in errors.
pub fn parse_index(bytes: &[u8], what: &str) -> Result<ImageIndex> {
    let index: ImageIndex = serde_json::from_slice(bytes).map_err(|e| Error::Manifest {
        what: what.to_string(),
        reason: e.to_string(),
    })?;
    check_digests(index.manifests().iter(), what)?;
    Ok(index)
}

fn check_digests<'a>(descriptors: impl Iterator<Item = &'a Descriptor>, what: &str) -> Result<()> {
    for descriptor in descriptors {
        to_digest(descriptor.digest()).map_err(|_| Error::Manifest {
            what: what.to_string(),
            reason: format!(
                "digest {} is not sha256, the only algorithm lazyimg verifies",
                descriptor.digest()
            ),
        })?;
    }
    Ok(())
}

/// Parses an image configuration (image-spec config.md); `what` names it in
/// errors ([`Error::Manifest`]).
pub fn parse_config(bytes: &[u8], what: &str) -> Result<ImageConfiguration> {
    serde_json::from_slice(bytes).map_err(|e| Error::Manifest {
        what: what.to_string(),
        reason: format!("bad image configuration: {e}"),
    })
}

/// The config's DiffIDs (`rootfs.diff_ids`: sha256 of each layer's
/// uncompressed tar, bottom first) as [`Digest`]s.
pub fn diff_ids(config: &ImageConfiguration, what: &str) -> Result<Vec<Digest>> {
    config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|text| {
            text.parse().map_err(|e| Error::Manifest {
                what: what.to_string(),
                reason: format!("bad diff_id: {e}"),
            })
        })
        .collect()
}

/// The platform a configuration describes.
pub fn config_platform(config: &ImageConfiguration) -> Platform {
    let mut platform = Platform::default();
    platform.set_os(config.os().clone());
    platform.set_architecture(config.architecture().clone());
    platform.set_variant(config.variant().clone());
    platform
}

/// The platform this binary runs on, in OCI terms (image-spec
/// image-index.md's GOOS/GOARCH values; oci-spec's default).
pub fn host_platform() -> Platform {
    Platform::default()
}

/// Parses `OS/ARCH[/VARIANT]` as `podman --platform` takes it.
pub fn parse_platform(text: &str) -> std::result::Result<Platform, String> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts[..] {
        [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => {
            let mut platform = Platform::default();
            platform.set_os(os.into());
            platform.set_architecture(arch.into());
            platform.set_variant(
                parts
                    .get(2)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.to_string()),
            );
            Ok(platform)
        }
        _ => Err(format!(
            "{text:?} is not OS/ARCH[/VARIANT], e.g. linux/arm64"
        )),
    }
}

/// `OS/ARCH[/VARIANT]`, as [`parse_platform`] reads it.
pub fn platform_name(platform: &Platform) -> String {
    let mut name = format!("{}/{}", platform.os(), platform.architecture());
    if let Some(variant) = platform.variant() {
        name.push('/');
        name.push_str(variant);
    }
    name
}

/// Whether an index entry for `candidate` serves the `wanted` platform. A
/// wanted platform without a variant accepts any variant; arm64 images often
/// omit the implied v8.
pub fn platform_accepts(wanted: &Platform, candidate: &Platform) -> bool {
    let variant_ok = match (wanted.variant(), candidate.variant()) {
        (None, _) => true,
        (Some(want), Some(have)) => want == have,
        (Some(want), None) => *wanted.architecture() == Arch::ARM64 && want == "v8",
    };
    wanted.os() == candidate.os() && wanted.architecture() == candidate.architecture() && variant_ok
}

/// The manifest of `index` for `wanted`, skipping attestation entries
/// (`unknown/unknown`); none is [`Error::Platform`] listing those there are.
pub fn select_platform<'a>(index: &'a ImageIndex, wanted: &Platform) -> Result<&'a Descriptor> {
    index
        .manifests()
        .iter()
        .find(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| platform_accepts(wanted, p))
        })
        .ok_or_else(|| Error::Platform {
            wanted: platform_name(wanted),
            available: index
                .manifests()
                .iter()
                .filter_map(|d| d.platform().as_ref())
                .filter(|p| p.os().to_string() != "unknown")
                .map(platform_name)
                .collect::<Vec<_>>()
                .join(", "),
        })
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
    /// From the layer's media type and its TOC annotations (eStargz:
    /// stargz-snapshotter docs/estargz.md; zstd:chunked: containers/storage
    /// pkg/chunked).
    pub fn of(layer: &Descriptor) -> LayerFormat {
        let media_type = layer.media_type().as_ref();
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
                if layer.annotation(ESTARGZ_TOC_ANNOTATION).is_some() =>
            {
                LayerFormat::Estargz
            }
            Some("v1.tar+gzip" | "diff.tar.gzip") => LayerFormat::Gzip,
            Some("v1.tar+zstd" | "diff.tar.zstd")
                if layer.annotation(ZSTD_CHUNKED_TOC_ANNOTATION).is_some()
                    || layer
                        .annotation(ZSTD_CHUNKED_LEGACY_TOC_ANNOTATION)
                        .is_some() =>
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
        descriptor(
            media_type,
            &D.parse().unwrap(),
            0,
            annotation
                .map(|a| (a.to_string(), D.to_string()))
                .into_iter()
                .collect(),
        )
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
        let entry = |platform: &str| {
            let mut entry = layer("application/vnd.oci.image.manifest.v1+json", None);
            entry.set_platform(Some(parse_platform(platform).unwrap()));
            entry
        };
        let mut index = ImageIndex::default();
        index.set_manifests(vec![
            entry("linux/amd64"),
            entry("linux/arm/v7"),
            entry("linux/arm64"),
        ]);
        index
    }

    #[test]
    fn platforms_select_the_right_entry() {
        let index = index();
        let pick = |p: &str| {
            select_platform(&index, &parse_platform(p).unwrap())
                .map(|d| platform_name(d.platform().as_ref().unwrap()))
        };
        assert_eq!(pick("linux/amd64").unwrap(), "linux/amd64");
        assert_eq!(pick("linux/arm64/v8").unwrap(), "linux/arm64");
        assert_eq!(pick("linux/arm/v7").unwrap(), "linux/arm/v7");
        let err = pick("linux/s390x").unwrap_err().to_string();
        assert!(
            err.contains("linux/arm/v7") && err.contains("linux/s390x"),
            "{err}"
        );
        assert!(parse_platform("linux").is_err());
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
        let sha512 = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"a","digest":"sha512:{}","size":1}},"layers":[]}}"#,
            "0".repeat(128)
        );
        let err = Manifest::parse(sha512.as_bytes(), "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not sha256"), "{err}");
    }
}
