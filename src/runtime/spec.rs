//! What a run asks of a runtime, in lazyimg's own terms: the binds, the
//! host's environment and user, and the [`RunSpec`] that [`super::command`]
//! turns into a runtime's command line.

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::str::FromStr;

use super::gpu::{self, GpuHost};
use super::{DEFAULT_PATH, Gpus, Runtime, RuntimeError, invalid};

/// A host path mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path in the container.
    pub target: PathBuf,
    /// Mounted read-only (`:ro`); Charliecloud 0.31 cannot, so it refuses it.
    pub read_only: bool,
}

impl Bind {
    /// A read-write bind.
    pub fn new(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        Bind {
            source: source.into(),
            target: target.into(),
            read_only: false,
        }
    }

    /// The same bind, read-only.
    pub fn read_only(self) -> Self {
        Bind {
            read_only: true,
            ..self
        }
    }
}

impl FromStr for Bind {
    type Err = RuntimeError;

    /// `SRC[:DST[:ro|rw]]`, as `--bind` and Apptainer take it (`DST` defaults to
    /// `SRC`, the mode to `rw`). Lists (`A,B:/b:ro`) are split at commas by the
    /// command line parser before this.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(3, ':');
        let source = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or(source);
        let bind = Bind::new(source, target);
        let bind = match parts.next() {
            None | Some("rw") => bind,
            Some("ro") => bind.read_only(),
            Some(other) => {
                return Err(invalid(format!(
                    "bind {s:?}: unknown option {other:?} (expected ro or rw)"
                )));
            }
        };
        bind.validate()?;
        Ok(bind)
    }
}

impl Bind {
    pub(super) fn validate(&self) -> Result<(), RuntimeError> {
        for (what, path) in [("source", &self.source), ("target", &self.target)] {
            let text = path.to_string_lossy();
            if !path.is_absolute() {
                return Err(invalid(format!(
                    "bind {what} {text:?} is not an absolute path"
                )));
            }
            // All three runtimes take SRC:DST; Apptainer also splits lists at commas.
            if text.contains([':', ',']) {
                return Err(invalid(format!(
                    "bind {what} {text:?} contains ':' or ',', which runtimes read as separators"
                )));
            }
        }
        Ok(())
    }
}

/// The host values the environment policy uses: `TERM` for the container,
/// `HOME`/`USER` for Charliecloud (which keeps the host's), and the names of
/// host variables Apptainer would otherwise pass through.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HostEnv {
    pub term: Option<String>,
    pub home: Option<String>,
    /// `$USER`, else the name of the current uid. ch-run refuses to start without `$USER`.
    pub user: Option<String>,
    /// Names of this process's `APPTAINERENV_*` and `SINGULARITYENV_*` variables.
    pub apptainer_env_names: Vec<OsString>,
    /// This process's variables (those that are UTF-8), for `--env-host` and
    /// the GPU selection `--gpus` passes on.
    pub vars: Vec<(String, String)>,
    pub gpu: GpuHost,
}

impl HostEnv {
    /// Reads this process's environment.
    pub fn from_process() -> Self {
        let get = |k: &str| std::env::var(k).ok();
        HostEnv {
            term: get("TERM").filter(|t| !t.is_empty()),
            home: get("HOME"),
            user: get("USER")
                .filter(|u| !u.is_empty())
                .or_else(current_user_name),
            apptainer_env_names: std::env::vars_os()
                .map(|(k, _)| k)
                .filter(|k| {
                    let k = k.to_string_lossy();
                    k.starts_with("APPTAINERENV_") || k.starts_with("SINGULARITYENV_")
                })
                .collect(),
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            gpu: GpuHost::from_process(),
        }
    }
}

impl fmt::Debug for HostEnv {
    /// Host variables by name only: their values may be tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.vars.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("HostEnv")
            .field("term", &self.term)
            .field("home", &self.home)
            .field("user", &self.user)
            .field("apptainer_env_names", &self.apptainer_env_names)
            .field("vars", &names)
            .field("gpu", &self.gpu)
            .finish()
    }
}

fn current_user_name() -> Option<String> {
    // SAFETY: getpwuid returns a pointer into static storage or NULL; we copy the
    // name out before any other passwd call could overwrite it.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            return Some(libc::getuid().to_string());
        }
        Some(
            std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// What to run, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSpec {
    /// The mounted image root filesystem (absolute path).
    pub rootfs: PathBuf,
    /// The command and its arguments (the caller resolves the image's
    /// Entrypoint/Cmd); must not be empty.
    pub command: Vec<String>,
    /// The image config's `Env`, `K=V` strings as in the config.
    pub image_env: Vec<String>,
    /// `--env K=V` overrides, in the order given.
    pub env: Vec<(String, String)>,
    /// `--env-host` names or shell patterns (`SLURM_*`) of host variables to pass.
    pub env_host: Vec<String>,
    /// `--gpus`: which NVIDIA GPUs the container gets.
    pub gpus: Option<Gpus>,
    pub binds: Vec<Bind>,
    /// Absolute working directory in the container; `None` means `/`.
    pub workdir: Option<String>,
    /// The image config's `User` (`name`, `uid`, `uid:gid`, `name:group`):
    /// podman runs the command as it, as `podman run IMAGE` does; Charliecloud
    /// and Apptainer run as the invoking user, their own semantics.
    pub user: Option<String>,
    /// Allocate a terminal (podman `-t`); [`RunSpec::new`] sets it when stdin
    /// and stdout are terminals.
    pub tty: bool,
    pub host: HostEnv,
}

impl RunSpec {
    /// A spec with no env, binds or workdir; `tty` and `host` from this process.
    pub fn new(rootfs: impl Into<PathBuf>, command: Vec<String>) -> Self {
        RunSpec {
            rootfs: rootfs.into(),
            command,
            image_env: Vec::new(),
            env: Vec::new(),
            env_host: Vec::new(),
            gpus: None,
            binds: Vec::new(),
            workdir: None,
            user: None,
            tty: std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
            host: HostEnv::from_process(),
        }
    }

    /// The container's variables under the environment policy (module doc),
    /// before the runtime adds its own: image `Env`, then the host variables
    /// `--env-host` names, then the GPU selection `--gpus` passes on `runtime`,
    /// then `--env`, then the default `PATH` and the host's `TERM` when not
    /// set. Names are unique and keep the position of their first appearance.
    pub fn effective_env(&self, runtime: Runtime) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: &str| match out.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.to_owned(),
            None => out.push((k.to_owned(), v.to_owned())),
        };
        for entry in &self.image_env {
            // The OCI spec has only K=V entries; a bare name carries no value.
            if let Some((k, v)) = entry.split_once('=')
                && !k.is_empty()
            {
                set(k, v);
            }
        }
        for (k, v) in self.passed_host_vars() {
            set(k, v);
        }
        for (k, v) in gpu::selection_env(runtime, self) {
            set(&k, &v);
        }
        for (k, v) in &self.env {
            set(k, v);
        }
        if !out.iter().any(|(k, _)| k == "PATH") {
            out.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        if let Some(term) = &self.host.term
            && !out.iter().any(|(k, _)| k == "TERM")
        {
            out.push(("TERM".into(), term.clone()));
        }
        out
    }

    /// The host variables `--env-host` asks for, in the host's order. A pattern
    /// with a NUL byte matches nothing ([`RunSpec::validate`] refuses it).
    pub(super) fn passed_host_vars(&self) -> impl Iterator<Item = (&str, &str)> {
        let patterns: Vec<CString> = self
            .env_host
            .iter()
            .filter_map(|p| CString::new(p.as_bytes()).ok())
            .collect();
        self.host
            .vars
            .iter()
            .filter(move |(k, _)| {
                patterns
                    .iter()
                    .any(|p| crate::tree::fnmatch(p, OsStr::new(k)))
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub(super) fn workdir(&self) -> &str {
        self.workdir.as_deref().unwrap_or("/")
    }

    /// Rejects what no runtime could express faithfully.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        if !self.rootfs.is_absolute() {
            return Err(invalid(format!(
                "root filesystem {} is not an absolute path",
                self.rootfs.display()
            )));
        }
        if self.command.is_empty() {
            return Err(invalid(
                "no command to run: the image has no Entrypoint or Cmd; give one after --".into(),
            ));
        }
        for (k, _) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(invalid(format!("invalid environment variable name {k:?}")));
            }
        }
        if let Some(p) = self
            .env_host
            .iter()
            .find(|p| p.is_empty() || p.contains(['=', '\0']))
        {
            return Err(invalid(format!("invalid --env-host name or pattern {p:?}")));
        }
        for b in &self.binds {
            b.validate()?;
        }
        if !self.workdir().starts_with('/') {
            return Err(invalid(format!(
                "working directory {:?} is not an absolute path",
                self.workdir()
            )));
        }
        Ok(())
    }
}
