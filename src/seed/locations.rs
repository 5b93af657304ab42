//! Where blobs were last seen on each target registry, so a blob another image
//! already put there can be mounted across repositories instead of uploaded.
//!
//! Registries keep blobs per repository: a HEAD in the new repository says
//! nothing about the others, and listing them all is not something registries
//! answer cheaply. So, like containers/image's blob-info cache, lazyimg remembers
//! `(registry, digest) → repository` under the cache directory
//! (`seed/locations/<registry>/<hex>`, one small file each). The record is only
//! a hint: a stale one costs one declined mount request, then a normal upload.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::store::Store;

pub struct Locations {
    dir: PathBuf,
}

impl Locations {
    pub fn new(store: &Store) -> Locations {
        Locations {
            dir: store.root().join("seed/locations"),
        }
    }

    fn path(&self, registry: &str, digest: &Digest) -> PathBuf {
        // `host:port` is a valid file name; anything else odd is flattened.
        let registry: String = registry
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || ".:-_".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(registry).join(digest.hex())
    }

    /// The repository on `registry` that last had `digest`, if one is recorded.
    pub fn recall(&self, registry: &str, digest: &Digest) -> Option<String> {
        let text = fs::read_to_string(self.path(registry, digest)).ok()?;
        let repository = text.trim();
        (!repository.is_empty()).then(|| repository.to_string())
    }

    /// Records that `registry` has `digest` in `repository`. Failures only cost a
    /// future mount, so they are logged, not returned.
    pub fn remember(&self, registry: &str, digest: &Digest, repository: &str) {
        if self.recall(registry, digest).as_deref() == Some(repository) {
            return;
        }
        let path = self.path(registry, digest);
        let write = || -> std::io::Result<()> {
            let dir = path.parent().expect("has a parent");
            fs::create_dir_all(dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            tmp.write_all(repository.as_bytes())?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::debug!("cannot record {digest} at {registry}/{repository}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_repository_per_registry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let locations = Locations::new(&store);
        let digest = Digest::of(b"x");
        assert_eq!(locations.recall("proxy:5000", &digest), None);
        locations.remember("proxy:5000", &digest, "lab/a");
        locations.remember("other:5000", &digest, "lab/b");
        assert_eq!(
            locations.recall("proxy:5000", &digest).as_deref(),
            Some("lab/a")
        );
        locations.remember("proxy:5000", &digest, "lab/c");
        assert_eq!(
            locations.recall("proxy:5000", &digest).as_deref(),
            Some("lab/c")
        );
        assert_eq!(
            locations.recall("other:5000", &digest).as_deref(),
            Some("lab/b")
        );
    }
}
