//! The index artifact's per-layer file: its encoding and the checks it must pass.

use serde::{Deserialize, Serialize};

use super::FORMAT_VERSION;
use crate::chunkmap::GzipResume;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Descriptor, DescriptorExt, ImageManifest};
use crate::layer::{self, Chunk, ChunkCodec, ChunkedLayer, budget};

/// Largest layer file, decompressed: room for about three million entries.
const MAX_FILE_SIZE: usize = 256 << 20;

/// Memory a layer file's collections may take once decoded ([`budget`]):
/// its postcard is compact (a 10-byte entry becomes a 110-byte one). With
/// the decompressed file and the strings in it, each at most
/// [`MAX_FILE_SIZE`], a hostile file never makes lazyimg allocate more than
/// 1 GiB; a bigger one is refused (and its layer read whole).
const MAX_FILE_MEMORY: u64 = 384 << 20;

/// One layer's chunk map and entry table, as stored in the artifact (postcard, then zstd).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactLayer {
    pub version: u32,
    pub layer: Digest,
    pub layer_size: u64,
    pub chunked: ChunkedLayer,
    pub gzip: Option<GzipResume>,
}

impl ArtifactLayer {
    pub(super) fn encode(&self) -> Result<Vec<u8>> {
        let raw = postcard::to_stdvec(self).expect("an artifact layer always serialises");
        zstd::bulk::compress(&raw, 3).map_err(|e| Error::io("zstd", e))
    }

    /// Decodes an artifact layer file fetched from a registry: untrusted bytes,
    /// which [`check_file`] must then match against the image's layer.
    /// Public so that the fuzz targets in `tests/fuzz` can feed it directly.
    pub fn decode(bytes: &[u8]) -> std::result::Result<ArtifactLayer, String> {
        let raw = zstd::bulk::decompress(bytes, MAX_FILE_SIZE).map_err(|e| e.to_string())?;
        let file: ArtifactLayer = budget::within(MAX_FILE_MEMORY, || postcard::from_bytes(&raw))
            .map_err(|e| e.to_string())?;
        if file.version != FORMAT_VERSION {
            return Err(format!(
                "format version {}, this build reads {FORMAT_VERSION}",
                file.version
            ));
        }
        Ok(file)
    }
}

/// An artifact layer must describe exactly this layer, and its chunks must lie
/// inside it, in order, without overlapping content. `windows` is the artifact's
/// windows blob for this layer, if it lists one.
pub fn check_file(
    file: &ArtifactLayer,
    layer: &Descriptor,
    windows: Option<&Descriptor>,
) -> std::result::Result<(), String> {
    if layer.sha256().ok() != Some(file.layer) || file.layer_size != layer.size() {
        return Err(format!(
            "describes {} ({} bytes), not this layer",
            file.layer, file.layer_size
        ));
    }
    check_chunks(&file.chunked.chunks, layer.size())?;
    match (&file.gzip, windows) {
        (None, _) => {
            if file
                .chunked
                .chunks
                .iter()
                .any(|c| matches!(c.codec, ChunkCodec::Deflate { .. }))
            {
                return Err("deflate chunks without checkpoints".into());
            }
        }
        (Some(gzip), windows)
            if windows.map(|w| (w.sha256().ok(), w.size()))
                == Some((Some(gzip.windows_blob), gzip.windows_size))
                || (windows.is_none() && gzip.windows.is_empty()) =>
        {
            check_chunks(&gzip.windows, gzip.windows_size)?;
            let checkpoints = gzip.checkpoints.len();
            if gzip.window_of.len() != checkpoints
                || gzip.window_of.iter().flatten().any(|&w| w as usize >= gzip.windows.len())
                || file.chunked.chunks.iter().any(|c| {
                    matches!(c.codec, ChunkCodec::Deflate { checkpoint } if checkpoint as usize >= checkpoints)
                })
            {
                return Err("checkpoints and windows do not match".into());
            }
        }
        (Some(_), _) => return Err("its windows blob is missing or does not match".into()),
    }
    Ok(())
}

fn check_chunks(chunks: &[Chunk], blob_size: u64) -> std::result::Result<(), String> {
    let mut content_end = 0;
    for chunk in chunks {
        let blob_end = chunk.blob_offset.checked_add(chunk.blob_size);
        if chunk.content_offset < content_end || blob_end.is_none_or(|end| end > blob_size) {
            return Err(format!(
                "chunk {} is out of order or outside the blob",
                chunk.digest
            ));
        }
        if chunk.content_size > layer::MAX_CHUNK_SIZE {
            return Err(format!(
                "chunk {} declares {} bytes of content, over the {}-byte limit",
                chunk.digest,
                chunk.content_size,
                layer::MAX_CHUNK_SIZE
            ));
        }
        content_end = chunk.content_offset.saturating_add(chunk.content_size);
    }
    Ok(())
}

/// What an index artifact's signature covers: the image it describes and every
/// blob it lists (media type, digest, and the image layer it belongs to), one
/// line each, in manifest order. The blobs are fetched by digest and checked,
/// so the signature binds their content; nothing else in the manifest decides
/// what a node serves.
pub(super) fn signed_payload(artifact: &ImageManifest) -> Vec<u8> {
    let subject = artifact
        .subject()
        .as_ref()
        .map_or_else(|| "-".to_string(), |s| s.digest().to_string());
    let mut text = format!("lazyimg index signature v1\nsubject {subject}\n");
    for blob in artifact.layers() {
        let layer = blob.annotation(super::LAYER_ANNOTATION).unwrap_or("-");
        text += &format!("blob {} {} {layer}\n", blob.media_type(), blob.digest());
    }
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::image::{ImageManifestBuilder, oci_digest};
    use crate::signing::{self, IndexSigner, TrustedKeys, Untrusted};

    fn blob(media_type: &str, content: &[u8], layer: &str) -> Descriptor {
        crate::image::descriptor(
            media_type,
            &Digest::of(content),
            content.len() as u64,
            HashMap::from([(super::super::LAYER_ANNOTATION.into(), layer.into())]),
        )
    }

    fn artifact() -> ImageManifest {
        ImageManifestBuilder::default()
            .schema_version(2u32)
            .config(blob(super::super::EMPTY_MEDIA_TYPE, b"{}", "-"))
            .layers(vec![
                blob(super::super::INDEX_MEDIA_TYPE, b"index", "sha256:layer"),
                blob(super::super::WINDOWS_MEDIA_TYPE, b"windows", "sha256:layer"),
            ])
            .subject(blob("m", b"image manifest", "-"))
            .build()
            .unwrap()
    }

    /// A layer file within its size limit whose entries would decode into
    /// gigabytes (10 bytes of postcard each, 110 bytes decoded) is refused
    /// once they pass the memory budget.
    #[test]
    fn files_that_decode_into_too_much_memory_are_refused() {
        let entry = layer::TarEntry {
            path: "".into(),
            kind: layer::EntryKind::Directory,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: layer::Timestamp::default(),
            xattrs: Vec::new(),
        };
        let file = |entries| ArtifactLayer {
            version: FORMAT_VERSION,
            layer: Digest::of(b"layer"),
            layer_size: 1,
            chunked: ChunkedLayer {
                table: layer::EntryTable {
                    entries,
                    whiteouts: Vec::new(),
                },
                chunks: Vec::new(),
            },
            gzip: None,
        };
        let one = file(vec![entry.clone()]);
        assert_eq!(ArtifactLayer::decode(&one.encode().unwrap()).unwrap(), one);

        // The same file with 2 million entries, made by repeating the one's bytes.
        let bytes = postcard::to_stdvec(&one).unwrap();
        let encoded = postcard::to_stdvec(&entry).unwrap();
        let listed = [&[1][..], &encoded].concat();
        let at = (bytes.windows(listed.len()))
            .position(|w| w == listed)
            .unwrap();
        let count: usize = (1 << 21) + 1;
        let mut many = bytes[..at].to_vec();
        many.extend(postcard::to_stdvec(&count).unwrap());
        many.extend(encoded.repeat(count));
        many.extend(&bytes[at + listed.len()..]);
        let err = ArtifactLayer::decode(&zstd::bulk::compress(&many, 1).unwrap()).unwrap_err();
        assert!(err.contains("of memory lazyimg allows"), "{err}");
    }

    /// A signature over one index never verifies another: every blob's digest,
    /// media type and layer, and the subject, are in the payload.
    #[test]
    fn a_signature_covers_the_subject_and_every_blob() {
        let keys = tempfile::tempdir().unwrap();
        let id = signing::generate(keys.path()).unwrap();
        let signer = IndexSigner::load(&keys.path().join(signing::PRIVATE_KEY_FILE)).unwrap();
        let trusted = TrustedKeys::load(&[keys.path().join(signing::PUBLIC_KEY_FILE)]).unwrap();
        let original = artifact();
        let signature = signer.sign(&signed_payload(&original));
        let check =
            |a: &ImageManifest| trusted.check(&signed_payload(a), Some(&id), Some(&signature));
        assert_eq!(check(&original), Ok(()));

        let mut other_blob = artifact();
        other_blob.layers_mut()[0].set_digest(oci_digest(&Digest::of(b"rogue index")));
        let mut other_layer = artifact();
        other_layer.layers_mut()[1] =
            blob(super::super::WINDOWS_MEDIA_TYPE, b"windows", "sha256:other");
        let mut other_subject = artifact();
        other_subject.set_subject(Some(blob("m", b"another image", "-")));
        let mut dropped = artifact();
        dropped.layers_mut().pop();
        for changed in [other_blob, other_layer, other_subject, dropped] {
            assert!(matches!(
                check(&changed),
                Err(Untrusted::BadSignature { .. })
            ));
        }
    }
}
