//! Mount daemons' logs, kept under `logs/` in the cache: `mount-<pid>.log`,
//! named after the daemon that writes it, and pruned by [`Store::prune_logs`].

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::Store;
use crate::error::{Error, Result};

/// How long a finished daemon's log is kept after its last line: long enough to
/// read it after a job that ran over a weekend.
pub const DAEMON_LOG_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// What [`Store::prune_logs`] did.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogPruneReport {
    /// Logs removed.
    pub removed: usize,
    /// Their size in bytes.
    pub freed: u64,
}

impl Store {
    /// The directory holding the mount daemons' logs (created by
    /// [`Store::daemon_log_path`]'s callers when they write one).
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Where the mount daemon with process id `pid` logs.
    pub fn daemon_log_path(&self, pid: u32) -> PathBuf {
        self.logs_dir().join(format!("mount-{pid}.log"))
    }

    /// Removes old logs. The rule: a log goes once the daemon its name gives
    /// is no longer running **and** it was last written more than `max_age`
    /// ago (normally [`DAEMON_LOG_MAX_AGE`]). Any other file under `logs/`
    /// (one left by a `lazyimg mount` killed while starting its daemon) goes by
    /// age alone. A pid reused by another process only keeps a log longer; a
    /// running daemon's log is never removed, however quiet it has been. No
    /// `logs/` directory means nothing to do.
    ///
    /// # Errors
    /// [`Error::Io`] when `logs/` cannot be listed or an old log not removed.
    pub fn prune_logs(&self, max_age: Duration) -> Result<LogPruneReport> {
        let dir = self.logs_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LogPruneReport::default()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut report = LogPruneReport::default();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            // Removed by a concurrent prune since read_dir: not an error.
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok());
            let running = daemon_pid(&entry.file_name().to_string_lossy()).is_some_and(is_running);
            if !meta.is_file() || running || age.is_none_or(|age| age <= max_age) {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    report.removed += 1;
                    report.freed += meta.len();
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(entry.path(), e)),
            }
        }
        Ok(report)
    }
}

/// The pid in a log name written by [`Store::daemon_log_path`].
fn daemon_pid(file_name: &str) -> Option<u32> {
    file_name
        .strip_prefix("mount-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Whether a process `pid` exists (signal 0 checks without sending; EPERM means
/// it exists but belongs to someone else).
fn is_running(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    /// A pid above the kernel's maximum (at most 2^22): never a running process.
    const NO_SUCH_PID: u32 = 1 << 30;

    fn log(store: &Store, name: &str, days_old: u64) -> PathBuf {
        fs::create_dir_all(store.logs_dir()).unwrap();
        let path = store.logs_dir().join(name);
        let file = File::create(&path).unwrap();
        let written = SystemTime::now() - Duration::from_secs(days_old * 24 * 3600);
        file.set_modified(written).unwrap();
        path
    }

    #[test]
    fn only_old_logs_of_finished_daemons_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), u64::MAX).unwrap();
        let old_finished = log(&store, &format!("mount-{NO_SUCH_PID}.log"), 8);
        let recent_finished = log(&store, &format!("mount-{}.log", NO_SUCH_PID + 1), 6);
        let old_running = log(&store, &format!("mount-{}.log", std::process::id()), 30);
        let old_other = log(&store, ".mount-starting-1234.log", 8);

        let report = store.prune_logs(DAEMON_LOG_MAX_AGE).unwrap();

        assert_eq!(report.removed, 2);
        assert!(!old_finished.exists() && !old_other.exists());
        assert!(recent_finished.exists() && old_running.exists());
    }

    #[test]
    fn no_logs_directory_is_nothing_to_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(
            store.prune_logs(Duration::ZERO).unwrap(),
            LogPruneReport::default()
        );
    }

    #[test]
    fn log_names_give_the_daemon_pid() {
        assert_eq!(daemon_pid("mount-4242.log"), Some(4242));
        assert_eq!(daemon_pid(".mount-starting-1.log"), None);
        assert_eq!(daemon_pid("mount-x.log"), None);
    }
}
