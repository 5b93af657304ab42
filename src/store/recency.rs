//! Which stored content was used recently.
//!
//! In memory, an LRU of open mappings, so hot content is not re-opened on every read.
//! It is bounded in bytes as well as in entries: the pages a mapping has touched
//! count in the process's resident set for as long as it stays mapped, so 256
//! open 1 MiB chunks would hold 256 MiB of RSS for nothing the page cache does
//! not already keep.
//! On disk, recency is each file's mtime, touched when content is opened and at
//! most once a minute while it stays hot: that survives restarts and is shared by
//! every process using the store, and it is what eviction sorts by.

use std::fs::File;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;

use super::Blob;
use crate::digest::Digest;

const OPEN_MAPPINGS: NonZeroUsize = NonZeroUsize::new(256).unwrap();
/// Bytes of content kept mapped, at most (one mapping bigger than that is kept alone).
pub(super) const OPEN_BYTES: usize = 8 << 20;
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

pub(super) struct OpenBlobs {
    maps: LruCache<Digest, (Blob, Instant)>,
    /// Sum of the open mappings' lengths.
    bytes: usize,
}

impl OpenBlobs {
    pub(super) fn new() -> Self {
        OpenBlobs {
            maps: LruCache::new(OPEN_MAPPINGS),
            bytes: 0,
        }
    }

    /// A mapping opened earlier. Returns `None` when the content is not open, or
    /// when its on-disk recency is due a touch: the caller then re-opens it.
    pub(super) fn get(&mut self, digest: &Digest) -> Option<Blob> {
        let (blob, touched) = self.maps.get(digest)?;
        (touched.elapsed() < TOUCH_INTERVAL).then(|| blob.clone())
    }

    pub(super) fn insert(&mut self, digest: Digest, blob: Blob, file: &File) {
        // Best effort: a store on a read-only medium still serves content.
        let _ = file.set_modified(SystemTime::now());
        self.bytes += blob.bytes().len();
        if let Some((_, (old, _))) = self.maps.push(digest, (blob, Instant::now())) {
            self.bytes -= old.bytes().len();
        }
        while self.bytes > OPEN_BYTES && self.maps.len() > 1 {
            match self.maps.pop_lru() {
                Some((_, (old, _))) => self.bytes -= old.bytes().len(),
                None => break,
            }
        }
    }

    /// Bytes of content mapped right now.
    #[cfg(test)]
    pub(super) fn mapped_bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn remove(&mut self, digest: &Digest) {
        if let Some((old, _)) = self.maps.pop(digest) {
            self.bytes -= old.bytes().len();
        }
    }
}
