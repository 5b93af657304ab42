//! Prefetching: record the files a run reads, fetch a recorded list first at
//! the next mount, and fill the rest of an image in the background so it keeps
//! working if the network goes.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::rootfs::{ContentReader, RootFs};
use crate::tree::{ContentLocation, Ino, InodeKind, ROOT_INO, Tree};

/// A [`ContentReader`] that appends the path of every file, on its first read,
/// to a list `--prefetch` can replay.
pub struct Recorder {
    inner: Arc<dyn ContentReader>,
    paths: HashMap<ContentLocation, OsString>,
    log: Mutex<(BufWriter<File>, HashSet<ContentLocation>)>,
}

impl Recorder {
    pub fn new(tree: &Tree, inner: Arc<dyn ContentReader>, list: &Path) -> Result<Recorder> {
        let file = File::create(list).map_err(|e| Error::io(list, e))?;
        Ok(Recorder {
            inner,
            paths: file_paths(tree),
            log: Mutex::new((BufWriter::new(file), HashSet::new())),
        })
    }

    fn note(&self, location: &ContentLocation) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let (out, seen) = &mut *log;
        if !seen.insert(location.clone()) {
            return;
        }
        if let Some(path) = self.paths.get(location) {
            // Flushed per line: the list must survive the daemon being killed.
            let written = out
                .write_all(path.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .and_then(|()| out.flush());
            if let Err(e) = written {
                tracing::warn!("cannot record {path:?}: {e}");
            }
        }
    }
}

impl ContentReader for Recorder {
    fn read(&self, location: &ContentLocation, offset: u64, len: usize) -> Result<Bytes> {
        self.note(location);
        self.inner.read(location, offset, len)
    }

    fn read_ready(
        &self,
        location: &ContentLocation,
        offset: u64,
        len: usize,
    ) -> Option<Result<Bytes>> {
        let ready = self.inner.read_ready(location, offset, len)?;
        self.note(location);
        Some(ready)
    }

    fn fill(&self, max_rate: Option<u64>) -> Result<u64> {
        self.inner.fill(max_rate)
    }

    /// Not recorded: a prefetch is not a run's read.
    fn prefetch(&self, locations: &[ContentLocation]) -> Result<()> {
        self.inner.prefetch(locations)
    }
}

/// One path per regular file (the first name found for hardlinked ones);
/// names with a newline cannot be listed and are left out.
fn file_paths(tree: &Tree) -> HashMap<ContentLocation, OsString> {
    let mut paths = HashMap::new();
    let mut stack: Vec<(Ino, Vec<u8>)> = vec![(ROOT_INO, Vec::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for entry in tree.children(dir).unwrap_or_default() {
            let name = entry.name.as_bytes();
            if name.contains(&b'\n') {
                continue;
            }
            let path = [prefix.as_slice(), b"/", name].concat();
            match tree.attr(entry.ino).map(|inode| &inode.kind) {
                Some(InodeKind::Directory(_)) => stack.push((entry.ino, path)),
                Some(InodeKind::Regular(location)) => {
                    paths
                        .entry(location.clone())
                        .or_insert_with(|| std::os::unix::ffi::OsStringExt::from_vec(path));
                }
                _ => {}
            }
        }
    }
    paths
}

/// What a prefetch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Prefetched {
    pub files: u64,
    pub bytes: u64,
    /// Listed paths that are not regular files of this image.
    pub skipped: u64,
}

/// Fetches every file `list` names (one path per line, as [`Recorder`]
/// writes) through the image's content reader, all at once
/// ([`ContentReader::prefetch`]), so its chunks are cached; returns once they
/// are. A failed fetch is logged: the file's next reader fetches it again.
pub fn prefetch_files(rootfs: &RootFs, list: &[u8]) -> Prefetched {
    let mut done = Prefetched::default();
    let mut locations = Vec::new();
    for line in list.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let path = std::ffi::OsStr::from_bytes(line);
        let location = rootfs
            .tree
            .resolve_path(path)
            .and_then(|ino| rootfs.tree.attr(ino)?.content().cloned());
        match location {
            Some(location) => {
                done.files += 1;
                done.bytes += location.packed().size;
                locations.push(location);
            }
            None => done.skipped += 1,
        }
    }
    if let Err(e) = rootfs.content.prefetch(&locations) {
        tracing::warn!("prefetching: {e}");
    }
    done
}

/// Holds a transfer to `bytes_per_second` on average.
pub(super) struct Pacer {
    started: Instant,
    sent: u64,
    bytes_per_second: Option<u64>,
}

impl Pacer {
    pub(super) fn new(bytes_per_second: Option<u64>) -> Pacer {
        Pacer {
            started: Instant::now(),
            sent: 0,
            bytes_per_second,
        }
    }

    pub(super) fn sent(&mut self, bytes: u64) {
        self.sent += bytes;
        if let Some(rate) = self.bytes_per_second.filter(|&r| r > 0) {
            let due = Duration::from_secs_f64(self.sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_holds_the_average_rate() {
        let mut pacer = Pacer::new(Some(10 << 20));
        let started = Instant::now();
        for _ in 0..4 {
            pacer.sent(1 << 20);
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(390), "{elapsed:?}");
        let mut unlimited = Pacer::new(None);
        let started = Instant::now();
        unlimited.sent(u64::MAX / 2);
        assert!(started.elapsed() < Duration::from_millis(50));
    }
}
