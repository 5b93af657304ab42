//! The snapshotter's records, persisted crash-safely: one JSON document
//! (`ROOT/metadata.json`) replaced whole by write, fsync, rename and fsync of
//! the directory on every change, so a killed snapshotter restarts with either
//! the state before a call or the state after it, never a torn one. A few
//! hundred snapshots make a few hundred KiB: rewriting it is cheaper than a
//! database and needs none.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Error, Result};
use crate::digest::Digest;

const METADATA: &str = "metadata.json";

/// A snapshot's kind, as containerd's `snapshots.Kind` (snapshots.go).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Read-only, made by `View`; never committed.
    View,
    /// Writable, made by `Prepare`; becomes committed by `Commit`.
    Active,
    /// Immutable; the only kind that may be a parent.
    Committed,
}

/// A layer served lazily from the layer store instead of unpacked here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLayer {
    /// The image reference the labels named (`cri.image-ref` or
    /// `remote/stargz.reference`).
    pub reference: String,
    /// The layer's compressed digest, as in the image manifest.
    pub layer: Digest,
}

/// One snapshot, keyed by its key (active, view) or name (committed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Names the snapshot's directory `ROOT/snapshots/<id>`; never reused.
    pub id: u64,
    pub kind: Kind,
    /// The committed snapshot below this one, by name.
    pub parent: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// Set for a committed snapshot whose tree is a lazily served layer.
    pub remote: Option<RemoteLayer>,
}

/// Every snapshot, and the next directory id.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub next_id: u64,
    pub snapshots: BTreeMap<String, Record>,
}

impl State {
    /// The state persisted under `root`, or an empty one when there is none.
    ///
    /// Errors: [`Error::Corrupt`] when the file does not parse (it is left in
    /// place for inspection); I/O errors as [`Error::Io`].
    pub fn load(root: &Path) -> Result<State> {
        let path = root.join(METADATA);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Replaces the persisted state under `root` with this one, durably.
    pub fn save(&self, root: &Path) -> Result<()> {
        let path = root.join(METADATA);
        let bytes = serde_json::to_vec_pretty(self).expect("records serialise");
        let mut tmp = tempfile::NamedTempFile::new_in(root).map_err(|e| Error::io(root, e))?;
        tmp.write_all(&bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| Error::io(tmp.path(), e))?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        std::fs::File::open(root)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| Error::io(root, e))
    }

    /// The record of `key`. Errors: [`Error::NotFound`].
    pub fn get(&self, key: &str) -> Result<&Record> {
        self.snapshots
            .get(key)
            .ok_or_else(|| Error::NotFound(format!("snapshot {key}")))
    }

    /// The ids of `parent` and its ancestors, nearest first: the order of
    /// overlayfs `lowerdir=` (topmost first, overlayfs.rst "Multiple lower
    /// layers").
    pub fn chain(&self, parent: Option<&str>) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut next = parent;
        while let Some(name) = next {
            let record = self.get(name)?;
            ids.push(record.id);
            next = record.parent.as_deref();
        }
        Ok(ids)
    }

    /// Whether any snapshot names `name` as its parent.
    pub fn has_children(&self, name: &str) -> bool {
        self.snapshots
            .values()
            .any(|r| r.parent.as_deref() == Some(name))
    }
}

/// `ROOT/snapshots/<id>`: where a snapshot's directories live.
pub fn snapshot_dir(root: &Path, id: u64) -> PathBuf {
    root.join("snapshots").join(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, parent: Option<&str>) -> Record {
        Record {
            id,
            kind: Kind::Committed,
            parent: parent.map(str::to_string),
            labels: BTreeMap::new(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            remote: None,
        }
    }

    #[test]
    fn the_state_survives_a_save_and_a_load() {
        let root = tempfile::tempdir().unwrap();
        assert!(State::load(root.path()).unwrap().snapshots.is_empty());
        let mut state = State {
            next_id: 3,
            ..State::default()
        };
        state.snapshots.insert("a".into(), record(1, None));
        state.snapshots.insert("b".into(), record(2, Some("a")));
        state.save(root.path()).unwrap();
        let loaded = State::load(root.path()).unwrap();
        assert_eq!(loaded.next_id, 3);
        assert_eq!(loaded.chain(Some("b")).unwrap(), [2, 1]);
        assert!(loaded.has_children("a"));
        assert!(!loaded.has_children("b"));
    }

    #[test]
    fn a_torn_file_is_an_error_not_an_empty_state() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(METADATA), b"{\"next_id\": 4, \"snap").unwrap();
        assert!(matches!(
            State::load(root.path()),
            Err(Error::Corrupt { .. })
        ));
    }
}
