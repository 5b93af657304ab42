//! Where chunk bytes come from: ranges of a registry blob, fetched from the
//! blocking FUSE workers through the async registry client.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::runtime::Handle;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::Descriptor;
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
}

/// The registry an image came from, reached from plain threads.
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
        let descriptor = Descriptor {
            media_type: String::new(),
            digest: *blob,
            size,
            annotations: Default::default(),
            platform: None,
            artifact_type: None,
        };
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
}
