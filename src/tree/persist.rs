//! Tree cache format: 8-byte magic, little-endian u32 format version, then
//! the postcard-encoded tree. The version sits outside postcard so a cache
//! from another build is rejected before its body is decoded.

use super::{Tree, TreeError};

const MAGIC: &[u8; 8] = b"lzimgtre";

/// Bump whenever any serialized tree or layer type changes shape.
/// 3: `ContentLocation::sparse` (GNU sparse files).
pub const FORMAT_VERSION: u32 = 3;

impl Tree {
    pub fn to_bytes(&self) -> Result<Vec<u8>, TreeError> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        postcard::to_extend(self, out).map_err(TreeError::Encode)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Tree, TreeError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(TreeError::NotATreeCache)?;
        let (version, body) = rest
            .split_first_chunk::<4>()
            .ok_or(TreeError::NotATreeCache)?;
        let found = u32::from_le_bytes(*version);
        if found != FORMAT_VERSION {
            return Err(TreeError::FormatVersion {
                found,
                expected: FORMAT_VERSION,
            });
        }
        let (tree, trailing) = postcard::take_from_bytes(body).map_err(TreeError::Decode)?;
        if !trailing.is_empty() {
            return Err(TreeError::Decode(postcard::Error::DeserializeBadEncoding));
        }
        Ok(tree)
    }
}
