//! eStargz layers written from [`Entry`] lists the way stargz-snapshotter's
//! writer lays them out (`docs/estargz.md`): a `.no.prefetch.landmark` first,
//! every payload chunk starting a gzip member of its own (the tar bytes after
//! a payload stay in its last member), the `stargz.index.json` TOC as the last
//! tar entry in a member of its own, then the 51-byte footer. The blob is
//! still one gzip stream of one tar, so eStargz-unaware tools unpack it.
//!
//! ```ignore
//! let layers: Vec<BuiltLayer> = spec.layers.iter().map(|l| build_estargz_layer(l, 64 << 10)).collect();
//! let img = layout.add_image_from_layers(&spec, &layers);
//! ```

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::layer::*;

pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
pub const TOC_NAME: &str = "stargz.index.json";
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";

/// The eStargz form of `spec`'s entries (its compression is ignored), payloads
/// cut into chunks of at most `chunk_size` bytes. `tar` is the whole
/// decompressed stream (landmark and TOC entries included) and `diff_id` its
/// sha256; the TOC digest is in `annotations` with `spec`'s own.
pub fn build_estargz_layer(spec: &LayerSpec, chunk_size: usize) -> BuiltLayer {
    build_estargz_layer_with_toc(spec, chunk_size, |_| {})
}

/// [`build_estargz_layer`], its TOC entries changed by `edit` before the TOC
/// is written: a crafted TOC that its digest annotation still matches, so
/// only lazyimg's own checks of the entries can refuse it.
pub fn build_estargz_layer_with_toc(
    spec: &LayerSpec,
    chunk_size: usize,
    edit: impl FnOnce(&mut Vec<Value>),
) -> BuiltLayer {
    assert!(chunk_size > 0);
    let mut entries = vec![file(NO_PREFETCH_LANDMARK, [0xf])];
    entries.extend(spec.entries.iter().cloned());
    let tar = build_tar(&entries, spec.long_names);
    let (body, end_of_archive) = tar.split_at(tar.len() - 1024);
    assert!(
        end_of_archive.iter().all(|&b| b == 0),
        "tar must end in two zero blocks"
    );

    let mut writer = Writer::default();
    let mut toc_entries = Vec::new();
    // How much of `body` the writer has.
    let mut consumed = 0;
    let mut archive = tar::Archive::new(body);
    let tar_entries = archive.entries().expect("read back own tar");
    let mut count = 0;
    for (entry, tar_entry) in entries.iter().zip(tar_entries) {
        let tar_entry = tar_entry.expect("read back own tar entry");
        let name = toc_name(entry);
        assert_eq!(*tar_entry.path_bytes(), *name.as_bytes(), "tar out of step");
        let mut toc_entry = toc_metadata(entry);
        let payload_start = tar_entry.raw_file_position() as usize;
        let payload = &body[payload_start..payload_start + tar_entry.size() as usize];
        if !payload.is_empty() {
            writer.write(&body[consumed..payload_start]);
            for (k, chunk) in payload.chunks(chunk_size).enumerate() {
                if k > 0 {
                    toc_entries.push(Value::Object(toc_entry));
                    toc_entry = Map::new();
                    toc_entry.insert("name".into(), json!(name));
                    toc_entry.insert("type".into(), json!("chunk"));
                }
                toc_entry.insert("offset".into(), json!(writer.start_member()));
                toc_entry.insert("chunkOffset".into(), json!(k * chunk_size));
                // The last chunk's size is implied: the rest of the file.
                if (k + 1) * chunk_size < payload.len() {
                    toc_entry.insert("chunkSize".into(), json!(chunk_size));
                }
                toc_entry.insert("chunkDigest".into(), json!(sha256_digest(chunk)));
                writer.write(chunk);
            }
            consumed = payload_start + payload.len();
        }
        toc_entries.push(Value::Object(toc_entry));
        count += 1;
    }
    assert_eq!(count, entries.len(), "tar out of step");
    writer.write(&body[consumed..]);

    edit(&mut toc_entries);
    let toc_json = serde_json::to_vec_pretty(&json!({"version": 1, "entries": toc_entries}))
        .expect("TOC JSON");
    let toc_offset = writer.start_member();
    let mut toc_tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    // As Go's writer (stargz-snapshotter's) fills them: an all-NUL numeric
    // field is not a number to a strict tar reader (`lazyimg index` reads it).
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(toc_json.len() as u64);
    toc_tar
        .append_data(&mut header, TOC_NAME, &toc_json[..])
        .expect("TOC tar entry");
    let toc_tar = toc_tar.into_inner().expect("finish TOC tar");
    writer.write(&toc_tar);
    writer.start_member();
    let mut blob = writer.blob;
    blob.extend(footer(toc_offset));

    let tar = [body, &toc_tar].concat();
    let mut annotations = spec.annotations.clone();
    annotations.insert(TOC_DIGEST_ANNOTATION.into(), sha256_digest(&toc_json));
    BuiltLayer {
        digest: sha256_digest(&blob),
        diff_id: sha256_digest(&tar),
        media_type: MT_LAYER_GZIP.into(),
        tar,
        blob,
        annotations,
    }
}

/// Gzip members, each holding the bytes written since it started.
#[derive(Default)]
struct Writer {
    blob: Vec<u8>,
    member: Vec<u8>,
}

impl Writer {
    /// Ends the open member, if it holds anything, and returns where the
    /// next one starts.
    fn start_member(&mut self) -> u64 {
        if !self.member.is_empty() {
            let member = std::mem::take(&mut self.member);
            self.blob.extend(Compression::Gzip.compress(&member));
        }
        self.blob.len() as u64
    }

    fn write(&mut self, bytes: &[u8]) {
        self.member.extend_from_slice(bytes);
    }
}

/// The entry's name as the tar (and so the TOC) spells it.
fn toc_name(entry: &Entry) -> String {
    let path = entry.path.trim_end_matches('/');
    match entry.kind {
        Kind::Dir => format!("{path}/"),
        _ => path.to_string(),
    }
}

/// The TOC fields stargz-snapshotter's writer takes from a tar header.
fn toc_metadata(entry: &Entry) -> Map<String, Value> {
    let (kind, link, device) = match &entry.kind {
        Kind::File(_) => ("reg", None, None),
        Kind::Dir => ("dir", None, None),
        Kind::Symlink(target) => ("symlink", Some(target), None),
        Kind::Hardlink(target) => ("hardlink", Some(target), None),
        Kind::CharDev { major, minor } => ("char", None, Some((major, minor))),
        Kind::BlockDev { major, minor } => ("block", None, Some((major, minor))),
        Kind::Fifo => ("fifo", None, None),
    };
    let mut toc = Map::new();
    toc.insert("name".into(), json!(toc_name(entry)));
    toc.insert("type".into(), json!(kind));
    if let Kind::File(data) = &entry.kind {
        if !data.is_empty() {
            toc.insert("size".into(), json!(data.len()));
        }
        toc.insert("digest".into(), json!(sha256_digest(data)));
    }
    if entry.mtime != 0 {
        toc.insert("modtime".into(), json!(rfc3339(entry.mtime)));
    }
    if let Some(link) = link {
        toc.insert("linkName".into(), json!(link));
    }
    toc.insert("mode".into(), json!(entry.mode & 0o7777));
    toc.insert("uid".into(), json!(entry.uid));
    toc.insert("gid".into(), json!(entry.gid));
    if let Some((major, minor)) = device {
        toc.insert("devMajor".into(), json!(major));
        toc.insert("devMinor".into(), json!(minor));
    }
    if !entry.xattrs.is_empty() {
        let base64 = base64::engine::general_purpose::STANDARD;
        let xattrs: BTreeMap<&str, String> = (entry.xattrs.iter())
            .map(|(name, value)| (name.as_str(), base64.encode(value)))
            .collect();
        toc.insert("xattrs".into(), json!(xattrs));
    }
    toc
}

/// The footer: an empty gzip member whose Extra field's `SG` subfield holds
/// `%016xSTARGZ`, the TOC member's offset.
fn footer(toc_offset: u64) -> Vec<u8> {
    let mut footer = vec![
        0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
    ];
    footer.extend(format!("{toc_offset:016x}STARGZ").bytes());
    // Final empty stored block, then CRC-32 and size of nothing.
    footer.extend([1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(footer.len(), 51);
    footer
}

/// `secs` since the epoch as RFC 3339 UTC, the way Go's writer rounds it.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}
