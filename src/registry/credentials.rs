//! Finding credentials for a registry as containers-auth.json(5) describes.
//!
//! Files are read in order until one has credentials for the registry (see
//! [`auth_file_paths`] for the order); within a file, per registry host:
//! 1. a `credHelpers` entry for the host runs `docker-credential-NAME get`
//!    ([`super::helper`]);
//! 2. else a `credsStore` runs its helper for every host (docker's
//!    `cli/config/configfile`: the store then holds what `auths` would);
//! 3. else the most specific `auths` key wins (`host/ns/name`, then `host/ns`,
//!    then `host`), its `identitytoken` (an OAuth2 refresh token) before its
//!    `auth` (base64 of `USER:PASSWORD`).
//!
//! A helper that has no credentials for the host, or an `auths` entry with
//! neither value (the `{}` docker writes beside a store), sends the search on
//! to the next file, as containers/image's `pkg/docker/config` does.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::secret::{Credentials, Secret, SecretKind};

/// One auth file; keys other than these (docker's `psFormat`, …) are ignored.
#[derive(Deserialize, Default)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    identitytoken: Option<String>,
}

/// Runs credential helper `NAME` (the part after `docker-credential-`) for a
/// registry host: `Ok(None)` when it has no credentials for it.
pub type HelperFn<'a> = &'a dyn Fn(&str, &str) -> Result<Option<Credentials>>;

/// The auth files to consult, in order, from the process's environment;
/// `authfile` is the command line's `--authfile FILE`. See [`auth_file_paths`].
pub fn auth_files(authfile: Option<&Path>) -> Vec<PathBuf> {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    auth_file_paths(authfile, &|name| std::env::var_os(name), uid)
}

/// The auth files of containers-auth.json(5), in the order they are searched:
/// 1. the primary file: `authfile` (`--authfile`), else `$REGISTRY_AUTH_FILE`
///    (podman's default for `--authfile`), else
///    `$XDG_RUNTIME_DIR/containers/auth.json`, else
///    `/run/containers/UID/auth.json` (containers/image's fallback when
///    `XDG_RUNTIME_DIR` is unset);
/// 2. `$XDG_CONFIG_HOME/containers/auth.json` (default `~/.config`);
/// 3. `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
///
/// Empty variables count as unset. `var` reads the environment and `uid` is
/// the real user id, so the rule is testable without the process's own.
pub fn auth_file_paths(
    authfile: Option<&Path>,
    var: &dyn Fn(&str) -> Option<OsString>,
    uid: u32,
) -> Vec<PathBuf> {
    let var = |name| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = var("HOME");
    let primary = authfile
        .map(Path::to_path_buf)
        .or_else(|| var("REGISTRY_AUTH_FILE"))
        .or_else(|| var("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")))
        .unwrap_or_else(|| PathBuf::from(format!("/run/containers/{uid}/auth.json")));
    let config_home = var("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config")));
    let docker = var("DOCKER_CONFIG").or_else(|| home.as_ref().map(|h| h.join(".docker")));
    let mut files = vec![primary];
    files.extend(config_home.map(|d| d.join("containers/auth.json")));
    files.extend(docker.map(|d| d.join("config.json")));
    files
}

/// Credentials for `host` (`host[:port]`) and `repository` from the first of
/// `files` that has them, running credential helpers as the files say.
///
/// Files that do not exist, or that this user may not read, are skipped.
///
/// # Errors
/// [`Error::Io`] for a file that cannot be read otherwise,
/// [`Error::AuthFile`] for one that is not an auth file (naming it), and
/// [`Error::CredentialHelper`] when a helper fails.
pub fn lookup(files: &[PathBuf], host: &str, repository: &str) -> Result<Option<Credentials>> {
    lookup_with(files, host, repository, &super::helper::get)
}

/// [`lookup`] with `helper` in place of running `docker-credential-NAME`.
fn lookup_with(
    files: &[PathBuf],
    host: &str,
    repository: &str,
    helper: HelperFn,
) -> Result<Option<Credentials>> {
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            // Another user's file (e.g. /run/containers/UID when
            // XDG_RUNTIME_DIR is unset, under root's 0700 directory) cannot
            // hold this user's credentials.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied) => {
                tracing::debug!("{}: {e}; skipped", file.display());
                continue;
            }
            Err(e) => return Err(Error::io(file, e)),
        };
        if let Some(creds) = lookup_in(&text, file, host, repository, helper)? {
            tracing::debug!("credentials for {host} from {}", file.display());
            return Ok(Some(creds));
        }
    }
    Ok(None)
}

/// Credentials for `host` and `repository` from `text`, the contents of
/// auth file `file` (named in errors), with `helper` running credential
/// helpers: the parsing step of [`lookup`], public so that untrusted auth
/// file contents can be fed to it directly (the fuzz targets in `tests/fuzz`).
///
/// # Errors
/// As [`lookup`], for this one file.
pub fn lookup_in(
    text: &str,
    file: &Path,
    host: &str,
    repository: &str,
    helper: HelperFn,
) -> Result<Option<Credentials>> {
    let bad = |message: String| Error::AuthFile {
        path: file.to_path_buf(),
        message,
    };
    // serde_json's messages quote the offending value, which may be a
    // secret: say only what kind of problem it is, and where.
    let parsed: AuthFile = serde_json::from_str(text).map_err(|e| {
        let problem = match e.classify() {
            serde_json::error::Category::Data => "not the containers-auth.json(5) layout",
            serde_json::error::Category::Eof => "JSON that ends early",
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => "not JSON",
        };
        bad(format!(
            "not a containers auth file: {problem} at line {}, column {}",
            e.line(),
            e.column()
        ))
    })?;
    let host = canonical_host(host);
    let helpers: HashMap<String, &String> = parsed
        .cred_helpers
        .iter()
        .map(|(key, name)| (normalise_key(key), name))
        .collect();
    if let Some(name) = helpers.get(&host).copied().or(parsed.creds_store.as_ref()) {
        return helper(name, &host);
    }
    let auths: HashMap<String, &AuthEntry> = parsed
        .auths
        .iter()
        .map(|(key, entry)| (normalise_key(key), entry))
        .collect();
    let Some((key, entry)) = candidate_keys(&host, repository)
        .into_iter()
        .find_map(|key| auths.get(&key).map(|entry| (key, *entry)))
    else {
        return Ok(None);
    };
    let not_user_password = || bad(format!("auths.{key:?}.auth is not base64 of USER:PASSWORD"));
    let user_password = match entry.auth.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(encoded) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
                .ok_or_else(not_user_password)?;
            let (username, password) = decoded.split_once(':').ok_or_else(not_user_password)?;
            Some((username.to_string(), password.to_string()))
        }
    };
    Ok(match (entry.identitytoken.as_deref(), user_password) {
        (Some(token), user_password) if !token.is_empty() => Some(Credentials {
            username: user_password.map(|(user, _)| user).unwrap_or_default(),
            secret: Secret::new(token),
            kind: SecretKind::IdentityToken,
        }),
        (_, Some((username, password))) if !password.is_empty() => {
            Some(Credentials::password(username, Secret::new(password)))
        }
        _ => None,
    })
}

/// Most specific first: `host/a/b/c`, `host/a/b`, `host/a`, `host`.
fn candidate_keys(host: &str, repository: &str) -> Vec<String> {
    let mut keys = vec![format!("{host}/{repository}")];
    let mut path = repository;
    while let Some((parent, _)) = path.rsplit_once('/') {
        keys.push(format!("{host}/{parent}"));
        path = parent;
    }
    keys.push(host.to_string());
    keys
}

/// Docker's legacy keys look like `https://index.docker.io/v1/`.
fn normalise_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key
        .strip_suffix("/v1/")
        .or_else(|| key.strip_suffix("/v2/"))
        .unwrap_or(key);
    canonical_host(key.trim_end_matches('/'))
}

fn canonical_host(key: &str) -> String {
    let (host, rest) = key.split_once('/').unwrap_or((key, ""));
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        other => other,
    };
    if rest.is_empty() {
        host.to_string()
    } else {
        format!("{host}/{rest}")
    }
}

#[cfg(test)]
mod tests;
