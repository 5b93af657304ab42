//! The approved-image list: when the configuration names one (`approved_images`),
//! only images on it may be pulled, mounted, run or seeded.
//!
//! The list is written by the people who approve images and only ever read here.
//! It fails closed: a list that is missing, unreadable or malformed refuses
//! everything, with an error naming the file (and the key, for a bad key).
//!
//! Enforcement has two steps. [`enforce`] checks the name before the registry is
//! contacted; a rule that pins a `digest` leaves a second step, done with
//! [`Approval::check_digest`] (or [`Approval::check_resolved`]) once the manifest
//! digest is known and before anything is stored.
//!
//! A reference is checked under its canonical name: the name the user gave, except
//! that a name under a `[[registry]]` entry's `location` (a site proxy) is checked
//! as the same path under that entry's `prefix` (what the proxy mirrors).

mod glob;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::ImageRef;

pub use glob::glob_match;

/// One `[[image]]` table of the list.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `host/path/name`, or a glob: `*` within a path segment, `**` across them.
    pub repository: String,
    /// Only these tags (globs allowed); `None` for any tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Only this manifest (or index): tags must resolve to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// The lazyimg index artifact (manifest digest) the approvers built or
    /// checked for this image: a mount uses that one index, with no signature
    /// needed, and ignores any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    /// Why it was approved; shown by `lazyimg policy list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// 1-based position in the list.
    #[serde(skip_deserializing)]
    pub number: usize,
    /// The line of its `[[image]]` header, when that can be told.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListFile {
    #[serde(default)]
    image: Vec<Rule>,
}

/// A loaded, validated approved list.
#[derive(Debug, Clone)]
pub struct Policy {
    pub path: PathBuf,
    pub rules: Vec<Rule>,
}

/// What a reference is checked as: its canonical repository, tag and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedName {
    /// The reference as the user named it (normalised).
    pub reference: String,
    /// `host/path/name` under the canonical (upstream) registry.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl CheckedName {
    /// Whether the canonical name differs from what the user named.
    pub fn is_mapped(&self) -> bool {
        self.to_string() != self.reference
    }
}

impl fmt::Display for CheckedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// A reference allowed by name, with the rules that allowed it. When every one of
/// them pins a digest, the digest still has to be checked once it is known.
#[derive(Debug, Clone)]
pub struct Approval {
    pub name: CheckedName,
    pub list: PathBuf,
    /// The rules that allow the name, in list order (never empty).
    pub rules: Vec<Rule>,
}

impl Approval {
    /// The first rule that allows the name.
    pub fn rule(&self) -> &Rule {
        &self.rules[0]
    }

    /// The digests one of which the reference must resolve to; empty when any
    /// digest will do.
    pub fn required_digests(&self) -> Vec<Digest> {
        if self.rules.iter().any(|r| r.digest.is_none()) {
            return Vec::new();
        }
        let mut digests: Vec<Digest> = self.rules.iter().filter_map(|r| r.digest).collect();
        digests.dedup();
        digests
    }

    /// The rule that allows the image once its reference resolved to `digest`
    /// (the top-level one, an index for multi-platform images) whose chosen
    /// platform manifest is `manifest`. A rule's digest may name either.
    pub fn rule_for(&self, digest: &Digest, manifest: &Digest) -> Option<&Rule> {
        self.rules.iter().find(|r| r.digest.is_none()).or_else(|| {
            self.rules
                .iter()
                .find(|r| r.digest.is_some_and(|d| d == *digest || d == *manifest))
        })
    }

    /// The index artifacts the rules allowing the name pin (`index_digest`).
    pub fn index_pins(&self) -> Vec<Digest> {
        self.rules.iter().filter_map(|r| r.index_digest).collect()
    }

    /// The second step, for callers that know one digest: refuses unless a rule
    /// that allowed the name also allows `digest`.
    pub fn check_digest(&self, digest: &Digest) -> Result<()> {
        self.check_resolved(digest, digest)
    }

    /// The second step once the reference resolved to `digest` (top level) and
    /// `manifest` (the chosen platform's manifest; the same for a single manifest).
    pub fn check_resolved(&self, digest: &Digest, manifest: &Digest) -> Result<()> {
        if self.rule_for(digest, manifest).is_some() {
            return Ok(());
        }
        let resolved = if digest == manifest {
            format!("{digest}")
        } else {
            format!("{digest} (platform manifest {manifest})")
        };
        let approved: Vec<String> = self
            .rules
            .iter()
            .map(|r| {
                format!(
                    "{} approves only {}",
                    r.label(),
                    r.digest.expect("required")
                )
            })
            .collect();
        Err(Error::NotApproved {
            image: self.name.reference.clone(),
            list: self.list.clone(),
            detail: format!(
                "{}it resolves to {resolved}, but {}",
                self.checked_as(),
                approved.join(" and ")
            ),
        })
    }

    /// One line saying which rule allows the name, and what is still to be checked.
    pub fn explain(&self) -> String {
        let mut text = format!("{}allowed by {}", self.checked_as(), self.rule().describe());
        let required = self.required_digests();
        if !required.is_empty() {
            let list: Vec<String> = required.iter().map(|d| d.to_string()).collect();
            text.push_str(&format!(", provided it resolves to {}", list.join(" or ")));
        }
        text
    }

    /// One line saying which rule allows the image resolved to these digests.
    pub fn explain_resolved(&self, digest: &Digest, manifest: &Digest) -> Option<String> {
        let rule = self.rule_for(digest, manifest)?;
        Some(format!(
            "{}allowed by {}{}",
            self.checked_as(),
            rule.describe(),
            match rule.digest {
                Some(d) => format!(", and it resolves to {d}"),
                None => String::new(),
            }
        ))
    }

    fn checked_as(&self) -> String {
        checked_as(&self.name)
    }
}

fn checked_as(name: &CheckedName) -> String {
    if name.is_mapped() {
        format!("checked as {}: ", name)
    } else {
        String::new()
    }
}

impl Rule {
    /// `rule 2 (line 7)`, or `rule 2` when the line is not known.
    pub fn label(&self) -> String {
        match self.line {
            Some(line) => format!("rule {} (line {line})", self.number),
            None => format!("rule {}", self.number),
        }
    }

    /// The label and the rule's contents, on one line.
    pub fn describe(&self) -> String {
        let mut text = format!("{} repository = {:?}", self.label(), self.repository);
        if let Some(tags) = &self.tags {
            text.push_str(&format!(" tags = {tags:?}"));
        }
        if let Some(digest) = &self.digest {
            text.push_str(&format!(" digest = \"{digest}\""));
        }
        if let Some(note) = &self.note {
            text.push_str(&format!(" ({note})"));
        }
        text
    }

    /// Whether the repository pattern covers `repository`.
    pub fn covers(&self, repository: &str) -> bool {
        glob_match(&self.repository, repository)
    }

    /// Whether this rule allows `name` by name; the reason not, if it does not.
    fn allows_name(&self, name: &CheckedName) -> std::result::Result<(), String> {
        if let Some(pinned) = name.digest {
            return match (&self.digest, &self.tags) {
                (Some(approved), _) if *approved == pinned => Ok(()),
                (Some(approved), _) => Err(format!(
                    "{} approves only {approved}, not {pinned}",
                    self.label()
                )),
                (None, None) => Ok(()),
                (None, Some(tags)) => Err(format!(
                    "{} approves only the tags {}, and a digest-pinned reference is not \
                     checked against tags; approvers would add digest = \"{pinned}\" to a rule",
                    self.label(),
                    quoted(tags)
                )),
            };
        }
        let tag = name.tag.as_deref().unwrap_or("latest");
        match &self.tags {
            Some(tags) if !tags.iter().any(|t| glob_match(t, tag)) => Err(format!(
                "{} approves only the tags {}, not {tag:?}; approvers would add {tag:?} to its tags",
                self.label(),
                quoted(tags)
            )),
            _ => Ok(()),
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let repo = &self.repository;
        let last = repo.rsplit('/').next().unwrap_or_default();
        if repo.is_empty() {
            Err("repository is empty".into())
        } else if repo.contains("://") {
            Err(format!(
                "repository {repo:?} must look like host[:port]/path, without a scheme"
            ))
        } else if repo.contains('@') {
            Err(format!(
                "repository {repo:?} contains a digest: put it in `digest`"
            ))
        } else if last.contains(':') {
            Err(format!(
                "repository {repo:?} contains a tag: put it in `tags`"
            ))
        } else if !repo.contains('/') || repo.ends_with('/') {
            Err(format!(
                "repository {repo:?} must name the registry host and the path, \
                 e.g. \"ghcr.io/example-lab/cuda-sample\" or \"docker.io/library/busybox\""
            ))
        } else if self.tags.as_ref().is_some_and(|t| t.is_empty()) {
            Err("tags = [] approves nothing: leave tags out to approve every tag".into())
        } else if let Some(tag) = self
            .tags
            .iter()
            .flatten()
            .find(|t| t.is_empty() || t.contains(['/', ':', '@']))
        {
            Err(format!("tag {tag:?} is not a tag"))
        } else {
            Ok(())
        }
    }
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Policy {
    /// Reads and validates the list at `path`; any problem is an error (fail closed).
    pub fn load(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Policy {
            path: path.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses the list's `text`; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Policy> {
        let error = |message: String| Error::Policy {
            path: path.to_path_buf(),
            message,
        };
        let file: ListFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let message = e.message().trim().replace('\n', " ");
            error(match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            })
        })?;
        // Line numbers, when the rules are written as `[[image]]` tables.
        let headers: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with("[[image]]"))
            .map(|(n, _)| n + 1)
            .collect();
        let lines_known = headers.len() == file.image.len();
        let mut rules = file.image;
        for (n, rule) in rules.iter_mut().enumerate() {
            rule.number = n + 1;
            rule.line = lines_known.then(|| headers[n]);
            rule.validate()
                .map_err(|message| error(format!("{}: {message}", rule.label())))?;
        }
        Ok(Policy {
            path: path.to_path_buf(),
            rules,
        })
    }

    /// The first step: whether `name` is allowed by name.
    pub fn check_name(&self, name: &CheckedName) -> Result<Approval> {
        let covering: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.covers(&name.repository))
            .collect();
        let refuse = |detail: String| Error::NotApproved {
            image: name.reference.clone(),
            list: self.path.clone(),
            detail: format!("{}{detail}", checked_as(name)),
        };
        if covering.is_empty() {
            let constraint = match (&name.digest, &name.tag) {
                (Some(digest), _) => format!(" digest = \"{digest}\""),
                (None, Some(tag)) => format!(" tags = [{tag:?}]"),
                (None, None) => String::new(),
            };
            return Err(refuse(format!(
                "no rule for {repo}; approvers would add [[image]] repository = {repo:?}{constraint}",
                repo = name.repository
            )));
        }
        let mut allowing = Vec::new();
        let mut reasons = Vec::new();
        for rule in covering {
            match rule.allows_name(name) {
                Ok(()) => allowing.push(rule.clone()),
                Err(reason) => reasons.push(reason),
            }
        }
        if allowing.is_empty() {
            return Err(refuse(reasons.join("; ")));
        }
        Ok(Approval {
            name: name.clone(),
            list: self.path.clone(),
            rules: allowing,
        })
    }
}

/// What `image` is checked as: the name the user gave, except that a name under
/// a `[[registry]]` entry's `location` becomes the same path under its `prefix`
/// (the longest matching location wins).
pub fn canonical_name(config: &Config, image: &ImageRef) -> CheckedName {
    let name = &image.name;
    let full = format!("{}/{}", name.registry(), name.repository());
    let reverse = config
        .registries
        .iter()
        .filter_map(|r| {
            let location = r.location.as_deref()?.trim_end_matches('/');
            let rest = under(location, &full)?;
            Some((
                location.len(),
                format!("{}{rest}", r.prefix.trim_end_matches('/')),
            ))
        })
        .max_by_key(|(len, _)| *len);
    CheckedName {
        reference: name.whole(),
        repository: reverse.map_or(full, |(_, mapped)| mapped),
        tag: name.tag().map(str::to_string),
        digest: image.pinned_digest(),
    }
}

/// The rest of `name` after `prefix`, if `prefix` matches at a path boundary.
fn under<'a>(prefix: &str, name: &'a str) -> Option<&'a str> {
    let rest = name.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Where the configuration's list is: `approved_images`, relative to the
/// configuration file's directory if relative. `None` when no list is configured.
pub fn list_path(config: &Config) -> Option<PathBuf> {
    let path = config.approved_images.as_ref()?;
    let base = config.source.as_deref().and_then(Path::parent);
    let path = match base {
        Some(base) if path.is_relative() => base.join(path),
        _ => path.clone(),
    };
    // Absolute, so messages name the file wherever the command was run.
    Some(std::path::absolute(&path).unwrap_or(path))
}

/// The first step of enforcement, called before the registry is contacted:
/// `Ok(None)` when no list is configured, the approval when `image` is allowed by
/// name, and an error when it is not or the list cannot be used.
pub fn enforce(config: &Config, image: &ImageRef) -> Result<Option<Approval>> {
    let Some(path) = list_path(config) else {
        return Ok(None);
    };
    let policy = Policy::load(&path)?;
    let approval = policy.check_name(&canonical_name(config, image))?;
    tracing::debug!("{image}: {}", approval.explain());
    Ok(Some(approval))
}

/// The second step as a [`crate::pull::Gate`]: accepts anything when no list is
/// configured (`approval` is `None`).
pub fn gate(approval: Option<&Approval>) -> impl Fn(&Digest, &Digest) -> Result<()> + Sync + '_ {
    move |digest: &Digest, manifest: &Digest| {
        approval.map_or(Ok(()), |a| a.check_resolved(digest, manifest))
    }
}

#[cfg(test)]
mod tests;
