//! Layer entries and deterministic layer tarballs (uncompressed, gzip, zstd).
//!
//! Build entries with the small constructors ([`file`], [`dir`], [`symlink`],
//! [`hardlink`], [`char_dev`], [`block_dev`], [`fifo`], [`whiteout`],
//! [`opaque`]), refine them with the chainable setters ([`Entry::mode`],
//! [`Entry::owner`], [`Entry::mtime`], [`Entry::xattr`]), collect them into a
//! [`LayerSpec`] and call [`build_layer`].
//!
//! The tar is written entry by entry in the order given, with every header
//! field chosen by the caller (mtime defaults to 0), so the same spec always
//! yields byte-identical tars and blobs.

use std::collections::BTreeMap;
use std::io::Write;

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Lower-case hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// What a layer entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File(Vec<u8>),
    Dir,
    /// Symlink with this target (stored verbatim).
    Symlink(String),
    /// Hardlink to this path (relative to the image root, as in the tar).
    Hardlink(String),
    CharDev {
        major: u32,
        minor: u32,
    },
    BlockDev {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// One tar entry of a layer. `path` is relative to the image root, without a
/// leading `/` or `./` and without a trailing `/` (directories get one added).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`& 0o7777` is written).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Written as PAX `SCHILY.xattr.NAME` records, in this order.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    fn new(path: &str, kind: Kind, mode: u32) -> Entry {
        Entry {
            path: path.to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        }
    }
    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, mtime: u64) -> Entry {
        self.mtime = mtime;
        self
    }
    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Entry {
        self.xattrs
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }
}

/// Regular file, mode 0644, root-owned, mtime 0.
pub fn file(path: &str, data: impl Into<Vec<u8>>) -> Entry {
    Entry::new(path, Kind::File(data.into()), 0o644)
}

/// Regular file with every attribute given.
pub fn file_full(
    path: &str,
    data: impl Into<Vec<u8>>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: &[(&str, &[u8])],
) -> Entry {
    let mut e = file(path, data).mode(mode).owner(uid, gid).mtime(mtime);
    for (k, v) in xattrs {
        e = e.xattr(k, v);
    }
    e
}

/// Directory, mode 0755.
pub fn dir(path: &str) -> Entry {
    Entry::new(path, Kind::Dir, 0o755)
}

/// Symlink `path -> target`, mode 0777.
pub fn symlink(path: &str, target: &str) -> Entry {
    Entry::new(path, Kind::Symlink(target.to_string()), 0o777)
}

/// Hardlink `path` to the existing `target` (root-relative path), mode 0644.
/// The entry's own mode/owner are ignored by unpackers: the inode is shared.
pub fn hardlink(path: &str, target: &str) -> Entry {
    Entry::new(path, Kind::Hardlink(target.to_string()), 0o644)
}

/// Character device, mode 0666.
pub fn char_dev(path: &str, major: u32, minor: u32) -> Entry {
    Entry::new(path, Kind::CharDev { major, minor }, 0o666)
}

/// Block device, mode 0660.
pub fn block_dev(path: &str, major: u32, minor: u32) -> Entry {
    Entry::new(path, Kind::BlockDev { major, minor }, 0o660)
}

/// Named pipe, mode 0644.
pub fn fifo(path: &str) -> Entry {
    Entry::new(path, Kind::Fifo, 0o644)
}

/// Whiteout deleting `path` from lower layers: empty file `DIR/.wh.NAME`.
pub fn whiteout(path: &str) -> Entry {
    let (parent, name) = split_parent(path);
    Entry::new(
        &format!("{parent}.wh.{name}"),
        Kind::File(Vec::new()),
        0o644,
    )
}

/// Opaque marker for directory `dir`: `DIR/.wh..wh..opq` (hides all lower
/// contents of `dir`, keeps what this layer adds).
pub fn opaque(dir: &str) -> Entry {
    let dir = dir.trim_end_matches('/');
    Entry::new(
        &format!("{dir}/.wh..wh..opq"),
        Kind::File(Vec::new()),
        0o644,
    )
}

/// ("a/b/", "c") for "a/b/c"; ("", "c") for "c".
fn split_parent(path: &str) -> (&str, &str) {
    let path = path.trim_end_matches('/');
    match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    }
}

/// Layer compression, with its OCI media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => MT_LAYER_TAR,
            Compression::Gzip => MT_LAYER_GZIP,
            Compression::Zstd => MT_LAYER_ZSTD,
        }
    }

    /// Compress `tar` deterministically (gzip level 6 with mtime 0, zstd level 3).
    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                enc.write_all(tar).expect("gzip write");
                enc.finish().expect("gzip finish")
            }
            Compression::Zstd => zstd::stream::encode_all(tar, 3).expect("zstd encode"),
        }
    }
}

/// How names/link targets longer than 100 bytes are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongNames {
    /// ustar headers; long names via PAX `path` / `linkpath` records.
    Pax,
    /// GNU headers; long names via `././@LongLink` entries of type `L` / `K`.
    Gnu,
}

/// A layer to build: entries (in tar order), compression, long-name style and
/// optional annotations put on its manifest descriptor.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub entries: Vec<Entry>,
    pub compression: Compression,
    pub long_names: LongNames,
    pub annotations: BTreeMap<String, String>,
}

impl LayerSpec {
    /// Gzip, PAX style, no annotations.
    pub fn new(entries: Vec<Entry>) -> LayerSpec {
        LayerSpec {
            entries,
            compression: Compression::Gzip,
            long_names: LongNames::Pax,
            annotations: BTreeMap::new(),
        }
    }
    pub fn compression(mut self, c: Compression) -> LayerSpec {
        self.compression = c;
        self
    }
    pub fn long_names(mut self, s: LongNames) -> LayerSpec {
        self.long_names = s;
        self
    }
    pub fn annotate(mut self, key: &str, value: &str) -> LayerSpec {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }
}

/// A built layer. Fields are public so a test can assemble exotic layers
/// (eStargz, zstd:chunked) itself and hand them to `OciLayout::add_image_from_layers`.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    /// The uncompressed tar.
    pub tar: Vec<u8>,
    /// The blob as stored (compressed per `media_type`).
    pub blob: Vec<u8>,
    pub media_type: String,
    /// `sha256:` of `blob`.
    pub digest: String,
    /// `sha256:` of `tar` (goes into the config's `rootfs.diff_ids`).
    pub diff_id: String,
    pub annotations: BTreeMap<String, String>,
}

impl BuiltLayer {
    /// Wrap an already-built tar: compress it, compute digests.
    pub fn from_tar(
        tar: Vec<u8>,
        compression: Compression,
        annotations: BTreeMap<String, String>,
    ) -> BuiltLayer {
        let blob = compression.compress(&tar);
        BuiltLayer {
            digest: sha256_digest(&blob),
            diff_id: sha256_digest(&tar),
            media_type: compression.media_type().to_string(),
            tar,
            blob,
            annotations,
        }
    }
}

/// Build a layer: deterministic tar, compression and digests.
pub fn build_layer(spec: &LayerSpec) -> BuiltLayer {
    BuiltLayer::from_tar(
        build_tar(&spec.entries, spec.long_names),
        spec.compression,
        spec.annotations.clone(),
    )
}

/// The uncompressed tar for `entries`, in order, ended by two zero blocks.
pub fn build_tar(entries: &[Entry], style: LongNames) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        append_entry(&mut b, e, style)
            .unwrap_or_else(|err| panic!("tar entry {:?}: {err}", e.path));
    }
    b.into_inner().expect("finish tar")
}

const NAME_LEN: usize = 100;

fn append_entry(b: &mut tar::Builder<Vec<u8>>, e: &Entry, style: LongNames) -> std::io::Result<()> {
    assert!(
        !e.path.is_empty() && !e.path.starts_with('/'),
        "entry path must be relative: {:?}",
        e.path
    );
    let mut name = e.path.trim_end_matches('/').as_bytes().to_vec();
    let (ty, data, link): (EntryType, &[u8], Option<&str>) = match &e.kind {
        Kind::File(d) => (EntryType::Regular, d, None),
        Kind::Dir => {
            name.push(b'/');
            (EntryType::Directory, &[], None)
        }
        Kind::Symlink(t) => (EntryType::Symlink, &[], Some(t)),
        Kind::Hardlink(t) => (EntryType::Link, &[], Some(t)),
        Kind::CharDev { .. } => (EntryType::Char, &[], None),
        Kind::BlockDev { .. } => (EntryType::Block, &[], None),
        Kind::Fifo => (EntryType::Fifo, &[], None),
    };
    let link = link.map(|l| l.as_bytes());

    let mut h = match style {
        LongNames::Pax => Header::new_ustar(),
        LongNames::Gnu => Header::new_gnu(),
    };
    h.set_entry_type(ty);
    h.set_mode(e.mode & 0o7777);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    h.set_mtime(e.mtime);
    h.set_size(data.len() as u64);
    let (major, minor) = match e.kind {
        Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => (major, minor),
        _ => (0, 0),
    };
    h.set_device_major(major)?;
    h.set_device_minor(minor)?;

    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    let name_long = name.len() > NAME_LEN;
    let link_long = link.is_some_and(|l| l.len() > NAME_LEN);
    if style == LongNames::Pax {
        if name_long {
            pax.push(("path".into(), name.clone()));
        }
        if link_long {
            pax.push(("linkpath".into(), link.unwrap().to_vec()));
        }
    }
    for (k, v) in &e.xattrs {
        pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
    }
    if !pax.is_empty() {
        let records = pax_records(&pax);
        let mut ph = Header::new_ustar();
        let base = e
            .path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("x");
        let mut pname = format!("PaxHeaders/{base}").into_bytes();
        pname.truncate(NAME_LEN);
        set_raw(&mut ph.as_old_mut().name, &pname);
        ph.set_entry_type(EntryType::XHeader);
        ph.set_mode(0o644);
        ph.set_mtime(e.mtime);
        ph.set_size(records.len() as u64);
        ph.set_cksum();
        b.append(&ph, &records[..])?;
    }
    if style == LongNames::Gnu {
        if link_long {
            gnu_long(b, b'K', link.unwrap())?;
        }
        if name_long {
            gnu_long(b, b'L', &name)?;
        }
    }
    set_raw(&mut h.as_old_mut().name, &name[..name.len().min(NAME_LEN)]);
    if let Some(l) = link {
        set_raw(&mut h.as_old_mut().linkname, &l[..l.len().min(NAME_LEN)]);
    }
    h.set_cksum();
    b.append(&h, data)
}

/// Copy `src` into a NUL-padded header field.
fn set_raw(field: &mut [u8], src: &[u8]) {
    field.fill(0);
    field[..src.len()].copy_from_slice(src);
}

/// A GNU `././@LongLink` entry (type `L` for the name, `K` for the link target).
fn gnu_long(b: &mut tar::Builder<Vec<u8>>, ty: u8, value: &[u8]) -> std::io::Result<()> {
    let mut h = Header::new_gnu();
    set_raw(&mut h.as_old_mut().name, b"././@LongLink");
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(value.len() as u64 + 1);
    h.set_entry_type(EntryType::new(ty));
    h.set_cksum();
    let mut data = value.to_vec();
    data.push(0);
    b.append(&h, &data[..])
}

/// PAX extended header body: `"%d %s=%s\n"` records, length counting itself.
pub fn pax_records(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let rest = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}
