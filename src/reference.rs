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

/// One place an image can be read from: a registry mirror, or the primary
/// location.
#[derive(Debug, Clone)]
pub struct Source {
    /// The image at this place (`host[:port]/repository` plus tag or digest).
    pub reference: Reference,
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone)]
pub struct ImageRef {
    /// The normalised name the user gave (Docker Hub short names expanded,
    /// registries.conf short names resolved).
    pub name: Reference,
    /// The same image at the location it is fetched from.
    pub source: Reference,
    pub endpoint: Endpoint,
    /// `[[registry.mirror]]`s to read it from first, in order (falling back
    /// to `source` last), as containers-registries.conf(5) orders them.
    pub mirrors: Vec<Source>,
}

impl ImageRef {
    /// Parses `text` and applies the configuration's registries (lazyimg's
    /// `[[registry]]` tables over the system's registries.conf): a short name
    /// is resolved by `[aliases]`, else `unqualified-search-registries`; the
    /// longest-matching `[[registry]]` may block the name, redirect it to its
    /// `location` and give it mirrors.
    ///
    /// # Errors
    /// [`Error::Reference`] for a malformed reference, [`Error::ShortName`]
    /// for a short name several search registries could serve,
    /// [`Error::Blocked`] for a blocked one.
    pub fn parse(text: &str, config: &Config) -> Result<ImageRef> {
        let qualified = qualify(text, config)?;
        let text = qualified.as_str();
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
        if let Some(entry) = entry.filter(|e| e.blocked) {
            return Err(Error::Blocked {
                reference: name.whole(),
                prefix: entry.prefix.clone(),
            });
        }
        let moved = |location: &str| -> Result<Reference> {
            let prefix = entry.map_or("", |e| matched_prefix(&e.prefix, &full_name));
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
            Ok(rebuild(&name, registry, repository))
        };
        let source = match entry.and_then(|e| e.location.as_deref()) {
            Some(location) if !location.is_empty() => moved(location)?,
            _ => name.clone(),
        };
        // The entry that governs transport is the one matching where we connect.
        let transport = config
            .registry_for(&format!("{}/{}", source.registry(), source.repository()))
            .or(entry);
        let endpoint = Endpoint {
            host: source.resolve_registry().to_string(),
            insecure: config.skip_tls_verify || transport.is_some_and(|e| e.insecure),
            ca_file: transport.and_then(|e| e.ca_file.clone()),
        };
        let mirrors = entry
            .into_iter()
            .flat_map(|e| e.mirrors_for(name.digest().is_some()))
            .map(|mirror| {
                let reference = moved(&mirror.location)?;
                let own = config.registry_for(&format!(
                    "{}/{}",
                    reference.registry(),
                    reference.repository()
                ));
                let endpoint = Endpoint {
                    host: reference.resolve_registry().to_string(),
                    insecure: config.skip_tls_verify || mirror.insecure,
                    ca_file: own.and_then(|e| e.ca_file.clone()),
                };
                Ok(Source {
                    reference,
                    endpoint,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ImageRef {
            name,
            source,
            endpoint,
            mirrors,
        })
    }

    /// This reference pinned to `digest` (same name, source and mirrors).
    pub fn with_digest(&self, digest: &Digest) -> ImageRef {
        let pinned = |reference: &Reference| reference.clone_with_digest(digest.to_string());
        ImageRef {
            name: pinned(&self.name),
            source: pinned(&self.source),
            endpoint: self.endpoint.clone(),
            mirrors: self
                .mirrors
                .iter()
                .map(|m| Source {
                    reference: pinned(&m.reference),
                    endpoint: m.endpoint.clone(),
                })
                .collect(),
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

/// The part of `name` (`host[:port]/repository`) that `prefix` matched: the
/// prefix itself, or for a `*.domain` wildcard the name's host.
fn matched_prefix<'a>(prefix: &'a str, name: &'a str) -> &'a str {
    if prefix.starts_with("*.") {
        name.split('/').next().unwrap_or(name)
    } else {
        prefix.trim_end_matches('/')
    }
}

/// `text` with a registry: unchanged when it names one (its first component
/// looks like a domain, as distribution's `splitDomain` decides); else, as
/// containers-registries.conf(5) resolves short names, its `[aliases]` entry
/// (tag and digest kept), else the one `unqualified-search-registries` entry
/// in front of it. Without search registries, Docker Hub, as docker does.
///
/// # Errors
/// [`Error::ShortName`] when there are several search registries: which
/// one was meant cannot be known without asking, and Podman's enforcing
/// mode, with no terminal to ask on, refuses too.
fn qualify(text: &str, config: &Config) -> Result<String> {
    let names_registry = text
        .split_once('/')
        .is_some_and(|(first, _)| first.contains(['.', ':']) || first == "localhost");
    if names_registry {
        return Ok(text.to_string());
    }
    let (name, suffix) = text.split_at(text.find([':', '@']).unwrap_or(text.len()));
    if let Some(target) = config.aliases.get(name) {
        return Ok(format!("{target}{suffix}"));
    }
    match config.search_registries.as_deref().unwrap_or_default() {
        [] => Ok(text.to_string()),
        [only] => Ok(format!("{only}/{text}")),
        several => Err(Error::ShortName {
            name: text.to_string(),
            // Each as its registry names it: Docker Hub's one-word names live
            // under library/.
            candidates: several
                .iter()
                .map(|r| {
                    let candidate = format!("{r}/{name}");
                    parse_reference(&candidate).map_or(candidate, |c| {
                        format!("{}/{}", c.registry(), c.repository())
                    })
                })
                .collect(),
        }),
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

    /// containers-registries.conf(5), "Short-Name Aliasing" (enforcing mode,
    /// no terminal): an alias wins; one search registry is used; several are
    /// an error listing each candidate; a qualified name is left alone.
    #[test]
    fn short_names_resolve_by_alias_or_the_one_search_registry() {
        let several = config(
            "unqualified-search-registries = [\"a.io\", \"b.io:5000\"]\n\
             [aliases]\n\"tool\" = \"ghcr.io/lab/tool\"\n",
        );
        let digest = format!("sha256:{}", "e".repeat(64));
        let r = ImageRef::parse(&format!("tool:1@{digest}"), &several).unwrap();
        assert_eq!(r.name.whole(), format!("ghcr.io/lab/tool:1@{digest}"));
        let err = ImageRef::parse("ns/app:2", &several)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.io/ns/app") && err.contains("b.io:5000/ns/app"),
            "{err}"
        );
        let r = ImageRef::parse("localhost/app", &several).unwrap();
        assert_eq!(r.name.registry(), "localhost");
        let hub = config("unqualified-search-registries = [\"docker.io\", \"a.io\"]\n");
        let err = ImageRef::parse("big", &hub).unwrap_err().to_string();
        assert!(
            err.contains("docker.io/library/big") && err.contains("a.io/big"),
            "{err}"
        );

        let one = config("unqualified-search-registries = [\"a.io\"]\n");
        assert_eq!(
            ImageRef::parse("app", &one).unwrap().name.whole(),
            "a.io/app:latest"
        );
        let hub = config("unqualified-search-registries = [\"docker.io\"]\n");
        assert_eq!(
            ImageRef::parse("busybox", &hub).unwrap().name.whole(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn blocked_prefixes_refuse_their_images_only() {
        let c = config("[[registry]]\nprefix = \"ghcr.io/evil\"\nblocked = true\n");
        let err = ImageRef::parse("ghcr.io/evil/x:1", &c).unwrap_err();
        assert!(matches!(err, Error::Blocked { .. }), "{err}");
        assert!(ImageRef::parse("ghcr.io/good/x:1", &c).is_ok());
    }

    /// Mirrors in order, rewritten like `location`, with their own transport;
    /// `mirror-by-digest-only` keeps them for references pinned by digest.
    #[test]
    fn mirrors_are_rewritten_like_the_location() {
        let c = config(
            "[[registry]]\nprefix = \"ghcr.io/lab\"\nlocation = \"proxy:5000/lab\"\n\
             [[registry.mirror]]\nlocation = \"m1:5000/cache\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"m2.example\"\n\
             [[registry]]\nprefix = \"quay.io\"\nmirror-by-digest-only = true\n\
             [[registry.mirror]]\nlocation = \"qm:5000\"\n",
        );
        let r = ImageRef::parse("ghcr.io/lab/tool:1", &c).unwrap();
        assert_eq!(r.source.whole(), "proxy:5000/lab/tool:1");
        let mirrors: Vec<(String, bool)> = r
            .mirrors
            .iter()
            .map(|m| (m.reference.whole(), m.endpoint.insecure))
            .collect();
        assert_eq!(
            mirrors,
            [
                ("m1:5000/cache/tool:1".to_string(), true),
                ("m2.example/tool:1".to_string(), false)
            ]
        );
        assert!(
            ImageRef::parse("quay.io/a/b:1", &c)
                .unwrap()
                .mirrors
                .is_empty()
        );
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let pinned = ImageRef::parse(&format!("quay.io/a/b@sha256:{hex}"), &c).unwrap();
        assert_eq!(
            pinned.mirrors[0].reference.whole(),
            format!("qm:5000/a/b@sha256:{hex}")
        );
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
