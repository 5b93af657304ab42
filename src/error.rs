//! The library's error type. Each variant carries what a user needs to act on it;
//! [`Error::hint`] adds the next step, shown by the CLI under the one-line message.

use std::io;
use std::path::PathBuf;

use crate::digest::Digest;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    /// A containers-registries.conf(5) file (or drop-in) that cannot be read as one.
    #[error("{path}: {message}")]
    RegistriesConf { path: PathBuf, message: String },

    /// A containers-auth.json(5) file that cannot be read as one.
    #[error("{path}: {message}")]
    AuthFile { path: PathBuf, message: String },

    #[error("invalid image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },

    /// A short name (no registry) that more than one
    /// `unqualified-search-registries` entry could serve.
    #[error("short name {name:?} is ambiguous: it could be any of {}", candidates.join(", "))]
    ShortName {
        name: String,
        candidates: Vec<String>,
    },

    /// An image under a `[[registry]]` prefix with `blocked = true`.
    #[error("{reference} is blocked: registry prefix {prefix:?} has blocked = true")]
    Blocked { reference: String, prefix: String },

    #[error("authentication to {registry} failed: {reason}")]
    Auth { registry: String, reason: String },

    /// A credential helper an auth file names (`credHelpers`, `credsStore`)
    /// failed: `program` is its executable (`docker-credential-NAME`).
    #[error("credential helper {program} failed for {registry}: {reason}")]
    CredentialHelper {
        program: String,
        registry: String,
        reason: String,
    },

    #[error("access to {repository} on {registry} denied: {reason}")]
    Denied {
        registry: String,
        repository: String,
        reason: String,
    },

    /// A manifest, tag or referrers list the registry does not have; `what`
    /// names it (`tag 1 of ns/name`, `manifest sha256:… of ns/name`).
    #[error("{what} not found on {registry}")]
    NotFound { registry: String, what: String },

    /// A blob an image names is missing from its repository: the image is
    /// there but incomplete, so its name and tag are not the problem. `what`
    /// says what the blob is to the image (`layer 2/3 sha256:… of REF`).
    #[error("{what} not found in {repository} on {registry}, which serves the image's manifest")]
    BlobNotFound {
        registry: String,
        repository: String,
        digest: Digest,
        what: String,
    },

    /// A missing layer the image marks non-distributable ("foreign"): such
    /// layers are often meant to come from elsewhere (the descriptor's
    /// `urls`), and registries need not hold them.
    #[error(
        "{what} is a non-distributable (foreign) layer, and {registry} does not hold it in {repository}"
    )]
    ForeignLayerMissing {
        registry: String,
        repository: String,
        what: String,
    },

    #[error("cannot reach {registry}: {reason}")]
    Network { registry: String, reason: String },

    /// The registry's TLS certificate is not trusted (or not valid for it).
    #[error("TLS connection to {registry} failed: {reason}")]
    Tls { registry: String, reason: String },

    #[error("{registry} answered with an error: {reason}")]
    Registry { registry: String, reason: String },

    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },

    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    #[error("malformed manifest {what}: {reason}")]
    Manifest { what: String, reason: String },

    #[error("no image for platform {wanted} in the index (available: {available})")]
    Platform { wanted: String, available: String },

    #[error("no space left on the device holding {path}")]
    DiskFull { path: PathBuf },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{0} is not in the cache")]
    NotCached(Digest),

    #[error("cannot mount: {path} is not readable and writable by this user")]
    FuseDevice { path: PathBuf },

    #[error("{image} is not in the cache and pulling was not allowed")]
    NotCachedImage { image: String },

    /// A lazily read chunk could not be fetched, decoded or verified. Shared
    /// (`Arc`) because every reader waiting on the same fetch gets the same error.
    #[error(transparent)]
    Read(#[from] std::sync::Arc<ReadError>),

    #[error("layer {layer}: {source}")]
    Layer {
        layer: Digest,
        #[source]
        source: crate::layer::LayerError,
    },

    #[error("merging the layers of {image}: {source}")]
    Tree {
        image: String,
        #[source]
        source: crate::tree::TreeError,
    },

    /// The approved-image list cannot be used (missing, unreadable, malformed).
    #[error("approved-image list {path}: {message}")]
    Policy { path: PathBuf, message: String },

    /// The image is not on the approved list; `detail` says what would approve it.
    #[error("{image} is not on the approved list {list} ({detail})")]
    NotApproved {
        image: String,
        list: PathBuf,
        detail: String,
    },
}

impl Error {
    /// Wraps an I/O error with the path it concerns, recognising a full disk so the
    /// user is told that rather than a bare errno.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(28 /* ENOSPC */)
            || source.kind() == io::ErrorKind::StorageFull
        {
            Error::DiskFull { path }
        } else {
            Error::Io { path, source }
        }
    }

    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            Error::Config { .. } => "fix the file, or point --config / LAZYIMG_CONFIG elsewhere",
            Error::RegistriesConf { .. } => {
                "fix the file (Podman reads it too), or point CONTAINERS_REGISTRIES_CONF elsewhere"
            }
            Error::AuthFile { .. } => {
                "fix the auth file, or name another with --authfile / REGISTRY_AUTH_FILE"
            }
            Error::Reference { .. } => {
                "references look like ghcr.io/NAMESPACE/NAME:TAG or HOST:PORT/NAME@sha256:HEX"
            }
            Error::ShortName { .. } => {
                "name the image fully (REGISTRY/NAME:TAG), or map the short name in the \
                 [aliases] table of a registries.conf file"
            }
            Error::Blocked { .. } => {
                "the registries.conf files (or lazyimg's [[registry]] tables) forbid pulls \
                 from there; ask the site's administrators"
            }
            Error::Auth { .. } => {
                "check the user name and token (a GitHub token needs the read:packages scope); \
                 credentials come from --username/--password-stdin, else the first of \
                 --authfile (or REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json), \
                 ~/.config/containers/auth.json and ~/.docker/config.json that has some"
            }
            Error::CredentialHelper { .. } => {
                "an auth file's credHelpers or credsStore names this helper: check that it is \
                 on PATH and works (`echo HOST | docker-credential-NAME get`)"
            }
            Error::Denied { .. } => {
                "the credentials were accepted but grant no access to this repository: \
                 check the token's scopes and the package's visibility"
            }
            Error::NotFound { .. } => "check the name and tag, e.g. with `lazyimg inspect`",
            Error::BlobNotFound { .. } => {
                "the image was pushed incompletely or its blob was deleted: push it again, \
                 or report it to the registry's operators"
            }
            Error::ForeignLayerMissing { .. } => {
                "lazyimg reads layers only from the registry: copy the image with its \
                 non-distributable layers included (e.g. `skopeo copy`)"
            }
            Error::Network { .. } => {
                "check that the registry is up and reachable from here (proxy, firewall, DNS)"
            }
            Error::Tls { .. } => {
                "trust the registry's CA: put it in /etc/containers/certs.d/HOST:PORT/ca.crt \
                 (or ~/.config/containers/certs.d/HOST:PORT/), or name it as ca_file in the \
                 registry's [[registry]] table; only for a registry trusted otherwise, set \
                 insecure = true there or pass --tls-verify=false"
            }
            Error::Registry { .. } => "the registry misbehaved; try again later",
            Error::DigestMismatch { .. } | Error::SizeMismatch { .. } => {
                "the registry served corrupted or tampered content; nothing was stored. \
                 Report it to the registry's operators"
            }
            Error::Manifest { .. } => {
                "the image's manifest is not a valid OCI or Docker v2 manifest"
            }
            Error::Platform { .. } => "choose one of the available platforms with --platform",
            Error::DiskFull { .. } => {
                "free space, or shrink the cache with `lazyimg cache prune --max-size SIZE`"
            }
            Error::FuseDevice { .. } => {
                "Debian's udev makes /dev/fuse mode 0666; ask the administrator to restore that \
                 (chmod 0666 /dev/fuse), or mount as root"
            }
            Error::Io { .. } => return None,
            Error::NotCached(_) | Error::NotCachedImage { .. } => "run `lazyimg pull` first",
            Error::Read(read) => return Some(read.hint()),
            Error::Layer { .. } | Error::Tree { .. } => {
                "the image's layers are malformed or unsafe; rebuild the image or report it to its authors"
            }
            Error::Policy { .. } => {
                "while the approved list is unusable, nothing can be pulled, mounted or run: \
                 it is kept by the image approvers (`approved_images` in the configuration)"
            }
            Error::NotApproved { .. } => {
                "only approved images may be used here: see `lazyimg policy list`, \
                 `lazyimg policy check REF` explains the decision; ask the approvers to add it"
            }
        })
    }
}

/// Why a lazy read could not return verified bytes. Every variant ends one read
/// only: nothing is cached, and the next read of the same bytes tries again.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The registry did not deliver bytes `range` of `blob` (network error,
    /// error status, or a stalled stream past the read deadline).
    #[error("fetching bytes {start}..{end} of {blob} failed: {source}", start = range.start, end = range.end)]
    Fetch {
        blob: Digest,
        range: std::ops::Range<u64>,
        #[source]
        source: Error,
    },
    /// The registry refused ranges, and downloading the whole blob failed or
    /// took longer than its deadline.
    #[error("downloading {blob} whole failed: {source}")]
    WholeBlob {
        blob: Digest,
        #[source]
        source: Error,
    },
    /// The fetched bytes did not decode, or decoded to content whose sha256 is
    /// not the chunk's digest: the registry holds damaged or tampered data.
    #[error("chunk {chunk} of layer {layer} (blob bytes {start}..{end}) failed verification: {reason}", start = blob_range.start, end = blob_range.end)]
    Rejected {
        chunk: Digest,
        layer: Digest,
        blob_range: std::ops::Range<u64>,
        reason: String,
    },
    /// No chunk of the layer's chunk map holds these content bytes: the map is
    /// broken (it was checked when prepared, so this is a bug or a damaged cache).
    #[error("layer {layer}: no chunk holds bytes {start}..{end} of its content", start = range.start, end = range.end)]
    MapGap {
        layer: Digest,
        range: std::ops::Range<u64>,
    },
    /// Reading a verified chunk back from the local store failed.
    #[error("reading chunk {chunk} from the cache: {source}")]
    Store {
        chunk: Digest,
        #[source]
        source: Error,
    },
    /// The reader fetching this chunk gave up (it panicked or was cancelled)
    /// before settling it.
    #[error("the fetch of chunk {chunk} was abandoned")]
    Abandoned { chunk: Digest },
    /// The layer failed its whole-layer check (see
    /// [`crate::lazy::WholeLayerCheck`]): the index it is read through does not
    /// describe its verified bytes, so nothing more of it is served.
    #[error("layer {layer} failed its whole-layer check: {reason}")]
    BadLayer { layer: Digest, reason: String },
    /// Another reader's fetch of this chunk did not settle within the wait deadline.
    #[error("timed out after {} s waiting for another reader's fetch of chunk {chunk}", waited.as_secs())]
    WaitTimedOut {
        chunk: Digest,
        waited: std::time::Duration,
    },
}

impl ReadError {
    /// The next step for the user, shown under the one-line message.
    pub fn hint(&self) -> &'static str {
        match self {
            ReadError::Fetch { .. }
            | ReadError::WholeBlob { .. }
            | ReadError::WaitTimedOut { .. } => {
                "the read can be retried once the registry answers; `lazyimg stats MNT` shows fetch failures"
            }
            ReadError::Rejected { .. } => {
                "the registry holds damaged or tampered data; nothing was cached or served. \
                 Report it to the registry's operators"
            }
            ReadError::BadLayer { .. } => {
                "the layer's lazyimg index was not made from its bytes; remount to read the \
                 verified layer whole, and have the site re-seed the image"
            }
            ReadError::MapGap { .. } | ReadError::Abandoned { .. } => {
                "this is a lazyimg bug or a damaged cache: the mount log has details; \
                 `lazyimg cache verify` checks the cache"
            }
            ReadError::Store { source, .. } => source.hint().unwrap_or("check the cache directory"),
        }
    }

    /// The underlying crate error when this read failed on the local disk, so
    /// callers can tell a full disk from a bad registry.
    pub fn local_cause(&self) -> Option<&Error> {
        match self {
            ReadError::Store { source, .. } => Some(source),
            ReadError::WholeBlob { source, .. }
                if matches!(source, Error::DiskFull { .. } | Error::Io { .. }) =>
            {
                Some(source)
            }
            _ => None,
        }
    }
}
