//! The index artifact's per-layer file: its encoding and the checks it must pass.

use serde::{Deserialize, Serialize};

use super::FORMAT_VERSION;
use crate::chunkmap::GzipResume;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::Descriptor;
use crate::layer::{self, Chunk, ChunkCodec, ChunkedLayer};

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

    pub(super) fn decode(bytes: &[u8]) -> std::result::Result<ArtifactLayer, String> {
        // Bounded: a hostile blob cannot make us allocate more than this.
        let raw = zstd::bulk::decompress(bytes, 512 << 20).map_err(|e| e.to_string())?;
        let file: ArtifactLayer = postcard::from_bytes(&raw).map_err(|e| e.to_string())?;
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
/// inside it, in order, without overlapping content.
pub(super) fn check_file(
    file: &ArtifactLayer,
    layer: &Descriptor,
    windows: Option<&Descriptor>,
) -> std::result::Result<(), String> {
    if file.layer != layer.digest || file.layer_size != layer.size {
        return Err(format!(
            "describes {} ({} bytes), not this layer",
            file.layer, file.layer_size
        ));
    }
    check_chunks(&file.chunked.chunks, layer.size)?;
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
            if windows.map(|w| (w.digest, w.size))
                == Some((gzip.windows_blob, gzip.windows_size))
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
