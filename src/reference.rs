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
    pub insecure: bool,
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
        let name: Reference = text.parse().map_err(|e| Error::Reference {
            reference: text.to_string(),
            reason: format!("{e}"),
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
            insecure: transport.is_some_and(|e| e.insecure),
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
    fn junk_is_rejected_with_the_reference_named() {
        let err = ImageRef::parse("ghcr.io/UPPER/case:tag", &Config::default()).unwrap_err();
        assert!(err.to_string().contains("ghcr.io/UPPER/case:tag"), "{err}");
        let err = ImageRef::parse("ghcr.io/a/b@sha256:abcd", &Config::default()).unwrap_err();
        assert!(err.to_string().contains("sha256:abcd"), "{err}");
    }
}
