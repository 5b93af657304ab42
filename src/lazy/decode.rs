//! Turning fetched blob bytes into a chunk's content, and checking it.

use std::io::{self, Read};

use bytes::Bytes;

use crate::digest::Digest;
use crate::layer::{Chunk, ChunkCodec};

/// Why a chunk's bytes were rejected; both are verification failures.
#[derive(Debug)]
pub enum Rejected {
    /// The fetched bytes do not hash to the digest the index records for them.
    BlobDigest { expected: Digest, actual: Digest },
    /// They could not be decoded (corrupt or truncated compressed data).
    Decode(io::Error),
    /// The decoded content does not hash to the chunk's digest.
    ContentDigest { expected: Digest, actual: Digest },
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::BlobDigest { expected, actual } => {
                write!(f, "fetched bytes hash to {actual}, expected {expected}")
            }
            Rejected::Decode(e) => write!(f, "cannot decode: {e}"),
            Rejected::ContentDigest { expected, actual } => {
                write!(f, "content hashes to {actual}, expected {expected}")
            }
        }
    }
}

/// Needed to resume raw deflate in the middle of a gzip layer.
pub trait DeflateResume: Send + Sync {
    fn inflate(&self, checkpoint: u32, compressed: &[u8], out_len: usize) -> io::Result<Vec<u8>>;

    /// Gets ready to inflate at `checkpoints` (fetching their windows) while the
    /// spans themselves are on their way. Failures surface in `inflate`.
    fn prepare(&self, checkpoints: &[u32]);
}

/// The verified content of `chunk` from its fetched blob bytes.
pub fn decode(
    chunk: &Chunk,
    fetched: Bytes,
    deflate: Option<&dyn DeflateResume>,
) -> Result<Bytes, Rejected> {
    if let Some(expected) = chunk.blob_digest {
        let actual = Digest::of(&fetched);
        if actual != expected {
            return Err(Rejected::BlobDigest { expected, actual });
        }
    }
    let size = chunk.content_size as usize;
    let content = match chunk.codec {
        ChunkCodec::Stored => fetched.slice(..size.min(fetched.len())),
        ChunkCodec::Zeros => Bytes::from(vec![0; size]),
        ChunkCodec::Gzip => read_exactly(flate2::read::MultiGzDecoder::new(&fetched[..]), size)?,
        ChunkCodec::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::with_buffer(&fetched[..]).map_err(Rejected::Decode)?;
            read_exactly(decoder, size)?
        }
        ChunkCodec::Deflate { checkpoint } => {
            let resume = deflate.ok_or_else(|| {
                Rejected::Decode(io::Error::other("no gzip checkpoints for a deflate chunk"))
            })?;
            Bytes::from(
                resume
                    .inflate(checkpoint, &fetched, size)
                    .map_err(Rejected::Decode)?,
            )
        }
    };
    let actual = Digest::of(&content);
    if content.len() != size || actual != chunk.digest {
        return Err(Rejected::ContentDigest {
            expected: chunk.digest,
            actual,
        });
    }
    Ok(content)
}

/// The first `size` bytes `reader` yields; fewer is an error, more is ignored
/// (a gzip member may carry the next tar header after a file's bytes).
fn read_exactly(reader: impl Read, size: usize) -> Result<Bytes, Rejected> {
    let mut out = Vec::with_capacity(size);
    reader
        .take(size as u64)
        .read_to_end(&mut out)
        .map_err(Rejected::Decode)?;
    if out.len() < size {
        return Err(Rejected::Decode(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("decoded {} of {size} bytes", out.len()),
        )));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn chunk(codec: ChunkCodec, content: &[u8], blob: &[u8], blob_digest: bool) -> Chunk {
        Chunk {
            content_offset: 0,
            content_size: content.len() as u64,
            blob_offset: 0,
            blob_size: blob.len() as u64,
            codec,
            blob_digest: blob_digest.then(|| Digest::of(blob)),
            digest: Digest::of(content),
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn every_codec_decodes_and_verifies() {
        let content = b"hello chunk".repeat(100);
        let gz = gzip(&content);
        let zst = zstd::encode_all(&content[..], 3).unwrap();
        for (codec, blob) in [
            (ChunkCodec::Stored, content.clone()),
            (ChunkCodec::Gzip, gz),
            (ChunkCodec::Zstd, zst),
        ] {
            let c = chunk(codec, &content, &blob, true);
            let out = decode(&c, Bytes::from(blob), None).unwrap();
            assert_eq!(&out[..], &content[..]);
        }
    }

    #[test]
    fn a_changed_byte_never_yields_wrong_content() {
        let content = b"0123456789".repeat(1000);
        let gz = gzip(&content);
        for blob_digest in [false, true] {
            let c = chunk(ChunkCodec::Gzip, &content, &gz, blob_digest);
            for at in (0..gz.len()).step_by(7) {
                let mut bad = gz.clone();
                bad[at] ^= 0x01;
                match decode(&c, Bytes::from(bad), None) {
                    Err(_) => {}
                    // Without a blob digest, a flip in gzip metadata (mtime, OS
                    // byte) is harmless: the content still verifies.
                    Ok(out) => {
                        assert!(!blob_digest, "byte {at} flipped yet accepted");
                        assert_eq!(&out[..], &content[..]);
                    }
                }
            }
        }
    }

    #[test]
    fn short_content_is_rejected() {
        let content = b"abc".repeat(10);
        let mut c = chunk(ChunkCodec::Gzip, &content, &gzip(&content), false);
        c.content_size += 1;
        assert!(matches!(
            decode(&c, Bytes::from(gzip(&content)), None),
            Err(Rejected::Decode(_))
        ));
    }
}
