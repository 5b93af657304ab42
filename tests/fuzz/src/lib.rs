//! The fuzz targets' bodies, one function per target (`src/bin/NAME.rs` runs
//! `NAME` under AFL++; `replay` runs any of them over files, uninstrumented).
//!
//! Each feeds its input to the parser's real entry point and must return, Ok
//! or Err, for every input: a panic is a finding. Where a parser sits behind
//! a digest check or a compression layer that random bytes would hardly ever
//! pass, the first input byte chooses between the raw bytes and a mode in
//! which the harness builds the well-formed wrapper (compressing the rest,
//! computing its digest) so the mutations reach the parser behind it.
//! Decompressed output is capped where the parser would otherwise just
//! stream a bomb for a long time: cost in time, not a bug.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::Path;

use bytes::Bytes;
use lazyimg::config::{Config, RegistriesConf};
use lazyimg::digest::Digest;
use lazyimg::image::{self, LayerFormat, Manifest};
use lazyimg::layer::gzip_checkpoints::{self, Checkpoint, GzipCheckpointer};
use lazyimg::layer::{self, Chunk, ChunkCodec, Compression, estargz, zstd_chunked};
use lazyimg::lazy::decode;
use lazyimg::lazy::index_artifact::{ArtifactLayer, check_file};
use lazyimg::policy::{self, Policy};
use lazyimg::reference::ImageRef;
use lazyimg::registry::credentials;

/// Most uncompressed bytes a target reads from one input.
const OUTPUT_CAP: u64 = 64 << 20;

/// A target's body: feeds one input to the parsers.
pub type Target = fn(&[u8]);

/// The targets by name, for `replay`.
pub const TARGETS: &[(&str, Target)] = &[
    ("tar_index", tar_index),
    ("estargz", estargz),
    ("zstd_chunked", zstd_chunked),
    ("index_artifact", index_artifact),
    ("gzip_resume", gzip_resume),
    ("image_json", image_json),
    ("auth_json", auth_json),
    ("policy", policy),
    ("config", config),
];

/// `data[0]` and the rest; `None` for an empty input.
fn mode(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(&m, rest)| (m, rest))
}

/// `N` bytes off the front of `data` (zero-padded when short).
fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

/// A tar, gzip or zstd layer (by `data[0] % 3`) through `read_entries`, as
/// a whole-layer read and an index build do.
pub fn tar_index(data: &[u8]) {
    let Some((m, rest)) = mode(data) else { return };
    let compression = [Compression::None, Compression::Gzip, Compression::Zstd][m as usize % 3];
    let Ok(reader) = layer::decompress(compression, rest) else {
        return;
    };
    let _ = layer::read_entries(reader.take(OUTPUT_CAP));
}

/// The eStargz footer at the blob's end, then its TOC. Odd `data[0]`: the
/// rest is TOC JSON, which the harness packs into a valid blob (a tar
/// member with the JSON, gzip, the footer) behind `u16` bytes of payload.
pub fn estargz(data: &[u8]) {
    let Some((m, mut rest)) = mode(data) else {
        return;
    };
    let blob = if m % 2 == 0 {
        rest.to_vec()
    } else {
        let payload = u16::from_le_bytes(take(&mut rest));
        estargz_blob(rest, payload as usize)
    };
    let footer_start = blob.len().saturating_sub(estargz::FOOTER_SIZE as usize);
    let Ok(range) = estargz::toc_range(&blob[footer_start..], blob.len() as u64) else {
        return;
    };
    let toc = &blob[range.start as usize..range.end as usize];
    // The layer annotation names the JSON's digest: when the harness can
    // find the JSON, the check passes and the TOC itself is parsed.
    let digest = toc_json_digest(toc).unwrap_or_else(|| Digest::of(b""));
    let _ = estargz::parse_toc(toc, range.start, &digest);
}

/// An eStargz blob: `payload` zero bytes, the TOC member holding `json`,
/// the footer pointing at it.
pub fn estargz_blob(json: &[u8], payload: usize) -> Vec<u8> {
    let mut blob = vec![0; payload];
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, "stargz.index.json", json)
        .expect("appending to a Vec");
    let mut gz = flate2::write::GzEncoder::new(&mut blob, flate2::Compression::fast());
    gz.write_all(&tar.into_inner().expect("a Vec"))
        .expect("writing to a Vec");
    gz.finish().expect("writing to a Vec");
    blob.extend_from_slice(&estargz_footer(payload as u64));
    blob
}

/// The 51-byte footer (stargz-snapshotter's `footerBytes`).
pub fn estargz_footer(toc_offset: u64) -> Vec<u8> {
    let mut footer = vec![
        0x1f, 0x8b, 8, 0x04, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
    ];
    footer.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    footer.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    footer
}

/// The sha256 of the first tar entry's content in gzip member `toc`.
fn toc_json_digest(toc: &[u8]) -> Option<Digest> {
    let gz = flate2::read::GzDecoder::new(toc).take(OUTPUT_CAP);
    let mut archive = tar::Archive::new(gz);
    let entry = archive.entries().ok()?.next()?.ok()?;
    let mut json = Vec::new();
    entry.take(OUTPUT_CAP).read_to_end(&mut json).ok()?;
    Some(Digest::of(&json))
}

/// The zstd:chunked position annotations, then the TOC they point at. Even
/// `data[0]`: the rest is a position annotation's value, a newline, and the
/// blob; the checksum annotation is the digest of the bytes the position
/// names. Odd: the rest is TOC JSON, which the harness compresses and
/// places behind `u16` bytes of payload. `data[0] & 2` picks the legacy
/// annotation keys.
pub fn zstd_chunked(data: &[u8]) {
    let Some((m, mut rest)) = mode(data) else {
        return;
    };
    let (position, blob) = if m % 2 == 0 {
        let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let position = String::from_utf8_lossy(&rest[..split]).into_owned();
        (position, rest.get(split + 1..).unwrap_or_default().to_vec())
    } else {
        let payload = u16::from_le_bytes(take(&mut rest)) as usize + 8;
        let Ok(toc) = zstd::bulk::compress(rest, 1) else {
            return;
        };
        let mut blob = vec![0; payload];
        blob.extend_from_slice(&toc);
        (format!("{payload}:{}:{}:1", toc.len(), rest.len()), blob)
    };
    let keys = match m & 2 {
        0 => [
            layer::ZSTD_CHUNKED_TOC_ANNOTATION,
            "io.github.containers.zstd-chunked.manifest-position",
        ],
        _ => [
            layer::ZSTD_CHUNKED_LEGACY_TOC_ANNOTATION,
            "io.containers.zstd-chunked.manifest-position",
        ],
    };
    let named = |position: &str| {
        let mut fields = position.split(':').map(|f| f.parse::<usize>().ok());
        let (offset, length) = (fields.next()??, fields.next()??);
        blob.get(offset..offset.checked_add(length)?)
    };
    let checksum = Digest::of(named(&position).unwrap_or_default());
    let annotations = BTreeMap::from([
        (keys[0].to_string(), checksum.to_string()),
        (keys[1].to_string(), position.clone()),
    ]);
    let Ok(Some(position)) = zstd_chunked::toc_position(&annotations) else {
        return;
    };
    let start = position.offset.min(blob.len() as u64) as usize;
    let end = position.offset.saturating_add(position.length);
    let toc = &blob[start..end.min(blob.len() as u64) as usize];
    let _ = zstd_chunked::parse_toc(toc, &position);
}

/// A lazyimg index artifact's layer file, then the checks against the layer
/// it claims to describe. Even `data[0]`: the rest is the file as fetched
/// (zstd). Odd: the rest is the postcard inside, which the harness
/// compresses.
pub fn index_artifact(data: &[u8]) {
    let Some((m, rest)) = mode(data) else { return };
    let decoded = if m % 2 == 0 {
        ArtifactLayer::decode(rest)
    } else {
        let Ok(file) = zstd::bulk::compress(rest, 1) else {
            return;
        };
        ArtifactLayer::decode(&file)
    };
    let Ok(file) = decoded else { return };
    let layer = image::descriptor(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &file.layer,
        file.layer_size,
        HashMap::new(),
    );
    let windows = file.gzip.as_ref().map(|gzip| {
        image::descriptor(
            "application/vnd.lazyimg.gzip-windows.v1",
            &gzip.windows_blob,
            gzip.windows_size,
            HashMap::new(),
        )
    });
    let _ = check_file(&file, &layer, windows.as_ref());
}

/// Gzip layers read at random: `data[0] % 3` picks
/// 0. `inflate_span` from a checkpoint the input describes;
/// 1. indexing the rest as a gzip blob, then every span inflated from its
///    checkpoint alone must give the same bytes as the streamed read;
/// 2. `lazy::decode` of a chunk of any codec, then `verify`.
pub fn gzip_resume(data: &[u8]) {
    let Some((m, mut rest)) = mode(data) else {
        return;
    };
    match m % 3 {
        0 => {
            let [flags] = take::<1>(&mut rest);
            let out_len = u16::from_le_bytes(take(&mut rest)) as usize;
            let window_len = (u16::from_le_bytes(take(&mut rest)) as usize).min(rest.len());
            let (window, compressed) = rest.split_at(window_len);
            let checkpoint = Checkpoint {
                out: 0,
                input: 0,
                // Out-of-range values too: they must be refused, not trusted.
                bits: flags & 0x0f,
                member_start: flags & 0x10 != 0,
            };
            let _ = gzip_checkpoints::inflate_span(&checkpoint, window, compressed, out_len);
        }
        1 => {
            let [span, out_span] = take::<2>(&mut rest);
            let span = 1 + u64::from(span) * 64;
            let out_span = 1 + u64::from(out_span) * 256;
            let mut indexer = GzipCheckpointer::with_out_span(rest, span, out_span);
            let mut stream = Vec::new();
            if (&mut indexer)
                .take(OUTPUT_CAP)
                .read_to_end(&mut stream)
                .is_err()
                || stream.len() as u64 == OUTPUT_CAP
            {
                return;
            }
            let Ok(index) = indexer.finish() else { return };
            assert_eq!(index.uncompressed_size, stream.len() as u64);
            assert_eq!(index.compressed_size, rest.len() as u64);
            for (k, cp) in index.checkpoints.iter().enumerate() {
                let input = gzip_checkpoints::span_range(&index, k);
                let out = gzip_checkpoints::span_out_range(&index, k);
                let span = gzip_checkpoints::inflate_span(
                    cp,
                    &index.windows[k],
                    &rest[input.start as usize..input.end as usize],
                    (out.end - out.start) as usize,
                )
                .unwrap_or_else(|e| panic!("span {k} of a stream that indexed: {e}"));
                assert!(
                    span == stream[out.start as usize..out.end as usize],
                    "span {k} decodes to other bytes than the stream"
                );
            }
        }
        _ => {
            let [codec, checkpoint] = take::<2>(&mut rest);
            let [a, b, c] = take::<3>(&mut rest);
            // Up to 16 MiB: the codecs' bound (`MAX_CHUNK_SIZE`) is tested
            // in the unit tests; allocating 64 MiB per run would only be slow.
            let content_size = u64::from(u32::from_le_bytes([a, b, c, 0]));
            let codec = match codec % 5 {
                0 => ChunkCodec::Stored,
                1 => ChunkCodec::Gzip,
                2 => ChunkCodec::Zstd,
                3 => ChunkCodec::Zeros,
                _ => ChunkCodec::Deflate {
                    checkpoint: u32::from(checkpoint),
                },
            };
            let chunk = Chunk {
                content_offset: 0,
                content_size,
                blob_offset: 0,
                blob_size: rest.len() as u64,
                codec,
                digest: Digest::of(rest),
            };
            if let Ok(content) = decode::decode(&chunk, Bytes::copy_from_slice(rest), None, None) {
                let _ = decode::verify(&chunk, content);
            }
        }
    }
}

/// A manifest, an index and a configuration, each parsed from the input,
/// then what a pull reads from them.
pub fn image_json(data: &[u8]) {
    match Manifest::parse(data, "fuzz") {
        Ok(Manifest::Image(manifest)) => {
            if let Ok(layers) = image::layers(&manifest) {
                for (_, layer) in layers {
                    let _ = LayerFormat::of(layer);
                    let annotations: BTreeMap<String, String> = layer
                        .annotations()
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    let _ = zstd_chunked::toc_position(&annotations);
                }
            }
        }
        Ok(Manifest::Index(index)) => {
            let _ = image::select_platform(&index, &image::host_platform());
        }
        Err(_) => {}
    }
    if let Ok(index) = image::parse_index(data, "fuzz") {
        let _ = image::select_platform(&index, &image::host_platform());
    }
    if let Ok(config) = image::parse_config(data, "fuzz") {
        let _ = image::diff_ids(&config, "fuzz");
        let _ = image::config_platform(&config);
    }
}

/// An auth file's text after two lines naming the registry host and the
/// repository to look up. Credential helpers it names are not run: the
/// stand-in has no credentials.
pub fn auth_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let (Some(host), Some(repository), Some(file)) = (lines.next(), lines.next(), lines.next())
    else {
        return;
    };
    let no_helper = |_: &str, _: &str| Ok(None);
    let _ = credentials::lookup_in(file, Path::new("auth.json"), host, repository, &no_helper);
}

/// An approved-images list after a line with the image reference to check
/// against it (by name, then by digest).
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (reference, list) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(policy) = Policy::parse(list, Path::new("approved.toml")) else {
        return;
    };
    let config = Config::default();
    let Ok(image) = ImageRef::parse(reference, &config) else {
        return;
    };
    let name = policy::canonical_name(&config, &image);
    if let Ok(approval) = policy.check_name(&name) {
        let _ = approval.explain();
        let digest = Digest::of(reference.as_bytes());
        let _ = approval.check_resolved(&digest, &digest);
        let _ = approval.explain_resolved(&digest, &digest);
    }
}

/// The input as lazyimg's own config.toml and as a registries.conf file,
/// then a reference resolved through both.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut system = RegistriesConf::default();
    let _ = system.merge(text, Path::new("registries.conf"));
    let own = Config::parse(text, Path::new("config.toml")).unwrap_or_default();
    let config = own.with_registries_conf(system);
    let _ = config.registry_for("docker.io/library/busybox");
    let _ = ImageRef::parse("busybox", &config);
}
