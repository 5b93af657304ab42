//! One registry host: a small wrapper over oci-client that adds what a
//! locked-down site needs — explicit authentication with real error messages,
//! one re-auth on a mid-session 401, retries with jitter, and resumable blob
//! downloads.

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::future::Either;
use oci_client::client::{BlobResponse, SizedStream};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::token_cache::{RegistryToken, RegistryTokenType};
use oci_client::{Client, Reference, RegistryOperation};

use super::classify::{Failure, classify, status_of};
use super::transport::{self, Scheme, make_client};
use super::{ClientOptions, MANIFEST_MEDIA_TYPES, RetryPolicy, oauth};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::Endpoint;
use crate::secret::{Credentials, Secret, SecretKind};
use crate::store::BlobSink;
use crate::timeline;

/// A connection to one registry host with one set of credentials.
///
/// The HTTP client (and with it the system CA store, read and parsed) is made
/// on the first request, once: a mount of a cached image may never need one
/// (issue 10).
pub(super) struct HostClient {
    client: tokio::sync::OnceCell<(Client, Scheme)>,
    endpoint: Endpoint,
    options: ClientOptions,
    /// What oci-client is given: Basic credentials, or anonymous (also for
    /// an identity token, whose access tokens [`Self::authenticate`] gets).
    auth: RegistryAuth,
    /// An identity token (OAuth2 refresh token) to exchange for access tokens.
    identity_token: Option<Secret>,
    /// Whether [`Self::authenticate`] has succeeded once.
    authenticated: AtomicBool,
    /// Without credentials: whether the registry's `GET /v2/` answer
    /// challenges for a token (asked once; see [`Self::skip_needless_pings`]).
    challenges: tokio::sync::OnceCell<bool>,
    host: String,
    retry: RetryPolicy,
}

impl HostClient {
    /// A client for `endpoint` that authenticates with `credentials` (anonymous
    /// without). Reads nothing and connects nowhere: the HTTP client is made on
    /// first use, so an unreadable `ca_file` is reported by the first request.
    pub fn new(
        endpoint: &Endpoint,
        credentials: Option<&Credentials>,
        options: &ClientOptions,
    ) -> Self {
        let (auth, identity_token) = match credentials {
            Some(c) if c.kind == SecretKind::IdentityToken => {
                (RegistryAuth::Anonymous, Some(c.secret.clone()))
            }
            Some(c) => (
                RegistryAuth::Basic(c.username.clone(), c.secret.expose().to_string()),
                None,
            ),
            None => (RegistryAuth::Anonymous, None),
        };
        HostClient {
            client: tokio::sync::OnceCell::new(),
            endpoint: endpoint.clone(),
            options: options.clone(),
            auth,
            identity_token,
            authenticated: AtomicBool::new(false),
            challenges: tokio::sync::OnceCell::new(),
            host: endpoint.host.clone(),
            retry: options.retry.clone(),
        }
    }

    /// Makes the HTTP client now (loading the CA store), so that the first
    /// request does not wait for it: a mount calls this once it is live, off
    /// the path of its readers. Contacts nobody, except an `insecure`
    /// registry, which is asked whether it speaks HTTPS ([`Self::client`]).
    ///
    /// # Errors
    /// As the first request would fail (see [`Self::client`]).
    pub async fn make_ready(&self) -> Result<()> {
        self.client().await.map(|_| ())
    }

    /// The HTTP client, made on the first call, with the scheme it speaks:
    /// HTTPS, or for an `insecure` endpoint whichever of HTTPS (unverified)
    /// and plain HTTP the registry answers ([`transport::scheme`]).
    ///
    /// # Errors
    /// [`Error::Io`] when a CA file (`ca_file`, certs.d) cannot be read,
    /// [`Error::Registry`] when the client cannot be set up (a bad certificate).
    async fn client(&self) -> Result<&Client> {
        self.client
            .get_or_try_init(|| async {
                let scheme = transport::scheme(&self.endpoint, &self.options).await?;
                Ok((make_client(&self.endpoint, scheme, &self.options)?, scheme))
            })
            .await
            .map(|(client, _)| client)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Authenticates now, so a wrong token is reported as such. oci-client would
    /// otherwise swallow the failure and surface a bare 401 later.
    pub async fn authenticate(&self, reference: &Reference, op: RegistryOperation) -> Result<()> {
        let anonymous = !self.has_credentials();
        let client = self.client().await?;
        let auth = match &self.identity_token {
            Some(refresh) => self.exchange(refresh, reference, op).await?,
            None => self.auth.clone(),
        };
        let result = self
            .with_retries(reference, || client.auth(reference, &auth, op))
            .await;
        match result {
            Ok(token) => {
                if anonymous {
                    // Without credentials a token comes only with a challenge.
                    let _ = self.challenges.set(token.is_some());
                }
                self.authenticated.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(Error::Auth { registry, reason }) if anonymous => Err(Error::Auth {
                registry,
                reason: format!("{reason} (no credentials were found for {})", self.host),
            }),
            Err(e) => Err(e),
        }
    }

    /// Whether this client was given credentials of any kind.
    fn has_credentials(&self) -> bool {
        self.identity_token.is_some() || !matches!(self.auth, RegistryAuth::Anonymous)
    }

    /// An access token for `op` on `reference`'s repository in exchange for
    /// identity token `refresh` ([`oauth`]), as oci-client takes it.
    async fn exchange(
        &self,
        refresh: &Secret,
        reference: &Reference,
        op: RegistryOperation,
    ) -> Result<RegistryAuth> {
        self.client().await?;
        let scheme = self
            .client
            .get()
            .map_or(Scheme::Https, |(_, scheme)| *scheme);
        let http = transport::http_client(&self.endpoint, &self.options)?;
        let base_url = format!("{}://{}", scheme.as_str(), self.endpoint.host);
        let token =
            oauth::access_token(&http, &base_url, &self.host, reference, op, refresh).await?;
        Ok(token.map_or(RegistryAuth::Anonymous, |t| {
            RegistryAuth::Bearer(t.expose().to_string())
        }))
    }

    /// With credentials, a client's first request authenticates before it
    /// is sent: a request without a token costs a 401 and a retry, one round
    /// trip more (a mount of a cached image makes its first request on a read).
    async fn authenticate_first(&self, reference: &Reference, op: RegistryOperation) -> Result<()> {
        if !self.has_credentials() {
            return self.skip_needless_pings(reference, op).await;
        }
        if self.authenticated.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.authenticate(reference, op).await
    }

    /// Without credentials, on a registry that asks for no token (its
    /// `GET /v2/` answer carries no `WWW-Authenticate` challenge: a site
    /// registry without auth), oci-client would send that `GET /v2/` again
    /// before every request, because its token cache holds tokens and "none
    /// needed" is not one: a round trip more per read. The registry is asked
    /// once; if it sets no challenge, an empty bearer token, which a
    /// registry without auth ignores, stands in for "none needed" in
    /// oci-client's cache for `reference`'s repository. Registries that do
    /// challenge (ghcr.io's anonymous tokens) keep oci-client's own handling,
    /// and so does any failure to ask, which the request itself then meets.
    async fn skip_needless_pings(
        &self,
        reference: &Reference,
        op: RegistryOperation,
    ) -> Result<()> {
        let client = self.client().await?;
        let challenges = self
            .challenges
            .get_or_try_init(|| async {
                // With no credentials, `auth` answers a token only when challenged.
                client
                    .auth(reference, &RegistryAuth::Anonymous, op)
                    .await
                    .map(|token| token.is_some())
            })
            .await;
        if let Ok(false) = challenges {
            let none_needed = RegistryToken::Token {
                token: String::new(),
            };
            client
                .tokens
                .insert(reference, op, RegistryTokenType::Bearer(none_needed))
                .await;
        }
        Ok(())
    }

    /// The raw manifest bytes for `reference`. The caller checks the digest.
    pub async fn fetch_manifest(&self, reference: &Reference) -> Result<Bytes> {
        let client = self.client().await?;
        let (bytes, _) = self
            .call(reference, || {
                client.pull_manifest_raw(reference, &self.auth, MANIFEST_MEDIA_TYPES)
            })
            .await?;
        timeline::received(bytes.len() as u64);
        Ok(bytes)
    }

    /// Streams blob `digest` into `sink`, resuming with a Range request after a
    /// dropped connection. Progress is reported in bytes as they arrive.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        sink: &mut dyn BlobSink,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<()> {
        let digest_text = digest.to_string();
        self.authenticate_first(reference, RegistryOperation::Pull)
            .await?;
        let mut attempt = 1;
        let mut reauthed = false;
        loop {
            let failure = match self.open_blob(reference, &digest_text, sink).await {
                Err(failure) => failure,
                Ok(stream) => match copy_stream(stream, sink, progress).await {
                    Ok(()) => return Ok(()),
                    Err(StreamError::Sink(e)) => return Err(e),
                    // A stream error once every byte has arrived is oci-client's own digest
                    // check firing: the sink's verification gives the precise message.
                    Err(StreamError::Transport(_)) if sink.written() == size => return Ok(()),
                    Err(StreamError::Transport(e)) => {
                        Failure::Retry(self.network_error(&e.to_string()))
                    }
                },
            };
            match failure {
                Failure::Reauth(e) if reauthed => return Err(self.denied(reference, e)),
                Failure::Reauth(_) => {
                    reauthed = true;
                    self.authenticate(reference, RegistryOperation::Pull)
                        .await?;
                }
                Failure::Retry(e) if attempt >= self.retry.attempts => return Err(e),
                Failure::Retry(e) => {
                    tracing::warn!("{digest}: {e}; retrying from byte {}", sink.written());
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                    attempt += 1;
                }
                Failure::Fatal(e) => return Err(self.blob_missing(reference, digest, e)),
            }
        }
    }

    /// Bytes `range` of blob `digest`, by one single-range request (registries such
    /// as ghcr.io refuse multi-range ones). `None` when the registry will not serve
    /// the range: it answered with the whole blob (the distribution pull-through
    /// proxy does, for blobs it has not cached), 416 or 501. The caller then falls
    /// back to a whole, verified download. The bytes are not verified here.
    pub async fn fetch_range(
        &self,
        reference: &Reference,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Option<Bytes>> {
        let digest_of_range = *digest;
        let digest = digest.to_string();
        let length = range.end - range.start;
        let client = self.client().await?;
        self.call(reference, || async {
            let response = client
                .pull_blob_stream_partial(reference, digest.as_str(), range.start, Some(length))
                .await;
            let mut stream = match response {
                Ok(BlobResponse::Partial(stream)) => stream,
                Ok(BlobResponse::Full(_)) => return Ok(None),
                Err(e) if matches!(status_of(&e), Some(416 | 501)) => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut body = BytesMut::with_capacity(length as usize);
            while let Some(piece) = stream.next().await {
                body.extend_from_slice(&piece?);
                if body.len() as u64 > length {
                    return Err(OciDistributionError::GenericError(Some(format!(
                        "asked for {length} bytes of {digest}, got more"
                    ))));
                }
            }
            if (body.len() as u64) < length {
                // A dropped connection: worth another attempt.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{digest}: {} of {length} bytes arrived", body.len()),
                )
                .into());
            }
            timeline::received(length);
            Ok(Some(body.freeze()))
        })
        .await
        .map_err(|e| self.blob_missing(reference, &digest_of_range, e))
    }

    /// The manifests that name manifest `subject` as their subject, optionally only
    /// those of `artifact_type`: the referrers API, or the `sha256-<hex>` tag on
    /// registries without it (ghcr.io, distribution 2.x), as distribution-spec
    /// "Listing Referrers" and its tag schema fallback describe. Both are asked
    /// at once: where the API is missing, its 404 would otherwise cost a round
    /// trip before the tag is asked. A tag that lists entries of `artifact_type`
    /// answers; else the API's answer (which falls back to the tag itself).
    pub async fn referrers(
        &self,
        reference: &Reference,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<crate::image::Descriptor>> {
        let what = format!("referrers of {subject}");
        let by_tag = async {
            let tag = Reference::with_tag(
                reference.registry().to_string(),
                reference.repository().to_string(),
                subject.to_string().replace(':', "-"),
            );
            let bytes = self.fetch_manifest(&tag).await.ok()?;
            let index = crate::image::parse_index(&bytes, &what).ok()?;
            let entries: Vec<_> = (index.manifests().iter())
                .filter(|d| {
                    artifact_type.is_none_or(|wanted| {
                        d.artifact_type()
                            .as_ref()
                            .is_some_and(|t| t.as_ref() == wanted)
                    })
                })
                .cloned()
                .collect();
            (!entries.is_empty()).then_some(entries)
        };
        let by_api = self.referrers_api(reference, subject, artifact_type);
        let (by_tag, by_api) = (std::pin::pin!(by_tag), std::pin::pin!(by_api));
        match futures_util::future::select(by_tag, by_api).await {
            Either::Left((Some(entries), _)) => Ok(entries),
            Either::Left((None, by_api)) => by_api.await,
            Either::Right((Ok(entries), _)) if !entries.is_empty() => Ok(entries),
            Either::Right((answer, by_tag)) => by_tag.await.map_or(answer, Ok),
        }
    }

    /// The referrers API's answer (oci-client falls back to the tag on a 404).
    async fn referrers_api(
        &self,
        reference: &Reference,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<crate::image::Descriptor>> {
        let subject_ref = reference.clone_with_digest(subject.to_string());
        let client = self.client().await?;
        let index = self
            .call(reference, || {
                client.pull_referrers(&subject_ref, artifact_type)
            })
            .await
            .map_err(|e| match e {
                Error::NotFound { registry, .. } => Error::NotFound {
                    registry,
                    what: format!("referrers of {subject} in {}", reference.repository()),
                },
                other => other,
            })?;
        // oci-client's own copy of the OCI types: through JSON into ours, where
        // every digest is checked to be sha256.
        let json = serde_json::to_vec(&index).expect("an index always serialises");
        let index = crate::image::parse_index(&json, &format!("referrers of {subject}"))?;
        Ok(index.manifests().clone())
    }

    /// Whether the registry has blob `digest` in `reference`'s repository (HEAD).
    pub async fn blob_exists(&self, reference: &Reference, digest: &Digest) -> Result<bool> {
        let digest = digest.to_string();
        let client = self.client().await?;
        self.call(reference, || client.blob_exists(reference, &digest))
            .await
    }

    /// Asks the registry to link blob `digest` from `from_repository` (same registry)
    /// into `reference`'s repository without uploading it. `Ok(false)` when the
    /// registry declined (it may answer 202 and open an upload instead).
    pub async fn mount_blob(
        &self,
        reference: &Reference,
        from_repository: &str,
        digest: &Digest,
    ) -> Result<bool> {
        let digest = digest.to_string();
        let source = Reference::with_digest(
            reference.registry().to_string(),
            from_repository.to_string(),
            digest.clone(),
        );
        let client = self.client().await?;
        let result = self
            .call_as(reference, RegistryOperation::Push, || {
                client.mount_blob(reference, &source, &digest)
            })
            .await;
        match result {
            Ok(()) => Ok(true),
            Err(e @ (Error::Auth { .. } | Error::Network { .. })) => Err(e),
            Err(e) => {
                tracing::debug!("{digest}: no cross-repository mount from {from_repository}: {e}");
                Ok(false)
            }
        }
    }

    /// Uploads verified content `blob` (from the store) as `digest` in one streamed
    /// PUT; `progress` gets the bytes as they are handed to the connection. A
    /// retry starts the upload over. The registry checks the digest itself.
    pub async fn push_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        blob: &crate::store::Blob,
        progress: std::sync::Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Result<()> {
        const CHUNK: usize = 1 << 20;
        let digest_text = digest.to_string();
        let size = blob.bytes().len();
        let client = self.client().await?;
        self.call_as(reference, RegistryOperation::Push, || {
            let blob = blob.clone();
            let progress = std::sync::Arc::clone(&progress);
            let chunks = futures_util::stream::iter((0..size).step_by(CHUNK)).map(move |start| {
                let chunk = blob.slice(start..(start + CHUNK).min(size));
                progress(chunk.len() as u64);
                Ok::<Bytes, OciDistributionError>(chunk)
            });
            client.push_blob_stream(reference, chunks, &digest_text, Some(size as u64))
        })
        .await
        .map(|_| ())
    }

    /// Uploads `chunks` (exactly `size` bytes that hash to `digest`) in one streamed
    /// PUT, once: a stream cannot be replayed, so on failure the caller falls back to
    /// [`Self::push_blob`]. An `Err` chunk aborts the upload before it completes.
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
        let chunks =
            chunks.map(|c| c.map_err(|e| OciDistributionError::GenericError(Some(e.to_string()))));
        match self
            .client()
            .await?
            .push_blob_stream(reference, chunks, &digest.to_string(), Some(size))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(match classify(&self.host, reference, e) {
                Failure::Retry(e) | Failure::Reauth(e) | Failure::Fatal(e) => e,
            }),
        }
    }

    /// Stores manifest `bytes` exactly as given, under `reference`'s tag or digest.
    pub async fn push_manifest(
        &self,
        reference: &Reference,
        bytes: &Bytes,
        media_type: &str,
    ) -> Result<()> {
        if media_type.is_empty() || !media_type.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(Error::Manifest {
                what: reference.whole(),
                reason: format!("media type {media_type:?} is not a valid header value"),
            });
        }
        let client = self.client().await?;
        self.call_as(reference, RegistryOperation::Push, || {
            let content_type = media_type.parse().expect("checked: printable ASCII");
            client.push_manifest_raw(reference, bytes.clone(), content_type)
        })
        .await
        .map(|_| ())
    }

    /// Opens the blob where `sink` left off: the whole blob, or the rest by Range.
    async fn open_blob(
        &self,
        reference: &Reference,
        digest: &str,
        sink: &mut dyn BlobSink,
    ) -> Result<SizedStream, Failure> {
        let offset = sink.written();
        let client = self.client().await.map_err(Failure::Fatal)?;
        timeline::request();
        let response = if offset == 0 {
            client.pull_blob_stream(reference, digest).await
        } else {
            match client
                .pull_blob_stream_partial(reference, digest, offset, None)
                .await
            {
                Ok(BlobResponse::Partial(stream)) => Ok(stream),
                Ok(BlobResponse::Full(stream)) => {
                    // The registry ignored the Range header: start over.
                    sink.restart().map_err(Failure::Fatal)?;
                    Ok(stream)
                }
                Err(e) => Err(e),
            }
        };
        response.map_err(|e| classify(&self.host, reference, e))
    }

    /// Runs `op`, re-authenticating once on a 401 and retrying transient failures.
    async fn call<T, F, Fut>(&self, reference: &Reference, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        self.call_as(reference, RegistryOperation::Pull, op).await
    }

    /// [`Self::call`] for an operation that needs `operation` rights (a push).
    async fn call_as<T, F, Fut>(
        &self,
        reference: &Reference,
        operation: RegistryOperation,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        self.authenticate_first(reference, operation).await?;
        let mut reauthed = false;
        loop {
            match self.with_retries_classified(reference, &mut op).await {
                Err(Failure::Reauth(e)) if reauthed => return Err(self.denied(reference, e)),
                Err(Failure::Reauth(_)) => {
                    reauthed = true;
                    self.authenticate(reference, operation).await?;
                }
                Err(Failure::Retry(e) | Failure::Fatal(e)) => return Err(e),
                Ok(value) => return Ok(value),
            }
        }
    }

    async fn with_retries<T, F, Fut>(&self, reference: &Reference, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        self.with_retries_classified(reference, &mut op)
            .await
            .map_err(|(Failure::Retry(e) | Failure::Reauth(e) | Failure::Fatal(e))| e)
    }

    async fn with_retries_classified<T, F, Fut>(
        &self,
        reference: &Reference,
        op: &mut F,
    ) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut attempt = 1;
        loop {
            timeline::request();
            match op().await.map_err(|e| classify(&self.host, reference, e)) {
                Err(Failure::Retry(e)) if attempt < self.retry.attempts => {
                    tracing::warn!("{e}; retrying");
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// A 401 that survives a fresh token means the credentials work but grant nothing here.
    fn denied(&self, reference: &Reference, cause: Error) -> Error {
        match cause {
            Error::Auth { reason, .. } if self.has_credentials() => Error::Denied {
                registry: self.host.clone(),
                repository: reference.repository().to_string(),
                reason,
            },
            other => other,
        }
    }

    /// A 404 answering a request for blob `digest`: the blob is what is
    /// missing, not the image's name (the manifest was found). Callers that
    /// know what the blob is to the image rename it (`pull::fetch_blob`).
    fn blob_missing(&self, reference: &Reference, digest: &Digest, err: Error) -> Error {
        match err {
            Error::NotFound { registry, .. } => Error::BlobNotFound {
                registry,
                repository: reference.repository().to_string(),
                digest: *digest,
                what: format!("blob {digest}"),
            },
            other => other,
        }
    }

    fn network_error(&self, reason: &str) -> Error {
        Error::Network {
            registry: self.host.clone(),
            reason: reason.to_string(),
        }
    }
}

enum StreamError {
    Transport(std::io::Error),
    Sink(Error),
}

async fn copy_stream(
    mut stream: SizedStream,
    sink: &mut dyn BlobSink,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<(), StreamError> {
    // reqwest's read timeout bounds each silence, so a stalled registry ends this loop.
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(StreamError::Transport)?;
        timeline::received(chunk.len() as u64);
        sink.write(&chunk).map_err(StreamError::Sink)?;
        progress(chunk.len() as u64);
    }
    Ok(())
}
