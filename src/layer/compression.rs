//! Layer blob decompression by media-type family.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Maps OCI and Docker layer media types (including the nondistributable
    /// and foreign variants) to their compression; `None` (the Option) for
    /// anything that is not a tar layer.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        let suffixes = [
            ("tar", Compression::None),
            ("tar+gzip", Compression::Gzip),
            ("tar.gzip", Compression::Gzip),
            ("tar+zstd", Compression::Zstd),
        ];
        suffixes.into_iter().find_map(|(suffix, compression)| {
            let prefix = media_type.strip_suffix(suffix)?;
            prefix.ends_with('.').then_some(compression)
        })
    }
}

/// Wraps `reader` so it yields the uncompressed tar stream.
///
/// Gzip uses a multi-member decoder because eStargz-style layers are many
/// concatenated gzip members; the zstd decoder already reads across frames
/// and skips skippable frames. Fails only if the zstd context cannot be set up.
pub fn decompress<'a>(
    compression: Compression,
    reader: impl Read + 'a,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn read_all(compression: Compression, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        decompress(compression, data)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn media_types() {
        let cases = [
            (
                "application/vnd.oci.image.layer.v1.tar",
                Some(Compression::None),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Some(Compression::Zstd),
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            ("application/vnd.oci.image.config.v1+json", None),
            ("application/vnd.example.startar", None),
        ];
        for (media_type, expected) in cases {
            assert_eq!(
                Compression::from_media_type(media_type),
                expected,
                "{media_type}"
            );
        }
    }

    #[test]
    fn gzip_multi_member_round_trip() {
        let mut blob = Vec::new();
        for part in [&b"first member, "[..], b"second member"] {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(part).unwrap();
            blob.extend(enc.finish().unwrap());
        }
        assert_eq!(
            read_all(Compression::Gzip, &blob),
            b"first member, second member"
        );
    }

    #[test]
    fn zstd_multi_frame_and_skippable_round_trip() {
        let mut blob = zstd::encode_all(&b"frame one, "[..], 3).unwrap();
        // Skippable frame: magic 0x184D2A5?, little-endian length, payload.
        blob.extend(0x184D_2A50u32.to_le_bytes());
        blob.extend(4u32.to_le_bytes());
        blob.extend(b"skip");
        blob.extend(zstd::encode_all(&b"frame two"[..], 3).unwrap());
        assert_eq!(read_all(Compression::Zstd, &blob), b"frame one, frame two");
    }

    /// The decoding policy for bytes after a layer's last frame or member
    /// (see `gzip_checkpoints`): zero padding is an error for zstd as for
    /// gzip, as in Go's decoders.
    #[test]
    fn zero_padding_after_the_last_frame_or_member_is_an_error() {
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(b"tar").unwrap();
        let zstd = zstd::encode_all(&b"tar"[..], 3).unwrap();
        for (compression, mut blob) in [
            (Compression::Gzip, gzip.finish().unwrap()),
            (Compression::Zstd, zstd),
        ] {
            blob.extend([0; 4096]);
            let mut out = Vec::new();
            let read = decompress(compression, &blob[..])
                .unwrap()
                .read_to_end(&mut out);
            assert!(read.is_err(), "{compression:?}: {out:?}");
        }
    }

    #[test]
    fn none_passes_through() {
        assert_eq!(read_all(Compression::None, b"plain"), b"plain");
    }
}
