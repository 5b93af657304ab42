//! GNU sparse files through the tar parser (issue 15, kind 5): every format
//! member GNU tar writes, read back as the files it archived, and the maps
//! Go's archive/tar refuses, refused.

use std::path::Path;
use std::process::Command;

use tar::EntryType;

use super::test_tar::{TestTar, header};
use super::*;

/// Holes at the start, in the middle, at the end; a file that is all hole;
/// one with 31 segments (old GNU headers need extension blocks for more
/// than 4); a plain file after them (its offset shows the sparse entries'
/// data was sized right).
const FILES: &[&str] = &["start", "middle", "end", "hole", "many", "plain"];

fn make_files(dir: &Path) {
    let script = r#"
        mk() { yes "$2" | head -c 4096 | dd of="$1" bs=4096 seek="$3" conv=notrunc status=none; }
        mk start s 16
        mk middle m 0; mk middle m 25
        mk end e 0; truncate -s 1M end
        truncate -s 1M hole
        for i in $(seq 0 2 60); do mk many x $i; done
        echo plain > plain
    "#;
    let status = Command::new("sh")
        .args(["-euc", script])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// GNU tar's archive of [`FILES`] in `dir`, with `format` options.
fn gnu_tar(dir: &Path, format: &[&str]) -> Vec<u8> {
    let out = Command::new("tar")
        .args([
            "-S",
            "-b",
            "1",
            "--owner=1234",
            "--group=1234",
            "--numeric-owner",
        ])
        .args(format)
        .arg("-C")
        .arg(dir)
        .args(["-cf", "-"])
        .args(FILES)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A file's bytes as a reader of the entry table sees them.
fn expand(tar: &[u8], kind: &EntryKind) -> Vec<u8> {
    match kind {
        &EntryKind::Regular { offset, size } => {
            tar[offset as usize..(offset + size) as usize].to_vec()
        }
        EntryKind::Sparse { offset, map } => {
            let mut out = Vec::new();
            for piece in map.pieces(0, map.size()) {
                match piece {
                    Piece::Hole { len } => out.resize(out.len() + len as usize, 0),
                    Piece::Data { packed, len } => {
                        let at = (offset + packed) as usize;
                        out.extend_from_slice(&tar[at..at + len as usize]);
                    }
                }
            }
            out
        }
        other => panic!("not a file: {other:?}"),
    }
}

/// Members: PAX 0.0 (repeated offset/numbytes records), PAX 0.1 (the
/// `GNU.sparse.map` list), PAX 1.0 (the map in the data area, the name in
/// `GNU.sparse.name`), old GNU (`S` with extension blocks, as both
/// `--format=gnu` and `--format=oldgnu` write it).
#[test]
fn every_gnu_sparse_format_reads_as_the_files_archived() {
    let dir = tempfile::tempdir().unwrap();
    make_files(dir.path());
    let formats: [(&str, &[&str]); 5] = [
        ("pax 0.0", &["--format=pax", "--sparse-version=0.0"]),
        ("pax 0.1", &["--format=pax", "--sparse-version=0.1"]),
        ("pax 1.0", &["--format=pax", "--sparse-version=1.0"]),
        ("gnu", &["--format=gnu"]),
        ("oldgnu", &["--format=oldgnu"]),
    ];
    for (label, format) in formats {
        let tar = gnu_tar(dir.path(), format);
        let table = read_entries(&tar[..]).unwrap_or_else(|e| panic!("{label}: {e}"));
        let names: Vec<_> = table.entries.iter().map(|e| e.path.clone()).collect();
        let want: Vec<_> = FILES.iter().map(std::ffi::OsString::from).collect();
        assert_eq!(names, want, "{label}");
        for entry in &table.entries {
            let name = entry.path.to_str().unwrap();
            let want = std::fs::read(dir.path().join(name)).unwrap();
            assert_eq!(entry.uid, 1234, "{label} {name}");
            let sparse = matches!(entry.kind, EntryKind::Sparse { .. });
            assert_eq!(sparse, name != "plain", "{label} {name}: {:?}", entry.kind);
            let got = expand(&tar, &entry.kind);
            assert_eq!(got.len(), want.len(), "{label} {name}: size");
            assert!(got == want, "{label} {name}: bytes differ");
        }
        let EntryKind::Sparse { map, .. } = &table.entries[3].kind else {
            unreachable!()
        };
        assert_eq!(map.packed_size(), 0, "{label}: `hole` stores nothing");
        let EntryKind::Sparse { map, .. } = &table.entries[4].kind else {
            unreachable!()
        };
        assert_eq!(map.segments().filter(|s| s.1 > 0).count(), 31, "{label}");
    }
}

fn refusal(tar: &[u8]) -> String {
    match read_entries(tar) {
        Ok(table) => panic!("accepted: {table:?}"),
        Err(e) => e.to_string(),
    }
}

/// One PAX sparse entry `f` (0.x, records as given) storing `data`.
fn pax_sparse(records: &[(&str, &str)], data: &[u8]) -> Vec<u8> {
    let records: Vec<(&str, &[u8])> = records.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    TestTar::new().pax(&records).file("f", data).bytes()
}

#[test]
fn maps_go_refuses_are_refused_naming_the_entry() {
    let v01 = |map: &str, blocks: &str, size: &str, data: &[u8]| {
        pax_sparse(
            &[
                ("GNU.sparse.major", "0"),
                ("GNU.sparse.minor", "1"),
                ("GNU.sparse.numblocks", blocks),
                ("GNU.sparse.map", map),
                ("GNU.sparse.size", size),
            ],
            data,
        )
    };
    let cases = [
        (v01("4,2,0,2", "2", "10", b"abcd"), "overlaps or precedes"),
        (v01("0,4,2,2", "2", "10", b"abcdef"), "overlaps or precedes"),
        (
            v01("8,4", "1", "10", b"abcd"),
            "ends past the file's size 10",
        ),
        (v01("0,-4", "1", "10", b""), "negative segment"),
        (v01("0,4", "1", "-1", b"abcd"), "negative file size"),
        (
            v01("0,4", "2", "10", b"abcd"),
            "numblocks 2 wants twice that",
        ),
        (v01("0,x", "1", "10", b"abcd"), "\"x\" is no number"),
        (v01("0,4", "1", "ten", b"abcd"), "size \"ten\" is no number"),
        (
            v01("0,4", "1", "10", b"abc"),
            "segments hold 4 bytes, the entry stores 3",
        ),
        (
            v01("0,2", "1", "10", b"abcd"),
            "segments hold 2 bytes, the entry stores 4",
        ),
    ];
    for (tar, said) in cases {
        let err = refusal(&tar);
        assert!(
            err.contains("tar entry \"f\": bad sparse file: ") && err.contains(said),
            "{err}"
        );
    }

    // 0.0 pairs must alternate, offset first, as Go's parsePAX insists.
    let err = refusal(&pax_sparse(
        &[("GNU.sparse.numblocks", "1"), ("GNU.sparse.numbytes", "4")],
        b"abcd",
    ));
    assert!(err.contains("GNU.sparse.numbytes out of turn"), "{err}");

    // 1.0: a map cut short by the entry's end; a count that is no number.
    let v10 = |map: &[u8]| {
        TestTar::new()
            .pax(&[
                ("GNU.sparse.major", &b"1"[..]),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.name", b"f"),
                ("GNU.sparse.realsize", b"10"),
            ])
            .file("GNUSparseFile.1/f", map)
            .bytes()
    };
    let err = refusal(&v10(b"2\n0\n4\n"));
    assert!(
        err.contains("sparse 1.0 map runs past the entry's data"),
        "{err}"
    );
    let mut block = b"x\n".to_vec();
    block.resize(512, 0);
    let err = refusal(&v10(&block));
    assert!(err.contains("map count \"x\" is no count"), "{err}");

    // A map on a type that holds no data (Go's isHeaderOnlyType).
    let tar = TestTar::new()
        .pax(&[
            ("GNU.sparse.major", &b"0"[..]),
            ("GNU.sparse.minor", b"1"),
            ("GNU.sparse.numblocks", b"0"),
            ("GNU.sparse.map", b""),
        ])
        .symlink("l", "t")
        .bytes();
    let err = refusal(&tar);
    assert!(
        err.contains("a sparse map on an entry of type 0x32"),
        "{err}"
    );

    // Old GNU: the tar crate refuses segments out of order before Go's rule.
    let mut sparse = header(EntryType::GNUSparse, 0o644);
    let gnu = sparse.as_gnu_mut().unwrap();
    gnu.set_real_size(2048);
    let slot = |s: &mut tar::GnuSparseHeader, offset: &str, len: &str| {
        s.offset[..offset.len()].copy_from_slice(offset.as_bytes());
        s.numbytes[..len.len()].copy_from_slice(len.as_bytes());
    };
    slot(&mut gnu.sparse[0], "2000", "1000");
    slot(&mut gnu.sparse[1], "0", "1000");
    let tar = TestTar::new().file_with(sparse, "f", &[7; 1024]).bytes();
    assert!(read_entries(&tar[..]).is_err());
}

/// Go reads records of a version it does not know, or sparse records with
/// neither version nor map, as a plain file of the stored bytes.
#[test]
fn unknown_sparse_versions_are_plain_files_as_in_go() {
    for records in [
        &[("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")][..],
        &[("GNU.sparse.size", "100")][..],
    ] {
        let tar = pax_sparse(records, b"stored");
        let table = read_entries(&tar[..]).unwrap();
        assert_eq!(expand(&tar, &table.entries[0].kind), b"stored");
        assert!(matches!(table.entries[0].kind, EntryKind::Regular { .. }));
    }
}

/// Hand-written 0.0 and 1.0 maps with an odd data length (GNU tar writes
/// 512-byte multiples): the data still lands where the map says.
#[test]
fn hand_written_maps_place_data_exactly() {
    let tar = pax_sparse(
        &[
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.offset", "3"),
            ("GNU.sparse.numbytes", "2"),
            ("GNU.sparse.offset", "8"),
            ("GNU.sparse.numbytes", "1"),
            ("GNU.sparse.size", "12"),
        ],
        b"abc",
    );
    let table = read_entries(&tar[..]).unwrap();
    assert_eq!(
        expand(&tar, &table.entries[0].kind),
        b"\0\0\0ab\0\0\0c\0\0\0"
    );

    let mut data = b"2\n3\n2\n8\n1\n".to_vec();
    data.resize(512, 0);
    data.extend_from_slice(b"abc");
    let tar = TestTar::new()
        .pax(&[
            ("GNU.sparse.major", &b"1"[..]),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"dir/real"),
            ("GNU.sparse.realsize", b"12"),
        ])
        .file("GNUSparseFile.1/real", &data)
        .file("next", b"n")
        .bytes();
    let table = read_entries(&tar[..]).unwrap();
    assert_eq!(table.entries[0].path, "dir/real");
    assert_eq!(
        expand(&tar, &table.entries[0].kind),
        b"\0\0\0ab\0\0\0c\0\0\0"
    );
    assert_eq!(expand(&tar, &table.entries[1].kind), b"n");
}

/// A long name comes in its own member (GNU `L`, PAX `path`) before the
/// sparse header: the extension blocks and data are still found.
#[test]
fn long_names_before_sparse_headers() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{}/f", "d".repeat(120));
    let script = format!(
        r#"mkdir {d}; for i in 0 2 4 6 8 10; do yes l | head -c 4096 | dd of={name} bs=4096 seek=$i conv=notrunc status=none; done; truncate -s 64K {name}"#,
        d = "d".repeat(120)
    );
    let status = Command::new("sh")
        .args(["-euc", &script])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let want = std::fs::read(dir.path().join(&name)).unwrap();
    for format in [
        &["--format=gnu"][..],
        &["--format=pax", "--sparse-version=1.0"],
    ] {
        let out = Command::new("tar")
            .args(["-S", "-b", "1"])
            .args(format)
            .arg("-C")
            .arg(dir.path())
            .args(["-cf", "-", &name])
            .output()
            .unwrap();
        assert!(out.status.success());
        let table = read_entries(&out.stdout[..]).unwrap();
        let entry = table
            .entries
            .iter()
            .find(|e| e.path == name.as_str())
            .unwrap();
        assert!(matches!(entry.kind, EntryKind::Sparse { .. }), "{format:?}");
        assert!(expand(&out.stdout, &entry.kind) == want, "{format:?}");
    }
}
