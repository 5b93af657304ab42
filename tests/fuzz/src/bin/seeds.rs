//! Writes the seed corpora: `seeds DIR` makes `DIR/TARGET/NAME` for every
//! target, small well-formed inputs like those the test suite builds (tars of
//! every entry kind, eStargz and zstd:chunked TOCs, an index artifact layer,
//! gzip streams with checkpoints, manifests, auth files, lists, configs).
//! Generated rather than checked in, so they follow the formats as they change.
use std::io::{Read, Write};
use std::path::Path;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use lazyimg::chunkmap::GzipResume;
use lazyimg::digest::Digest;
use lazyimg::layer::gzip_checkpoints::{self, GzipCheckpointer};
use lazyimg::layer::{self, Chunk, ChunkCodec, ChunkedLayer};
use lazyimg::lazy::index_artifact::ArtifactLayer;

/// Offsets in the TOC seeds point into this much payload before the TOC;
/// the JSON-mode inputs start with it as their `u16`.
const PAYLOAD: u16 = 4096;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: seeds DIR");
    let dir = Path::new(&dir);
    let write = |target: &str, name: &str, data: &[u8]| {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir).unwrap();
        std::fs::write(target_dir.join(name), data).unwrap();
    };
    let with = |mode: u8, rest: &[u8]| [&[mode][..], rest].concat();
    let payload_then = |mode: u8, json: &[u8]| [&[mode][..], &PAYLOAD.to_le_bytes(), json].concat();

    let tar = sample_tar();
    write("tar_index", "plain", &with(0, &tar));
    write("tar_index", "gzip", &with(1, &gzip(&tar)));
    write(
        "tar_index",
        "zstd",
        &with(2, &zstd::encode_all(&tar[..], 3).unwrap()),
    );

    let estargz = estargz_toc();
    write("estargz", "toc-json", &payload_then(1, &estargz));
    let blob = lazyimg_fuzz::estargz_blob(&estargz, PAYLOAD.into());
    write("estargz", "blob", &with(0, &blob));

    let zstd_toc = zstd_chunked_toc();
    write("zstd_chunked", "toc-json", &payload_then(1, &zstd_toc));
    write(
        "zstd_chunked",
        "toc-json-legacy-keys",
        &payload_then(3, &zstd_toc),
    );
    let compressed = zstd::encode_all(&zstd_toc[..], 3).unwrap();
    let offset = PAYLOAD as usize + 8;
    let position = format!("{offset}:{}:{}:1\n", compressed.len(), zstd_toc.len());
    let blob = [position.as_bytes(), &vec![0; offset], &compressed].concat();
    write("zstd_chunked", "blob", &with(0, &blob));

    let artifact = postcard::to_stdvec(&artifact_layer(&tar)).unwrap();
    write(
        "index_artifact",
        "layer",
        &with(0, &zstd::encode_all(&artifact[..], 3).unwrap()),
    );
    write("index_artifact", "postcard", &with(1, &artifact));

    let text: Vec<u8> = (0..20_000u32)
        .flat_map(|i| format!("line {i} of a text file {}\n", i % 7).into_bytes())
        .collect();
    let members = [gzip(&text[..9000]), gzip(b""), gzip(&text[9000..])].concat();
    write(
        "gzip_resume",
        "index-members",
        &[&[1, 2, 8][..], &members].concat(),
    );
    write(
        "gzip_resume",
        "index-tar",
        &[&[1, 0, 0][..], &gzip(&tar)].concat(),
    );
    let index = GzipCheckpointer::with_out_span(&members[..], 129, 2049)
        .finish()
        .unwrap();
    for k in [0, index.checkpoints.len() / 2] {
        let cp = &index.checkpoints[k];
        let input = gzip_checkpoints::span_range(&index, k);
        let out = gzip_checkpoints::span_out_range(&index, k);
        let window = &index.windows[k];
        let mut seed = vec![0, cp.bits | if cp.member_start { 0x10 } else { 0 }];
        seed.extend((out.end - out.start).min(u16::MAX.into()).to_le_bytes()[..2].iter());
        seed.extend((window.len() as u16).to_le_bytes());
        seed.extend(window);
        seed.extend(&members[input.start as usize..input.end as usize]);
        write("gzip_resume", &format!("span-{k}"), &seed);
    }
    for (codec, fetched) in [
        (0u8, text[..300].to_vec()),
        (1, gzip(&text[..3000])),
        (2, zstd::encode_all(&text[..3000], 3).unwrap()),
        (3, Vec::new()),
        (4, members[..200].to_vec()),
    ] {
        let mut seed = vec![2, codec, 0];
        seed.extend(&3000u32.to_le_bytes()[..3]);
        seed.extend(fetched);
        write("gzip_resume", &format!("decode-{codec}"), &seed);
    }

    for (name, json) in image_documents() {
        write("image_json", name, json.as_bytes());
    }

    let auth = |user_password: &str| BASE64_STANDARD.encode(user_password);
    write(
        "auth_json",
        "auths",
        format!(
            "ghcr.io\nexample-lab/cuda-sample\n{{\"auths\": {{\"ghcr.io/example-lab\": {{\"auth\": \"{}\"}}, \"https://index.docker.io/v1/\": {{\"auth\": \"{}\", \"identitytoken\": \"refresh\"}}}}}}",
            auth("user:ghp_token"),
            auth("hub:pass"),
        )
        .as_bytes(),
    );
    write(
        "auth_json",
        "helpers",
        b"docker.io\nlibrary/busybox\n{\"auths\": {\"docker.io\": {}}, \"credHelpers\": {\"registry-1.docker.io\": \"pass\"}, \"credsStore\": \"secretservice\"}",
    );

    let d1 = Digest::of(b"manifest one");
    write(
        "policy",
        "issue-example",
        format!(
            "ghcr.io/example-lab/cuda-sample:nbody-cuda11.7.1\n# approved by the IG\n[[image]]\nrepository = \"ghcr.io/example-lab/cuda-sample\"\ntags = [\"nbody-cuda11.7.1\", \"v*\"]\ndigest = \"{d1}\"\nnote = \"IG approval 2026-114\"\n\n[[image]]\nrepository = \"ghcr.io/example-lab/**\"\n"
        )
        .as_bytes(),
    );
    write(
        "policy",
        "pinned",
        format!("ghcr.io/lab/app@{d1}\nimage = [{{ repository = \"ghcr.io/*/app\" }}]\n")
            .as_bytes(),
    );

    write(
        "config",
        "registries",
        br#"cache_dir = "/var/cache/lazyimg"
cache_max_size = "20 GiB"
unqualified-search-registries = ["ghcr.io", "docker.io"]
short-name-mode = "enforcing"
[aliases]
"tool" = "ghcr.io/lab/tool"
[[registry]]
prefix = "ghcr.io"
location = "tre-ghcr-proxy.nsh.loc:5000"
insecure = true
[[registry.mirror]]
location = "mirror.example:5000"
pull-from-mirror = "digest-only"
[[registry]]
prefix = "*.example.org"
blocked = true
"#,
    );
}

/// A tar with every entry kind lazyimg indexes: files, a directory, links,
/// devices, a fifo, whiteouts, PAX xattrs and mtimes, a GNU long name.
fn sample_tar() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_700_000_000);
        h
    };
    tar.append_data(
        &mut header(tar::EntryType::Directory, 0o755, 0),
        "etc/",
        &[][..],
    )
    .unwrap();
    tar.append_data(
        &mut header(tar::EntryType::Regular, 0o644, 6),
        "etc/hostname",
        &b"host\n\n"[..],
    )
    .unwrap();
    tar.append_pax_extensions([
        ("SCHILY.xattr.security.capability", &b"\x01\x00\x00\x02"[..]),
        ("mtime", &b"1700000000.5"[..]),
        ("uid", &b"2000"[..]),
    ])
    .unwrap();
    tar.append_data(
        &mut header(tar::EntryType::Regular, 0o4755, 4),
        "usr/bin/ping",
        &b"\x7fELF"[..],
    )
    .unwrap();
    let mut link = header(tar::EntryType::Symlink, 0o777, 0);
    tar.append_link(&mut link, "bin", "usr/bin").unwrap();
    let mut hard = header(tar::EntryType::Link, 0o644, 0);
    tar.append_link(&mut hard, "etc/hostname.hard", "etc/hostname")
        .unwrap();
    let mut dev = header(tar::EntryType::Char, 0o666, 0);
    dev.set_device_major(1).unwrap();
    dev.set_device_minor(3).unwrap();
    tar.append_data(&mut dev, "dev/null", &[][..]).unwrap();
    tar.append_data(
        &mut header(tar::EntryType::Fifo, 0o600, 0),
        "run/fifo",
        &[][..],
    )
    .unwrap();
    tar.append_data(
        &mut header(tar::EntryType::Regular, 0, 0),
        "var/.wh.cache",
        &[][..],
    )
    .unwrap();
    tar.append_data(
        &mut header(tar::EntryType::Regular, 0, 0),
        "opt/.wh..wh..opq",
        &[][..],
    )
    .unwrap();
    let long = format!("usr/share/{}/file", "long-name".repeat(20));
    tar.append_data(
        &mut header(tar::EntryType::Regular, 0o644, 3),
        long,
        &b"abc"[..],
    )
    .unwrap();
    tar.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// An eStargz TOC as stargz-snapshotter writes it: a two-chunk file, an
/// empty file, a directory, links, a device, xattrs, the landmark.
fn estargz_toc() -> Vec<u8> {
    let (a, b) = (Digest::of(b"first chunk"), Digest::of(b"second"));
    let whole = Digest::of(b"first chunksecond");
    let small = Digest::of(b"tiny");
    serde_json::to_vec(&serde_json::json!({"version": 1, "entries": [
        {"name": "etc/", "type": "dir", "mode": 0o40755, "modtime": "2023-11-14T22:13:20Z"},
        {"name": "etc/big", "type": "reg", "size": 17, "mode": 0o100644, "uid": 1000, "gid": 1000,
         "modtime": "2023-11-14T22:13:20Z", "digest": whole.to_string(), "offset": 100,
         "chunkSize": 11, "chunkDigest": a.to_string(),
         "xattrs": {"user.note": "aGVsbG8="}},
        {"name": "etc/big", "type": "chunk", "offset": 300, "chunkOffset": 11,
         "chunkDigest": b.to_string()},
        {"name": "etc/small", "type": "reg", "size": 4, "offset": 500,
         "digest": small.to_string(), "chunkDigest": small.to_string()},
        {"name": "etc/empty", "type": "reg", "size": 0},
        {"name": "bin", "type": "symlink", "linkName": "usr/bin"},
        {"name": "etc/small.hard", "type": "hardlink", "linkName": "etc/small"},
        {"name": "dev/null", "type": "char", "devMajor": 1, "devMinor": 3},
        {"name": "run/fifo", "type": "fifo"},
        {"name": "var/.wh.cache", "type": "reg"},
        {"name": ".prefetch.landmark", "type": "reg", "size": 1, "offset": 900,
         "chunkDigest": Digest::of(b"f").to_string()},
    ]}))
    .unwrap()
}

/// A zstd:chunked TOC as containers/storage writes it: `endOffset`,
/// chunks of zeros, nanosecond times with a zone.
fn zstd_chunked_toc() -> Vec<u8> {
    let (a, z) = (Digest::of(b"data part"), Digest::of(&[0; 64]));
    serde_json::to_vec(&serde_json::json!({"version": 1, "entries": [
        {"name": "./usr/", "type": "dir", "mode": 0o755, "modtime": "2023-11-14T23:13:20.5+01:00"},
        {"name": "./usr/lib/data", "type": "reg", "size": 73, "mode": 0o644,
         "modtime": "0001-01-01T00:00:00Z", "digest": Digest::of(b"all").to_string(),
         "offset": 200, "endOffset": 400, "chunkSize": 9, "chunkDigest": a.to_string()},
        {"name": "./usr/lib/data", "type": "chunk", "chunkOffset": 9, "chunkSize": 64,
         "chunkDigest": z.to_string(), "chunkType": "zeros"},
        {"name": "./usr/lib/one", "type": "reg", "size": 3, "offset": 1000, "endOffset": 1100,
         "digest": Digest::of(b"one").to_string(),
         "xattrs": {"security.capability": "AQAAAg=="}},
        {"name": "./usr/lib/link", "type": "symlink", "linkName": "one"},
        {"name": "./usr/.wh..wh..opq", "type": "reg"},
    ]}))
    .unwrap()
}

/// An index artifact layer for a gzip layer of `tar`: its entries, one
/// deflate chunk per checkpoint, the checkpoints and their windows.
fn artifact_layer(tar: &[u8]) -> ArtifactLayer {
    let blob = gzip(tar);
    let mut indexer = GzipCheckpointer::with_out_span(&blob[..], 256, 1024);
    let mut stream = Vec::new();
    indexer.read_to_end(&mut stream).unwrap();
    let index = indexer.finish().unwrap();
    let chunks = (0..index.checkpoints.len())
        .map(|k| {
            let input = gzip_checkpoints::span_range(&index, k);
            let out = gzip_checkpoints::span_out_range(&index, k);
            Chunk {
                content_offset: out.start,
                content_size: out.end - out.start,
                blob_offset: input.start,
                blob_size: input.end - input.start,
                codec: ChunkCodec::Deflate {
                    checkpoint: k as u32,
                },
                digest: Digest::of(&stream[out.start as usize..out.end as usize]),
            }
        })
        .collect();
    let windows: Vec<u8> = index.windows.concat();
    let mut window_chunks = Vec::new();
    let mut window_of = Vec::new();
    let mut at = 0u64;
    for window in &index.windows {
        if window.is_empty() {
            window_of.push(None);
            continue;
        }
        window_of.push(Some(window_chunks.len() as u32));
        window_chunks.push(Chunk {
            content_offset: at,
            content_size: window.len() as u64,
            blob_offset: at,
            blob_size: window.len() as u64,
            codec: ChunkCodec::Stored,
            digest: Digest::of(window),
        });
        at += window.len() as u64;
    }
    let mut file = ArtifactLayer {
        version: 0,
        layer: Digest::of(&blob),
        layer_size: blob.len() as u64,
        chunked: ChunkedLayer {
            table: layer::read_entries(tar).unwrap(),
            chunks,
        },
        gzip: Some(GzipResume {
            checkpoints: index.checkpoints,
            window_of,
            windows_blob: Digest::of(&windows),
            windows_size: windows.len() as u64,
            windows: window_chunks,
        }),
    };
    // The format version is the artifact module's own: the one decode takes.
    file.version = (0..1000)
        .find(|&version| {
            let candidate = ArtifactLayer {
                version,
                ..file.clone()
            };
            let bytes = zstd::encode_all(&postcard::to_stdvec(&candidate).unwrap()[..], 3).unwrap();
            ArtifactLayer::decode(&bytes).is_ok()
        })
        .expect("a format version decode accepts");
    file
}

/// A manifest (with eStargz and zstd:chunked layers and a subject), an
/// index, a Docker manifest list, and an image configuration.
fn image_documents() -> Vec<(&'static str, String)> {
    let d = |s: &str| Digest::of(s.as_bytes()).to_string();
    let mut docs = vec![(
        "manifest",
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d("config"), "size": 500},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d("l1"), "size": 1000,
                 "annotations": {"containerd.io/snapshot/stargz/toc.digest": d("toc")}},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": d("l2"), "size": 2000,
                 "annotations": {
                    "io.github.containers.zstd-chunked.manifest-checksum": d("toc2"),
                    "io.github.containers.zstd-chunked.manifest-position": "1000:200:800:1"}},
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": d("l3"), "size": 3},
            ],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d("s"), "size": 10},
            "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
        })
        .to_string(),
    )];
    docs.push((
        "index",
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d("amd64"), "size": 700,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d("arm"), "size": 700,
                 "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d("idx"), "size": 9,
                 "artifactType": "application/vnd.lazyimg.index.v1",
                 "annotations": {"dev.lazyimg.signature": "c2ln"}},
            ],
        })
        .to_string(),
    ));
    docs.push((
        "manifest-list",
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": [{"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "digest": d("m"), "size": 5, "platform": {"architecture": "amd64", "os": "linux"}}],
        })
        .to_string(),
    ));
    docs.push((
        "config",
        serde_json::json!({
            "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/bin"], "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"],
                       "WorkingDir": "/", "User": "1000:1000", "Labels": {"a": "b"}},
            "rootfs": {"type": "layers", "diff_ids": [d("t1"), d("t2")]},
            "history": [{"created_by": "ADD rootfs", "empty_layer": false}],
        })
        .to_string(),
    ));
    docs
}
