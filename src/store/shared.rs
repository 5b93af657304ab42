//! A second-level chunk cache on a filesystem many nodes mount (NFS, Lustre,
//! GPFS), in the spirit of CVMFS's alien cache: a node looks there before
//! asking the registry, and leaves there what it fetched.
//!
//! Other machines write it, so nothing read from it is trusted: the caller
//! verifies every chunk against its digest and [`SharedCache::discard`]s a bad
//! one. Writes are a temporary file renamed into place (atomic on one
//! filesystem, so readers never see a partial chunk) and need no locks: two
//! nodes writing one chunk write the same bytes. It holds content named by its
//! own digest only, never a token or anything user-specific. Its layout is the
//! store's (`blobs/sha256/<hex>`), so a site can prepare one from any lazyimg
//! cache, and a read-only one works: failed writes are only logged.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::digest::Digest;

pub struct SharedCache {
    root: PathBuf,
    /// Whether a failed write was reported already (say it once, not per chunk).
    write_failure_logged: AtomicBool,
}

impl SharedCache {
    /// The shared cache rooted at `root` (created lazily, on the first write).
    pub fn new(root: &Path) -> SharedCache {
        SharedCache {
            root: root.to_path_buf(),
            write_failure_logged: AtomicBool::new(false),
        }
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The bytes stored under `digest`, **unverified**, if there is such a
    /// file of exactly `size` bytes; any trouble reading it is a miss.
    pub fn get(&self, digest: &Digest, size: u64) -> Option<Vec<u8>> {
        let file = std::fs::File::open(self.path(digest)).ok()?;
        if file.metadata().ok()?.len() != size {
            return None;
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(size).read_to_end(&mut bytes).ok()?;
        (bytes.len() as u64 == size).then_some(bytes)
    }

    /// Leaves verified `content` under `digest` for other nodes, unless it is
    /// there already. Best effort: a read-only or full cache is logged once.
    pub fn put(&self, digest: &Digest, content: &[u8]) {
        let target = self.path(digest);
        if target.exists() {
            return;
        }
        let written = (|| -> std::io::Result<()> {
            let dir = target.parent().expect("blob paths have a parent");
            std::fs::create_dir_all(dir)?;
            let mut tmp = tempfile::Builder::new()
                .prefix(&format!(".{}.", digest.hex()))
                .tempfile_in(dir)?;
            tmp.write_all(content)?;
            tmp.as_file().sync_all()?;
            tmp.persist(&target).map_err(|e| e.error)?;
            Ok(())
        })();
        if let Err(e) = written
            && !self.write_failure_logged.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "cannot write to the shared cache {} (used read-only from now on in this log): {e}",
                self.root.display()
            );
        }
    }

    /// Removes a chunk that failed verification, where permitted.
    pub fn discard(&self, digest: &Digest) {
        let path = self.path(digest);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::warn!(
                "removed {} from the shared cache: it failed verification",
                path.display()
            ),
            Err(e) => tracing::warn!(
                "{} in the shared cache failed verification and cannot be removed: {e}",
                path.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_wrong_sizes_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SharedCache::new(&dir.path().join("shared"));
        let digest = Digest::of(b"chunk");
        assert_eq!(cache.get(&digest, 5), None);
        cache.put(&digest, b"chunk");
        assert_eq!(cache.get(&digest, 5).as_deref(), Some(&b"chunk"[..]));
        assert_eq!(cache.get(&digest, 6), None, "a size mismatch is a miss");
        cache.discard(&digest);
        assert_eq!(cache.get(&digest, 5), None);
    }

    #[test]
    fn a_read_only_cache_serves_and_ignores_writes() {
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::of(b"chunk");
        SharedCache::new(dir.path()).put(&digest, b"chunk");
        // A file where the blobs directory would go makes every write fail,
        // for root too (permission bits would not).
        let blocked = tempfile::tempdir().unwrap();
        std::fs::write(blocked.path().join("blobs"), b"").unwrap();
        let cache = SharedCache::new(blocked.path());
        cache.put(&digest, b"chunk");
        assert_eq!(cache.get(&digest, 5), None);
        assert_eq!(
            SharedCache::new(dir.path()).get(&digest, 5).as_deref(),
            Some(&b"chunk"[..])
        );
    }
}
