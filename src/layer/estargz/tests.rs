use std::ffi::OsString;
use std::io::Write;

use serde_json::json;

use super::*;
use crate::layer::test_toc::{Style, TestBlob, decode_all, file_content};
use crate::layer::{Device, EntryKind, Timestamp, Whiteout};

/// A complete eStargz blob around `payload`'s members: the TOC entry in a
/// member of its own, then the footer. Returns the blob and its TOC digest.
fn estargz(payload: &TestBlob) -> (Vec<u8>, Digest) {
    estargz_with(payload, TOC_NAME, &payload.toc_json())
}

fn estargz_with(payload: &TestBlob, toc_name: &str, json: &[u8]) -> (Vec<u8>, Digest) {
    let mut blob = payload.bytes.clone();
    let toc_offset = blob.len() as u64;
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, toc_name, json).unwrap();
    let mut gz = flate2::write::GzEncoder::new(&mut blob, flate2::Compression::fast());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap();
    blob.extend(footer(toc_offset));
    (blob, Digest::of(json))
}

/// The footer as stargz-snapshotter writes it.
fn footer(toc_offset: u64) -> Vec<u8> {
    let mut footer = vec![
        0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
    ];
    footer.extend(format!("{toc_offset:016x}STARGZ").bytes());
    footer.extend([1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    footer
}

fn open(blob: &[u8], toc_digest: &Digest) -> Result<ChunkedLayer, LayerError> {
    let size = blob.len() as u64;
    let range = toc_range(&blob[(size - FOOTER_SIZE) as usize..], size)?;
    parse_toc(
        &blob[range.start as usize..range.end as usize],
        range.start,
        toc_digest,
    )
}

fn toc_error(result: Result<ChunkedLayer, LayerError>) -> String {
    match result {
        Err(e @ LayerError::Toc { .. }) => e.to_string(),
        other => panic!("expected a TOC error, got {other:?}"),
    }
}

fn entry<'a>(layer: &'a ChunkedLayer, path: &str) -> &'a crate::layer::TarEntry {
    (layer.table.entries.iter())
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no entry {path}"))
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

#[test]
fn footer_is_a_valid_empty_gzip_member() {
    let (footer, mut out) = (footer(0x1234), Vec::new());
    let mut gz = flate2::read::GzDecoder::new(&footer[..]);
    std::io::Read::read_to_end(&mut gz, &mut out).unwrap();
    assert!(out.is_empty());
    assert_eq!(
        gz.header().unwrap().extra().unwrap()[4..20],
        *b"0000000000001234"
    );
}

#[test]
fn every_kind_of_entry_and_multi_chunk_files() {
    let big: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let mut payload = TestBlob::new(Style::Estargz);
    payload.file(".no.prefetch.landmark", &[0xf], 1);
    payload.entry(json!({"name": "./", "type": "dir", "mode": 0o40755}));
    let bin = payload.entry(json!({"name": "bin/", "type": "dir", "mode": 0o40755}));
    payload.entries[bin]["xattrs"] = json!({"user.dir": "b24gYSBkaXI="});
    let sh = payload.file("bin/sh", b"#!shell", 4096);
    payload.entries[sh]["mode"] = json!(0o104755);
    payload.entries[sh]["uid"] = json!(1000);
    payload.entries[sh]["gid"] = json!(50);
    payload.entries[sh]["modtime"] = json!("2023-11-14T22:13:20Z");
    payload.entries[sh]["xattrs"] =
        json!({"security.capability": "AQAAAgAEAAA=", "user.empty": ""});
    payload.file("data/big", &big, 16_384);
    payload.entry(json!({"name": "data/empty", "type": "reg", "mode": 0o644}));
    payload.entry(json!({"name": "bin/ash", "type": "hardlink", "linkName": "./bin/sh"}));
    payload.entry(json!({"name": "lib", "type": "symlink", "linkName": "usr/lib"}));
    payload.entry(json!({"name": "dev/null", "type": "char", "devMajor": 1, "devMinor": 3}));
    payload.entry(json!({"name": "dev/sda", "type": "block", "devMajor": 8}));
    payload.entry(json!({"name": "run/fifo", "type": "fifo", "mode": 0o10600}));
    payload.file("zz-last", b"the last payload ends at the TOC", 4096);
    let (blob, toc_digest) = estargz(&payload);

    let layer = open(&blob, &toc_digest).unwrap();
    let paths: Vec<_> = layer.table.entries.iter().map(|e| e.path.clone()).collect();
    let expected = [
        "",
        "bin",
        "bin/sh",
        "data/big",
        "data/empty",
        "bin/ash",
        "lib",
        "dev/null",
        "dev/sda",
        "run/fifo",
        "zz-last",
    ];
    assert_eq!(paths, expected.map(os));
    assert!(layer.table.whiteouts.is_empty());

    let sh = entry(&layer, "bin/sh");
    assert_eq!((sh.mode, sh.uid, sh.gid), (0o4755, 1000, 50));
    assert_eq!(
        sh.mtime,
        Timestamp {
            secs: 1_700_000_000,
            nanos: 0
        }
    );
    assert_eq!(
        sh.xattrs,
        [
            (
                "security.capability".to_owned(),
                vec![1, 0, 0, 2, 0, 4, 0, 0]
            ),
            // Empty values are no attribute, as in every format.
        ]
    );
    assert_eq!(entry(&layer, "bin").xattrs[0].1, b"on a dir");
    assert_eq!(entry(&layer, "").mtime, Timestamp::default());
    assert_eq!(
        entry(&layer, "bin/ash").kind,
        EntryKind::Hardlink {
            target: os("bin/sh")
        }
    );
    assert_eq!(
        entry(&layer, "lib").kind,
        EntryKind::Symlink {
            target: os("usr/lib")
        }
    );
    assert_eq!(
        entry(&layer, "dev/null").kind,
        EntryKind::CharDevice(Device { major: 1, minor: 3 })
    );
    assert_eq!(
        entry(&layer, "dev/sda").kind,
        EntryKind::BlockDevice(Device { major: 8, minor: 0 })
    );
    assert_eq!(entry(&layer, "run/fifo").kind, EntryKind::Fifo);
    assert_eq!(entry(&layer, "run/fifo").mode, 0o600);

    // Content space: the payloads in TOC order; the landmark takes none.
    let regular = |path| match entry(&layer, path).kind {
        EntryKind::Regular { offset, size } => (offset, size),
        ref other => panic!("{other:?}"),
    };
    assert_eq!(regular("bin/sh"), (0, 7));
    assert_eq!(regular("data/big"), (7, 40_000));
    assert_eq!(regular("data/empty"), (40_007, 0));
    assert_eq!(regular("zz-last"), (40_007, 32));
    // 1 + 3 + 1 chunks, the big file's at 16 KiB steps.
    assert_eq!(layer.chunks.len(), 5);
    let big_chunks: Vec<_> = (layer.chunks[1..4].iter())
        .map(|c| (c.content_offset, c.content_size))
        .collect();
    assert_eq!(
        big_chunks,
        [(7, 16_384), (7 + 16_384, 16_384), (7 + 32_768, 7_232)]
    );
    assert!(layer.chunks.iter().all(|c| c.codec == ChunkCodec::Gzip));
    // Each chunk's frames run to the next payload's; the last one's to the TOC.
    for pair in layer.chunks.windows(2) {
        assert!(pair[0].blob_offset + pair[0].blob_size <= pair[1].blob_offset);
    }
    let toc_offset = toc_range(&blob[blob.len() - 51..], blob.len() as u64)
        .unwrap()
        .start;
    let last = layer.chunks.last().unwrap();
    assert_eq!(last.blob_offset + last.blob_size, toc_offset);

    decode_all(&blob, &layer);
    assert_eq!(file_content(&blob, &layer, "data/big"), big);
    assert_eq!(file_content(&blob, &layer, "bin/sh"), b"#!shell");
}

#[test]
fn whiteouts_become_whiteouts_and_take_no_content() {
    let mut payload = TestBlob::new(Style::Estargz);
    payload.entry(json!({"name": "etc/.wh.passwd", "type": "reg"}));
    payload.entry(json!({"name": "opt/.wh..wh..opq", "type": "reg"}));
    // A whiteout with (pointless) content: its payload is nobody's.
    payload.file("var/.wh.cache", b"ignored", 4096);
    payload.file("kept", b"kept", 4096);
    let (blob, toc_digest) = estargz(&payload);
    let layer = open(&blob, &toc_digest).unwrap();
    assert_eq!(
        layer.table.whiteouts,
        [
            Whiteout::Remove(os("etc/passwd")),
            Whiteout::Opaque(os("opt")),
            Whiteout::Remove(os("var/cache")),
        ]
    );
    assert_eq!(layer.table.entries.len(), 1);
    assert_eq!(layer.chunks.len(), 1);
    assert_eq!(file_content(&blob, &layer, "kept"), b"kept");
}

#[test]
fn the_toc_digest_must_match_the_annotation() {
    let mut payload = TestBlob::new(Style::Estargz);
    payload.file("f", b"data", 4096);
    let (blob, _) = estargz(&payload);
    let err = toc_error(open(&blob, &Digest::of(b"another TOC")));
    assert!(err.contains("TOC digest"), "{err}");
}

#[test]
fn broken_footers_are_rejected() {
    let mut payload = TestBlob::new(Style::Estargz);
    payload.file("f", b"data", 4096);
    let (blob, toc_digest) = estargz(&payload);
    let size = blob.len() as u64;
    let good = &blob[blob.len() - 51..];
    assert!(open(&blob, &toc_digest).is_ok());
    let damages = [
        ("not gzip", 0, 0),
        ("wrong subfield", 12, b'X'),
        ("no magic", 37, b'Y'),
        ("not hex", 20, b'g'),
        ("past the end", 16, b'f'),
    ];
    for (what, at, byte) in damages {
        let mut footer = good.to_vec();
        footer[at] = byte;
        let err = toc_error(toc_range(&footer, size).map(|_| unreachable!()));
        assert!(
            err.starts_with("eStargz table of contents"),
            "{what}: {err}"
        );
    }
    let short = toc_range(&good[4..], size).unwrap_err().to_string();
    assert!(short.contains("47 bytes"), "{short}");
    // The offset must leave room for a TOC before the footer.
    let at_end = footer(size - 51);
    assert!(toc_range(&at_end, size).is_err());
}

#[test]
fn malformed_tocs_are_rejected() {
    let mut payload = TestBlob::new(Style::Estargz);
    payload.file("f", b"data", 4096);
    let good_json = payload.toc_json();
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "truncated JSON",
            &good_json[..good_json.len() - 2],
            "bad JSON",
        ),
        (
            "wrong version",
            br#"{"version":2,"entries":[]}"#,
            "version 2",
        ),
        (
            "unknown type",
            br#"{"version":1,"entries":[{"name":"s","type":"socket"}]}"#,
            "unknown type",
        ),
        (
            "bad modtime",
            br#"{"version":1,"entries":[{"name":"d","type":"dir","modtime":"yesterday"}]}"#,
            "modtime",
        ),
    ];
    for (what, json, expected) in cases {
        let (blob, toc_digest) = estargz_with(&payload, TOC_NAME, json);
        let err = toc_error(open(&blob, &toc_digest));
        assert!(err.contains(expected), "{what}: {err}");
    }
    let (blob, toc_digest) = estargz_with(&payload, "index.json", &good_json);
    let err = toc_error(open(&blob, &toc_digest));
    assert!(err.contains("expected the file stargz.index.json"), "{err}");
    // Damaged compressed TOC.
    let (mut blob, toc_digest) = estargz(&payload);
    blob[payload.bytes.len() + 20] ^= 0xff;
    assert!(matches!(
        open(&blob, &toc_digest),
        Err(LayerError::Toc { .. })
    ));
}

#[test]
fn inconsistent_chunks_are_rejected() {
    let content = [7u8; 100];
    type Damage = fn(&mut TestBlob);
    let cases: [(&str, Damage, &str); 6] = [
        (
            "gap between chunks",
            |p| p.entries[1]["chunkOffset"] = json!(41),
            "expected 40",
        ),
        (
            "longer than the file",
            |p| p.entries[0]["size"] = json!(60),
            "cover 80 bytes of a 60-byte file",
        ),
        (
            "no digest",
            |p| p.entries[1]["chunkDigest"] = json!(""),
            "no digest",
        ),
        (
            "frames past the TOC",
            |p| p.entries[2]["offset"] = json!(1u64 << 40),
            "outside the payload",
        ),
        (
            "shared member",
            |p| p.entries[2]["innerOffset"] = json!(10),
            "innerOffset",
        ),
        (
            "orphan chunk",
            |p| {
                p.entries.remove(0);
            },
            "without a regular file",
        ),
    ];
    for (what, damage, expected) in cases {
        let mut payload = TestBlob::new(Style::Estargz);
        payload.file("f", &content, 40);
        damage(&mut payload);
        let (blob, toc_digest) = estargz(&payload);
        let err = toc_error(open(&blob, &toc_digest));
        assert!(err.contains(expected), "{what}: {err}");
    }
}

#[test]
fn escaping_paths_are_rejected() {
    for (entry, escapes_by) in [
        (json!({"name": "../etc/passwd", "type": "reg"}), "path"),
        (
            json!({"name": "x", "type": "hardlink", "linkName": "/../../etc/shadow"}),
            "hardlink",
        ),
    ] {
        let mut payload = TestBlob::new(Style::Estargz);
        payload.entry(entry);
        let (blob, toc_digest) = estargz(&payload);
        match (open(&blob, &toc_digest), escapes_by) {
            (Err(LayerError::PathEscapes { .. }), "path") => {}
            (Err(LayerError::HardlinkEscapes { .. }), "hardlink") => {}
            (other, _) => panic!("{escapes_by}: {other:?}"),
        }
    }
}

#[test]
fn names_the_json_could_not_carry_are_refused() {
    // What Go's encoding/json writes for `caf\xe9`: the byte became U+FFFD.
    for (entry, what) in [
        (json!({"name": "caf\u{FFFD}", "type": "dir"}), "name"),
        (
            json!({"name": "l", "type": "symlink", "linkName": "caf\u{FFFD}"}),
            "linkName",
        ),
        (
            json!({"name": "d", "type": "dir", "xattrs": {"user.\u{FFFD}": "eA=="}}),
            "xattr name",
        ),
    ] {
        let mut payload = TestBlob::new(Style::Estargz);
        payload.entry(entry);
        let (blob, toc_digest) = estargz(&payload);
        let err = toc_error(open(&blob, &toc_digest));
        assert!(
            err.contains(&format!("{what} ")) && err.contains("U+FFFD"),
            "{err}"
        );
    }
    // The same names, valid UTF-8, are kept.
    let mut payload = TestBlob::new(Style::Estargz);
    payload.entry(json!({"name": "caf\u{e9}", "type": "dir"}));
    let (blob, toc_digest) = estargz(&payload);
    assert_eq!(
        open(&blob, &toc_digest).unwrap().table.entries[0].path,
        os("caf\u{e9}")
    );
}

#[test]
fn oversized_tocs_are_refused_before_reading() {
    let payload = TestBlob::new(Style::Estargz);
    let mut blob = payload.bytes.clone();
    let toc_offset = blob.len() as u64;
    let mut header = tar::Header::new_ustar();
    header.set_path(TOC_NAME).unwrap();
    header.set_size(200 << 20);
    header.set_cksum();
    let mut gz = flate2::write::GzEncoder::new(&mut blob, flate2::Compression::fast());
    gz.write_all(header.as_bytes()).unwrap();
    gz.finish().unwrap();
    blob.extend(footer(toc_offset));
    let err = toc_error(open(&blob, &Digest::of(b"")));
    assert!(err.contains("more than the"), "{err}");
}
