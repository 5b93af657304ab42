//! lazyimg's index artifact: for each gzip or plain tar layer of an image, its
//! entries and a chunk map (gzip: deflate checkpoints every ~1 MiB of compressed
//! data, with the sha256 of every span's decompressed bytes), pushed
//! beside the image as an OCI artifact whose `subject` is the image manifest.
//!
//! Trust: with `trusted_index_keys` configured, an artifact is used only if it
//! carries a valid ed25519 signature by one of those keys (the seeding step
//! signs with `[index_signing] key_file`); without, it is trusted on the
//! registry's write access alone. Then: it is found through its subject and fetched by digest; each
//! artifact layer names the layer digest it describes and must match the image's
//! manifest; every span's content is verified before it is served (inflating
//! unverified compressed bytes can only yield content that fails that check).
//! A check that fails drops the index, never the mount.
//!
//! [`format`]: the artifact's encoding and the checks a fetched one must
//! pass; [`build`]: making one from stored layers; [`registry`]: pushing it
//! beside an image (or into the site's index store, [`site_store`]) and
//! finding it again.

mod build;
mod format;
mod registry;
mod site_store;

pub use build::{BuiltLayer, build_layer, check_map, check_tree};
pub use format::{ArtifactLayer, check_file};
pub use registry::{Found, chunk_maps, find, indexed_layers, locate, push};
pub use site_store::{IndexSources, IndexStore};

pub const ARTIFACT_TYPE: &str = "application/vnd.lazyimg.index.v1";
const INDEX_MEDIA_TYPE: &str = "application/vnd.lazyimg.layer-index.v1+zstd";
const WINDOWS_MEDIA_TYPE: &str = "application/vnd.lazyimg.gzip-windows.v1";
/// The files a typical run reads first, one path per line (`mount --record`).
const PREFETCH_MEDIA_TYPE: &str = "application/vnd.lazyimg.prefetch.v1+text";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// On each artifact layer: the image layer it describes.
const LAYER_ANNOTATION: &str = "dev.lazyimg.layer";
/// On a signed artifact: the base64 ed25519 signature of its signed payload
/// (`format::signed_payload`), and the id of the key that made it.
const SIGNATURE_ANNOTATION: &str = "dev.lazyimg.signature";
const SIGNATURE_KEY_ANNOTATION: &str = "dev.lazyimg.signature.key";
/// 2: spans no longer carry a digest of their compressed bytes.
/// 3: entries read by issue 15's rules (Go's numeric fields, typeflags with a
/// trailing slash, no empty xattrs): a version 2 index may disagree with the
/// whole-layer read, so it is ignored and the layer read whole.
/// Sparse files needed no bump: `EntryKind::Sparse` is a new last variant, so
/// every version 3 index still decodes as it was written (builds before it
/// refused sparse layers, so none holds one), and an older build fails to
/// decode an index that holds one and reads that layer whole.
const FORMAT_VERSION: u32 = 3;
/// Compressed bytes between gzip checkpoints: about what one cold random read fetches.
pub const GZIP_SPAN: u64 = 1 << 20;
/// Chunk size of uncompressed tar layers.
const TAR_CHUNK: u64 = 1 << 20;
