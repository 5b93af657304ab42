//! Building a layer's part of an index artifact from its stored blob.

use std::io::{self, Read};

use super::{ArtifactLayer, FORMAT_VERSION, GZIP_SPAN, TAR_CHUNK};
use crate::chunkmap::{ChunkMap, GzipResume, MapSource};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::image::{Descriptor, DescriptorExt};
use crate::layer::gzip_checkpoints::{self, Checkpoint, GzipCheckpointer};
use crate::layer::{self, Chunk, ChunkCodec, ChunkedLayer, Compression};
use crate::store::Store;
use crate::tree::Tree;

/// One layer's part of an index artifact, built, and its windows blob (empty for tar layers).
pub struct BuiltLayer {
    pub file: ArtifactLayer,
    pub windows: Vec<u8>,
}

/// Indexes stored layer `layer` in one pass; `None` for layers that cannot be
/// read piecewise (plain zstd is one frame).
///
/// Errors: [`Error::DigestMismatch`] when the uncompressed bytes do not hash
/// to `diff_id` (the image config's), exactly as `pull` and a whole-layer
/// mount refuse such a layer: an index is never the one path that accepts it.
pub fn build_layer(
    store: &Store,
    layer: &Descriptor,
    diff_id: &Digest,
) -> Result<Option<BuiltLayer>> {
    let digest = layer.sha256()?;
    let blob = store.require(&digest)?;
    let bytes = blob.bytes();
    let layer_error = |source| Error::Layer {
        layer: digest,
        source,
    };
    let check_diff_id = |actual: Digest| {
        if actual == *diff_id {
            Ok(())
        } else {
            Err(Error::DigestMismatch {
                what: format!("uncompressed layer {digest} (its diff_id)"),
                expected: *diff_id,
                actual,
            })
        }
    };
    let (chunked, gzip, windows) = match Compression::from_media_type(layer.media_type().as_ref()) {
        Some(Compression::None) => {
            // The stored blob matched the layer digest, which is then its diff_id.
            check_diff_id(digest)?;
            let table = layer::read_entries(bytes).map_err(layer_error)?;
            let chunks = (0..bytes.len() as u64)
                .step_by(TAR_CHUNK as usize)
                .map(|start| {
                    let end = (start + TAR_CHUNK).min(bytes.len() as u64);
                    let piece = &bytes[start as usize..end as usize];
                    Chunk {
                        content_offset: start,
                        content_size: end - start,
                        blob_offset: start,
                        blob_size: end - start,
                        codec: ChunkCodec::Stored,
                        digest: Digest::of(piece),
                    }
                })
                .collect();
            (ChunkedLayer { table, chunks }, None, Vec::new())
        }
        Some(Compression::Gzip) => {
            let mut reader = SpanHashing::new(GzipCheckpointer::new(bytes, GZIP_SPAN));
            let table = layer::read_entries(&mut reader).map_err(layer_error)?;
            let (points, span_digests, whole) = reader.finish().map_err(|e| {
                layer_error(layer::LayerError::Read {
                    offset: 0,
                    source: e,
                })
            })?;
            check_diff_id(whole)?;
            let chunks = (0..points.checkpoints.len())
                .map(|k| {
                    let blob_range = gzip_checkpoints::span_range(&points, k);
                    let out = gzip_checkpoints::span_out_range(&points, k);
                    Chunk {
                        content_offset: out.start,
                        content_size: out.end - out.start,
                        blob_offset: blob_range.start,
                        blob_size: blob_range.end - blob_range.start,
                        codec: ChunkCodec::Deflate {
                            checkpoint: k as u32,
                        },
                        digest: span_digests[k],
                    }
                })
                .collect();
            let (resume, windows) = pack_windows(points.checkpoints, points.windows)?;
            (ChunkedLayer { table, chunks }, Some(resume), windows)
        }
        Some(Compression::Zstd) | None => return Ok(None),
    };
    Ok(Some(BuiltLayer {
        file: ArtifactLayer {
            version: FORMAT_VERSION,
            layer: digest,
            layer_size: layer.size(),
            chunked,
            gzip,
        },
        windows,
    }))
}

/// Checks a lazyimg index's map of stored layer `layer` against the layer's
/// verified bytes: `None` when `map` is exactly what [`build_layer`] makes of
/// them (entries, spans, checkpoints, windows), `Some(reason)` when it is not
/// or when the uncompressed bytes miss `diff_id`. An index is trusted through
/// its signature, or on the registry's write access alone when no keys are
/// configured: this is the check that holds either way, once the whole layer
/// is at hand. Errors: reading the stored blob.
pub fn check_map(
    store: &Store,
    layer: &Descriptor,
    diff_id: &Digest,
    map: &ChunkMap,
) -> Result<Option<String>> {
    let built = match build_layer(store, layer, diff_id) {
        Ok(Some(built)) => built,
        Ok(None) => return Ok(Some("the layer cannot be read piecewise".into())),
        Err(e @ (Error::DigestMismatch { .. } | Error::Layer { .. })) => {
            return Ok(Some(e.to_string()));
        }
        Err(e) => return Err(e),
    };
    let rebuilt = ChunkMap::new(MapSource::LazyimgIndex, built.file.chunked, built.file.gzip);
    Ok(if rebuilt.layer.table != map.layer.table {
        Some(format!(
            "its index places files differently from the layer's bytes (entry table {}, the bytes give {})",
            map.content_identity(),
            rebuilt.content_identity()
        ))
    } else if rebuilt.layer.chunks != map.layer.chunks || rebuilt.gzip != map.gzip {
        Some("its index's spans or gzip checkpoints are not the layer's".into())
    } else {
        None
    })
}

/// Refuses, with the error a mount gives, an image whose layers do not merge
/// into one tree (a hardlink to a path no layer holds, a root entry that is
/// no directory): an index must not make lazy an image no mount can show.
/// `built` holds the indexes of `layers` that have one; the other layers are
/// read from the store, as the mount reads them.
pub fn check_tree(
    store: &Store,
    image: &str,
    layers: &[Descriptor],
    built: &[BuiltLayer],
) -> Result<()> {
    let mut tables = Vec::with_capacity(layers.len());
    for layer in layers {
        let digest = layer.sha256()?;
        let table = match built.iter().find(|b| b.file.layer == digest) {
            Some(built) => built.file.chunked.table.clone(),
            None => {
                let compression = layer.layer_compression(image)?;
                let blob = store.require(&digest)?;
                let layer_error = |source| Error::Layer {
                    layer: digest,
                    source,
                };
                let tar = layer::decompress(compression, blob.bytes())
                    .map_err(|source| layer_error(layer::LayerError::Read { offset: 0, source }))?;
                layer::read_entries(tar).map_err(layer_error)?
            }
        };
        tables.push(table);
    }
    Tree::build(&tables).map_err(|source| Error::Tree {
        image: image.to_string(),
        source,
    })?;
    Ok(())
}

/// Windows, each zstd-compressed on its own so a read fetches only the one it needs.
fn pack_windows(
    checkpoints: Vec<Checkpoint>,
    windows: Vec<Vec<u8>>,
) -> Result<(GzipResume, Vec<u8>)> {
    let mut blob = Vec::new();
    let mut chunks = Vec::new();
    let mut window_of = Vec::with_capacity(windows.len());
    let mut content_offset = 0;
    for window in windows {
        if window.is_empty() {
            window_of.push(None);
            continue;
        }
        let packed = zstd::bulk::compress(&window, 3).map_err(|e| Error::io("zstd", e))?;
        window_of.push(Some(chunks.len() as u32));
        chunks.push(Chunk {
            content_offset,
            content_size: window.len() as u64,
            blob_offset: blob.len() as u64,
            blob_size: packed.len() as u64,
            codec: ChunkCodec::Zstd,
            digest: Digest::of(&window),
        });
        content_offset += window.len() as u64;
        blob.extend_from_slice(&packed);
    }
    let resume = GzipResume {
        checkpoints,
        window_of,
        windows_blob: Digest::of(&blob),
        windows_size: blob.len() as u64,
        windows: chunks,
    };
    Ok((resume, blob))
}

/// Passes a gzip layer's uncompressed stream through, hashing it span by span
/// as the indexer places its checkpoints.
struct SpanHashing<R> {
    inner: GzipCheckpointer<R>,
    position: u64,
    hasher: Hasher,
    /// Of the whole uncompressed stream: the layer's diff_id.
    whole: Hasher,
    digests: Vec<Digest>,
    /// The next checkpoint whose offset ends a span (checkpoint 0 ends none).
    next: usize,
}

impl<R: Read> SpanHashing<R> {
    fn new(inner: GzipCheckpointer<R>) -> Self {
        SpanHashing {
            inner,
            position: 0,
            hasher: Hasher::new(),
            whole: Hasher::new(),
            digests: Vec::new(),
            next: 1,
        }
    }

    /// The checkpoints, each span's digest, and the whole stream's digest.
    fn finish(mut self) -> io::Result<(gzip_checkpoints::GzipCheckpoints, Vec<Digest>, Digest)> {
        // Drain through `read` so the tail is hashed too.
        io::copy(&mut self, &mut io::sink())?;
        let mut digests = self.digests;
        digests.push(self.hasher.finish());
        let points = self.inner.finish()?;
        if digests.len() != points.checkpoints.len() {
            return Err(io::Error::other(format!(
                "{} span digests for {} checkpoints",
                digests.len(),
                points.checkpoints.len()
            )));
        }
        Ok((points, digests, self.whole.finish()))
    }
}

impl<R: Read> Read for SpanHashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.whole.update(&buf[..n]);
        let mut piece = &buf[..n];
        // A checkpoint is placed before any output past it exists, so every
        // boundary inside this piece is already known.
        while let Some(cut) = self
            .inner
            .checkpoints()
            .get(self.next)
            .map(|cp| cp.out.saturating_sub(self.position))
            .filter(|&cut| cut < piece.len() as u64)
        {
            let (head, tail) = piece.split_at(cut as usize);
            self.hasher.update(head);
            let done = std::mem::take(&mut self.hasher);
            self.digests.push(done.finish());
            self.position += cut;
            piece = tail;
            self.next += 1;
        }
        self.hasher.update(piece);
        self.position += piece.len() as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::layer::test_tar::TestTar;

    /// Stores `tar` as a layer of `media_type`, gzip-compressed when it says so.
    fn stored(store: &Store, tar: Vec<u8>, media_type: &str) -> Descriptor {
        let blob = if media_type.ends_with("gzip") {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            gz.finish().unwrap()
        } else {
            tar
        };
        let digest = Digest::of(&blob);
        store.put(digest, &blob, "test layer").unwrap();
        crate::image::descriptor(media_type, &digest, blob.len() as u64, Default::default())
    }

    const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

    /// The sha256 of a stored gzip or plain tar layer's uncompressed bytes.
    fn diff_id(store: &Store, layer: &Descriptor) -> Digest {
        let blob = store.require(&layer.sha256().unwrap()).unwrap();
        if layer.media_type().as_ref() == GZIP {
            let mut tar = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::MultiGzDecoder::new(blob.bytes()),
                &mut tar,
            )
            .unwrap();
            Digest::of(&tar)
        } else {
            layer.sha256().unwrap()
        }
    }

    /// Each layer's index, where it has one, then the tree check.
    fn check(store: &Store, layers: &[Descriptor]) -> Result<()> {
        let built: Vec<BuiltLayer> = (layers.iter())
            .filter_map(|layer| build_layer(store, layer, &diff_id(store, layer)).unwrap())
            .collect();
        check_tree(store, "example/image:1", layers, &built)
    }

    #[test]
    fn images_whose_tree_cannot_be_built_are_refused_as_mounts_refuse_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), u64::MAX).unwrap();
        let base = stored(&store, TestTar::new().file("f", b"f").bytes(), GZIP);
        let dangling = stored(
            &store,
            TestTar::new().hardlink("h", "missing").bytes(),
            GZIP,
        );
        let empty_name = TestTar::new()
            .raw(
                crate::layer::test_tar::header(tar::EntryType::Regular, 0o644),
                b"",
                b"",
                b"",
            )
            .bytes();
        let empty_name = stored(&store, empty_name, GZIP);
        let to_dir = stored(
            &store,
            TestTar::new().dir("d").hardlink("h", "d").bytes(),
            GZIP,
        );
        // A plain zstd layer has no index of its own: it is read from the store.
        let zstd_tar = TestTar::new().hardlink("z", "missing").bytes();
        let zstd_blob = zstd::encode_all(&zstd_tar[..], 3).unwrap();
        let zstd_digest = Digest::of(&zstd_blob);
        let zstd_layer = crate::image::descriptor(
            ZSTD,
            &zstd_digest,
            zstd_blob.len() as u64,
            Default::default(),
        );
        store.put(zstd_digest, &zstd_blob, "test layer").unwrap();

        check(&store, std::slice::from_ref(&base)).unwrap();
        check(
            &store,
            &[
                base.clone(),
                stored(&store, TestTar::new().hardlink("h", "f").bytes(), GZIP),
            ],
        )
        .unwrap();
        for (layers, expected) in [
            (
                vec![base.clone(), dangling],
                "hardlink \"h\" points to \"missing\"",
            ),
            (
                vec![empty_name],
                "the entry for the root directory is not a directory",
            ),
            (vec![to_dir], "points to directory \"d\""),
            (
                vec![base.clone(), zstd_layer],
                "hardlink \"z\" points to \"missing\"",
            ),
        ] {
            match check(&store, &layers) {
                Err(e @ Error::Tree { .. }) => {
                    let text = e.to_string();
                    assert!(
                        text.contains("example/image:1") && text.contains(expected),
                        "{text}"
                    )
                }
                other => panic!("{expected}: expected a tree error, got {other:?}"),
            }
        }
    }

    /// An index is never the one path that accepts a layer `pull` refuses.
    #[test]
    fn a_layer_that_misses_its_diff_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), u64::MAX).unwrap();
        let tar = TestTar::new().file("f", b"content").bytes();
        let gzip = stored(&store, tar.clone(), GZIP);
        let plain = stored(
            &store,
            tar.clone(),
            "application/vnd.oci.image.layer.v1.tar",
        );
        let right = Digest::of(&tar);
        let wrong = Digest::of(b"another tar");
        for layer in [&gzip, &plain] {
            assert!(build_layer(&store, layer, &right).unwrap().is_some());
            match build_layer(&store, layer, &wrong) {
                Err(Error::DigestMismatch {
                    expected, actual, ..
                }) => assert_eq!((expected, actual), (wrong, right)),
                other => panic!("{}: {:?}", layer.media_type(), other.map(|_| ())),
            }
        }
    }
}
