//! Planning a seed: every manifest an image consists of (an index and all its
//! platforms, as `skopeo copy --all` does), fetched and verified, and the blobs
//! they name, each listed once.

use bytes::Bytes;
use oci_client::RegistryOperation;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Descriptor, DescriptorExt, Manifest};
use crate::pull::{check_descriptor, fetch_named_manifest};
use crate::reference::ImageRef;
use crate::registry::RegistryClient;
use crate::store::Store;

/// Index nesting followed at most (an index of indexes is legal, deeper is abuse).
const MAX_INDEX_DEPTH: usize = 4;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A manifest or index, verified, with the media type to serve it under.
#[derive(Debug, Clone)]
pub struct Document {
    pub digest: Digest,
    pub bytes: Bytes,
    pub media_type: String,
}

/// A blob to copy, and how to name it in progress and errors.
#[derive(Debug, Clone)]
pub struct PlannedBlob {
    pub descriptor: Descriptor,
    /// The descriptor's digest and size (bytes).
    pub digest: Digest,
    pub size: u64,
    pub what: String,
}

/// Everything an image consists of, manifests verified, blobs listed once each.
#[derive(Debug, Clone)]
pub struct Plan {
    pub image: ImageRef,
    /// What the reference points at (an index for multi-platform images).
    pub top: Document,
    /// Manifests an index names (any depth), children before their parents.
    pub children: Vec<Document>,
    pub blobs: Vec<PlannedBlob>,
}

impl Plan {
    pub fn digest(&self) -> Digest {
        self.top.digest
    }

    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

/// Fetches and verifies every manifest `image` consists of (from its source) and
/// keeps them in the store. Authenticates first, so a bad token fails here.
pub async fn plan(store: &Store, source: &RegistryClient, image: &ImageRef) -> Result<Plan> {
    source
        .authenticate(&image.source, RegistryOperation::Pull)
        .await?;
    let (bytes, digest) = fetch_named_manifest(source, image).await?;
    let top = Document {
        digest,
        media_type: media_type_of(&bytes, None),
        bytes,
    };
    let mut plan = Plan {
        image: image.clone(),
        top: top.clone(),
        children: Vec::new(),
        blobs: Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    visit(store, source, &mut plan, &top, 0, &mut seen).await?;
    Ok(plan)
}

/// Adds what `doc` refers to: an index's manifests (fetched, verified, visited),
/// or an image manifest's config and layers.
fn visit<'a>(
    store: &'a Store,
    source: &'a RegistryClient,
    plan: &'a mut Plan,
    doc: &'a Document,
    depth: usize,
    seen: &'a mut std::collections::HashSet<Digest>,
) -> futures_util::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let name = plan.image.to_string();
        let what = if depth == 0 {
            format!("manifest of {name}")
        } else {
            format!("manifest {} of {name}", doc.digest)
        };
        store.put(doc.digest, &doc.bytes, &what)?;
        match Manifest::parse(&doc.bytes, &what)? {
            Manifest::Index(index) => {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(Error::Manifest {
                        what,
                        reason: format!("indexes nested more than {MAX_INDEX_DEPTH} deep"),
                    });
                }
                for entry in index.manifests() {
                    let digest = entry.sha256()?;
                    if !seen.insert(digest) {
                        continue;
                    }
                    let child_ref = plan.image.source.clone_with_digest(digest.to_string());
                    let bytes = source.fetch_manifest(&child_ref).await?;
                    let child_what = format!("manifest {digest} of {name}");
                    check_descriptor(entry, &bytes, &child_what)?;
                    let child = Document {
                        digest,
                        media_type: media_type_of(&bytes, Some(entry.media_type().as_ref())),
                        bytes,
                    };
                    visit(store, source, plan, &child, depth + 1, seen).await?;
                    plan.children.push(child);
                }
            }
            Manifest::Image(manifest) => {
                let platform = manifest_label(doc, depth);
                let mut add = |descriptor: &Descriptor, what: String| -> Result<()> {
                    let digest = descriptor.sha256()?;
                    if seen.insert(digest) {
                        plan.blobs.push(PlannedBlob {
                            descriptor: descriptor.clone(),
                            digest,
                            size: descriptor.size(),
                            what,
                        });
                    }
                    Ok(())
                };
                add(manifest.config(), format!("config{platform} of {name}"))?;
                let count = manifest.layers().len();
                for (i, layer) in manifest.layers().iter().enumerate() {
                    add(
                        layer,
                        format!(
                            "layer {}/{count}{platform} {} of {name}",
                            i + 1,
                            layer.digest()
                        ),
                    )?;
                }
            }
        }
        Ok(())
    })
}

fn manifest_label(doc: &Document, depth: usize) -> String {
    if depth == 0 {
        String::new()
    } else {
        format!(" (manifest {})", short(&doc.digest))
    }
}

fn short(digest: &Digest) -> String {
    let text = digest.to_string();
    text[..text.len().min(19)].to_string()
}

/// The media type a registry must be told: the document's own `mediaType`, else
/// the descriptor's, else OCI's by shape (OCI documents may omit it).
fn media_type_of(bytes: &[u8], descriptor: Option<&str>) -> String {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    if let Some(own) = value.get("mediaType").and_then(|m| m.as_str())
        && !own.is_empty()
    {
        return own.to_string();
    }
    if let Some(given) = descriptor.filter(|d| !d.is_empty()) {
        return given.to_string();
    }
    if value.get("manifests").is_some() {
        OCI_INDEX.to_string()
    } else {
        OCI_MANIFEST.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_come_from_the_document_then_the_descriptor_then_the_shape() {
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
        assert_eq!(
            media_type_of(docker, Some(OCI_MANIFEST)),
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"config":{}}"#, None),
            OCI_MANIFEST
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"manifests":[]}"#, None),
            OCI_INDEX
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2}"#, Some("application/x-custom")),
            "application/x-custom"
        );
    }
}
