//! Registry access: a small wrapper over oci-client that adds what a locked-down
//! site needs — explicit authentication with real error messages, one re-auth on a
//! mid-session 401, retries with jitter, resumable verified blob downloads — and
//! reads through registries.conf mirrors, falling back to the primary location.
//!
//! This module moves bytes; it never decides they are good. Callers hash
//! everything through a [`BlobSink`] before anything is kept.

mod classify;
pub mod credentials;
pub mod helper;
mod host;
mod oauth;
pub mod retry;
mod transport;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use oci_client::{Reference, RegistryOperation};

use crate::config::NetworkConfig;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::{Endpoint, ImageRef, Source};
use crate::secret::Credentials;
use crate::store::BlobSink;
use host::HostClient;
pub use retry::RetryPolicy;

/// Media types lazyimg asks for: OCI and Docker v2 schema 2, single and multi-platform.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Longest silence on an open connection before the request fails.
    pub read_timeout: Duration,
    pub retry: RetryPolicy,
    /// containers-certs.d(5) directories, searched in order for a
    /// `HOST[:PORT]` directory whose `*.crt` are trusted for that registry.
    pub certs_d: Vec<PathBuf>,
}

impl Default for ClientOptions {
    /// `[network]`'s defaults.
    fn default() -> Self {
        ClientOptions::from_config(&NetworkConfig::default())
    }
}

impl ClientOptions {
    /// The options `[network]` sets; zero timeouts and tries count as one.
    /// Without `certs_d`, the directories of [`transport::default_certs_d`].
    pub fn from_config(network: &NetworkConfig) -> ClientOptions {
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty());
        ClientOptions {
            certs_d: network.certs_d.clone().unwrap_or_else(|| {
                transport::default_certs_d(home.as_deref().map(std::path::Path::new))
            }),
            connect_timeout: Duration::from_secs(network.connect_timeout.max(1)),
            read_timeout: Duration::from_secs(network.read_timeout.max(1)),
            retry: RetryPolicy {
                attempts: network.attempts.max(1),
                ..RetryPolicy::default()
            },
        }
    }
}

/// A connection to a registry, or to where one image is read from: its
/// registries.conf mirrors in order, then its primary location.
///
/// Reads start at the first host not yet found failing and move on, for good,
/// after an error a registry can cause (unreachable, TLS, 5xx after retries,
/// not found, refused credentials): "the first one that can be contacted and
/// contains the image will be used" (containers-registries.conf(5)). Writes
/// go to the primary location only, as mirrors are for reads.
///
/// Each host's HTTP client is made on its first request ([`Self::make_ready`]).
pub struct RegistryClient {
    /// The mirrors in order, then the primary (always last).
    hosts: Vec<Routed>,
    /// Index in `hosts` where reads start.
    current: AtomicUsize,
}

/// One host, and where the primary location's repository is on it.
struct Routed {
    client: HostClient,
    /// `None` for the primary: references are used as given.
    mirror: Option<MirrorRoute>,
}

/// The primary's `registry`/`repository` and the same on a mirror.
struct MirrorRoute {
    from: (String, String),
    to: (String, String),
}

impl Routed {
    /// `reference` as this host serves it; `None` for a mirror asked about
    /// another repository than the image's (a cross-repository mount).
    fn route(&self, reference: &Reference) -> Option<Reference> {
        let Some(route) = &self.mirror else {
            return Some(reference.clone());
        };
        if (reference.registry(), reference.repository())
            != (route.from.0.as_str(), route.from.1.as_str())
        {
            return None;
        }
        let (registry, repository) = route.to.clone();
        Some(match (reference.tag(), reference.digest()) {
            (Some(tag), Some(digest)) => {
                Reference::with_tag_and_digest(registry, repository, tag.into(), digest.into())
            }
            (None, Some(digest)) => Reference::with_digest(registry, repository, digest.into()),
            (tag, None) => {
                Reference::with_tag(registry, repository, tag.unwrap_or("latest").into())
            }
        })
    }
}

/// What `auth_files` hold for `mirror`'s host and repository.
fn mirror_credentials(auth_files: &[PathBuf], mirror: &Source) -> Result<Option<Credentials>> {
    credentials::lookup(
        auth_files,
        &mirror.endpoint.host,
        mirror.reference.repository(),
    )
}

/// Whether a mirror's `error` sends reads on to the next host: what a
/// registry can cause, not what the content or this machine did.
fn falls_back(error: &Error) -> bool {
    matches!(
        error,
        Error::Network { .. }
            | Error::Tls { .. }
            | Error::Registry { .. }
            | Error::NotFound { .. }
            | Error::BlobNotFound { .. }
            | Error::Auth { .. }
            | Error::Denied { .. }
    )
}

impl RegistryClient {
    /// A client for the one registry at `endpoint`, authenticating with
    /// `credentials` (anonymous without). Reads nothing and connects nowhere:
    /// the HTTP client is made on first use, so an unreadable `ca_file` is
    /// reported by the first request.
    pub fn new(
        endpoint: &Endpoint,
        credentials: Option<&Credentials>,
        options: &ClientOptions,
    ) -> Result<Self> {
        Ok(RegistryClient {
            hosts: vec![Routed {
                client: HostClient::new(endpoint, credentials, options),
                mirror: None,
            }],
            current: AtomicUsize::new(0),
        })
    }

    /// A client that reads `image` through its mirrors ([`ImageRef::mirrors`])
    /// before its primary location (`image.endpoint`, with `credentials`);
    /// each mirror authenticates with what `auth_files` hold for it
    /// ([`credentials::lookup`]). A mirror is tried once per request (the
    /// fallback is its retry). Connects nowhere.
    ///
    /// # Errors
    /// As [`credentials::lookup`] fails for a mirror.
    pub fn for_image(
        image: &ImageRef,
        credentials: Option<&Credentials>,
        auth_files: &[PathBuf],
        options: &ClientOptions,
    ) -> Result<Self> {
        let once = ClientOptions {
            retry: RetryPolicy {
                attempts: 1,
                ..options.retry.clone()
            },
            ..options.clone()
        };
        let from = (
            image.source.registry().to_string(),
            image.source.repository().to_string(),
        );
        let mut hosts = image
            .mirrors
            .iter()
            .map(|mirror| {
                let to = (
                    mirror.reference.registry().to_string(),
                    mirror.reference.repository().to_string(),
                );
                Ok(Routed {
                    client: HostClient::new(
                        &mirror.endpoint,
                        mirror_credentials(auth_files, mirror)?.as_ref(),
                        &once,
                    ),
                    mirror: Some(MirrorRoute {
                        from: from.clone(),
                        to,
                    }),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        hosts.push(Routed {
            client: HostClient::new(&image.endpoint, credentials, options),
            mirror: None,
        });
        Ok(RegistryClient {
            hosts,
            current: AtomicUsize::new(0),
        })
    }

    fn primary(&self) -> &HostClient {
        &self
            .hosts
            .last()
            .expect("the primary is always there")
            .client
    }

    /// Runs read `op` on the hosts from the current one on, moving on after
    /// an error a mirror [`falls_back`] on; the primary's result is final.
    async fn read<T>(
        &self,
        reference: &Reference,
        mut op: impl AsyncFnMut(&HostClient, &Reference) -> Result<T>,
    ) -> Result<T> {
        let mut index = self.current.load(Ordering::Relaxed);
        loop {
            let host = &self.hosts[index];
            let Some(routed) = host.route(reference) else {
                index += 1;
                continue;
            };
            match op(&host.client, &routed).await {
                Err(e) if index + 1 < self.hosts.len() && falls_back(&e) => {
                    index += 1;
                    tracing::warn!(
                        "mirror {}: {e}; trying {}",
                        host.client.host(),
                        self.hosts[index].client.host()
                    );
                    self.current.fetch_max(index, Ordering::Relaxed);
                }
                other => return other,
            }
        }
    }

    /// Makes the current host's HTTP client now (see `HostClient::make_ready`).
    ///
    /// # Errors
    /// As its first request would fail.
    pub async fn make_ready(&self) -> Result<()> {
        let index = self.current.load(Ordering::Relaxed);
        self.hosts[index].client.make_ready().await
    }

    /// The host reads currently go to (`host[:port]`).
    pub fn host(&self) -> &str {
        self.hosts[self.current.load(Ordering::Relaxed)]
            .client
            .host()
    }

    /// Authenticates now, so a wrong token is reported as such: for a push,
    /// at the primary; for a pull, at the first host that accepts.
    ///
    /// # Errors
    /// [`Error::Auth`], [`Error::Denied`], or what reaching the host gives.
    pub async fn authenticate(&self, reference: &Reference, op: RegistryOperation) -> Result<()> {
        match op {
            RegistryOperation::Push => self.primary().authenticate(reference, op).await,
            RegistryOperation::Pull => {
                self.read(reference, async |host, r| host.authenticate(r, op).await)
                    .await
            }
        }
    }

    /// The raw manifest bytes for `reference`. The caller checks the digest.
    pub async fn fetch_manifest(&self, reference: &Reference) -> Result<Bytes> {
        self.read(reference, async |host, r| host.fetch_manifest(r).await)
            .await
    }

    /// Streams blob `digest` into `sink`, resuming with a Range request after a
    /// dropped connection (or on the next host). Progress is reported in bytes
    /// as they arrive.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        sink: &mut dyn BlobSink,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<()> {
        self.read(reference, async |host, r| {
            host.fetch_blob(r, digest, size, &mut *sink, &mut *progress)
                .await
        })
        .await
    }

    /// Bytes `range` of blob `digest`, by one single-range request; `None`
    /// when the registry will not serve ranges (the caller then downloads the
    /// whole blob). The bytes are not verified here.
    pub async fn fetch_range(
        &self,
        reference: &Reference,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Option<Bytes>> {
        self.read(reference, async |host, r| {
            host.fetch_range(r, digest, range.clone()).await
        })
        .await
    }

    /// The manifests that name manifest `subject` as their subject, optionally
    /// only those of `artifact_type`.
    pub async fn referrers(
        &self,
        reference: &Reference,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<crate::image::Descriptor>> {
        self.read(reference, async |host, r| {
            host.referrers(r, subject, artifact_type).await
        })
        .await
    }

    /// Whether the registry has blob `digest` in `reference`'s repository (HEAD).
    pub async fn blob_exists(&self, reference: &Reference, digest: &Digest) -> Result<bool> {
        self.read(reference, async |host, r| host.blob_exists(r, digest).await)
            .await
    }

    /// Asks the primary to link blob `digest` from `from_repository` into
    /// `reference`'s repository; `Ok(false)` when it declined.
    pub async fn mount_blob(
        &self,
        reference: &Reference,
        from_repository: &str,
        digest: &Digest,
    ) -> Result<bool> {
        self.primary()
            .mount_blob(reference, from_repository, digest)
            .await
    }

    /// Uploads verified content `blob` as `digest` to the primary, in one
    /// streamed PUT; `progress` gets the bytes as they are handed over.
    pub async fn push_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        blob: &crate::store::Blob,
        progress: std::sync::Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Result<()> {
        self.primary()
            .push_blob(reference, digest, blob, progress)
            .await
    }

    /// Uploads `chunks` (exactly `size` bytes that hash to `digest`) to the
    /// primary in one streamed PUT, once.
    pub async fn push_blob_stream<S>(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        chunks: S,
    ) -> Result<()>
    where
        S: futures_util::Stream<Item = Result<Bytes>> + Send + 'static,
    {
        self.primary()
            .push_blob_stream(reference, digest, size, chunks)
            .await
    }

    /// Stores manifest `bytes` exactly as given at the primary.
    pub async fn push_manifest(
        &self,
        reference: &Reference,
        bytes: &Bytes,
        media_type: &str,
    ) -> Result<()> {
        self.primary()
            .push_manifest(reference, bytes, media_type)
            .await
    }
}
