//! The content-addressed store: verified bytes on disk, named by their sha256.
//!
//! Layout under the cache directory:
//! - `blobs/sha256/<hex>`: content whose sha256 is `<hex>`: whole blobs today, verified
//!   chunks of blobs later (a chunk is content too, named by its own digest).
//! - `refs/`: image names → manifest digests, so a cached image opens offline.
//! - `derived/`: entry tables and merged trees, named by the digest they came from.
//! - `tmp/`: downloads in progress; renamed into `blobs/` only once verified.
//! - `logs/`: mount daemons' logs, `mount-<pid>.log`, pruned by [`Store::prune_logs`].
//! - `lock`: held exclusively while evicting.
//!
//! Several lazyimg processes share one store: every write is a temp file that is
//! fsync'd and atomically renamed, and a reader that holds a mapping keeps its bytes
//! even if another process evicts the file.

mod derived;
mod logs;
mod recency;
mod refs;
mod shared;
mod writer;

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use memmap2::Mmap;

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
pub use derived::Derived;
pub use logs::{DAEMON_LOG_MAX_AGE, LogPruneReport};
use recency::OpenBlobs;
pub use refs::ImageRecord;
pub use shared::SharedCache;
pub use writer::BlobWriter;

/// Where downloaded blob bytes go. The sink hashes them; a download that restarts
/// from zero (the registry ignored a Range request) calls [`BlobSink::restart`].
pub trait BlobSink: Send {
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
    fn restart(&mut self) -> Result<()>;
    fn written(&self) -> u64;
}

/// Leftover downloads of a crashed process older than this are removed.
const STALE_TMP_AGE: Duration = Duration::from_secs(24 * 3600);

pub struct Store {
    root: PathBuf,
    max_size: u64,
    open: Mutex<OpenBlobs>,
    /// Bytes stored, as this process last counted them: a cheap trigger for eviction,
    /// which recounts from disk under the lock.
    approx_size: AtomicU64,
}

/// Read-only verified bytes, shared by every reader of the same content.
#[derive(Clone)]
pub struct Blob {
    map: Option<Arc<Mmap>>,
}

impl Blob {
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().map_or(&[], |m| &m[..])
    }

    /// `range` of the content as shared `Bytes`, without copying.
    pub fn slice(&self, range: std::ops::Range<usize>) -> bytes::Bytes {
        match &self.map {
            Some(map) => bytes::Bytes::from_owner(MappedRange {
                map: Arc::clone(map),
                range,
            }),
            None => bytes::Bytes::new(),
        }
    }
}

/// Keeps a mapping alive for as long as `Bytes` handed out from it live.
struct MappedRange {
    map: Arc<Mmap>,
    range: std::ops::Range<usize>,
}

impl AsRef<[u8]> for MappedRange {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredBlob {
    pub digest: Digest,
    pub size: u64,
    #[serde(with = "unix_seconds")]
    pub last_used: SystemTime,
}

/// What [`Store::prune`] did.
#[derive(Debug, Default, serde::Serialize)]
pub struct PruneReport {
    /// Blobs removed.
    pub removed: usize,
    /// Their size in bytes.
    pub freed: u64,
    /// Bytes of blobs left.
    pub remaining: u64,
    /// Derived files removed because the blob they were derived from is gone.
    pub derived_removed: usize,
}

impl Store {
    /// Opens (creating if needed) the store at `root`, capped at `max_size` bytes.
    pub fn open(root: &Path, max_size: u64) -> Result<Store> {
        for dir in ["blobs/sha256", "refs", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        let store = Store {
            root: root.to_path_buf(),
            max_size,
            open: Mutex::new(OpenBlobs::new()),
            approx_size: AtomicU64::new(0),
        };
        store.remove_stale_downloads();
        store
            .approx_size
            .store(store.total_size()?, Ordering::Relaxed);
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Maps the content named `digest`, or `None` when it is not stored.
    pub fn get(&self, digest: &Digest) -> Result<Option<Blob>> {
        if let Some(blob) = self.lock_open().get(digest) {
            return Ok(Some(blob));
        }
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        // mmap of an empty file fails; the empty blob needs no mapping.
        let map = if len == 0 {
            None
        } else {
            // SAFETY: stored files are never modified in place (only created by rename
            // and unlinked), so the mapping cannot change under the reader.
            Some(Arc::new(
                unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?,
            ))
        };
        let blob = Blob { map };
        self.lock_open().insert(*digest, blob.clone(), &file);
        Ok(Some(blob))
    }

    /// Like [`Store::get`], but a missing entry is an error.
    pub fn require(&self, digest: &Digest) -> Result<Blob> {
        self.get(digest)?.ok_or(Error::NotCached(*digest))
    }

    /// Starts writing content that must hash to `expected` (and be `expected_size`
    /// bytes long, when known). `what` names it in errors.
    pub fn writer(
        &self,
        expected: Digest,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<BlobWriter<'_>> {
        BlobWriter::new(self, expected, expected_size, what)
    }

    /// Stores `bytes` if they hash to `expected`.
    pub fn put(&self, expected: Digest, bytes: &[u8], what: &str) -> Result<()> {
        if self.contains(&expected) {
            return Ok(());
        }
        let mut writer = self.writer(expected, Some(bytes.len() as u64), what)?;
        writer.write_all(bytes)?;
        writer.commit()
    }

    /// Stores `bytes` the caller has already verified to hash to `digest`
    /// (lazily fetched chunks are checked before they are served), sparing a
    /// second hash; durability and the atomic rename are as for [`Store::put`].
    pub fn put_verified(&self, digest: Digest, bytes: &[u8]) -> Result<()> {
        if self.contains(&digest) {
            return Ok(());
        }
        let mut tmp = writer::temp_file(self, &digest)?;
        io::Write::write_all(&mut tmp, bytes).map_err(|e| Error::io(tmp.path(), e))?;
        writer::publish(self, tmp, &digest, bytes.len() as u64)
    }

    /// Every stored blob, least recently used first.
    pub fn list(&self) -> Result<Vec<StoredBlob>> {
        let dir = self.root.join("blobs/sha256");
        let entries = fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut blobs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let Some(digest) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            else {
                continue;
            };
            // Evicted by another process since read_dir: not an error.
            let Ok(meta) = entry.metadata() else { continue };
            blobs.push(StoredBlob {
                digest,
                size: meta.len(),
                last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        blobs.sort_by_key(|b| (b.last_used, b.digest));
        Ok(blobs)
    }

    pub fn total_size(&self) -> Result<u64> {
        Ok(self.list()?.iter().map(|b| b.size).sum())
    }

    /// Re-hashes every blob; returns the digests of corrupt ones, which are removed.
    pub fn verify(&self, mut on_blob: impl FnMut(&StoredBlob, bool)) -> Result<Vec<Digest>> {
        let mut corrupt = Vec::new();
        for blob in self.list()? {
            let path = self.blob_path(&blob.digest);
            let ok = match hash_file(&path) {
                Ok(actual) => actual == blob.digest,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&path, e)),
            };
            on_blob(&blob, ok);
            if !ok {
                self.remove(&blob.digest)?;
                corrupt.push(blob.digest);
            }
        }
        Ok(corrupt)
    }

    /// Evicts least recently used blobs until the store holds at most `max_size`
    /// bytes, never touching `keep` (content in use by the caller); then removes
    /// the entry tables of uncompressed layers no longer stored (see
    /// `prune_orphaned_layer_indexes` for why only those).
    pub fn prune(&self, max_size: u64, keep: &[Digest]) -> Result<PruneReport> {
        let lock_path = self.root.join("lock");
        let lock = File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
        lock.lock().map_err(|e| Error::io(&lock_path, e))?;
        let blobs = self.list()?;
        let mut report = PruneReport {
            remaining: blobs.iter().map(|b| b.size).sum(),
            ..PruneReport::default()
        };
        for blob in blobs {
            if report.remaining <= max_size {
                break;
            }
            if keep.contains(&blob.digest) {
                continue;
            }
            self.remove(&blob.digest)?;
            report.removed += 1;
            report.freed += blob.size;
            report.remaining -= blob.size;
        }
        self.approx_size.store(report.remaining, Ordering::Relaxed);
        report.derived_removed = self.prune_orphaned_layer_indexes()?;
        Ok(report)
    }

    /// Accounts for `added` new bytes and evicts if the store went over its cap.
    fn added(&self, added: u64, keep: &Digest) -> Result<()> {
        let total = self.approx_size.fetch_add(added, Ordering::Relaxed) + added;
        if total > self.max_size {
            let report = self.prune(self.max_size, std::slice::from_ref(keep))?;
            if report.removed > 0 {
                tracing::info!(
                    "cache over its cap: evicted {} blobs ({} bytes)",
                    report.removed,
                    report.freed
                );
            }
        }
        Ok(())
    }

    fn remove(&self, digest: &Digest) -> Result<()> {
        self.lock_open().remove(digest);
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, OpenBlobs> {
        // A panic while holding the lock leaves only a cache of mappings behind.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn remove_stale_downloads(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP_AGE);
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Replaces `target` with `bytes` atomically (temp file in the same directory, then
/// rename), so concurrent readers see the old or the new file, never a mix.
fn write_atomically(target: &Path, bytes: &[u8]) -> Result<()> {
    let dir = target.parent().expect("store paths have a parent");
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    io::Write::write_all(&mut tmp, bytes).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(target)
        .map_err(|e| Error::io(target, e.error))?;
    Ok(())
}

fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut file = File::open(path)?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

mod unix_seconds {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        s.serialize_u64(secs)
    }
}

#[cfg(test)]
mod tests;
