use std::ffi::OsString;
use std::io::{self, Read};

use tar::{EntryType, Header};

use super::test_tar::{MTIME, TestTar, header};
use super::*;

fn entry<'a>(index: &'a EntryTable, path: &str) -> &'a TarEntry {
    index
        .entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no entry {path}"))
}

fn content<'a>(tar: &'a [u8], entry: &TarEntry) -> &'a [u8] {
    match entry.kind {
        EntryKind::Regular { offset, size } => &tar[offset as usize..(offset + size) as usize],
        ref other => panic!("not a regular file: {other:?}"),
    }
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

#[test]
fn indexes_every_kind_with_metadata() {
    let mut setuid = header(EntryType::Regular, 0o4755);
    setuid.set_uid(1000);
    setuid.set_gid(50);
    let mut tar = TestTar::new();
    tar.dir("./")
        .dir_with(header(EntryType::Directory, 0o1777), "./tmp/")
        .dir_with(header(EntryType::Directory, 0o2775), "srv")
        .file_with(setuid, "usr/bin/su", b"#!binary")
        .symlink("bin", "usr/bin")
        .hardlink("usr/bin/su2", "./usr/bin/su")
        .device(EntryType::Char, "dev/null", 1, 3)
        .device(EntryType::Block, "dev/sda", 8, 0)
        .dir_with(header(EntryType::Fifo, 0o600), "run/fifo");
    let raw = tar.bytes();
    let index = read_entries(&raw[..]).unwrap();
    assert!(index.whiteouts.is_empty());

    let paths: Vec<_> = index.entries.iter().map(|e| e.path.clone()).collect();
    let expected = [
        "",
        "tmp",
        "srv",
        "usr/bin/su",
        "bin",
        "usr/bin/su2",
        "dev/null",
        "dev/sda",
        "run/fifo",
    ];
    assert_eq!(paths, expected.map(os));

    assert_eq!(entry(&index, "").kind, EntryKind::Directory);
    assert_eq!(entry(&index, "tmp").mode, 0o1777);
    assert_eq!(entry(&index, "srv").mode, 0o2775);
    let su = entry(&index, "usr/bin/su");
    assert_eq!((su.mode, su.uid, su.gid), (0o4755, 1000, 50));
    assert_eq!(
        su.mtime,
        Timestamp {
            secs: MTIME as i64,
            nanos: 0
        }
    );
    assert_eq!(content(&raw, su), b"#!binary");
    assert_eq!(
        entry(&index, "bin").kind,
        EntryKind::Symlink {
            target: os("usr/bin")
        }
    );
    assert_eq!(
        entry(&index, "usr/bin/su2").kind,
        EntryKind::Hardlink {
            target: os("usr/bin/su")
        }
    );
    assert_eq!(
        entry(&index, "dev/null").kind,
        EntryKind::CharDevice(Device { major: 1, minor: 3 })
    );
    assert_eq!(
        entry(&index, "dev/sda").kind,
        EntryKind::BlockDevice(Device { major: 8, minor: 0 })
    );
    assert_eq!(entry(&index, "run/fifo").kind, EntryKind::Fifo);
}

#[test]
fn pax_xattrs_and_precise_mtime() {
    let capability: &[u8] = &[0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0xff, 0x00];
    let mut tar = TestTar::new();
    tar.pax(&[
        ("SCHILY.xattr.security.capability", capability),
        ("SCHILY.xattr.user.note", b"hello"),
        ("mtime", b"1700000000.123456789"),
        ("atime", b"1"),
    ])
    .file("bin/ping", b"ping");
    let index = tar.index();
    let ping = entry(&index, "bin/ping");
    assert_eq!(
        ping.xattrs,
        vec![
            ("security.capability".to_owned(), capability.to_vec()),
            ("user.note".to_owned(), b"hello".to_vec()),
        ]
    );
    assert_eq!(
        ping.mtime,
        Timestamp {
            secs: 1_700_000_000,
            nanos: 123_456_789
        }
    );
}

#[test]
fn long_names_and_targets_gnu_and_pax() {
    let long_dir = "d".repeat(120);
    let gnu_path = format!("{long_dir}/gnu-file");
    let gnu_target = format!("/{}/target", "t".repeat(110));
    let pax_path = format!("{long_dir}/pax-file");
    let pax_link_target = format!("{long_dir}/gnu-file");

    let mut tar = TestTar::new();
    tar.file(&gnu_path, b"gnu content")
        .symlink("gnu-symlink", &gnu_target)
        .hardlink("gnu-hardlink", &gnu_path)
        .pax(&[("path", pax_path.as_bytes())]);
    let mut ustar = Header::new_ustar();
    ustar.set_entry_type(EntryType::Regular);
    ustar.set_mode(0o644);
    ustar.set_mtime(MTIME);
    ustar.set_uid(0);
    ustar.set_gid(0);
    tar.file_with(ustar.clone(), "placeholder", b"pax content")
        .pax(&[
            ("path", b"pax-hardlink"),
            ("linkpath", pax_link_target.as_bytes()),
        ]);
    ustar.set_entry_type(EntryType::Link);
    tar.raw(ustar.clone(), b"short", b"short-target", b"");
    tar.pax(&[("linkpath", gnu_target.as_bytes())]);
    ustar.set_entry_type(EntryType::Symlink);
    tar.raw(ustar, b"pax-symlink", b"truncated", b"");

    let raw = tar.bytes();
    let index = read_entries(&raw[..]).unwrap();
    assert_eq!(content(&raw, entry(&index, &gnu_path)), b"gnu content");
    assert_eq!(content(&raw, entry(&index, &pax_path)), b"pax content");
    assert_eq!(
        entry(&index, "gnu-symlink").kind,
        EntryKind::Symlink {
            target: os(&gnu_target)
        }
    );
    assert_eq!(
        entry(&index, "pax-symlink").kind,
        EntryKind::Symlink {
            target: os(&gnu_target)
        }
    );
    assert_eq!(
        entry(&index, "gnu-hardlink").kind,
        EntryKind::Hardlink {
            target: os(&gnu_path)
        }
    );
    assert_eq!(
        entry(&index, "pax-hardlink").kind,
        EntryKind::Hardlink {
            target: os(&pax_link_target)
        }
    );
}

#[test]
fn content_offsets_address_file_bytes() {
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut tar = TestTar::new();
    tar.file("empty", b"")
        .file("one", b"x")
        .file("big", &big)
        .pax(&[("SCHILY.xattr.user.a", b"b")])
        .file("after-pax", b"tail");
    let raw = tar.bytes();
    let index = read_entries(&raw[..]).unwrap();
    assert_eq!(index.entries.len(), 4);
    for (path, expected) in [
        ("empty", &b""[..]),
        ("one", b"x"),
        ("big", &big),
        ("after-pax", b"tail"),
    ] {
        assert_eq!(content(&raw, entry(&index, path)), expected, "{path}");
    }
}

#[test]
fn whiteouts_are_recorded_not_listed() {
    let mut tar = TestTar::new();
    tar.file("etc/.wh.passwd", b"")
        .file(".wh.tmp", b"")
        .file("var/cache/.wh..wh..opq", b"")
        .file(".wh..wh..opq", b"")
        .dir("etc/.wh..wh.plnk")
        .file("etc/.wh..wh.plnk/1234.5678", b"aufs hardlink stash")
        .file("etc/keep", b"");
    let index = tar.index();
    assert_eq!(
        index.whiteouts,
        vec![
            Whiteout::Remove(os("etc/passwd")),
            Whiteout::Remove(os("tmp")),
            Whiteout::Opaque(os("var/cache")),
            Whiteout::Opaque(os("")),
        ]
    );
    let paths: Vec<_> = index.entries.iter().map(|e| e.path.clone()).collect();
    assert_eq!(paths, vec![os("etc/keep")]);

    let err = TestTar::new().file("a/.wh..", b"").bytes();
    assert!(matches!(
        read_entries(&err[..]),
        Err(LayerError::InvalidWhiteout { .. })
    ));
}

#[test]
fn absolute_paths_are_made_relative() {
    let mut tar = TestTar::new();
    tar.raw(
        header(EntryType::Regular, 0o644),
        b"/etc/hostname",
        b"",
        b"box",
    )
    .raw(
        header(EntryType::Link, 0o644),
        b"/etc/alias",
        b"/etc/hostname",
        b"",
    )
    .raw(
        header(EntryType::Symlink, 0o777),
        b"/abs-link",
        b"/etc/../etc/hostname",
        b"",
    );
    let raw = tar.bytes();
    let index = read_entries(&raw[..]).unwrap();
    assert_eq!(content(&raw, entry(&index, "etc/hostname")), b"box");
    assert_eq!(
        entry(&index, "etc/alias").kind,
        EntryKind::Hardlink {
            target: os("etc/hostname")
        }
    );
    // Symlink targets stay verbatim.
    assert_eq!(
        entry(&index, "abs-link").kind,
        EntryKind::Symlink {
            target: os("/etc/../etc/hostname")
        }
    );
}

#[test]
fn escaping_paths_are_rejected() {
    let file = || header(EntryType::Regular, 0o644);
    let escape = TestTar::new()
        .raw(file(), b"a/../../etc/passwd", b"", b"x")
        .bytes();
    match read_entries(&escape[..]) {
        Err(e @ LayerError::PathEscapes { .. }) => {
            assert!(e.to_string().contains("a/../../etc/passwd"))
        }
        other => panic!("expected PathEscapes, got {other:?}"),
    }
    let link = TestTar::new()
        .raw(
            header(EntryType::Link, 0o644),
            b"ok",
            b"../../etc/shadow",
            b"",
        )
        .bytes();
    match read_entries(&link[..]) {
        Err(e @ LayerError::HardlinkEscapes { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("\"ok\"") && msg.contains("../../etc/shadow"),
                "{msg}"
            );
        }
        other => panic!("expected HardlinkEscapes, got {other:?}"),
    }
    // A `..` that stays inside is folded, and symlinks may point anywhere.
    let fine = TestTar::new()
        .raw(file(), b"a/../b", b"", b"")
        .raw(header(EntryType::Symlink, 0o777), b"s", b"../../../x", b"")
        .index();
    assert_eq!(fine.entries[0].path, os("b"));
    assert_eq!(
        fine.entries[1].kind,
        EntryKind::Symlink {
            target: os("../../../x")
        }
    );
}

#[test]
fn nul_in_pax_path_is_rejected() {
    let raw = TestTar::new()
        .pax(&[("path", b"a\0b")])
        .file("x", b"")
        .bytes();
    assert!(matches!(
        read_entries(&raw[..]),
        Err(LayerError::NulByte { .. })
    ));
}

#[test]
fn truncated_and_garbage_tars_are_malformed() {
    let raw = TestTar::new()
        .file("first", b"ok")
        .file("second", &[7u8; 2000])
        .bytes();
    for cut in [700, 1100, 1600] {
        match read_entries(&raw[..cut]) {
            Err(LayerError::MalformedTar { .. }) => {}
            other => panic!("cut at {cut}: expected MalformedTar, got {other:?}"),
        }
    }
    let garbage: Vec<u8> = (0..2048u32).map(|i| (i * 7 + 1) as u8).collect();
    match read_entries(&garbage[..]) {
        Err(e @ LayerError::MalformedTar { .. }) => assert!(e.to_string().contains("cksum")),
        other => panic!("expected MalformedTar, got {other:?}"),
    }
}

/// Extension headers (PAX records, GNU long names) claiming gigabytes are
/// refused after a few MiB, not read into memory: a few KiB of gzip can
/// claim that much. Go's limit (1 MiB each) still reads.
#[test]
fn huge_extension_headers_are_refused_before_they_are_read() {
    /// A header, then endless bytes; counts what was read.
    struct Endless {
        header: Vec<u8>,
        served: u64,
    }
    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let at = self.served as usize;
            let n = if at < self.header.len() {
                let n = buf.len().min(self.header.len() - at);
                buf[..n].copy_from_slice(&self.header[at..at + n]);
                n
            } else {
                buf.fill(b'a');
                buf.len()
            };
            self.served += n as u64;
            Ok(n)
        }
    }
    for kind in [
        EntryType::XHeader,
        EntryType::GNULongName,
        EntryType::GNULongLink,
    ] {
        let mut claim = header(kind, 0o644);
        claim.set_size((1 << 33) - 1);
        claim.set_cksum();
        let mut stream = Endless {
            header: claim.as_bytes().to_vec(),
            served: 0,
        };
        match read_entries(&mut stream) {
            Err(e @ LayerError::MalformedTar { .. }) => {
                assert!(e.to_string().contains("extension headers"), "{kind:?}: {e}")
            }
            other => panic!("{kind:?}: expected MalformedTar, got {other:?}"),
        }
        assert!(
            stream.served <= 5 << 20,
            "{kind:?}: read {} bytes",
            stream.served
        );
    }

    let long_name = format!("{}file", "dir/".repeat(250_000));
    let raw = TestTar::new()
        .file("big", &[1; 5000])
        .pax(&[("comment", &[b'c'; 1 << 20][..])])
        .file(&long_name, b"x")
        .bytes();
    let index = read_entries(&raw[..]).unwrap();
    assert_eq!(
        entry(&index, &long_name).kind,
        EntryKind::Regular {
            offset: raw.len() as u64 - 1024 - 512,
            size: 1
        }
    );
}

#[test]
fn source_errors_are_not_called_malformed() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "network gone",
            ))
        }
    }
    assert!(matches!(
        read_entries(Failing),
        Err(LayerError::Read { offset: 0, .. })
    ));
}

#[test]
fn exotic_entries_are_rejected() {
    let volume = TestTar::new()
        .dir_with(header(EntryType::new(b'V'), 0o644), "label")
        .bytes();
    assert!(matches!(
        read_entries(&volume[..]),
        Err(LayerError::UnsupportedEntryType {
            type_byte: b'V',
            ..
        })
    ));
}

#[test]
fn index_serializes_compactly() {
    let index = TestTar::new()
        .pax(&[("SCHILY.xattr.user.x", b"\xff\x00")])
        .file("a/b", b"data")
        .symlink("l", "a/b")
        .file(".wh.gone", b"")
        .index();
    let bytes = postcard::to_allocvec(&index).unwrap();
    assert_eq!(postcard::from_bytes::<EntryTable>(&bytes).unwrap(), index);
}

/// A GNU header whose numeric fields are set byte by byte.
fn raw_fields(mtime: [u8; 12], uid: [u8; 8], gid: [u8; 8]) -> Header {
    let mut header = header(EntryType::Regular, 0o644);
    let old = header.as_old_mut();
    (old.mtime, old.uid, old.gid) = (mtime, uid, gid);
    header
}

fn secs(secs: i64) -> Timestamp {
    Timestamp { secs, nanos: 0 }
}

#[test]
fn numeric_fields_octal_base256_and_pax_as_go_reads_them() {
    // 1969-06-01 as GNU tar --format=gnu writes it: negative base-256.
    let mut before_1970 = [0xffu8; 12];
    before_1970[8..].copy_from_slice(&(-18_489_600i32).to_be_bytes());
    // uid 3000000 and gid 2^32-1 do not fit 7 octal digits: base-256.
    let mut big_uid = [0x80u8, 0, 0, 0, 0, 0, 0, 0];
    big_uid[4..].copy_from_slice(&3_000_000u32.to_be_bytes());
    let mut max_gid = [0x80u8, 0, 0, 0, 0, 0, 0, 0];
    max_gid[4..].copy_from_slice(&u32::MAX.to_be_bytes());
    // Space-padded octal, as old tars write it.
    let spaced = raw_fields(*b" 1234567012 ", *b"  2322 \0", *b"\0\0\x002322 ");
    let mut device = header(EntryType::Char, 0o600);
    device.as_gnu_mut().unwrap().dev_major = [0x80, 0, 0, 0, 0, 0, 0x01, 0x03];
    device.as_gnu_mut().unwrap().dev_minor = *b"     17 ";
    let index = TestTar::new()
        .file_with(raw_fields(before_1970, big_uid, max_gid), "old", b"")
        .file_with(raw_fields([0; 12], [0; 8], [0; 8]), "nul", b"")
        .file_with(spaced, "spaced", b"")
        .dir_with(device, "dev")
        .pax(&[("uid", b"3000000"), ("gid", b"+1234"), ("mtime", b"-1.5")])
        .file("pax", b"")
        // Empty PAX values keep the header's, as Go and POSIX pax do.
        .pax(&[("uid", b""), ("mtime", b"")])
        .file("pax-empty", b"")
        .index();
    let fields = |path: &str| {
        let e = entry(&index, path);
        (e.uid, e.gid, e.mtime)
    };
    assert_eq!(fields("old"), (3_000_000, u32::MAX, secs(-18_489_600)));
    assert_eq!(fields("nul"), (0, 0, secs(0)));
    assert_eq!(fields("spaced"), (1234, 1234, secs(0o1234567012)));
    assert_eq!(entry(&index, "nul").mode, 0o644);
    assert_eq!(
        entry(&index, "dev").kind,
        EntryKind::CharDevice(Device {
            major: 259,
            minor: 15
        })
    );
    assert_eq!(
        fields("pax"),
        (
            3_000_000,
            1234,
            Timestamp {
                secs: -2,
                nanos: 500_000_000
            }
        )
    );
    assert_eq!(fields("pax-empty"), (0, 0, secs(MTIME as i64)));
}

#[test]
fn numeric_fields_go_refuses_or_linux_cannot_hold_are_malformed() {
    let mut negative_uid = [0xffu8; 8];
    negative_uid[7] = 0xfe;
    let wide_gid = [0x80u8, 0, 0, 1, 0, 0, 0, 0];
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            TestTar::new()
                .file_with(raw_fields([0; 12], negative_uid, [0; 8]), "f", b"")
                .bytes(),
            "uid: -2 out of range",
        ),
        (
            TestTar::new()
                .file_with(raw_fields([0; 12], [0; 8], wide_gid), "f", b"")
                .bytes(),
            "gid: 4294967296 out of range",
        ),
        (
            TestTar::new()
                .file_with(raw_fields(*b"12345678901x", [0; 8], [0; 8]), "f", b"")
                .bytes(),
            "mtime: \"12345678901x\" is not an octal number",
        ),
        (
            TestTar::new()
                .pax(&[("uid", b"12a")])
                .file("f", b"")
                .bytes(),
            "uid: \"12a\" is not a decimal number",
        ),
        (
            TestTar::new().pax(&[("gid", b"-1")]).file("f", b"").bytes(),
            "gid: -1 out of range",
        ),
        (
            TestTar::new()
                .pax(&[("size", b"-1")])
                .file("f", b"")
                .bytes(),
            "size: negative",
        ),
    ];
    for (tar, reason) in cases {
        match read_entries(&tar[..]) {
            Err(e @ LayerError::MalformedTar { .. }) => {
                assert!(e.to_string().contains(reason), "{e} lacks {reason:?}")
            }
            other => panic!("{reason}: expected MalformedTar, got {other:?}"),
        }
    }
}

/// A header with typeflag `flag` written byte for byte (the tar crate spells
/// NUL as `0`), owned by 1234:1234.
fn typeflag(flag: u8, mode: u32) -> Header {
    let mut header = header(EntryType::Regular, mode);
    header.as_old_mut().linkflag = [flag];
    header.set_uid(1234);
    header.set_gid(1234);
    header
}

#[test]
fn typeflags_regular_and_contiguous_with_a_trailing_slash_are_directories() {
    let long_dir = format!("{}/", "d".repeat(120));
    let index = TestTar::new()
        .raw(typeflag(0, 0o750), b"nul/", b"", b"")
        .raw(typeflag(b'0', 0o700), b"zero/", b"", b"")
        .raw(typeflag(b'7', 0o705), b"contiguous/", b"", b"")
        // The slash counts in the full name, from a GNU or PAX long name.
        .dir_with(typeflag(0, 0o755), &long_dir)
        .pax(&[("path", b"pax/")])
        .raw(typeflag(b'0', 0o711), b"ignored", b"", b"")
        .index();
    for (path, mode) in [("nul", 0o750), ("zero", 0o700), ("contiguous", 0o705)] {
        let e = entry(&index, path);
        assert_eq!(e.kind, EntryKind::Directory, "{path}");
        assert_eq!((e.mode, e.uid, e.gid), (mode, 1234, 1234), "{path}");
        assert_eq!(
            e.mtime,
            Timestamp {
                secs: MTIME as i64,
                nanos: 0
            }
        );
    }
    assert_eq!(entry(&index, &long_dir[..120]).kind, EntryKind::Directory);
    assert_eq!(entry(&index, "pax").kind, EntryKind::Directory);
    assert_eq!(entry(&index, "pax").mode, 0o711);
    // Without the slash, both are regular files.
    let raw = TestTar::new()
        .raw(typeflag(0, 0o640), b"nul-file", b"", b"old")
        .raw(typeflag(b'7', 0o600), b"contiguous-file", b"", b"seven")
        .bytes();
    let index = read_entries(&raw[..]).unwrap();
    assert_eq!(content(&raw, entry(&index, "nul-file")), b"old");
    assert_eq!(content(&raw, entry(&index, "contiguous-file")), b"seven");
}

#[test]
fn typeflags_lazyimg_cannot_represent_are_refused_as_go_tools_refuse_them() {
    // GNU dumpdir, multivolume continuation, volume label, Solaris extended
    // header, a vendor type, and bytes no standard names.
    for flag in [b'D', b'M', b'V', b'X', b'A', b'Z', b'8', b'!'] {
        let tar = TestTar::new()
            .raw(typeflag(flag, 0o644), b"odd", b"", b"")
            .bytes();
        match read_entries(&tar[..]) {
            Err(LayerError::UnsupportedEntryType { path, type_byte }) => {
                assert_eq!((path.as_str(), type_byte), ("odd", flag))
            }
            other => panic!(
                "{:?}: expected UnsupportedEntryType, got {other:?}",
                flag as char
            ),
        }
    }
}

#[test]
fn pax_xattrs_with_empty_values_are_no_attribute() {
    let index = TestTar::new()
        .pax(&[
            ("SCHILY.xattr.user.empty", b""),
            ("SCHILY.xattr.user.kept", b"v"),
            // A later empty record removes an earlier value, as POSIX pax says.
            ("SCHILY.xattr.user.removed", b"first"),
            ("SCHILY.xattr.user.removed", b""),
            // And a later value replaces an earlier empty one.
            ("SCHILY.xattr.user.late", b""),
            ("SCHILY.xattr.user.late", b"second"),
        ])
        .file("f", b"")
        .index();
    assert_eq!(
        entry(&index, "f").xattrs,
        [
            ("user.kept".to_owned(), b"v".to_vec()),
            ("user.late".to_owned(), b"second".to_vec()),
        ]
    );
}
