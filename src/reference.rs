//! Image references: what the user named, and where it is actually fetched from.
//!
//! A reference keeps its user-facing name (`ghcr.io/ns/name:tag`, the name the
//! approved list and podman know it by) separate from its source, which a
//! `[[registry]]` entry may redirect to a site proxy.

use std::fmt;
use std::path::PathBuf;

use oci_client::Reference;

use crate::config::Config;
use crate::digest::Digest;
use crate::error::{Error, Result};

/// How to reach one registry host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` as contacted on the wire.
    pub host: String,
    /// containers-registries.conf(5)'s `insecure`: TLS not verified, plain
    /// HTTP when the host does not speak HTTPS.
    pub insecure: bool,
    /// An extra CA (PEM) trusted for the host, besides its certs.d directory.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ImageRef {
    /// The normalised name the user gave (Docker Hub short names expanded).
    pub name: Reference,
    /// The same image at the location it is fetched from.
    pub source: Reference,
    pub endpoint: Endpoint,
}

impl ImageRef {
    /// Parses `text` and applies the configuration's registry mapping.
    pub fn parse(text: &str, config: &Config) -> Result<ImageRef> {
        let name = parse_reference(text).map_err(|reason| Error::Reference {
            reference: text.to_string(),
            reason: reason.to_string(),
        })?;
        if let Some(digest) = name.digest() {
            digest.parse::<Digest>().map_err(|e| Error::Reference {
                reference: text.to_string(),
                reason: e.to_string(),
            })?;
        }
        let full_name = format!("{}/{}", name.registry(), name.repository());
        let entry = config.registry_for(&full_name);
        let source = match entry
            .and_then(|e| Some((e.prefix.trim_end_matches('/'), e.location.as_deref()?)))
        {
            Some((prefix, location)) => {
                let mapped = format!(
                    "{}{}",
                    location.trim_end_matches('/'),
                    &full_name[prefix.len()..]
                );
                let (registry, repository) =
                    mapped.split_once('/').ok_or_else(|| Error::Reference {
                        reference: text.to_string(),
                        reason: format!("registry location {location:?} leaves no repository name"),
                    })?;
                rebuild(&name, registry, repository)
            }
            None => name.clone(),
        };
        let host = source.resolve_registry().to_string();
        // The entry that governs transport is the one matching where we connect.
        let transport =
            config.registry_for(&format!("{}/{}", source.registry(), source.repository()));
        let transport = transport.or(entry);
        let endpoint = Endpoint {
            host,
            insecure: config.skip_tls_verify || transport.is_some_and(|e| e.insecure),
            ca_file: transport.and_then(|e| e.ca_file.clone()),
        };
        Ok(ImageRef {
            name,
            source,
            endpoint,
        })
    }

    /// This reference pinned to `digest` (same name and source repository).
    pub fn with_digest(&self, digest: &Digest) -> ImageRef {
        ImageRef {
            name: self.name.clone_with_digest(digest.to_string()),
            source: self.source.clone_with_digest(digest.to_string()),
            endpoint: self.endpoint.clone(),
        }
    }

    /// The digest the user pinned, if any.
    pub fn pinned_digest(&self) -> Option<Digest> {
        self.name.digest().and_then(|d| d.parse().ok())
    }

    pub fn is_mapped(&self) -> bool {
        self.name.whole() != self.source.whole()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name.whole())
    }
}

/// Parses `text` by the grammar of distribution's `reference` package, as
/// oci-client's `Reference::from_str` does, normalised the same way (Docker
/// Hub short names, `latest` when neither tag nor digest is given), but by
/// hand: its anchored regex takes tens of milliseconds to compile in every
/// process, a large share of a cached mount's start (issue 10).
///
/// # Errors
/// A short reason, for [`Error::Reference`].
fn parse_reference(text: &str) -> std::result::Result<Reference, &'static str> {
    const NAME_TOTAL_LENGTH_MAX: usize = 255;
    if text.is_empty() {
        return Err("repository name must have at least one component");
    }
    let (rest, digest) = match text.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (text, None),
    };
    // A tag follows the last ':' that comes after the last '/' (a ':' before it
    // is a port).
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if !rest[colon..].contains('/') => (&rest[..colon], Some(&rest[colon + 1..])),
        _ => (rest, None),
    };
    let (domain, path) = match name.split_once('/') {
        Some((domain, path)) if is_domain(domain) => (Some(domain), path),
        _ => (None, name),
    };
    if !path.split('/').all(is_path_component) {
        return Err("invalid reference format");
    }
    if tag.is_some_and(|t| !is_tag(t)) {
        return Err("invalid reference format");
    }
    if let Some(digest) = digest {
        let (algorithm, hex) = digest.split_once(':').ok_or("invalid reference format")?;
        if !is_digest_algorithm(algorithm)
            || hex.len() < 32
            || !hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err("invalid reference format");
        }
        let expected = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err("unsupported digest algorithm"),
        };
        if hex.len() != expected {
            return Err("invalid checksum digest length");
        }
    }
    // distribution's `splitDomain`: a first component is a registry only if it
    // looks like one.
    let (registry, repository) = match domain {
        Some(d) if d.contains(['.', ':']) || d == "localhost" => (d, path.to_string()),
        _ => ("docker.io", name.to_string()),
    };
    let registry = if registry == "index.docker.io" {
        "docker.io"
    } else {
        registry
    };
    let repository = if registry == "docker.io" && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err("repository name must not be more than 255 characters");
    }
    let registry = registry.to_string();
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.into(), digest.into())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.into()),
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or("latest").into()),
    })
}

/// `host[.host]*[:port]`, each label alphanumerics with inner hyphens.
fn is_domain(text: &str) -> bool {
    let (host, port) = match text.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn is_path_component(text: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = text.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut separator = String::new();
    for &b in bytes {
        if alnum(b) {
            let dashes = separator.bytes().all(|s| s == b'-');
            if !(dashes || matches!(separator.as_str(), "." | "_" | "__")) {
                return false;
            }
            separator.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            separator.push(b as char);
        } else {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(text: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    text.len() <= 128
        && text.bytes().next().is_some_and(word)
        && text.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// `[A-Za-z][A-Za-z0-9]*` runs joined by one of `-_+.`.
fn is_digest_algorithm(text: &str) -> bool {
    text.split(['-', '_', '+', '.']).all(|part| {
        part.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && part.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

fn rebuild(like: &Reference, registry: &str, repository: &str) -> Reference {
    let (registry, repository) = (registry.to_string(), repository.to_string());
    match (like.tag(), like.digest()) {
        (Some(tag), Some(digest)) => Reference::with_tag_and_digest(
            registry,
            repository,
            tag.to_string(),
            digest.to_string(),
        ),
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.to_string()),
        (tag, None) => {
            Reference::with_tag(registry, repository, tag.unwrap_or("latest").to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("test.toml")).unwrap()
    }

    #[test]
    fn docker_hub_short_names_are_normalised() {
        let r = ImageRef::parse("busybox", &Config::default()).unwrap();
        assert_eq!(r.name.whole(), "docker.io/library/busybox:latest");
        assert_eq!(r.endpoint.host, "index.docker.io");
        assert!(!r.is_mapped());
    }

    #[test]
    fn prefix_mapping_redirects_to_the_site_proxy() {
        let c = config(
            r#"
            [[registry]]
            prefix = "ghcr.io"
            location = "tre-ghcr-proxy.nsh.loc:5000"
            insecure = true
            "#,
        );
        let r = ImageRef::parse("ghcr.io/lab/cuda-sample:nbody", &c).unwrap();
        assert_eq!(r.name.whole(), "ghcr.io/lab/cuda-sample:nbody");
        assert_eq!(
            r.source.whole(),
            "tre-ghcr-proxy.nsh.loc:5000/lab/cuda-sample:nbody"
        );
        assert_eq!(r.endpoint.host, "tre-ghcr-proxy.nsh.loc:5000");
        assert!(r.endpoint.insecure);
        assert!(r.is_mapped());
    }

    #[test]
    fn bare_host_prefix_makes_that_registry_plain_http() {
        let c = config("[[registry]]\nprefix = \"127.0.0.1:15000\"\ninsecure = true\n");
        let r = ImageRef::parse("127.0.0.1:15000/ns/img@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", &c).unwrap();
        assert!(r.endpoint.insecure);
        assert!(r.pinned_digest().is_some());
        assert!(!r.is_mapped());
    }

    #[test]
    fn mapping_keeps_digests_and_path_prefixes() {
        let c = config(
            "[[registry]]\nprefix = \"ghcr.io/lab\"\nlocation = \"mirror:5000/cache/lab\"\n",
        );
        let text =
            "ghcr.io/lab/x@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = ImageRef::parse(text, &c).unwrap();
        assert_eq!(r.source.registry(), "mirror:5000");
        assert_eq!(r.source.repository(), "cache/lab/x");
        assert_eq!(r.source.digest(), r.name.digest());
    }

    #[test]
    fn references_parse_as_oci_client_parses_them() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let cases = [
            "busybox".to_string(),
            "library/busybox:1.36".into(),
            "index.docker.io/busybox".into(),
            "test.com:tag".into(),
            "test.com:5000".into(),
            "test.com/repo:tag".into(),
            "localhost/repo".into(),
            "localhost:5000/a/b/c:v1.0-rc_2".into(),
            "127.0.0.1:15443/testuser/big:1".into(),
            "ghcr.io/lab/cuda-sample:nbody-cuda11.7.1".into(),
            "ghcr.io/a__b/c.d/e---f:x".into(),
            format!("ghcr.io/a/b@sha256:{hex}"),
            format!("ghcr.io/a/b:t@sha256:{hex}"),
            "Ghcr.IO/a/b".into(),
            "ghcr.io/UPPER/case:tag".into(),
            "ghcr.io/a/b@sha256:abcd".into(),
            format!("ghcr.io/a/b@md5:{hex}"),
            format!("ghcr.io/a/b@sha256:{hex}00"),
            "ghcr.io/a/-b".into(),
            "ghcr.io/a/b_".into(),
            "ghcr.io/a/b___c".into(),
            "ghcr.io/a//b".into(),
            "ghcr.io/a/b:".into(),
            "ghcr.io/a/b:.x".into(),
            format!("ghcr.io/a/b:{}", "x".repeat(129)),
            "-host.io/a".into(),
            "host.io:/a".into(),
            "a:b:c".into(),
            "a/b@".into(),
            "@sha256:x".into(),
            "".into(),
        ];
        for text in &cases {
            let ours = parse_reference(text).ok();
            let theirs = text.parse::<Reference>().ok();
            assert_eq!(ours, theirs, "{text:?}");
        }
    }

    #[test]
    fn junk_is_rejected_with_the_reference_named() {
        let err = ImageRef::parse("ghcr.io/UPPER/case:tag", &Config::default()).unwrap_err();
        assert!(err.to_string().contains("ghcr.io/UPPER/case:tag"), "{err}");
        let err = ImageRef::parse("ghcr.io/a/b@sha256:abcd", &Config::default()).unwrap_err();
        assert!(err.to_string().contains("sha256:abcd"), "{err}");
    }
}
