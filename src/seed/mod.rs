//! Seeding: copying an image, byte for byte, into a site registry, so that
//! `<target>/<ns>/<name>:<tag>` answers with the same manifest digest as the source.
//!
//! Two steps, so the approved-image policy can look at the digest in between:
//! [`plan`] fetches and verifies every manifest (an index and all of its platforms,
//! as `skopeo copy --all` does) and lists the blobs; [`Seeder::copy`] then either
//! pushes them ([`SeedMode::Push`]) or fetches them through a pull-through cache so it
//! keeps them ([`SeedMode::PullThrough`]).
//!
//! Pushing is resumable: each blob already at the target (HEAD) is skipped, one the
//! target holds in another repository is mounted from there, and the rest are
//! uploaded from the local verified cache, downloading from the source only what
//! the cache lacks. Manifests go last, with their exact bytes and media type (the
//! tag last of all), and the tag is read back to check the digest.

mod index_artifacts;
mod locations;
mod plan;
mod tee;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::{Reference, RegistryOperation};
use serde::Serialize;

use crate::config::SeedMode;
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::pull::{Progress, ProgressTask};
use crate::reference::ImageRef;
use crate::registry::RegistryClient;
use crate::store::{BlobSink, Store};
pub use locations::Locations;
pub use plan::{Document, Plan, PlannedBlob, plan};

/// Blobs at least this big are uploaded while they download; smaller ones are
/// downloaded, then uploaded.
const STREAM_THROUGH_MIN: u64 = 1 << 20;

/// Blobs copied at once unless told otherwise.
pub const DEFAULT_JOBS: usize = 4;

/// Where images are seeded: `host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    /// Repository path prefix under the host, without slashes at either end.
    pub prefix: String,
}

impl FromStr for Target {
    type Err = Error;

    fn from_str(text: &str) -> Result<Target> {
        let bad = |reason: &str| Error::Reference {
            reference: text.to_string(),
            reason: format!("seed target must look like HOST[:PORT][/PREFIX]: {reason}"),
        };
        if text.contains("://") {
            return Err(bad("no scheme"));
        }
        let trimmed = text.trim_matches('/');
        let (host, prefix) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad("no host"));
        }
        Ok(Target {
            host: host.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            f.write_str(&self.host)
        } else {
            write!(f, "{}/{}", self.host, self.prefix)
        }
    }
}

impl Target {
    /// The name `image` gets at the target: its repository path (under the prefix)
    /// and its tag and/or digest, reached as the configuration says.
    pub fn image_ref(&self, image: &ImageRef, config: &crate::config::Config) -> Result<ImageRef> {
        let name = &image.name;
        let mut text = format!("{self}/{}", name.repository());
        match (name.tag(), name.digest()) {
            (Some(tag), Some(digest)) => text.push_str(&format!(":{tag}@{digest}")),
            (None, Some(digest)) => text.push_str(&format!("@{digest}")),
            (tag, None) => text.push_str(&format!(":{}", tag.unwrap_or("latest"))),
        }
        ImageRef::parse(&text, config)
    }
}

/// What a seed did, for the summary line and `--json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SeedReport {
    pub image: String,
    pub target: String,
    pub mode: SeedMode,
    pub digest: String,
    pub manifests: usize,
    pub blobs: usize,
    /// Blobs sent to the target (push) or fetched through it (pull-through).
    pub blobs_copied: usize,
    pub bytes_copied: u64,
    /// Blobs the target already had.
    pub blobs_skipped: usize,
    pub bytes_skipped: u64,
    /// Blobs linked from another repository on the target instead of uploaded.
    pub blobs_mounted: usize,
    pub bytes_mounted: u64,
    /// Bytes fetched into the local cache (from the source when pushing, through
    /// the target when warming it); the rest were cached already or not needed.
    pub bytes_downloaded: u64,
    /// lazyimg index artifacts pushed beside the image (push mode), by digest.
    pub lazy_indexes: Vec<String>,
    /// The same pushed to the site's index store (`[index_store]`), as
    /// `HOST/REPOSITORY@DIGEST`.
    pub stored_indexes: Vec<String>,
    pub seconds: f64,
}

enum Outcome {
    Skipped,
    Mounted,
    Copied { downloaded: u64 },
}

/// The parts a copy needs.
pub struct Seeder<'a> {
    pub store: &'a Store,
    /// Where the image comes from (the plan's registry).
    pub source: &'a RegistryClient,
    /// The target registry, with its own credentials.
    pub target: &'a RegistryClient,
    pub progress: &'a dyn Progress,
    /// Blobs in flight at once.
    pub jobs: usize,
    /// Signs the lazyimg index artifacts pushed beside the image (`[index_signing]`).
    pub signer: Option<&'a crate::signing::IndexSigner>,
    /// The site's index store for the image (`[index_store]`), which gets
    /// every index too, whatever the mode.
    pub index_store: Option<&'a crate::lazy::index_artifact::IndexStore>,
}

impl Seeder<'_> {
    /// Copies what `plan` lists to `target` (the image's name at the target).
    pub async fn copy(&self, plan: &Plan, target: &ImageRef, mode: SeedMode) -> Result<SeedReport> {
        let started = Instant::now();
        let outcomes = match mode {
            SeedMode::Push => self.push(plan, target).await?,
            SeedMode::PullThrough => self.warm(plan, target).await?,
        };
        let mut report = SeedReport {
            image: plan.image.to_string(),
            target: target.source.whole(),
            mode,
            digest: plan.digest().to_string(),
            manifests: 1 + plan.children.len(),
            blobs: plan.blobs.len(),
            ..SeedReport::default()
        };
        for (blob, outcome) in plan.blobs.iter().zip(outcomes) {
            let size = blob.size;
            match outcome {
                Outcome::Skipped => {
                    report.blobs_skipped += 1;
                    report.bytes_skipped += size;
                }
                Outcome::Mounted => {
                    report.blobs_mounted += 1;
                    report.bytes_mounted += size;
                }
                Outcome::Copied { downloaded } => {
                    report.blobs_copied += 1;
                    report.bytes_copied += size;
                    report.bytes_downloaded += downloaded;
                }
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    async fn push(&self, plan: &Plan, target: &ImageRef) -> Result<Vec<Outcome>> {
        let at = &target.source;
        self.target
            .authenticate(at, RegistryOperation::Push)
            .await?;
        let locations = Locations::new(self.store);
        let outcomes: Vec<Outcome> = futures_util::stream::iter(&plan.blobs)
            .map(|blob| self.push_blob(plan, at, blob, &locations))
            .buffered(self.jobs.max(1))
            .try_collect()
            .await?;

        // Manifests only once every blob is there; the tag last of all, so the
        // image appears complete or not at all.
        for child in &plan.children {
            let by_digest = Reference::with_digest(
                at.registry().to_string(),
                at.repository().to_string(),
                child.digest.to_string(),
            );
            self.target
                .push_manifest(&by_digest, &child.bytes, &child.media_type)
                .await?;
        }
        let top = match at.tag() {
            Some(tag) => Reference::with_tag(
                at.registry().to_string(),
                at.repository().to_string(),
                tag.to_string(),
            ),
            None => at.clone(),
        };
        self.target
            .push_manifest(&top, &plan.top.bytes, &plan.top.media_type)
            .await?;
        let served = Digest::of(&self.target.fetch_manifest(&top).await?);
        if served != plan.digest() {
            return Err(Error::DigestMismatch {
                what: format!("manifest of {} as read back from the target", top.whole()),
                expected: plan.digest(),
                actual: served,
            });
        }
        Ok(outcomes)
    }

    async fn push_blob(
        &self,
        plan: &Plan,
        at: &Reference,
        blob: &PlannedBlob,
        locations: &Locations,
    ) -> Result<Outcome> {
        let digest = blob.digest;
        let size = blob.size;
        let host = self.target.host();
        if self.target.blob_exists(at, &digest).await? {
            locations.remember(host, &digest, at.repository());
            self.progress
                .start(&blob.what, size)
                .finish("already at the target");
            return Ok(Outcome::Skipped);
        }
        if let Some(from) = locations.recall(host, &digest)
            && from != at.repository()
            && self.target.mount_blob(at, &from, &digest).await?
        {
            locations.remember(host, &digest, at.repository());
            self.progress
                .start(&blob.what, size)
                .finish(&format!("mounted from {from}"));
            return Ok(Outcome::Mounted);
        }
        let downloaded = if self.store.contains(&digest) || size < STREAM_THROUGH_MIN {
            let downloaded = self.fetch_into_store(plan, blob).await?;
            self.upload_from_store(at, blob).await?;
            downloaded
        } else {
            self.stream_through(plan, at, blob).await?;
            size
        };
        locations.remember(host, &digest, at.repository());
        Ok(Outcome::Copied { downloaded })
    }

    /// Uploads a cached blob (read back by mmap), with retries.
    async fn upload_from_store(&self, at: &Reference, blob: &PlannedBlob) -> Result<()> {
        let digest = blob.digest;
        let data = self.store.require(&digest)?;
        let task: Arc<dyn ProgressTask> = Arc::from(
            self.progress
                .start(&format!("upload {}", blob.what), blob.size),
        );
        let result = self
            .target
            .push_blob(at, &digest, &data, advancer(&task))
            .await;
        match &result {
            Ok(()) => task.finish("uploaded"),
            Err(e) => task.finish(&format!("failed: {e}")),
        }
        result
    }

    /// Downloads a blob into the cache and uploads it at the same time (see
    /// [`tee`]); if only the upload fails, it is redone from the cache.
    async fn stream_through(&self, plan: &Plan, at: &Reference, blob: &PlannedBlob) -> Result<()> {
        let shared = tee::Shared::new();
        let download_task = self
            .progress
            .start(&format!("download {}", blob.what), blob.size);
        let upload_task: Arc<dyn ProgressTask> = Arc::from(
            self.progress
                .start(&format!("upload {}", blob.what), blob.size),
        );
        let download = async {
            let writer = self.store.writer(blob.digest, Some(blob.size), &blob.what);
            let mut sink = match writer {
                Ok(writer) => tee::TeeSink::new(writer, Arc::clone(&shared)),
                Err(e) => {
                    shared.finish(Err(e.to_string()));
                    return Err(e);
                }
            };
            let mut advance = |n: u64| download_task.advance(n);
            let result = self
                .source
                .fetch_blob(
                    &plan.image.source,
                    &blob.digest,
                    blob.size,
                    &mut sink,
                    &mut advance,
                )
                .await
                .and_then(|()| tokio::task::block_in_place(|| sink.commit()))
                .and_then(|()| self.store.require(&blob.digest));
            shared.finish(result.as_ref().map(Clone::clone).map_err(|e| e.to_string()));
            match &result {
                Ok(_) => download_task.finish("verified"),
                Err(e) => download_task.finish(&format!("failed: {e}")),
            }
            result.map(|_| ())
        };
        let upload = async {
            let body = tee::upload_stream(
                Arc::clone(&shared),
                blob.size,
                self.source.host().to_string(),
                advancer(&upload_task),
            );
            let result = self
                .target
                .push_blob_stream(at, &blob.digest, blob.size, body)
                .await;
            if result.is_err() {
                shared.stop();
            }
            result
        };
        let (downloaded, uploaded) = futures_util::future::join(download, upload).await;
        downloaded?;
        match uploaded {
            Ok(()) => {
                upload_task.finish("uploaded");
                Ok(())
            }
            Err(e) => {
                upload_task.finish(&format!("failed: {e}; sending it again from the cache"));
                self.upload_from_store(at, blob).await
            }
        }
    }

    /// Makes sure the blob is in the local cache, fetching it from the source if
    /// not; returns the bytes fetched.
    async fn fetch_into_store(&self, plan: &Plan, blob: &PlannedBlob) -> Result<u64> {
        let label = format!("download {}", blob.what);
        crate::pull::fetch_blob(
            self.store,
            self.source,
            &plan.image,
            &blob.descriptor,
            (&label, &blob.what),
            self.progress,
        )
        .await
    }

    /// Pull-through: fetches every manifest and blob through the target, which
    /// keeps what it serves, checking each against the plan.
    async fn warm(&self, plan: &Plan, target: &ImageRef) -> Result<Vec<Outcome>> {
        let at = &target.source;
        self.target
            .authenticate(at, RegistryOperation::Pull)
            .await?;
        let served = Digest::of(&self.target.fetch_manifest(at).await?);
        if served != plan.digest() {
            return Err(Error::DigestMismatch {
                what: format!(
                    "manifest of {} (the pull-through cache serves another version than {})",
                    at.whole(),
                    plan.image
                ),
                expected: plan.digest(),
                actual: served,
            });
        }
        for child in &plan.children {
            let bytes = self
                .target
                .fetch_manifest(&at.clone_with_digest(child.digest.to_string()))
                .await?;
            let actual = Digest::of(&bytes);
            if actual != child.digest {
                return Err(Error::DigestMismatch {
                    what: format!("manifest {} through {}", child.digest, self.target.host()),
                    expected: child.digest,
                    actual,
                });
            }
        }
        futures_util::stream::iter(&plan.blobs)
            .map(|blob| self.warm_blob(at, blob))
            .buffered(self.jobs.max(1))
            .try_collect()
            .await
    }

    /// Fetches one blob through the target: into the local cache if it lacks it,
    /// else only hashed; either way verified.
    async fn warm_blob(&self, at: &Reference, blob: &PlannedBlob) -> Result<Outcome> {
        let task = self
            .progress
            .start(&format!("fetch through {}", blob.what), blob.size);
        let mut advance = |n: u64| task.advance(n);
        let cached = self.store.contains(&blob.digest);
        let result = if cached {
            let mut sink = HashSink::default();
            let fetched = self
                .target
                .fetch_blob(at, &blob.digest, blob.size, &mut sink, &mut advance)
                .await;
            fetched.and_then(|()| sink.verify(blob.digest, blob.size, &blob.what))
        } else {
            let mut writer = self
                .store
                .writer(blob.digest, Some(blob.size), &blob.what)?;
            let fetched = self
                .target
                .fetch_blob(at, &blob.digest, blob.size, &mut writer, &mut advance)
                .await;
            fetched.and_then(|()| tokio::task::block_in_place(|| writer.commit()))
        };
        match &result {
            Ok(()) => task.finish("verified"),
            Err(e) => task.finish(&format!("failed: {e}")),
        }
        result?;
        Ok(Outcome::Copied {
            downloaded: if cached { 0 } else { blob.size },
        })
    }
}

/// Progress callback for an upload, feeding `task`.
fn advancer(task: &Arc<dyn ProgressTask>) -> Arc<dyn Fn(u64) + Send + Sync> {
    let task = Arc::clone(task);
    Arc::new(move |n: u64| task.advance(n))
}

/// Hashes a blob without keeping it (it is cached already).
#[derive(Default)]
struct HashSink {
    hasher: Hasher,
}

impl HashSink {
    fn verify(self, digest: Digest, size: u64, what: &str) -> Result<()> {
        if self.hasher.len() != size {
            return Err(Error::SizeMismatch {
                what: what.to_string(),
                expected: size,
                actual: self.hasher.len(),
            });
        }
        let actual = self.hasher.finish();
        if actual != digest {
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: digest,
                actual,
            });
        }
        Ok(())
    }
}

impl BlobSink for HashSink {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        Ok(())
    }

    fn restart(&mut self) -> Result<()> {
        self.hasher = Hasher::new();
        Ok(())
    }

    fn written(&self) -> u64 {
        self.hasher.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_and_without_prefix() {
        let t: Target = "tre-ghcr-proxy.nsh.loc:5000".parse().unwrap();
        assert_eq!(t.host, "tre-ghcr-proxy.nsh.loc:5000");
        assert_eq!(t.prefix, "");
        let t: Target = "127.0.0.1:15000/mirror/ghcr/".parse().unwrap();
        assert_eq!(t.prefix, "mirror/ghcr");
        assert_eq!(t.to_string(), "127.0.0.1:15000/mirror/ghcr");
        assert!("http://x:5000".parse::<Target>().is_err());
        assert!("/".parse::<Target>().is_err());
        assert!("".parse::<Target>().is_err());
    }

    #[test]
    fn target_names_keep_repository_and_tag() {
        let config = crate::config::Config::default();
        let image = ImageRef::parse("ghcr.io/lab/tool:1.0", &config).unwrap();
        let t: Target = "proxy:5000/site".parse().unwrap();
        assert_eq!(
            t.image_ref(&image, &config).unwrap().source.whole(),
            "proxy:5000/site/lab/tool:1.0"
        );
        let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let pinned = ImageRef::parse(&format!("ghcr.io/lab/tool@{digest}"), &config).unwrap();
        let t: Target = "proxy:5000".parse().unwrap();
        assert_eq!(
            t.image_ref(&pinned, &config).unwrap().source.whole(),
            format!("proxy:5000/lab/tool@{digest}")
        );
    }
}
