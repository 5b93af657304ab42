//! Where chunk bytes come from: ranges of a registry blob, fetched from the
//! blocking FUSE workers through the async registry client.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use oci_client::Reference;
use tokio::runtime::Handle;

use super::index_artifact::IndexStore;
use crate::chunkmap::BlobHome;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::pull::{self, Silent};
use crate::reference::ImageRef;
use crate::registry::RegistryClient;
use crate::store::Store;

/// Blob bytes on demand. Nothing here is verified: the caller checks every chunk.
pub trait RangeSource: Send + Sync + 'static {
    /// Bytes `range` of blob `blob`, or `None` when the registry will not serve
    /// ranges of it (the caller then asks for the whole blob).
    fn fetch_range(&self, blob: &Digest, range: Range<u64>) -> Result<Option<Bytes>>;

    /// Downloads the whole blob into the store, verified against `blob`.
    fn fetch_whole(&self, blob: &Digest, size: u64) -> Result<()>;

    /// Whether `blob` can be fetched here (asked of the registry, not read):
    /// `false` when it has no such blob or denies access to it; an error when
    /// it cannot be asked (a network failure). A source that cannot tell
    /// says `true`.
    fn holds(&self, blob: &Digest) -> Result<bool> {
        let _ = blob;
        Ok(true)
    }

    /// The same registry's repository `home`, for blobs this source's own
    /// repository need not hold; `None` when `home` is this very repository or
    /// out of this source's reach (another registry).
    fn elsewhere(&self, home: &BlobHome) -> Option<Arc<dyn RangeSource>> {
        let _ = home;
        None
    }
}

/// A source that fetches some blobs from other sources: the auxiliary blobs of
/// chunk maps shared across repositories ([`crate::chunkmap::ChunkMap::home`]),
/// from the repositories that hold them.
pub struct Routed {
    default: Arc<dyn RangeSource>,
    routes: HashMap<Digest, Arc<dyn RangeSource>>,
}

impl Routed {
    /// Blobs named in `routes` come from their source, all others from `default`.
    pub fn new(
        default: Arc<dyn RangeSource>,
        routes: HashMap<Digest, Arc<dyn RangeSource>>,
    ) -> Self {
        Routed { default, routes }
    }

    fn source(&self, blob: &Digest) -> &dyn RangeSource {
        self.routes.get(blob).unwrap_or(&self.default).as_ref()
    }
}

impl RangeSource for Routed {
    fn fetch_range(&self, blob: &Digest, range: Range<u64>) -> Result<Option<Bytes>> {
        self.source(blob).fetch_range(blob, range)
    }

    fn fetch_whole(&self, blob: &Digest, size: u64) -> Result<()> {
        self.source(blob).fetch_whole(blob, size)
    }

    fn holds(&self, blob: &Digest) -> Result<bool> {
        self.source(blob).holds(blob)
    }

    fn elsewhere(&self, home: &BlobHome) -> Option<Arc<dyn RangeSource>> {
        self.default.elsewhere(home)
    }
}

/// The registry an image came from, reached from plain threads.
#[derive(Clone)]
pub struct RegistryRanges {
    pub registry: Arc<RegistryClient>,
    pub image: ImageRef,
    pub store: Arc<Store>,
    pub runtime: Handle,
    /// Longest a ranged read may take, retries included: a registry that stops
    /// answering turns into EIO for that read, not a hung reader.
    pub read_deadline: Duration,
    /// Longest a whole-blob download may take; a stall inside it is cut sooner
    /// by the client's read timeout.
    pub whole_blob_deadline: Duration,
    /// The site's index store for this image, if configured: the windows
    /// blobs of indexes found there are fetched from there.
    pub index_store: Option<Arc<IndexStore>>,
}

impl RegistryRanges {
    fn timed_out(&self, what: &str, deadline: Duration) -> Error {
        Error::Network {
            registry: self.registry.host().to_string(),
            reason: format!("{what} took longer than {} s", deadline.as_secs()),
        }
    }
}

impl RangeSource for RegistryRanges {
    fn fetch_range(&self, blob: &Digest, range: Range<u64>) -> Result<Option<Bytes>> {
        // A blob downloaded whole (a whole-layer check) serves its ranges from
        // disk: the background fill after the check costs no second download.
        if let Some(stored) = self.store.get(blob)?
            && range.end <= stored.bytes().len() as u64
        {
            return Ok(Some(stored.slice(range.start as usize..range.end as usize)));
        }
        let fetch = self
            .registry
            .fetch_range(&self.image.source, blob, range.clone());
        self.runtime
            .block_on(async { tokio::time::timeout(self.read_deadline, fetch).await })
            .map_err(|_| {
                self.timed_out(&format!("bytes {range:?} of {blob}"), self.read_deadline)
            })?
    }

    fn fetch_whole(&self, blob: &Digest, size: u64) -> Result<()> {
        let descriptor = crate::image::descriptor("", blob, size, Default::default());
        let what = format!("layer {blob} of {}", self.image);
        let name = blob.to_string();
        // An overall deadline as well as the client's read timeout (which cuts
        // a silent stream): a trickling registry must not hold readers forever.
        let download = pull::fetch_blob(
            &self.store,
            &self.registry,
            &self.image,
            &descriptor,
            (&name, &what),
            &Silent,
        );
        self.runtime
            .block_on(async { tokio::time::timeout(self.whole_blob_deadline, download).await })
            .map_err(|_| {
                self.timed_out(
                    &format!("downloading {blob} whole"),
                    self.whole_blob_deadline,
                )
            })?
            .map(drop)
    }

    fn holds(&self, blob: &Digest) -> Result<bool> {
        let asked = self.registry.blob_exists(&self.image.source, blob);
        let answer = self
            .runtime
            .block_on(async { tokio::time::timeout(self.read_deadline, asked).await })
            .map_err(|_| self.timed_out(&format!("asking for {blob}"), self.read_deadline))?;
        match answer {
            Ok(held) => Ok(held),
            Err(Error::NotFound { .. } | Error::Denied { .. } | Error::Auth { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn elsewhere(&self, home: &BlobHome) -> Option<Arc<dyn RangeSource>> {
        let own = &self.image.source;
        // Only the repository matters for blob requests; the tag is a placeholder.
        let source = Reference::with_tag(
            home.registry.clone(),
            home.repository.clone(),
            "latest".into(),
        );
        if let Some(store) = &self.index_store
            && home.registry == store.image.source.registry()
        {
            return Some(Arc::new(RegistryRanges {
                registry: Arc::clone(&store.client),
                image: ImageRef {
                    source,
                    ..store.image.clone()
                },
                ..self.clone()
            }));
        }
        if home.registry != own.registry() || home.repository == own.repository() {
            return None;
        }
        Some(Arc::new(RegistryRanges {
            image: ImageRef {
                source,
                ..self.image.clone()
            },
            ..self.clone()
        }))
    }
}
