//! The system's containers-registries.conf(5) files, version 2, read and
//! merged as containers/image (`pkg/sysregistriesv2`) reads and merges them,
//! so a node set up for Podman needs nothing more for lazyimg.
//!
//! Files, in order (see [`conf_files`]): the main file, then drop-ins
//! (containers-registries.conf.d(5)). A later file overrides an earlier one:
//! `unqualified-search-registries` is replaced when set, a `[[registry]]`
//! table replaces the one with the same prefix (else it is added), and
//! `[aliases]` are merged by name, an empty value erasing the alias. Keys
//! lazyimg does not use (`short-name-mode`, `credential-helpers`, …) are
//! ignored, as in any file Podman also reads.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::RegistryConfig;
use crate::error::{Error, Result};

/// The main system file.
pub const SYSTEM_FILE: &str = "/etc/containers/registries.conf";
/// The system drop-in directory.
pub const SYSTEM_DROP_INS: &str = "/etc/containers/registries.conf.d";

/// One file's keys (v2). Unknown keys are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ConfFile {
    unqualified_search_registries: Option<Vec<String>>,
    #[serde(default)]
    registry: Vec<RegistryConfig>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
}

/// The merged registries.conf files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistriesConf {
    /// `unqualified-search-registries`: `host[:port]`s short names are
    /// looked up in, in order; `None` when no file sets it.
    pub search: Option<Vec<String>>,
    /// `[aliases]`: short name (no tag or digest) to fully qualified name.
    pub aliases: BTreeMap<String, String>,
    /// The `[[registry]]` tables, at most one per prefix.
    pub registries: Vec<RegistryConfig>,
    /// The files read, in order (for messages).
    pub files: Vec<PathBuf>,
}

impl RegistriesConf {
    /// Reads and merges the files [`conf_files`] names for this process's
    /// environment; none existing gives the empty configuration.
    ///
    /// # Errors
    /// [`Error::RegistriesConf`] naming a file that cannot be read or is not TOML.
    pub fn load() -> Result<RegistriesConf> {
        let files = conf_files(
            &|name| std::env::var_os(name),
            &|path| path.is_file(),
            &drop_ins,
        );
        let mut merged = RegistriesConf::default();
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                // The main file may be absent: Podman then runs on defaults.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Error::RegistriesConf {
                        path: file,
                        message: format!("cannot read registries.conf: {e}"),
                    });
                }
            };
            merged.merge(&text, &file)?;
        }
        Ok(merged)
    }

    /// Merges `text`, the contents of `file`, over what is here.
    ///
    /// # Errors
    /// [`Error::RegistriesConf`] when it is not TOML or a table has neither
    /// `prefix` nor `location`.
    pub fn merge(&mut self, text: &str, file: &Path) -> Result<()> {
        let bad = |message: String| Error::RegistriesConf {
            path: file.to_path_buf(),
            message,
        };
        let parsed: ConfFile =
            toml::from_str(text).map_err(|e| bad(super::toml_error(&e, text)))?;
        if let Some(search) = parsed.unqualified_search_registries {
            self.search = Some(search);
        }
        for (name, value) in parsed.aliases {
            if value.is_empty() {
                self.aliases.remove(&name);
            } else {
                self.aliases.insert(name, value);
            }
        }
        for registry in parsed.registry {
            let registry = registry.with_default_prefix().map_err(&bad)?;
            override_by_prefix(&mut self.registries, registry);
        }
        self.files.push(file.to_path_buf());
        Ok(())
    }
}

/// Puts `registry` in `registries`, in place of the one with its prefix.
pub(super) fn override_by_prefix(registries: &mut Vec<RegistryConfig>, registry: RegistryConfig) {
    match registries.iter_mut().find(|r| r.prefix == registry.prefix) {
        Some(existing) => *existing = registry,
        None => registries.push(registry),
    }
}

/// The registries.conf files to read, in order, as containers/image chooses
/// them (`newConfigWrapper`):
/// 1. the main file: `$CONTAINERS_REGISTRIES_CONF` (as podman sets it from
///    the environment), else the user's `containers/registries.conf` in the
///    XDG config directory (`$XDG_CONFIG_HOME`, default `~/.config`) if it
///    exists, else [`SYSTEM_FILE`];
/// 2. the `*.conf` files of [`SYSTEM_DROP_INS`] in name order, unless the
///    user's main file was chosen;
/// 3. the `*.conf` files of the user's `containers/registries.conf.d`.
///
/// `var` reads the environment, `exists` tells whether a file is there and
/// `drop_ins` lists a directory's drop-ins (see [`drop_ins`]), so the rule is
/// testable without the machine's own files.
pub fn conf_files(
    var: &dyn Fn(&str) -> Option<OsString>,
    exists: &dyn Fn(&Path) -> bool,
    drop_ins: &dyn Fn(&Path) -> Vec<PathBuf>,
) -> Vec<PathBuf> {
    let user_dir = super::xdg_dir(var, "XDG_CONFIG_HOME", ".config").map(|d| d.join("containers"));
    let user_file = user_dir.as_ref().map(|d| d.join("registries.conf"));
    let explicit = var("CONTAINERS_REGISTRIES_CONF")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let (main, system_drop_ins) = match (explicit, user_file) {
        (Some(file), _) => (file, true),
        (None, Some(user)) if exists(&user) => (user, false),
        (None, _) => (PathBuf::from(SYSTEM_FILE), true),
    };
    let mut files = vec![main];
    if system_drop_ins {
        files.extend(drop_ins(Path::new(SYSTEM_DROP_INS)));
    }
    if let Some(dir) = user_dir {
        files.extend(drop_ins(&dir.join("registries.conf.d")));
    }
    files
}

/// The `*.conf` files of `dir`, in name order; none when it cannot be read.
fn drop_ins(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "conf") && path.is_file())
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests;
