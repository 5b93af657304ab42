use std::ffi::OsString;

use serde_json::json;

use super::*;
use crate::layer::test_toc::{Piece, Style, TestBlob, decode_all, file_content};
use crate::layer::{EntryKind, Timestamp, Whiteout};

const CHECKSUM_KEY: &str = ZSTD_CHUNKED_TOC_ANNOTATION;
const POSITION_KEY: &str = "io.github.containers.zstd-chunked.manifest-position";

/// A complete zstd:chunked blob around `payload`'s frames: the compressed TOC
/// in a skippable frame, as containers/storage writes it (the tar-split
/// frame and footer it adds after that are of no use to lazyimg). Returns
/// the blob and the layer's annotations.
fn zstd_chunked(payload: &TestBlob) -> (Vec<u8>, BTreeMap<String, String>) {
    zstd_chunked_with(payload, &payload.toc_json())
}

fn zstd_chunked_with(payload: &TestBlob, json: &[u8]) -> (Vec<u8>, BTreeMap<String, String>) {
    let compressed = zstd::encode_all(json, 3).unwrap();
    let mut blob = payload.bytes.clone();
    blob.extend(0x184D_2A50u32.to_le_bytes());
    blob.extend((compressed.len() as u32).to_le_bytes());
    let offset = blob.len();
    blob.extend(&compressed);
    let annotations = [
        (CHECKSUM_KEY, Digest::of(&compressed).to_string()),
        (
            POSITION_KEY,
            format!("{offset}:{}:{}:1", compressed.len(), json.len()),
        ),
    ];
    let annotations = annotations
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    (blob, annotations)
}

fn open(blob: &[u8], annotations: &BTreeMap<String, String>) -> Result<ChunkedLayer, LayerError> {
    let position = toc_position(annotations)?.expect("zstd:chunked annotations");
    let start = position.offset as usize;
    parse_toc(&blob[start..start + position.length as usize], &position)
}

fn toc_error<T: std::fmt::Debug>(result: Result<T, LayerError>) -> String {
    match result {
        Err(e @ LayerError::Toc { .. }) => e.to_string(),
        other => panic!("expected a TOC error, got {other:?}"),
    }
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

#[test]
fn files_chunks_zeros_links_xattrs_and_whiteouts() {
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let zeros = vec![0u8; 20_000];
    let mut payload = TestBlob::new(Style::ZstdChunked);
    payload.entry(json!({"type": "dir", "name": "./", "mode": 493}));
    let small = payload.file("./small", b"hi\n", 1 << 20);
    payload.entries[small]["modtime"] = json!("2026-11-21T19:21:27.81558203+01:00");
    payload.entries[small]["accesstime"] = json!("2026-11-21T19:21:27Z");
    payload.entries[small]["xattrs"] = json!({"user.foo": "YmFy", "user.empty": ""});
    payload.entries[small]["uid"] = json!(1000);
    payload.file_pieces(
        "./holey",
        &[
            Piece(&data, false),
            Piece(&zeros, true),
            Piece(&data[..100], false),
        ],
    );
    payload.file("./rolled", &data, 1000);
    payload.entry(json!({"type": "hardlink", "name": "./hl", "linkName": "./small"}));
    payload
        .entry(json!({"type": "reg", "name": "./etc/.wh.gone", "modtime": "0001-01-01T00:00:00Z"}));
    let (blob, annotations) = zstd_chunked(&payload);

    let layer = open(&blob, &annotations).unwrap();
    let paths: Vec<_> = layer.table.entries.iter().map(|e| e.path.clone()).collect();
    assert_eq!(paths, ["", "small", "holey", "rolled", "hl"].map(os));
    assert_eq!(layer.table.whiteouts, [Whiteout::Remove(os("etc/gone"))]);
    let small = &layer.table.entries[1];
    assert_eq!(
        small.mtime,
        Timestamp {
            secs: 1_795_288_887 - 3600,
            nanos: 815_582_030
        }
    );
    // Empty values are no attribute, as in every format.
    assert_eq!(small.xattrs, [("user.foo".to_owned(), b"bar".to_vec())]);
    assert_eq!((small.mode, small.uid), (0o644, 1000));
    assert_eq!(
        layer.table.entries[4].kind,
        EntryKind::Hardlink {
            target: os("small")
        }
    );

    // small: 1 chunk; holey: data, zeros, data; rolled: 3 chunks.
    let codecs: Vec<_> = layer.chunks.iter().map(|c| c.codec).collect();
    use ChunkCodec::{Zeros, Zstd};
    assert_eq!(codecs, [Zstd, Zstd, Zeros, Zstd, Zstd, Zstd, Zstd]);
    assert_eq!(layer.chunks[2].blob_size, 0);
    assert_eq!(
        (layer.chunks[2].content_offset, layer.chunks[2].content_size),
        (3 + 3000, 20_000)
    );
    // A file's last frames end at its endOffset, not at the next payload.
    let small_chunk = &layer.chunks[0];
    assert!(small_chunk.blob_offset + small_chunk.blob_size < layer.chunks[1].blob_offset);

    decode_all(&blob, &layer);
    assert_eq!(file_content(&blob, &layer, "small"), b"hi\n");
    assert_eq!(
        file_content(&blob, &layer, "holey"),
        [&data[..], &zeros, &data[..100]].concat()
    );
    assert_eq!(file_content(&blob, &layer, "rolled"), data);
}

#[test]
fn positions_come_from_either_annotation_family() {
    let checksum = Digest::of(b"toc").to_string();
    let annotations = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        (pairs.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(toc_position(&BTreeMap::new()).unwrap(), None);
    let legacy = annotations(&[
        (ZSTD_CHUNKED_LEGACY_TOC_ANNOTATION, &checksum),
        (
            "io.containers.zstd-chunked.manifest-position",
            "309012:967:3353:1",
        ),
    ]);
    assert_eq!(
        toc_position(&legacy).unwrap(),
        Some(TocPosition {
            offset: 309_012,
            length: 967,
            uncompressed_length: 3353,
            checksum: checksum.parse().unwrap(),
        })
    );
    let bad = [
        (CHECKSUM_KEY, "md5:abc", POSITION_KEY, "100:10:20:1"),
        (CHECKSUM_KEY, &checksum, "unrelated", "100:10:20:1"),
        (CHECKSUM_KEY, &checksum, POSITION_KEY, "100:10:20"),
        (CHECKSUM_KEY, &checksum, POSITION_KEY, "100:10:20:2"),
        (CHECKSUM_KEY, &checksum, POSITION_KEY, "100:+10:20:1"),
        (CHECKSUM_KEY, &checksum, POSITION_KEY, "4:10:20:1"),
        (
            CHECKSUM_KEY,
            &checksum,
            POSITION_KEY,
            "100:10:999999999999:1",
        ),
    ];
    for (checksum_key, checksum, position_key, position) in bad {
        let annotations = annotations(&[(checksum_key, checksum), (position_key, position)]);
        toc_error(toc_position(&annotations));
    }
}

#[test]
fn the_checksum_and_lengths_must_match() {
    let mut payload = TestBlob::new(Style::ZstdChunked);
    payload.file("f", b"data", 4096);
    let (blob, annotations) = zstd_chunked(&payload);
    let position = toc_position(&annotations).unwrap().unwrap();
    let toc = &blob[position.offset as usize..];

    let wrong_checksum = TocPosition {
        checksum: Digest::of(b"another TOC"),
        ..position.clone()
    };
    let err = toc_error(parse_toc(toc, &wrong_checksum));
    assert!(err.contains("checksum"), "{err}");
    let err = toc_error(parse_toc(&toc[1..], &position));
    assert!(err.contains("position annotation says"), "{err}");
    let longer = TocPosition {
        uncompressed_length: position.uncompressed_length - 1,
        ..position.clone()
    };
    toc_error(parse_toc(toc, &longer));
    let shorter = TocPosition {
        uncompressed_length: position.uncompressed_length + 1,
        ..position.clone()
    };
    let err = toc_error(parse_toc(toc, &shorter));
    assert!(err.contains("decompresses to"), "{err}");
    // Bytes that match their checksum but are not zstd.
    let garbage = b"not a zstd frame";
    let garbage_position = TocPosition {
        length: garbage.len() as u64,
        checksum: Digest::of(garbage),
        ..position
    };
    toc_error(parse_toc(garbage, &garbage_position));
}

#[test]
fn malformed_entries_are_rejected() {
    let payload = || {
        let mut payload = TestBlob::new(Style::ZstdChunked);
        payload.file_pieces("f", &[Piece(b"abc", false), Piece(&[0; 5000], true)]);
        payload
    };
    let json = |edit: fn(&mut TestBlob)| {
        let mut payload = payload();
        edit(&mut payload);
        payload.toc_json()
    };
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("not JSON", b"{".to_vec(), "bad JSON"),
        (
            "unknown chunk type",
            json(|p| p.entries[1]["chunkType"] = json!("holes")),
            "unknown chunkType",
        ),
        (
            "frames past the TOC",
            json(|p| p.entries[0]["offset"] = json!(1u64 << 40)),
            "outside the payload",
        ),
        (
            "bad xattr",
            json(|p| p.entries[0]["xattrs"] = json!({"user.x": "!!"})),
            "not base64",
        ),
        // What Go's encoding/json writes for a name that is not UTF-8.
        (
            "a name the JSON could not carry",
            json(|p| p.entries[0]["name"] = json!("caf\u{FFFD}")),
            "name \"caf\u{FFFD}\" holds U+FFFD",
        ),
        (
            "an xattr name the JSON could not carry",
            json(|p| p.entries[0]["xattrs"] = json!({"user.\u{FFFD}": "eA=="})),
            "xattr name",
        ),
    ];
    for (what, json, expected) in cases {
        let (blob, annotations) = zstd_chunked_with(&payload(), &json);
        let err = toc_error(open(&blob, &annotations));
        assert!(err.contains(expected), "{what}: {err}");
    }
}

/// A TOC within its byte limit whose entries would decode into gigabytes
/// (150 MiB of `{"name":"","type":""}` is 7 million 300-byte structs) is
/// refused once they pass the memory budget, long before.
#[test]
fn tocs_that_decode_into_too_much_memory_are_refused() {
    let entries = vec![r#"{"name":"","type":""}"#; (1 << 20) + 1].join(",");
    let json = format!(r#"{{"version":1,"entries":[{entries}]}}"#);
    let (blob, annotations) =
        zstd_chunked_with(&TestBlob::new(Style::ZstdChunked), json.as_bytes());
    let err = toc_error(open(&blob, &annotations));
    assert!(err.contains("of memory lazyimg allows"), "{err}");
}
