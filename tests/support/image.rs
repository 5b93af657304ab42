//! OCI image layout writer. Everything is deterministic: the same specs give
//! the same blobs and digests.
//!
//! ```ignore
//! let mut layout = OciLayout::create(dir.path());
//! let img = layout.add_image(&torture_image(Compression::Gzip));
//! layout.tag("latest", &img.manifest);
//! // skopeo copy oci:DIR:latest ..., umoci unpack --image DIR:latest OUT
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

pub use super::layer::*;
pub use super::torture::{prng_bytes, simple_image, torture_image};

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// `created` of configs and history entries (fixed for determinism).
pub const CREATED: &str = "1970-01-01T00:00:00Z";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }
    pub fn linux_amd64() -> Platform {
        Platform::new("linux", "amd64", None)
    }
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("architecture".into(), json!(self.architecture));
        m.insert("os".into(), json!(self.os));
        if let Some(v) = &self.variant {
            m.insert("variant".into(), json!(v));
        }
        Value::Object(m)
    }
}

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    /// `sha256:<hex>`
    pub digest: String,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn new(media_type: &str, data: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: sha256_digest(data),
            size: data.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("mediaType".into(), json!(self.media_type));
        m.insert("digest".into(), json!(self.digest));
        m.insert("size".into(), json!(self.size));
        if !self.annotations.is_empty() {
            m.insert("annotations".into(), json!(self.annotations));
        }
        if let Some(p) = &self.platform {
            m.insert("platform".into(), p.to_json());
        }
        Value::Object(m)
    }
    /// The hex part of the digest.
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// A layer as referenced by a built image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDescriptor {
    pub media_type: String,
    pub digest: String,
    /// Size of the (compressed) blob.
    pub size: u64,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    pub annotations: BTreeMap<String, String>,
}

impl LayerDescriptor {
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: self.annotations.clone(),
            platform: None,
        }
    }
}

/// What to put in an image.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub layers: Vec<LayerSpec>,
    pub platform: Platform,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Annotations of the image manifest itself.
    pub annotations: BTreeMap<String, String>,
}

impl ImageSpec {
    /// linux/amd64, no Cmd/Entrypoint/Env.
    pub fn new(layers: Vec<LayerSpec>) -> ImageSpec {
        ImageSpec {
            layers,
            platform: Platform::linux_amd64(),
            cmd: None,
            entrypoint: None,
            env: None,
            working_dir: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }
    pub fn platform(mut self, os: &str, arch: &str, variant: Option<&str>) -> ImageSpec {
        self.platform = Platform::new(os, arch, variant);
        self
    }
    pub fn cmd(mut self, args: &[&str]) -> ImageSpec {
        self.cmd = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }
    pub fn entrypoint(mut self, args: &[&str]) -> ImageSpec {
        self.entrypoint = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }
    pub fn env(mut self, vars: &[&str]) -> ImageSpec {
        self.env = Some(vars.iter().map(|s| s.to_string()).collect());
        self
    }
    /// Same spec with every layer recompressed.
    pub fn with_compression(mut self, c: Compression) -> ImageSpec {
        for l in &mut self.layers {
            l.compression = c;
        }
        self
    }
}

/// Result of [`OciLayout::add_image`].
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// Descriptor of the image manifest (digest, size, media type).
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<LayerDescriptor>,
    pub manifest_json: Vec<u8>,
    pub config_json: Vec<u8>,
    pub platform: Platform,
}

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/`).
pub struct OciLayout {
    pub dir: PathBuf,
    /// Entries of `index.json` (tag name, descriptor), in insertion order.
    tags: Vec<(String, Descriptor)>,
}

impl OciLayout {
    /// Create (or reset) a layout in `dir`: writes `oci-layout` and an empty `index.json`.
    pub fn create(dir: &Path) -> OciLayout {
        fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir blobs/sha256");
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("write oci-layout");
        let l = OciLayout {
            dir: dir.to_path_buf(),
            tags: Vec::new(),
        };
        l.write_index();
        l
    }

    /// Path of the blob with `digest` (`sha256:...`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Store `data` as a blob; returns `sha256:<hex>`.
    pub fn write_blob(&self, data: &[u8]) -> String {
        let digest = sha256_digest(data);
        let p = self.blob_path(&digest);
        if !p.exists() {
            let tmp = p.with_extension("tmp");
            fs::write(&tmp, data).expect("write blob");
            fs::rename(&tmp, &p).expect("rename blob");
        }
        digest
    }

    /// Build the layers of `spec` and write layers, config and manifest.
    pub fn add_image(&self, spec: &ImageSpec) -> BuiltImage {
        let layers: Vec<BuiltLayer> = spec.layers.iter().map(build_layer).collect();
        self.add_image_from_layers(spec, &layers)
    }

    /// Like [`add_image`](Self::add_image) but with prebuilt layers (`spec.layers` is ignored).
    pub fn add_image_from_layers(&self, spec: &ImageSpec, layers: &[BuiltLayer]) -> BuiltImage {
        let mut descs = Vec::new();
        for l in layers {
            let digest = self.write_blob(&l.blob);
            assert_eq!(
                digest, l.digest,
                "BuiltLayer.digest does not match its blob"
            );
            descs.push(LayerDescriptor {
                media_type: l.media_type.clone(),
                digest,
                size: l.blob.len() as u64,
                diff_id: l.diff_id.clone(),
                annotations: l.annotations.clone(),
            });
        }
        let config_json = config_json(spec, &descs);
        self.write_blob(&config_json);
        let config = Descriptor::new(MT_CONFIG, &config_json);

        let mut m = Map::new();
        m.insert("schemaVersion".into(), json!(2));
        m.insert("mediaType".into(), json!(MT_MANIFEST));
        m.insert("config".into(), config.to_json());
        m.insert(
            "layers".into(),
            Value::Array(descs.iter().map(|d| d.descriptor().to_json()).collect()),
        );
        if !spec.annotations.is_empty() {
            m.insert("annotations".into(), json!(spec.annotations));
        }
        let manifest_json = serde_json::to_vec(&Value::Object(m)).unwrap();
        self.write_blob(&manifest_json);
        let manifest = Descriptor::new(MT_MANIFEST, &manifest_json);
        BuiltImage {
            manifest,
            config,
            layers: descs,
            manifest_json,
            config_json,
            platform: spec.platform.clone(),
        }
    }

    /// Write a multi-platform image index blob over `images`
    /// (`(os, architecture, variant, image)`); returns its descriptor
    /// (`.digest` is the index digest). Tag it with [`tag`](Self::tag).
    pub fn add_index(&self, images: &[(&str, &str, Option<&str>, &BuiltImage)]) -> Descriptor {
        let manifests: Vec<Value> = images
            .iter()
            .map(|(os, arch, variant, img)| {
                let mut d = img.manifest.clone();
                d.platform = Some(Platform::new(os, arch, *variant));
                d.to_json()
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests});
        let data = serde_json::to_vec(&index).unwrap();
        self.write_blob(&data);
        Descriptor::new(MT_INDEX, &data)
    }

    /// Record `desc` in `index.json` under `org.opencontainers.image.ref.name = name`
    /// (replacing an earlier entry with that name).
    pub fn tag(&mut self, name: &str, desc: &Descriptor) {
        self.tags.retain(|(n, _)| n != name);
        let mut d = desc.clone();
        d.annotations.insert(REF_NAME.into(), name.into());
        self.tags.push((name.into(), d));
        self.write_index();
    }

    fn write_index(&self) {
        let manifests: Vec<Value> = self.tags.iter().map(|(_, d)| d.to_json()).collect();
        let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .expect("write index.json");
    }
}

fn config_json(spec: &ImageSpec, layers: &[LayerDescriptor]) -> Vec<u8> {
    let mut cfg = Map::new();
    if let Some(v) = &spec.env {
        cfg.insert("Env".into(), json!(v));
    }
    if let Some(v) = &spec.entrypoint {
        cfg.insert("Entrypoint".into(), json!(v));
    }
    if let Some(v) = &spec.cmd {
        cfg.insert("Cmd".into(), json!(v));
    }
    if let Some(v) = &spec.working_dir {
        cfg.insert("WorkingDir".into(), json!(v));
    }
    if !spec.labels.is_empty() {
        cfg.insert("Labels".into(), json!(spec.labels));
    }
    let mut c = Map::new();
    c.insert("created".into(), json!(CREATED));
    c.insert("architecture".into(), json!(spec.platform.architecture));
    c.insert("os".into(), json!(spec.platform.os));
    if let Some(v) = &spec.platform.variant {
        c.insert("variant".into(), json!(v));
    }
    c.insert("config".into(), Value::Object(cfg));
    c.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()}),
    );
    let history: Vec<Value> = (0..layers.len())
        .map(|i| json!({"created": CREATED, "created_by": format!("lazyimg test layer {i}")}))
        .collect();
    c.insert("history".into(), Value::Array(history));
    serde_json::to_vec(&Value::Object(c)).unwrap()
}
