//! One `[[registry]]` table, with keys as in containers-registries.conf(5),
//! shared by lazyimg's own file (where unknown keys are errors) and the
//! system's registries.conf files (where they are ignored).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// One `[[registry]]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct RegistryConfig {
    /// References under this prefix use this entry: `host[:port][/path]`,
    /// or `*.domain` for every subdomain of `domain`. Defaults to `location`.
    #[serde(default)]
    pub prefix: String,
    /// Fetch from here instead (`host[:port][/path]`), e.g. the site proxy.
    pub location: Option<String>,
    /// As containers-registries.conf(5) means it: TLS to the location is not
    /// verified, and plain HTTP is used when it does not speak HTTPS.
    #[serde(default)]
    pub insecure: bool,
    /// Images under the prefix may not be pulled.
    #[serde(default)]
    pub blocked: bool,
    /// `[[registry.mirror]]`: tried in order before the location, for reads.
    #[serde(default, rename = "mirror")]
    pub mirrors: Vec<MirrorConfig>,
    /// Mirrors serve only references pinned by digest.
    #[serde(default)]
    pub mirror_by_digest_only: bool,
    /// An extra CA certificate (PEM) to trust for the location (a lazyimg
    /// extension; containers-certs.d(5) directories are read too).
    #[serde(alias = "ca_file")]
    pub ca_file: Option<PathBuf>,
    /// Keys this table does not know, kept so that lazyimg's own file can
    /// refuse them while registries.conf files ignore them.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// One `[[registry.mirror]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct MirrorConfig {
    /// `host[:port][/path]` holding the prefix's namespace.
    pub location: String,
    /// As [`RegistryConfig::insecure`], for this mirror.
    #[serde(default)]
    pub insecure: bool,
    /// Which pulls may use this mirror.
    #[serde(default)]
    pub pull_from_mirror: PullFromMirror,
    /// See [`RegistryConfig::unknown`].
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// `pull-from-mirror`: which references a mirror serves.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PullFromMirror {
    /// Tags and digests (unless the registry has `mirror-by-digest-only`).
    #[default]
    All,
    /// References pinned by digest only.
    DigestOnly,
    /// References by tag only.
    TagOnly,
}

impl RegistryConfig {
    /// This table with `prefix` defaulted to `location`, checked.
    ///
    /// # Errors
    /// A message when it has neither, when either has a scheme
    /// (`https://…`), when a wildcard is anywhere but a leading `*.` of a bare
    /// domain, or when a mirror's `pull-from-mirror` is set beside the
    /// registry's `mirror-by-digest-only` (containers/image refuses that too).
    pub fn with_default_prefix(mut self) -> Result<RegistryConfig, String> {
        if self.prefix.is_empty() {
            self.prefix = self.location.clone().unwrap_or_default();
        }
        if self.prefix.is_empty() {
            return Err("a [[registry]] table needs a prefix or a location".into());
        }
        let with_scheme = [Some(&self.prefix), self.location.as_ref()]
            .into_iter()
            .flatten()
            .chain(self.mirrors.iter().map(|m| &m.location))
            .find(|a| a.contains("://"));
        if let Some(bad) = with_scheme {
            return Err(format!(
                "registry {bad:?} must look like host[:port][/path], without a scheme"
            ));
        }
        let wildcard = self.prefix.strip_prefix("*.").unwrap_or(&self.prefix);
        if wildcard.contains('*')
            || (self.prefix.starts_with("*.") && wildcard.contains(['/', ':']))
        {
            return Err(format!(
                "registry prefix {:?}: a wildcard may only start a bare domain (*.example.com)",
                self.prefix
            ));
        }
        if self.mirror_by_digest_only
            && self
                .mirrors
                .iter()
                .any(|m| m.pull_from_mirror != PullFromMirror::All)
        {
            return Err(format!(
                "registry {:?}: pull-from-mirror cannot be set with mirror-by-digest-only",
                self.prefix
            ));
        }
        Ok(self)
    }

    /// The unknown keys of this table and its mirrors, as `key` or `mirror.key`.
    pub fn unknown_keys(&self) -> Vec<String> {
        let mirror_keys = self
            .mirrors
            .iter()
            .flat_map(|m| m.unknown.keys().map(|k| format!("mirror.{k}")));
        self.unknown.keys().cloned().chain(mirror_keys).collect()
    }

    /// The mirrors a reference may be pulled from, in order: all of them,
    /// but for a reference by tag (`by_digest` false) only those that serve
    /// tags, and for one by digest those that serve digests.
    pub fn mirrors_for(&self, by_digest: bool) -> impl Iterator<Item = &MirrorConfig> {
        self.mirrors.iter().filter(move |m| {
            match (self.mirror_by_digest_only, m.pull_from_mirror) {
                (true, _) | (false, PullFromMirror::DigestOnly) => by_digest,
                (false, PullFromMirror::TagOnly) => !by_digest,
                (false, PullFromMirror::All) => true,
            }
        })
    }

    /// How long a match of this prefix is, for "the longest match wins";
    /// `None` when `name` (`host[:port]/repository`) is not under it: at a
    /// path boundary, or for `*.domain` any subdomain of `domain`.
    pub fn matches(&self, name: &str) -> Option<usize> {
        let prefix = self.prefix.trim_end_matches('/');
        if let Some(domain) = prefix.strip_prefix("*.") {
            let host = name.split('/').next().unwrap_or(name);
            let host = host.split(':').next().unwrap_or(host);
            return host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1)
                .then_some(prefix.len());
        }
        let under = name == prefix
            || name
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'));
        under.then_some(prefix.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> RegistryConfig {
        toml::from_str::<RegistryConfig>(text)
            .unwrap()
            .with_default_prefix()
            .unwrap()
    }

    /// containers-registries.conf(5), "Choosing a [[registry]] TOML table".
    #[test]
    fn prefixes_match_at_boundaries_and_wildcards_match_subdomains() {
        let exact = table("prefix = \"example.com/foo\"");
        assert_eq!(exact.matches("example.com/foo/app"), Some(15));
        assert_eq!(exact.matches("example.com/foo"), Some(15));
        assert_eq!(exact.matches("example.com/foobar/app"), None);
        let wildcard = table("prefix = \"*.example.com\"");
        assert!(wildcard.matches("bar.example.com/app").is_some());
        assert!(wildcard.matches("foo.bar.example.com:5000/app").is_some());
        assert!(wildcard.matches("example.com/app").is_none());
        assert!(wildcard.matches("badexample.com/app").is_none());
    }

    #[test]
    fn prefix_defaults_to_location_and_bad_tables_are_refused() {
        assert_eq!(table("location = \"reg.io/ns\"").prefix, "reg.io/ns");
        let refused = |text: &str| {
            toml::from_str::<RegistryConfig>(text)
                .unwrap()
                .with_default_prefix()
                .is_err()
        };
        assert!(refused("insecure = true"));
        assert!(refused("prefix = \"https://reg.io\""));
        assert!(refused("prefix = \"example.*.com\""));
        assert!(refused("prefix = \"*.example.com/foo\""));
        assert!(refused(
            "prefix = \"a.io\"\nmirror-by-digest-only = true\n\
             [[mirror]]\nlocation = \"m.io\"\npull-from-mirror = \"tag-only\"\n"
        ));
    }

    /// `pull-from-mirror` and `mirror-by-digest-only`, as the man page defines them.
    #[test]
    fn mirrors_serve_the_references_they_are_for() {
        let conf = table(
            "prefix = \"a.io\"\n\
             [[mirror]]\nlocation = \"all.io\"\n\
             [[mirror]]\nlocation = \"digest.io\"\npull-from-mirror = \"digest-only\"\n\
             [[mirror]]\nlocation = \"tag.io\"\npull-from-mirror = \"tag-only\"\n",
        );
        let names = |by_digest| -> Vec<&str> {
            conf.mirrors_for(by_digest)
                .map(|m| m.location.as_str())
                .collect()
        };
        assert_eq!(names(false), ["all.io", "tag.io"]);
        assert_eq!(names(true), ["all.io", "digest.io"]);
        let digest_only = table(
            "prefix = \"a.io\"\nmirror-by-digest-only = true\n[[mirror]]\nlocation = \"m.io\"\n",
        );
        assert_eq!(digest_only.mirrors_for(false).count(), 0);
        assert_eq!(digest_only.mirrors_for(true).count(), 1);
    }
}
