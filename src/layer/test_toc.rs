//! Test helper: blobs laid out like eStargz or zstd:chunked payloads, with
//! their TOC entries, and chunk decoding as a lazy reader does it; shared by
//! the two TOC parsers' tests.

use std::io::Write;

use serde_json::{Value, json};

use super::{Chunk, ChunkedLayer, EntryKind};
use crate::digest::Digest;

/// Stands in for the tar headers and padding between payloads.
const TAR_FILLER: &[u8] = b"tar headers and padding";

/// The payload part of a blob and the TOC entries describing it.
pub(crate) struct TestBlob {
    pub bytes: Vec<u8>,
    pub entries: Vec<Value>,
    style: Style,
}

/// Where the writers of the two formats differ.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// eStargz: gzip members; a payload's last member goes on with the tar
    /// bytes after it; chunk sizes on all chunks but the last.
    Estargz,
    /// zstd:chunked: zstd frames holding payload only; `endOffset` on the
    /// file; chunk fields only on files of two or more chunks.
    ZstdChunked,
}

/// One chunk of a test file: its bytes, and whether the TOC marks it zeros.
pub(crate) struct Piece<'a>(pub &'a [u8], pub bool);

impl TestBlob {
    pub(crate) fn new(style: Style) -> Self {
        let mut blob = TestBlob {
            bytes: Vec::new(),
            entries: Vec::new(),
            style,
        };
        blob.frame(TAR_FILLER);
        blob
    }

    /// Appends `data` as one gzip member or zstd frame; returns its offset.
    fn frame(&mut self, data: &[u8]) -> u64 {
        let offset = self.bytes.len() as u64;
        match self.style {
            Style::Estargz => {
                let mut gz =
                    flate2::write::GzEncoder::new(&mut self.bytes, flate2::Compression::fast());
                gz.write_all(data).unwrap();
                gz.finish().unwrap();
            }
            Style::ZstdChunked => {
                let frame = zstd::encode_all(data, 3).unwrap();
                self.bytes.extend(frame);
            }
        }
        offset
    }

    /// Adds a non-file entry (or an empty file); returns its index.
    pub(crate) fn entry(&mut self, entry: Value) -> usize {
        self.entries.push(entry);
        self.entries.len() - 1
    }

    /// Adds regular file `name` cut into chunks of `chunk_size` bytes;
    /// returns the index of its `reg` entry.
    pub(crate) fn file(&mut self, name: &str, content: &[u8], chunk_size: usize) -> usize {
        let pieces: Vec<Piece> = content
            .chunks(chunk_size)
            .map(|c| Piece(c, false))
            .collect();
        self.file_pieces(name, &pieces)
    }

    pub(crate) fn file_pieces(&mut self, name: &str, pieces: &[Piece]) -> usize {
        let content: Vec<u8> = pieces.iter().flat_map(|p| p.0.iter().copied()).collect();
        let index = self.entry(json!({
            "name": name,
            "type": "reg",
            "mode": 0o100644,
            "size": content.len(),
            "digest": Digest::of(&content).to_string(),
        }));
        let mut chunk_offset = 0;
        for (k, Piece(data, zeros)) in pieces.iter().enumerate() {
            let last = k + 1 == pieces.len();
            let offset = match (self.style, last) {
                (Style::Estargz, true) => self.frame(&[*data, TAR_FILLER].concat()),
                _ => self.frame(data),
            };
            if k > 0 {
                self.entry(json!({"name": name, "type": "chunk"}));
            }
            let chunk = self.entries.last_mut().unwrap();
            chunk["offset"] = json!(offset);
            chunk["chunkOffset"] = json!(chunk_offset);
            let sized = match self.style {
                Style::Estargz => !last,
                Style::ZstdChunked => pieces.len() > 1,
            };
            if sized {
                chunk["chunkSize"] = json!(data.len());
            }
            if self.style == Style::Estargz || pieces.len() > 1 {
                chunk["chunkDigest"] = json!(Digest::of(data).to_string());
            }
            if *zeros {
                chunk["chunkType"] = json!("zeros");
            }
            chunk_offset += data.len();
        }
        if self.style == Style::ZstdChunked && !pieces.is_empty() {
            self.entries[index]["endOffset"] = json!(self.bytes.len());
        }
        self.frame(TAR_FILLER);
        index
    }

    pub(crate) fn toc_json(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({"version": 1, "entries": self.entries})).unwrap()
    }
}

/// A chunk's content decoded from `blob` by the lazy reader's own decoder,
/// which checks it against the chunk's digest.
pub(crate) fn decode(blob: &[u8], chunk: &Chunk) -> Vec<u8> {
    let start = chunk.blob_offset as usize;
    let fetched = bytes::Bytes::copy_from_slice(&blob[start..start + chunk.blob_size as usize]);
    crate::lazy::decode::decode(chunk, fetched, None, None)
        .and_then(|content| crate::lazy::decode::verify(chunk, content))
        .unwrap_or_else(|e| panic!("{chunk:?}: {e}"))
        .to_vec()
}

/// Decodes every chunk, checking that chunks tile distinct parts of the
/// content space in order.
pub(crate) fn decode_all(blob: &[u8], layer: &ChunkedLayer) {
    let mut end = 0;
    for chunk in &layer.chunks {
        assert!(chunk.content_offset >= end, "{chunk:?} overlaps");
        end = chunk.content_offset + chunk.content_size;
        decode(blob, chunk);
    }
}

/// The bytes of regular file `path`, gathered from its chunks.
pub(crate) fn file_content(blob: &[u8], layer: &ChunkedLayer, path: &str) -> Vec<u8> {
    let entry = (layer.table.entries.iter())
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no entry {path}"));
    let EntryKind::Regular { offset, size } = entry.kind else {
        panic!("{path} is not a regular file");
    };
    let mut content = Vec::new();
    for chunk in &layer.chunks {
        if (offset..offset + size).contains(&chunk.content_offset) {
            assert_eq!(chunk.content_offset, offset + content.len() as u64);
            content.extend(decode(blob, chunk));
        }
    }
    assert_eq!(content.len() as u64, size, "{path}");
    content
}
