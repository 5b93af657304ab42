//! Ready-made image specs: the torture image and simple N-layer images.

use super::image::ImageSpec;
use super::layer::*;

/// Deterministic non-repeating bytes (xorshift64*), same `seed` same bytes.
pub fn prng_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
    if s == 0 {
        s = 1;
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `security.capability` value (VFS_CAP_REVISION_2, effective flag) granting
/// cap_net_bind_service (bit 10) permitted+effective: what `setcap cap_net_bind_service=+ep` writes.
pub const CAP_NET_BIND_SERVICE_V2: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // magic_etc = 0x02000001 (rev 2 | effective), LE
    0x00, 0x04, 0x00, 0x00, // data[0].permitted = 1 << 10
    0x00, 0x00, 0x00, 0x00, // data[0].inheritable
    0x00, 0x00, 0x00, 0x00, // data[1].permitted
    0x00, 0x00, 0x00, 0x00, // data[1].inheritable
];

/// Size of `data/random.bin` (a few MiB, deliberately not block aligned).
pub const RANDOM_FILE_SIZE: usize = 3 * 1024 * 1024 + 12_345;
/// File name component longer than 100 bytes (130 bytes).
pub fn long_component(tag: &str) -> String {
    format!("long-name-{tag}-{}", "x".repeat(129 - 11 - tag.len()))
}
/// Directory chain whose path is > 255 bytes in total: `deep/deep-0-ddd…/…/deep-4-ddd…`.
pub fn deep_dirs() -> Vec<String> {
    let mut out = vec!["deep".to_string()];
    for i in 0..5 {
        let prev = out.last().unwrap().clone();
        out.push(format!("{prev}/deep-{i}-{}", "d".repeat(55)));
    }
    out
}
/// Regular file at the bottom of [`deep_dirs`] (path ≈ 330 bytes).
pub fn deep_file() -> String {
    format!("{}/deep-file.txt", deep_dirs().last().unwrap())
}

/// Give entries without an mtime `base + position`, so every mtime is distinct.
fn stamp(entries: Vec<Entry>, base: u64) -> Vec<Entry> {
    entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            if e.mtime == 0 {
                e.mtime(base + i as u64)
            } else {
                e
            }
        })
        .collect()
}

/// Multi-layer image (3 layers, PAX / GNU / PAX long-name styles) exercising
/// everything a correct unpacker must honour. All layers use `compression`.
/// Expected merged result, per path, is described in the comments.
pub fn torture_image(compression: Compression) -> ImageSpec {
    let deep = deep_dirs();
    let deep_file = deep_file();
    let mut l0 = vec![
        dir("bin"),
        dir("etc"),
        dir("dev"),
        dir("tmp").mode(0o1777), // sticky world-writable dir
        dir("home"),
        dir("home/user").mode(0o700).owner(1000, 1000), // private dir of uid 1000
        file("home/user/.profile", "export PS1='$ '\n")
            .mode(0o600)
            .owner(1000, 1000), // dotfile of 1000:1000
        dir("nobody").mode(0o750).owner(65534, 65534),  // dir of nobody:nogroup
        file("nobody/owned", "nobody's\n")
            .mode(0o640)
            .owner(65534, 65534), // file of 65534:65534
        dir("setgid-dir").mode(0o2775).owner(0, 1000),  // setgid directory, group 1000
        file("bin/busybox", "#!/bin/true\nbusybox\n").mode(0o755), // plain executable
        symlink("bin/sh", "busybox"),                   // relative symlink
        file("bin/suid", "#!/bin/true\nsuid\n").mode(0o4755), // setuid root
        file("bin/suid-user", "suid of 1000\n")
            .mode(0o4750)
            .owner(1000, 1000), // setuid non-root (chown must not clear it)
        file("bin/sgid", "#!/bin/true\nsgid\n")
            .mode(0o2755)
            .owner(0, 50), // setgid, group 50
        file("bin/private", "secret\n")
            .mode(0o700)
            .owner(1000, 1000), // 0700 owned by 1000
        file("bin/no-perms", "mode zero\n").mode(0o000), // mode 0000
        file("bin/odd-perms", "odd\n").mode(0o421),     // odd permission bits r---w---x
        file("bin/all-bits", "all\n").mode(0o7777),     // setuid+setgid+sticky on a file
        file("bin/ping", "#!/bin/true\nping\n")
            .mode(0o755)
            .xattr("security.capability", CAP_NET_BIND_SERVICE_V2), // file capability (v2)
        file("etc/commented", "has xattrs\n")
            .xattr("user.comment", "hello from a PAX xattr")
            .xattr("user.binary", [0u8, 1, 2, 255]), // user xattrs, one binary
        dir("etc/xattr-dir").xattr("user.dirattr", "on a directory"), // xattr on a directory
        file("etc/hostname", "torture\n"),              // content changes in layer 2
        file("etc/empty", ""),                          // empty file
        file("etc/old-mtime", "old\n").mtime(1),        // mtime 1 (1970)
        file("etc/future-mtime", "future\n").mtime(4_000_000_000), // mtime beyond 2^31 (2096)
        symlink("etc/abs-link", "/etc/hostname"),       // absolute symlink (retargeted in layer 2)
        symlink("etc/dangling", "../nonexistent/target"), // dangling relative symlink
        dir("usr"),
        dir("usr/lib"),
        file("usr/lib/libfoo.so.1", "ELF-ish\n"),
        symlink("lib", "usr/lib"),              // symlink to a directory
        char_dev("dev/null", 1, 3),             // char device 1:3
        block_dev("dev/sda", 8, 0).owner(0, 6), // block device 8:0, group disk
        block_dev("dev/bigminor", 259, 65536),  // block device with major > 255, minor > 65535
        fifo("dev/fifo").mode(0o620),           // named pipe
        dir("data"),
        file("data/random.bin", prng_bytes(42, RANDOM_FILE_SIZE)), // few MiB of non-repeating data
        dir("names"),
        file("names/with space.txt", "spaces\n"), // name with a space
        file("names/ünïcödé-日本語.txt", "utf-8\n"), // UTF-8 name
        file("names/  leading and trailing  ", "blanks\n"), // leading/trailing blanks
        file("names/emoji-🦀", "crab\n"),         // 4-byte UTF-8
        dir("long"),
        file(
            &format!("long/{}", long_component("pax")),
            "long name (PAX path record)\n",
        ), // 130-byte name via PAX
    ];
    l0.extend(deep.iter().map(|d| dir(d))); // directory chain > 255 bytes
    l0.extend([
        file(&deep_file, "at the bottom of a > 255 byte path\n"), // file at a > 255 byte path
        symlink("long/symlink-long-target", &format!("/{deep_file}")), // symlink target > 100 bytes (PAX linkpath)
        hardlink("long/hardlink-long-target", &deep_file), // hardlink target > 100 bytes (PAX linkpath)
        dir("hl"),
        file("hl/a", "hardlinked pair\n")
            .mode(0o640)
            .owner(1000, 1000),
        hardlink("hl/b", "hl/a"), // hardlink within a layer (hl/a whited out in layer 2: hl/b survives)
        hardlink("hl/c", "hl/a"), // third name of the same inode
        dir("whiteout-me"),
        file("whiteout-me/doomed", "deleted by layer 1\n"), // whited out in layer 1
        file("whiteout-me/survivor", "stays\n"),            // sibling of a whited-out file
        dir("gone-dir"), // whole directory whited out in layer 1, recreated in layer 2
        file("gone-dir/a", "a\n"),
        dir("gone-dir/sub"),
        file("gone-dir/sub/b", "b\n"),
        dir("opaque"), // made opaque in layer 1
        file("opaque/old", "hidden by opaque\n"),
        dir("opaque/oldsub"),
        file("opaque/oldsub/old2", "hidden by opaque\n"),
        file("file-to-dir", "I become a directory\n"), // replaced by a directory in layer 1
        dir("dir-to-file"),                            // replaced by a file in layer 1
        file("dir-to-file/child", "I vanish with my directory\n"),
        dir("swap"),
        file("swap/file-to-symlink", "I become a symlink\n"), // replaced by a symlink in layer 2
        symlink("swap/symlink-to-file", "nowhere"),           // replaced by a file in layer 2
        file("changes.txt", "version 1\n"),                   // content changes in layers 1 and 2
        dir("shared"),
        file("shared/base-file", "linked from an upper layer\n")
            .mode(0o640)
            .owner(1000, 1000), // hardlinked from layer 1
        file("meta-change", "same content, new metadata\n"), // only mode/owner change in layer 2
    ]);

    let l1 = vec![
        whiteout("whiteout-me/doomed"), // whiteout of a file
        whiteout("gone-dir"),           // whiteout of a whole directory
        dir("opaque").mode(0o750),      // directory metadata changes too
        file(
            "opaque/new-before-marker",
            "new, listed before the marker\n",
        ), // survives its own layer's opaque marker
        opaque("opaque"),               // opaque: hides opaque/old and opaque/oldsub from layer 0
        file("opaque/new-after-marker", "new, listed after the marker\n"), // survives too
        dir("opaque/oldsub"),           // same name as a hidden lower dir: recreated empty ...
        file("opaque/oldsub/fresh", "fresh\n"), // ... plus this file (old2 stays hidden)
        dir("file-to-dir"),             // regular file replaced by a directory
        file("file-to-dir/inside", "inside the new directory\n"),
        file("dir-to-file", "directory replaced by a file\n"), // directory (and child) replaced by a file
        file("changes.txt", "version 2, longer than version 1\n"), // changed content
        hardlink("shared/upper-link", "shared/base-file"),     // hardlink to a lower-layer file
        dir("gnu"),
        file(
            &format!("gnu/{}", long_component("gnu")),
            "long name (GNU LongLink L)\n",
        ), // 130-byte name via GNU L
        symlink("gnu/symlink-long-target", &format!("../{deep_file}")), // symlink target > 100 bytes (GNU K)
        hardlink("gnu/hardlink-long-target", &deep_file), // hardlink target > 100 bytes (GNU K), 3rd name of the deep file
        file(
            &format!("{}/gnu-deep.txt", deep.last().unwrap()),
            "deep, GNU style\n",
        ), // > 255 byte path via GNU L
        file("etc/gnu-xattr", "xattr in GNU layer\n")
            .xattr("user.gnu", "PAX xattr before GNU headers"), // PAX x header + GNU header
    ];

    let l2 = vec![
        file("changes.txt", "v3\n"),          // changed again (and shorter)
        file("etc/hostname", "torture-v2\n"), // changed content
        dir("gone-dir"), // directory recreated after its whiteout: only new content
        file("gone-dir/reborn", "reborn\n"),
        file("meta-change", "same content, new metadata\n")
            .mode(0o600)
            .owner(1000, 1000), // metadata-only change
        whiteout("hl/a"), // whiteout of one name of a hardlinked trio: hl/b and hl/c stay linked
        symlink("etc/abs-link", "/etc/commented"), // symlink retargeted
        symlink("swap/file-to-symlink", "../etc/hostname"), // file replaced by a symlink
        file("swap/symlink-to-file", "was a symlink\n"), // symlink replaced by a file
    ];

    ImageSpec::new(vec![
        LayerSpec::new(stamp(l0, 1_700_000_000))
            .compression(compression)
            .long_names(LongNames::Pax),
        LayerSpec::new(stamp(l1, 1_700_001_000))
            .compression(compression)
            .long_names(LongNames::Gnu),
        LayerSpec::new(stamp(l2, 1_700_002_000))
            .compression(compression)
            .long_names(LongNames::Pax),
    ])
    .cmd(&["/bin/sh"])
    .env(&[
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "TORTURE=1",
    ])
}

/// `n_layers` gzip layers; layer `i` adds `layer{i}/file{0..3}.txt` and
/// overwrites `common.txt` with `"written by layer {i}\n"`.
pub fn simple_image(n_layers: usize) -> ImageSpec {
    let layers = (0..n_layers)
        .map(|i| {
            let mut e = vec![dir(&format!("layer{i}"))];
            for j in 0..3 {
                e.push(file(
                    &format!("layer{i}/file{j}.txt"),
                    format!("layer {i} file {j}\n"),
                ));
            }
            e.push(file("common.txt", format!("written by layer {i}\n")));
            LayerSpec::new(stamp(e, 1_600_000_000 + 1000 * i as u64))
        })
        .collect();
    ImageSpec::new(layers).cmd(&["/bin/sh"])
}
