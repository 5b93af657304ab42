//! Writing content into the store: hashed as it streams, renamed into place only
//! once it is complete and matches its digest.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};

use tempfile::NamedTempFile;

use super::BlobSink;
use super::Store;
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};

pub struct BlobWriter<'a> {
    store: &'a Store,
    file: BufWriter<NamedTempFile>,
    hasher: Hasher,
    expected: Digest,
    expected_size: Option<u64>,
    what: String,
}

impl<'a> BlobWriter<'a> {
    pub(super) fn new(
        store: &'a Store,
        expected: Digest,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<Self> {
        Ok(BlobWriter {
            store,
            file: BufWriter::with_capacity(1 << 20, temp_file(store, &expected)?),
            hasher: Hasher::new(),
            expected,
            expected_size,
            what: what.to_string(),
        })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let written = self.hasher.len() + bytes.len() as u64;
        if let Some(expected) = self.expected_size.filter(|&size| written > size) {
            return Err(Error::SizeMismatch {
                what: self.what.clone(),
                expected,
                actual: written,
            });
        }
        self.hasher.update(bytes);
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(self.tmp_path(), e))
    }

    /// Verifies size and digest, makes the bytes durable, and publishes them under
    /// their digest. On any failure the temporary file is removed.
    pub fn commit(self) -> Result<()> {
        let BlobWriter {
            store,
            file,
            hasher,
            expected,
            expected_size,
            what,
        } = self;
        if let Some(expected_size) = expected_size.filter(|&size| size != hasher.len()) {
            return Err(Error::SizeMismatch {
                what,
                expected: expected_size,
                actual: hasher.len(),
            });
        }
        let actual_len = hasher.len();
        let actual = hasher.finish();
        if actual != expected {
            return Err(Error::DigestMismatch {
                what,
                expected,
                actual,
            });
        }
        let tmp_path = file.get_ref().path().to_path_buf();
        let tmp = file
            .into_inner()
            .map_err(|e| Error::io(tmp_path, e.into_error()))?;
        publish(store, tmp, &expected, actual_len)
    }

    fn tmp_path(&self) -> std::path::PathBuf {
        self.file.get_ref().path().to_path_buf()
    }
}

/// A new file in the store's download area, named after the digest it is for.
pub(super) fn temp_file(store: &Store, digest: &Digest) -> Result<NamedTempFile> {
    let tmp = store.tmp_dir();
    tempfile::Builder::new()
        .prefix(&format!("{}.", digest.hex()))
        .tempfile_in(&tmp)
        .map_err(|e| Error::io(&tmp, e))
}

/// Makes a complete temporary file durable and renames it into place under
/// `digest`, which the caller has checked it holds.
pub(super) fn publish(store: &Store, tmp: NamedTempFile, digest: &Digest, len: u64) -> Result<()> {
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(tmp.path(), e))?;
    let target = store.blob_path(digest);
    tmp.persist(&target)
        .map_err(|e| Error::io(&target, e.error))?;
    // The rename is durable only once the directory is synced.
    let dir = target.parent().unwrap_or(store.root());
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))?;
    store.added(len, digest)
}

impl BlobSink for BlobWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_all(bytes)
    }

    fn restart(&mut self) -> Result<()> {
        let path = self.tmp_path();
        self.file.flush().map_err(|e| Error::io(&path, e))?;
        let file = self.file.get_mut().as_file_mut();
        file.set_len(0).map_err(|e| Error::io(&path, e))?;
        file.rewind().map_err(|e| Error::io(&path, e))?;
        self.hasher = Hasher::new();
        Ok(())
    }

    fn written(&self) -> u64 {
        self.hasher.len()
    }
}
