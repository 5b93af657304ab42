//! Will the runtime find the command? Charliecloud and Apptainer report a
//! missing or non-executable command with their generic failure status (ch-run
//! 1, apptainer 255), which a job script cannot tell from the command's own
//! status; Podman says 127 and 126 itself. [`check_command`] looks the command
//! up in the image as `execvp` will, before the runtime starts, so `lazyimg run`
//! can exit 127 or 126 as Podman does for every runtime.
//!
//! It only refuses what it is sure of: a candidate under a bind target or a
//! path the runtime binds from the host (which lazyimg cannot see from here),
//! or a relative `PATH` entry, counts as runnable and the runtime decides.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{RunSpec, Runtime, RuntimeError, resolve_in_root};

/// What a candidate path is in the image.
enum Probe {
    /// An executable file, or something lazyimg cannot see (a bind).
    MayRun,
    /// Exists but `execve` would fail with EACCES: a directory, or no execute bit.
    NotExecutable(&'static str),
    Missing,
}

/// Refuses a command that `runtime` would fail to find ([`RuntimeError::CommandNotFound`],
/// exit 127) or to execute ([`RuntimeError::CommandNotExecutable`], exit 126) in
/// the image. Podman's command is not checked: it reports both itself.
pub fn check_command(runtime: Runtime, spec: &RunSpec) -> Result<(), RuntimeError> {
    if runtime == Runtime::Podman {
        return Ok(());
    }
    let Some(name) = spec.command.first() else {
        return Ok(()); // validate() refuses an empty command
    };
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![Path::new(spec.workdir()).join(name)]
    } else {
        let env = spec.effective_env(runtime);
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or("", |(_, v)| v.as_str());
        let dirs: Vec<&str> = path.split(':').collect();
        // execvp searches an empty or relative entry from the working
        // directory: not worth second-guessing.
        if dirs.iter().any(|d| !d.starts_with('/')) {
            return Ok(());
        }
        dirs.iter().map(|d| Path::new(d).join(name)).collect()
    };
    // execvp tries each; EACCES on any of them (and no success) is what it reports.
    let mut not_executable = None;
    for candidate in &candidates {
        match probe(runtime, spec, candidate) {
            Probe::MayRun => return Ok(()),
            Probe::NotExecutable(why) => {
                not_executable.get_or_insert((candidate.clone(), why));
            }
            Probe::Missing => {}
        }
    }
    Err(match not_executable {
        Some((path, why)) => RuntimeError::CommandNotExecutable { path, why },
        None => RuntimeError::CommandNotFound {
            command: name.clone(),
        },
    })
}

fn probe(runtime: Runtime, spec: &RunSpec, path: &Path) -> Probe {
    let from_host = spec
        .binds
        .iter()
        .map(|b| b.target.as_path())
        .chain(runtime.host_bound().iter().map(Path::new))
        .any(|t| path.starts_with(t));
    if from_host {
        return Probe::MayRun;
    }
    let Some(host_path) = resolve_in_root(&spec.rootfs, path) else {
        return Probe::Missing;
    };
    match std::fs::metadata(host_path) {
        Err(_) => Probe::Missing,
        Ok(m) if m.is_dir() => Probe::NotExecutable("is a directory"),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Probe::NotExecutable("is not executable"),
        Ok(_) => Probe::MayRun,
    }
}
