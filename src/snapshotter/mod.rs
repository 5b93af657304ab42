//! `lazyimg snapshotter`: a containerd remote snapshotter.
//!
//! containerd (1.6) reaches it as a proxy plugin over gRPC
//! (`containerd.services.snapshots.v1.Snapshots`, [`service`]). Snapshots are
//! kept the way containerd's own overlayfs snapshotter keeps them: a directory
//! per snapshot under `ROOT/snapshots/<id>`, containers mounted as overlayfs
//! over their parents ([`mounts`]), records in one crash-safe file
//! ([`state`]). The difference is the remote-layer flow
//! (docs/snapshotters/remote-snapshotter.md): when containerd prepares a layer
//! whose labels name its image ([`remote`]) and lazyimg can serve that layer
//! lazily, the snapshot is committed at once under the chain ID containerd
//! asked for, and `Prepare` answers `AlreadyExists`, so containerd neither
//! downloads nor unpacks the layer. Its tree is the layer's view in the
//! layer store ([`remote::LayerStoreDir`]), the same per-layer view Podman's
//! additional layer store serves. Any other layer is unpacked by containerd
//! into a local snapshot, as with the overlayfs snapshotter.

pub mod mounts;
pub mod proto;
pub mod remote;
pub mod service;
pub mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use mounts::Mount;
use remote::{REMOTE_LABEL, RemoteLayers, SNAPSHOT_REF_LABEL, requested_layer};
use state::{Kind, Record, State, snapshot_dir};

/// What a snapshotter call can fail with; each maps to the gRPC code
/// containerd's errdefs expects (errdefs/grpc.go), which decides what
/// containerd does next (AlreadyExists on Prepare means "layer skipped").
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The snapshot is in the wrong state for the call (commit of a
    /// committed snapshot, removal of a parent).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not snapshotter metadata ({reason}); move it away to start empty", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A snapshot as containerd's `snapshots.Info` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub parent: Option<String>,
    pub kind: Kind,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// Disk used by a snapshot's own tree, as containerd's `snapshots.Usage`:
/// bytes of allocated blocks and distinct inodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: u64,
    pub inodes: u64,
}

/// The snapshotter's state under `ROOT` and the source of remote layers.
pub struct Snapshotter {
    root: PathBuf,
    state: Mutex<State>,
    remote: Box<dyn RemoteLayers>,
}

impl Snapshotter {
    /// Opens (or creates) the snapshotter state under `root`.
    pub fn open(root: &Path, remote: Box<dyn RemoteLayers>) -> Result<Snapshotter> {
        let snapshots = root.join("snapshots");
        std::fs::create_dir_all(&snapshots).map_err(|e| Error::io(&snapshots, e))?;
        Ok(Snapshotter {
            root: root.to_path_buf(),
            state: Mutex::new(State::load(root)?),
            remote,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// containerd's `Prepare`: a writable snapshot `key` over `parent`.
    ///
    /// When `labels` carry the chain ID to commit as
    /// ([`SNAPSHOT_REF_LABEL`]) and name a layer the remote source serves, the
    /// layer is committed under that chain ID and the answer is
    /// [`Error::AlreadyExists`] (containerd's remote-snapshot protocol).
    /// Errors: `AlreadyExists` for a used key, `NotFound` for a missing
    /// parent, `InvalidArgument` for an uncommitted one.
    pub fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        tracing::debug!("prepare {key} over {parent:?}, labels {labels:?}");
        if let (Some(target), Some(layer)) =
            (labels.get(SNAPSHOT_REF_LABEL), requested_layer(&labels))
        {
            if self.state().snapshots.contains_key(target) {
                return Err(Error::AlreadyExists(format!("target snapshot {target}")));
            }
            self.check_parent(&self.state(), key, parent)?;
            if let Some(lower) = self.remote.lower_dir(&layer) {
                let target = target.clone();
                let mut labels = labels;
                labels.insert(REMOTE_LABEL.to_string(), "true".to_string());
                self.create(
                    &target,
                    parent,
                    labels,
                    Kind::Committed,
                    Some((layer, lower)),
                )?;
                tracing::info!("{key}: committed as {target}, served lazily");
                return Err(Error::AlreadyExists(format!("target snapshot {target}")));
            }
        }
        self.create(key, parent, labels, Kind::Active, None)?;
        self.mounts(key)
    }

    /// containerd's `View`: a read-only snapshot `key` of `parent`.
    pub fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(key, parent, labels, Kind::View, None)?;
        self.mounts(key)
    }

    fn check_parent(&self, state: &State, key: &str, parent: Option<&str>) -> Result<()> {
        if state.snapshots.contains_key(key) {
            return Err(Error::AlreadyExists(format!("snapshot {key}")));
        }
        if let Some(parent) = parent
            && state.get(parent)?.kind != Kind::Committed
        {
            return Err(Error::InvalidArgument(format!(
                "parent {parent} is not a committed snapshot"
            )));
        }
        Ok(())
    }

    /// Records snapshot `key` with its directories: `fs` (its tree, or a
    /// symbolic link to the remote layer's, which keeps overlayfs mount data
    /// short) and `work` for an active one. The directories exist before the
    /// record is saved, so a crash leaves at most an orphan directory, which
    /// `cleanup` removes.
    fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
        kind: Kind,
        remote: Option<(state::RemoteLayer, PathBuf)>,
    ) -> Result<()> {
        let mut state = self.state();
        self.check_parent(&state, key, parent)?;
        let id = state.next_id + 1;
        let dir = snapshot_dir(&self.root, id);
        let made = (|| {
            std::fs::create_dir(&dir)?;
            match &remote {
                Some((_, lower)) => std::os::unix::fs::symlink(lower, dir.join("fs")),
                None => std::fs::create_dir(dir.join("fs")),
            }?;
            if kind == Kind::Active {
                std::fs::create_dir(dir.join("work"))?;
            }
            Ok(())
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::io(&dir, e));
        }
        let now = SystemTime::now();
        state.next_id = id;
        state.snapshots.insert(
            key.to_string(),
            Record {
                id,
                kind,
                parent: parent.map(str::to_string),
                labels,
                created: now,
                updated: now,
                remote: remote.map(|(layer, _)| layer),
            },
        );
        if let Err(e) = state.save(&self.root) {
            state.snapshots.remove(key);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(())
    }

    /// containerd's `Mounts`: how to mount active or view snapshot `key`.
    /// Errors: `NotFound`; `FailedPrecondition` for a committed snapshot.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let state = self.state();
        let record = state.get(key)?;
        if record.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} is committed, not active or a view"
            )));
        }
        let dir = snapshot_dir(&self.root, record.id);
        let lowers: Vec<PathBuf> = state
            .chain(record.parent.as_deref())?
            .into_iter()
            .map(|id| snapshot_dir(&self.root, id).join("fs"))
            .collect();
        Ok(mounts::mounts(
            record.kind,
            &dir.join("fs"),
            &dir.join("work"),
            &lowers,
        ))
    }

    /// containerd's `Commit`: active snapshot `key` becomes committed
    /// snapshot `name`, with `labels` added. Errors: `NotFound`,
    /// `AlreadyExists` for a used name, `FailedPrecondition` unless active.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let mut state = self.state();
        if state.snapshots.contains_key(name) {
            return Err(Error::AlreadyExists(format!("snapshot {name}")));
        }
        let mut record = state.get(key)?.clone();
        if record.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} is not active"
            )));
        }
        record.kind = Kind::Committed;
        record.labels.extend(labels);
        record.updated = SystemTime::now();
        let id = record.id;
        let before = state.snapshots.remove(key).expect("found above");
        state.snapshots.insert(name.to_string(), record);
        if let Err(e) = state.save(&self.root) {
            state.snapshots.remove(name);
            state.snapshots.insert(key.to_string(), before);
            return Err(e);
        }
        // Scratch space only an overlayfs upper layer needs.
        let _ = std::fs::remove_dir_all(snapshot_dir(&self.root, id).join("work"));
        Ok(())
    }

    /// containerd's `Remove`. Errors: `NotFound`; `FailedPrecondition` while
    /// another snapshot has it as parent.
    pub fn remove(&self, key: &str) -> Result<()> {
        let mut state = self.state();
        let id = state.get(key)?.id;
        if state.has_children(key) {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} is the parent of another"
            )));
        }
        let before = state.snapshots.remove(key).expect("found above");
        if let Err(e) = state.save(&self.root) {
            state.snapshots.insert(key.to_string(), before);
            return Err(e);
        }
        let dir = snapshot_dir(&self.root, id);
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))
    }

    /// containerd's `Stat`. Errors: `NotFound`.
    pub fn stat(&self, key: &str) -> Result<Info> {
        Ok(info(key, self.state().get(key)?))
    }

    /// containerd's `Update`: only labels are mutable. `paths` is the field
    /// mask: empty or `labels` replaces all labels, `labels.KEY` sets or
    /// (absent from `labels`) deletes one. Errors: `NotFound`,
    /// `InvalidArgument` for any other path.
    pub fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Info> {
        let mut state = self.state();
        let mut record = state.get(key)?.clone();
        if paths.is_empty() || paths.iter().any(|p| p == "labels") {
            record.labels = labels;
        } else {
            for path in paths {
                let Some(label) = path.strip_prefix("labels.") else {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update {path} of snapshot {key}: only labels change"
                    )));
                };
                match labels.get(label) {
                    Some(value) => record.labels.insert(label.to_string(), value.clone()),
                    None => record.labels.remove(label),
                };
            }
        }
        record.updated = SystemTime::now();
        let before = state.snapshots.insert(key.to_string(), record.clone());
        if let Err(e) = state.save(&self.root) {
            state
                .snapshots
                .insert(key.to_string(), before.expect("found above"));
            return Err(e);
        }
        Ok(info(key, &record))
    }

    /// containerd's `List` (its `Walk`): every snapshot. Filters are not
    /// applied: containerd's metadata store checks what it walks again
    /// (metadata/snapshot.go "Walk did not respect filter").
    pub fn list(&self) -> Vec<Info> {
        let state = self.state();
        state.snapshots.iter().map(|(k, r)| info(k, r)).collect()
    }

    /// containerd's `Usage`: the snapshot's own tree; a remote layer uses no
    /// disk here. Errors: `NotFound`, I/O errors while walking.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let (id, remote) = {
            let state = self.state();
            let record = state.get(key)?;
            (record.id, record.remote.is_some())
        };
        if remote {
            return Ok(Usage::default());
        }
        let fs = snapshot_dir(&self.root, id).join("fs");
        let mut seen = std::collections::HashSet::new();
        let mut usage = Usage::default();
        disk_usage(&fs, &mut seen, &mut usage).map_err(|e| Error::io(&fs, e))?;
        Ok(usage)
    }

    /// containerd's `Cleanup`: removes snapshot directories no record names
    /// (left by a crash between creating them and saving the record).
    pub fn cleanup(&self) -> Result<()> {
        let ids: std::collections::HashSet<String> = self
            .state()
            .snapshots
            .values()
            .map(|r| r.id.to_string())
            .collect();
        let dir = self.root.join("snapshots");
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            if !ids.contains(&*entry.file_name().to_string_lossy()) {
                tracing::info!("cleanup: removing {}", entry.path().display());
                std::fs::remove_dir_all(entry.path()).map_err(|e| Error::io(&entry.path(), e))?;
            }
        }
        Ok(())
    }
}

fn info(name: &str, record: &Record) -> Info {
    Info {
        name: name.to_string(),
        parent: record.parent.clone(),
        kind: record.kind,
        labels: record.labels.clone(),
        created: record.created,
        updated: record.updated,
    }
}

/// Adds the blocks and distinct inodes under `path` to `usage`, as
/// containerd's `fs.DiskUsage` counts them (hardlinks once).
fn disk_usage(
    path: &Path,
    seen: &mut std::collections::HashSet<(u64, u64)>,
    usage: &mut Usage,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::symlink_metadata(path)?;
    if seen.insert((meta.dev(), meta.ino())) {
        usage.inodes += 1;
        usage.size += meta.blocks() * 512;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            disk_usage(&entry?.path(), seen, usage)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
