//! Which stored content was used recently.
//!
//! In memory, an LRU of open mappings, so hot content is not re-opened on every read.
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
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

pub(super) struct OpenBlobs {
    maps: LruCache<Digest, (Blob, Instant)>,
}

impl OpenBlobs {
    pub(super) fn new() -> Self {
        OpenBlobs {
            maps: LruCache::new(OPEN_MAPPINGS),
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
        self.maps.put(digest, (blob, Instant::now()));
    }

    pub(super) fn remove(&mut self, digest: &Digest) {
        self.maps.pop(digest);
    }
}
