//! Finding credentials for a registry in the containers-auth.json(5) files.
//!
//! Files are tried in order — `REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.docker/config.json` — and within a file the most specific key wins
//! (`host/ns/name`, then `host/ns`, then `host`). The first file with a match wins.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::secret::{Credentials, Secret};

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
}

/// The auth files to consult, in order, from the environment.
pub fn auth_files() -> Vec<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut files = Vec::new();
    files.extend(var("REGISTRY_AUTH_FILE"));
    files.extend(var("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    files.extend(var("HOME").map(|h| h.join(".docker/config.json")));
    files
}

/// Credentials for `host` and `repository` from the first auth file that has them.
pub fn lookup(files: &[PathBuf], host: &str, repository: &str) -> Result<Option<Credentials>> {
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(file, e)),
        };
        if let Some(creds) = lookup_in(&text, file, host, repository)? {
            return Ok(Some(creds));
        }
    }
    Ok(None)
}

fn lookup_in(text: &str, file: &Path, host: &str, repository: &str) -> Result<Option<Credentials>> {
    let bad = |message: String| Error::Config {
        path: file.to_path_buf(),
        message,
    };
    let parsed: AuthFile =
        serde_json::from_str(text).map_err(|e| bad(format!("not a containers auth file: {e}")))?;
    let auths: HashMap<String, &AuthEntry> = parsed
        .auths
        .iter()
        .map(|(key, entry)| (normalise_key(key), entry))
        .collect();
    for key in candidate_keys(&canonical_host(host), repository) {
        let Some(entry) = auths.get(&key) else {
            continue;
        };
        let Some(encoded) = &entry.auth else { continue };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .ok_or_else(|| bad(format!("auths.{key:?}.auth is not base64 of USER:TOKEN")))?;
        let (username, token) = decoded
            .split_once(':')
            .ok_or_else(|| bad(format!("auths.{key:?}.auth is not base64 of USER:TOKEN")))?;
        return Ok(Some(Credentials {
            username: username.to_string(),
            secret: Secret::new(token),
        }));
    }
    Ok(None)
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
mod tests {
    use super::*;

    fn auth_json(entries: &[(&str, &str)]) -> String {
        let auths: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(k, v)| {
                let enc = base64::engine::general_purpose::STANDARD.encode(v);
                (k.to_string(), serde_json::json!({ "auth": enc }))
            })
            .collect();
        serde_json::json!({ "auths": auths }).to_string()
    }

    fn find(text: &str, host: &str, repo: &str) -> Option<(String, String)> {
        lookup_in(text, Path::new("auth.json"), host, repo)
            .unwrap()
            .map(|c| (c.username, c.secret.expose().to_string()))
    }

    #[test]
    fn most_specific_key_wins() {
        let text = auth_json(&[
            ("ghcr.io", "a:1"),
            ("ghcr.io/lab", "b:2"),
            ("ghcr.io/lab/x", "c:3"),
        ]);
        assert_eq!(
            find(&text, "ghcr.io", "lab/x"),
            Some(("c".into(), "3".into()))
        );
        assert_eq!(
            find(&text, "ghcr.io", "lab/y"),
            Some(("b".into(), "2".into()))
        );
        assert_eq!(
            find(&text, "ghcr.io", "other/y"),
            Some(("a".into(), "1".into()))
        );
        assert_eq!(find(&text, "quay.io", "lab/x"), None);
    }

    #[test]
    fn docker_legacy_keys_match_docker_hub() {
        let text = auth_json(&[("https://index.docker.io/v1/", "u:p:with:colons")]);
        assert_eq!(
            find(&text, "index.docker.io", "library/busybox"),
            Some(("u".into(), "p:with:colons".into()))
        );
    }

    #[test]
    fn first_file_with_a_match_wins() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.json");
        let second = dir.path().join("second.json");
        std::fs::write(&first, auth_json(&[("quay.io", "q:1")])).unwrap();
        std::fs::write(&second, auth_json(&[("ghcr.io", "g:2")])).unwrap();
        let missing = dir.path().join("missing.json");
        let files = [missing, first, second];
        let creds = lookup(&files, "ghcr.io", "ns/x").unwrap().unwrap();
        assert_eq!(creds.username, "g");
    }

    #[test]
    fn malformed_files_name_the_file() {
        let err = lookup_in("{not json", Path::new("/run/auth.json"), "h", "r").unwrap_err();
        assert!(err.to_string().contains("/run/auth.json"), "{err}");
        let text = r#"{"auths":{"ghcr.io":{"auth":"!!!"}}}"#;
        assert!(lookup_in(text, Path::new("a.json"), "ghcr.io", "r").is_err());
    }
}
