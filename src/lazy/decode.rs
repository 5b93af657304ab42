//! Turning fetched blob bytes into a chunk's content ([`decode`]), and checking
//! it ([`verify`]) before anyone sees it: two steps, so a run of gzip spans can
//! inflate in order on one thread while their hashing spreads over the pool.

use std::io::{self, Read};

use bytes::Bytes;

use crate::digest::Digest;
use crate::layer::{Chunk, ChunkCodec, MAX_CHUNK_SIZE};

/// Why a chunk's bytes were rejected; each is a verification failure.
#[derive(Debug)]
pub enum Rejected {
    /// The chunk declares more content than any chunk may hold
    /// ([`MAX_CHUNK_SIZE`]): decoding it would allocate that much.
    TooLarge { size: u64 },
    /// They could not be decoded (corrupt or truncated compressed data).
    Decode(io::Error),
    /// The decoded content does not hash to the chunk's digest.
    ContentDigest { expected: Digest, actual: Digest },
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::TooLarge { size } => write!(
                f,
                "it declares {size} bytes of content, over the {MAX_CHUNK_SIZE}-byte limit"
            ),
            Rejected::Decode(e) => write!(f, "cannot decode: {e}"),
            Rejected::ContentDigest { expected, actual } => {
                write!(f, "content hashes to {actual}, expected {expected}")
            }
        }
    }
}

/// Needed to resume raw deflate in the middle of a gzip layer.
pub trait DeflateResume: Send + Sync {
    /// Inflates span `checkpoint` from exactly its compressed bytes into
    /// `out_len` bytes. `window` is the content that precedes the span when the
    /// caller has it at hand (the span before it, decoded in the same run); it
    /// need not be verified, because the span's own content digest is checked
    /// afterwards and a wrong window can only make that check fail.
    fn inflate(
        &self,
        checkpoint: u32,
        compressed: &[u8],
        out_len: usize,
        window: Option<&[u8]>,
    ) -> io::Result<Vec<u8>>;

    /// Gets ready to inflate at `checkpoints` (fetching their windows) while the
    /// spans themselves are on their way. Failures surface in `inflate`.
    fn prepare(&self, checkpoints: &[u32]);
}

/// The content of `chunk` decoded from its fetched blob bytes, **not yet
/// verified**: pass it to [`verify`] before anyone sees it. `window` is as for
/// [`DeflateResume::inflate`]. Never allocates more than [`MAX_CHUNK_SIZE`].
///
/// The fetched bytes are not hashed: a decoder fed damaged bytes yields wrong
/// content or an error, and [`verify`] catches both, so one sha256 per byte
/// (of the content, which also names the chunk in the store) suffices.
pub fn decode(
    chunk: &Chunk,
    fetched: Bytes,
    deflate: Option<&dyn DeflateResume>,
    window: Option<&[u8]>,
) -> Result<Bytes, Rejected> {
    if chunk.content_size > MAX_CHUNK_SIZE {
        return Err(Rejected::TooLarge {
            size: chunk.content_size,
        });
    }
    let size = chunk.content_size as usize;
    Ok(match chunk.codec {
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
                    .inflate(checkpoint, &fetched, size, window)
                    .map_err(Rejected::Decode)?,
            )
        }
    })
}

/// `content` if it is exactly `chunk`'s content: its size and sha256 match.
pub fn verify(chunk: &Chunk, content: Bytes) -> Result<Bytes, Rejected> {
    let actual = Digest::of(&content);
    if content.len() as u64 != chunk.content_size || actual != chunk.digest {
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

    fn chunk(codec: ChunkCodec, content: &[u8], blob: &[u8]) -> Chunk {
        Chunk {
            content_offset: 0,
            content_size: content.len() as u64,
            blob_offset: 0,
            blob_size: blob.len() as u64,
            codec,
            digest: Digest::of(content),
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn decode_and_verify(chunk: &Chunk, blob: Vec<u8>) -> Result<Bytes, Rejected> {
        verify(chunk, decode(chunk, Bytes::from(blob), None, None)?)
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
            let c = chunk(codec, &content, &blob);
            let out = decode_and_verify(&c, blob).unwrap();
            assert_eq!(&out[..], &content[..]);
        }
    }

    #[test]
    fn a_changed_byte_never_yields_wrong_content() {
        let content = b"0123456789".repeat(1000);
        let gz = gzip(&content);
        let c = chunk(ChunkCodec::Gzip, &content, &gz);
        for at in (0..gz.len()).step_by(7) {
            let mut bad = gz.clone();
            bad[at] ^= 0x01;
            // A flip in gzip metadata (mtime, OS byte) is harmless: the content
            // still verifies. Any other flip is rejected.
            if let Ok(out) = decode_and_verify(&c, bad) {
                assert_eq!(&out[..], &content[..], "byte {at} flipped yet accepted");
            }
        }
    }

    #[test]
    fn short_content_is_rejected() {
        let content = b"abc".repeat(10);
        let mut c = chunk(ChunkCodec::Gzip, &content, &gzip(&content));
        c.content_size += 1;
        assert!(matches!(
            decode_and_verify(&c, gzip(&content)),
            Err(Rejected::Decode(_))
        ));
    }

    #[test]
    fn a_chunk_over_the_limit_is_refused_before_allocating() {
        let mut c = chunk(ChunkCodec::Zeros, b"", b"");
        c.content_size = 100 << 30;
        assert!(matches!(
            decode(&c, Bytes::new(), None, None),
            Err(Rejected::TooLarge { size }) if size == 100 << 30
        ));
    }
}
