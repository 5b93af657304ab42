//! eStargz and zstd:chunked tables of contents, parsed from real layouts: the
//! torture image written as eStargz by tests/support and converted to
//! zstd:chunked by skopeo. Each layer's TOC must give the same index as the
//! layer's plain tar (modulo where content lives), and every chunk must decode
//! to bytes matching its digest.

mod support;

use std::fs;
use std::io::Read;

use lazyimg::digest::Digest;
use lazyimg::image::{DescriptorExt, LayerFormat, Manifest};
use lazyimg::layer::{
    Chunk, ChunkCodec, ChunkedLayer, EntryKind, EntryTable, TarEntry, estargz, read_entries,
    zstd_chunked,
};
use support::estargz::{
    NO_PREFETCH_LANDMARK, TOC_DIGEST_ANNOTATION, TOC_NAME, build_estargz_layer,
};
use support::image::*;
use support::listing::{diff_listings, listing};
use support::tools::unpack_with_umoci;
use support::zstd_chunked::convert_to_zstd_chunked;

/// Small enough that the torture image's big file spans many chunks.
const CHUNK_SIZE: usize = 256 << 10;

/// The torture image plus a layer with a file that has a long run of zeros,
/// which zstd:chunked turns into a `zeros` chunk.
fn spec() -> ImageSpec {
    let mut spec = torture_image(Compression::Gzip);
    let holey = [prng_bytes(7, 5000), vec![0; 100_000], prng_bytes(8, 3000)].concat();
    spec.layers.push(LayerSpec::new(vec![
        dir("holes"),
        file("holes/sparse", holey),
    ]));
    spec
}

/// The lazyimg view of a built image's layer descriptors.
fn layer_descriptors(manifest_json: &[u8]) -> Vec<lazyimg::image::Descriptor> {
    match Manifest::parse(manifest_json, "test image").unwrap() {
        Manifest::Image(manifest) => manifest.layers().clone(),
        Manifest::Index(_) => panic!("expected an image manifest"),
    }
}

/// A chunk's content as a lazy reader gets it: the reader's own decoder,
/// which checks it against the chunk's digest.
fn decode(blob: &[u8], chunk: &Chunk) -> Vec<u8> {
    let start = chunk.blob_offset as usize;
    let fetched = bytes::Bytes::copy_from_slice(&blob[start..start + chunk.blob_size as usize]);
    lazyimg::lazy::decode::decode(chunk, fetched, None, None)
        .and_then(|content| lazyimg::lazy::decode::verify(chunk, content))
        .unwrap_or_else(|e| panic!("{chunk:?}: {e}"))
        .to_vec()
}

/// The whole content space, from decoding every chunk; chunks must tile it.
fn content_space(blob: &[u8], layer: &ChunkedLayer) -> Vec<u8> {
    let mut space = Vec::new();
    for chunk in &layer.chunks {
        assert_eq!(chunk.content_offset, space.len() as u64, "{chunk:?}");
        space.extend(decode(blob, chunk));
    }
    space
}

/// An entry with its content instead of where the content lives, and
/// xattrs in name order (TOCs keep them in a JSON map).
fn comparable(entry: &TarEntry, content_space: &[u8]) -> (TarEntry, Vec<u8>) {
    let mut entry = entry.clone();
    entry.xattrs.sort();
    let mut content = Vec::new();
    if let EntryKind::Regular { offset, size } = &mut entry.kind {
        content = content_space[*offset as usize..(*offset + *size) as usize].to_vec();
        *offset = 0;
    }
    (entry, content)
}

/// `layer`, parsed from a TOC, describes the same tree as `tar`.
fn assert_same_as_tar(layer: &ChunkedLayer, blob: &[u8], tar: &[u8], what: &str) {
    let expected: EntryTable = read_entries(tar).unwrap();
    let space = content_space(blob, layer);
    assert_eq!(layer.table.whiteouts, expected.whiteouts, "{what}");
    let got: Vec<_> = (layer.table.entries.iter())
        .map(|e| comparable(e, &space))
        .collect();
    let want: Vec<_> = (expected.entries.iter())
        .map(|e| comparable(e, tar))
        .collect();
    assert_eq!(got.len(), want.len(), "{what}");
    for (got, want) in got.iter().zip(&want) {
        assert_eq!(got, want, "{what}");
    }
}

/// The chunks holding regular file `path`.
fn chunks_of<'l>(layer: &'l ChunkedLayer, path: &str) -> Vec<&'l Chunk> {
    let entry = (layer.table.entries.iter())
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no {path}"));
    let EntryKind::Regular { offset, size } = entry.kind else {
        panic!("{path} is not a regular file");
    };
    (layer.chunks.iter())
        .filter(|c| (offset..offset + size).contains(&c.content_offset))
        .collect()
}

#[test]
fn estargz_tocs_match_the_layer_tars() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec();
    let layers: Vec<BuiltLayer> = (spec.layers.iter())
        .map(|l| build_estargz_layer(l, CHUNK_SIZE))
        .collect();
    let layout = OciLayout::create(tmp.path());
    let img = layout.add_image_from_layers(&spec, &layers);

    let mut parsed = Vec::new();
    let descriptors = layer_descriptors(&img.manifest_json);
    for (i, (desc, layer_spec)) in descriptors.iter().zip(&spec.layers).enumerate() {
        let what = format!("eStargz layer {i}");
        assert_eq!(LayerFormat::of(desc), LayerFormat::Estargz, "{what}");
        let blob = fs::read(layout.blob_path(desc.digest().as_ref())).unwrap();
        // Still one gzip stream of the tar the config's diff_id names.
        let mut tar = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(sha256_digest(&tar), img.layers[i].diff_id, "{what}");

        let size = blob.len() as u64;
        let footer = &blob[blob.len() - estargz::FOOTER_SIZE as usize..];
        let range = estargz::toc_range(footer, size).unwrap();
        let toc_digest: Digest = desc
            .annotation(TOC_DIGEST_ANNOTATION)
            .unwrap()
            .parse()
            .unwrap();
        let toc = &blob[range.start as usize..range.end as usize];
        let layer = estargz::parse_toc(toc, range.start, &toc_digest).unwrap();

        let plain = build_tar(&layer_spec.entries, layer_spec.long_names);
        assert_same_as_tar(&layer, &blob, &plain, &what);
        parsed.push(layer);
    }
    // The big file is cut every CHUNK_SIZE bytes.
    let sizes: Vec<_> = (chunks_of(&parsed[0], "data/random.bin").iter())
        .map(|c| c.content_size as usize)
        .collect();
    let full = support::torture::RANDOM_FILE_SIZE / CHUNK_SIZE;
    let rest = support::torture::RANDOM_FILE_SIZE % CHUNK_SIZE;
    assert_eq!(sizes, [vec![CHUNK_SIZE; full], vec![rest]].concat());
}

/// eStargz-unaware tools see a plain gzip layer: umoci unpacks the eStargz
/// image to the gzip image's tree plus the landmark and TOC files.
#[test]
fn estargz_images_unpack_like_gzip_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = torture_image(Compression::Gzip);
    let mut gzip = OciLayout::create(&tmp.path().join("gzip"));
    let img = gzip.add_image(&spec);
    gzip.tag("torture", &img.manifest);
    let layers: Vec<BuiltLayer> = (spec.layers.iter())
        .map(|l| build_estargz_layer(l, CHUNK_SIZE))
        .collect();
    let mut esgz = OciLayout::create(&tmp.path().join("estargz"));
    let img = esgz.add_image_from_layers(&spec, &layers);
    esgz.tag("torture", &img.manifest);

    let unpack = |layout: &OciLayout, name: &str| {
        let rootfs = unpack_with_umoci(&layout.dir, "torture", &tmp.path().join(name))
            .unwrap_or_else(|e| panic!("{e}"));
        listing(&rootfs).unwrap()
    };
    let diff = diff_listings(
        &unpack(&gzip, "gzip-rootfs"),
        &unpack(&esgz, "estargz-rootfs"),
    );
    assert_eq!(diff.len(), 2, "{diff:#?}");
    assert!(
        diff[0].starts_with(&format!("+\"{NO_PREFETCH_LANDMARK}\" file ")),
        "{diff:#?}"
    );
    assert!(
        diff[1].starts_with(&format!("+\"{TOC_NAME}\" file ")),
        "{diff:#?}"
    );
}

#[test]
fn zstd_chunked_tocs_match_the_layer_tars() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec();
    let src = tmp.path().join("gzip");
    let mut layout = OciLayout::create(&src);
    let img = layout.add_image(&spec);
    layout.tag("torture", &img.manifest);
    let converted = convert_to_zstd_chunked(&src, "torture", &tmp.path().join("zstd"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        converted.config.digest, img.config.digest,
        "skopeo keeps the config"
    );

    let descriptors = layer_descriptors(&converted.manifest_json);
    assert_eq!(descriptors.len(), spec.layers.len());
    let mut parsed = Vec::new();
    for (i, (desc, layer_spec)) in descriptors.iter().zip(&spec.layers).enumerate() {
        let what = format!("zstd:chunked layer {i}");
        assert_eq!(LayerFormat::of(desc), LayerFormat::ZstdChunked, "{what}");
        let blob = converted.blob(desc.digest().as_ref());
        // The diff_id skopeo left in the config still names the stream.
        let tar = zstd::stream::decode_all(&blob[..]).unwrap();
        assert_eq!(sha256_digest(&tar), img.layers[i].diff_id, "{what}");

        let annotations = desc
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let position = zstd_chunked::toc_position(&annotations)
            .unwrap()
            .expect("TOC position annotations");
        let start = position.offset as usize;
        let toc = &blob[start..start + position.length as usize];
        let layer = zstd_chunked::parse_toc(toc, &position).unwrap();

        let plain = build_tar(&layer_spec.entries, layer_spec.long_names);
        assert_same_as_tar(&layer, &blob, &plain, &what);
        parsed.push(layer);
    }
    // skopeo cuts the big file where a rolling checksum says, and marks the
    // run of zeros as such.
    assert!(chunks_of(&parsed[0], "data/random.bin").len() > 1);
    let codecs: Vec<_> = (chunks_of(&parsed[3], "holes/sparse").iter())
        .map(|c| c.codec)
        .collect();
    assert_eq!(
        codecs,
        [ChunkCodec::Zstd, ChunkCodec::Zeros, ChunkCodec::Zstd]
    );
}
