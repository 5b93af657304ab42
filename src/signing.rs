//! ed25519 keys and signatures for lazyimg index artifacts (RFC 8032, through
//! the `ed25519-dalek` crate). Keys are stored as PEM: the private key as
//! PKCS#8 (RFC 8410), the public key as SubjectPublicKeyInfo, so
//! `openssl pkey -in index.key -pubout` gives `index.pub`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// File names `lazyimg key generate DIR` writes.
pub const PRIVATE_KEY_FILE: &str = "index.key";
pub const PUBLIC_KEY_FILE: &str = "index.pub";

/// The seeding side's private key.
pub struct IndexSigner {
    key: SigningKey,
}

/// Which lazyimg index artifacts a mounting machine accepts: those signed by
/// one of its public keys (`trusted_index_keys`), or, for an image whose
/// approved-list rule pins one (`index_digest`), exactly that one. With
/// neither, any index is accepted.
#[derive(Default)]
pub struct TrustedKeys {
    keys: Vec<VerifyingKey>,
    pins: Vec<Digest>,
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    #[error("it carries no signature")]
    Unsigned,
    #[error("its signature is not valid base64 or not 64 bytes")]
    Malformed,
    #[error("it is signed by key {key_id}, which is not in trusted_index_keys")]
    UnknownKey { key_id: String },
    #[error("its signature by key {key_id} does not match its content")]
    BadSignature { key_id: String },
    #[error("it is not the index_digest the approved list pins for this image")]
    NotPinned,
}

impl IndexSigner {
    /// The private key in `path` (PKCS#8 PEM, as `lazyimg key generate` writes).
    ///
    /// Errors: [`Error::Config`] naming the file when it cannot be read or is
    /// not an ed25519 private key.
    pub fn load(path: &Path) -> Result<IndexSigner> {
        let text = read_key_file(path)?;
        let key = SigningKey::from_pkcs8_pem(&text)
            .map_err(|e| key_error(path, &format!("not an ed25519 private key: {e}")))?;
        Ok(IndexSigner { key })
    }

    /// This key's id: see [`key_id`].
    pub fn key_id(&self) -> String {
        key_id(&self.key.verifying_key())
    }

    /// The base64 signature of `payload`.
    pub fn sign(&self, payload: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.sign(payload).to_bytes())
    }
}

impl TrustedKeys {
    /// The public keys in `paths` (SPKI PEM, as `lazyimg key generate` writes).
    ///
    /// Errors: [`Error::Config`] naming the first file that cannot be read or
    /// is not an ed25519 public key.
    pub fn load(paths: &[PathBuf]) -> Result<TrustedKeys> {
        let keys = paths
            .iter()
            .map(|path| {
                VerifyingKey::from_public_key_pem(&read_key_file(path)?)
                    .map_err(|e| key_error(path, &format!("not an ed25519 public key: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(TrustedKeys {
            keys,
            pins: Vec::new(),
        })
    }

    /// These keys, and for this image only the index artifacts in `pins`
    /// (digests of their manifests), which then need no signature.
    pub fn pinning(self, pins: Vec<Digest>) -> TrustedKeys {
        TrustedKeys { pins, ..self }
    }

    /// Whether any check applies at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.pins.is_empty()
    }

    /// Accepts the index artifact whose manifest is `artifact`, whose signed
    /// payload is `payload`, carrying `key_id_claimed` and `signature`: by
    /// its pin when the image has pins (then only a pinned one), else by
    /// [`check`](Self::check).
    pub fn accept(
        &self,
        artifact: &Digest,
        payload: &[u8],
        key_id_claimed: Option<&str>,
        signature: Option<&str>,
    ) -> std::result::Result<(), Untrusted> {
        if !self.pins.is_empty() {
            return match self.pins.contains(artifact) {
                true => Ok(()),
                false => Err(Untrusted::NotPinned),
            };
        }
        self.check(payload, key_id_claimed, signature)
    }

    /// Accepts `signature` (base64) by the key `key_id` over `payload` only if
    /// that key is trusted and the signature verifies.
    pub fn check(
        &self,
        payload: &[u8],
        key_id_claimed: Option<&str>,
        signature: Option<&str>,
    ) -> std::result::Result<(), Untrusted> {
        let (Some(claimed), Some(signature)) = (key_id_claimed, signature) else {
            return Err(Untrusted::Unsigned);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| Untrusted::Malformed)?;
        let signature = Signature::from_slice(&bytes).map_err(|_| Untrusted::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| key_id(k) == claimed)
            .ok_or_else(|| Untrusted::UnknownKey {
                key_id: claimed.to_string(),
            })?;
        key.verify(payload, &signature)
            .map_err(|_| Untrusted::BadSignature {
                key_id: claimed.to_string(),
            })
    }
}

/// A key's id: the sha256 of its 32 public key bytes, as `sha256:<hex>`.
/// Names the key in a signature, so a node picks the key to check with.
pub fn key_id(key: &VerifyingKey) -> String {
    Digest::of(key.as_bytes()).to_string()
}

/// Writes a new key pair as `dir/index.key` (mode 0600) and `dir/index.pub`,
/// creating `dir` if needed. Returns the key id.
///
/// Errors: either file exists already (never overwritten), or cannot be written.
pub fn generate(dir: &Path) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret)
        .map_err(|e| Error::io(dir, std::io::Error::other(e.to_string())))?;
    let key = SigningKey::from_bytes(&secret);
    // PKCS#8 v1 (RFC 8410 without the optional public key): what OpenSSL 3.0
    // reads; ed25519-dalek's own encoding adds the public key (RFC 5958 v2).
    let private = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: secret,
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .expect("an ed25519 key always encodes");
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("an ed25519 key always encodes");
    write_new(&dir.join(PRIVATE_KEY_FILE), private.as_bytes(), 0o600)?;
    write_new(&dir.join(PUBLIC_KEY_FILE), public.as_bytes(), 0o644)?;
    Ok(key_id(&key.verifying_key()))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(path, e))
}

fn read_key_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| key_error(path, &e.to_string()))
}

fn key_error(path: &Path, message: &str) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let id = generate(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(PRIVATE_KEY_FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        assert!(generate(dir.path()).is_err(), "keys are never overwritten");

        let signer = IndexSigner::load(&dir.path().join(PRIVATE_KEY_FILE)).unwrap();
        assert_eq!(signer.key_id(), id);
        let trusted = TrustedKeys::load(&[dir.path().join(PUBLIC_KEY_FILE)]).unwrap();
        let signature = signer.sign(b"payload");
        assert_eq!(
            trusted.check(b"payload", Some(&id), Some(&signature)),
            Ok(())
        );
        assert_eq!(
            trusted.check(b"other payload", Some(&id), Some(&signature)),
            Err(Untrusted::BadSignature { key_id: id.clone() })
        );
        assert_eq!(
            trusted.check(b"payload", None, None),
            Err(Untrusted::Unsigned)
        );
        assert_eq!(
            trusted.check(b"payload", Some(&id), Some(&signature[..20])),
            Err(Untrusted::Malformed)
        );

        let other = tempfile::tempdir().unwrap();
        let other_id = generate(other.path()).unwrap();
        let stranger = IndexSigner::load(&other.path().join(PRIVATE_KEY_FILE)).unwrap();
        assert_eq!(
            trusted.check(
                b"payload",
                Some(&other_id),
                Some(&stranger.sign(b"payload"))
            ),
            Err(Untrusted::UnknownKey {
                key_id: other_id.clone()
            })
        );
        // A trusted id claimed for a stranger's signature fails the check itself.
        assert!(matches!(
            trusted.check(b"payload", Some(&id), Some(&stranger.sign(b"payload"))),
            Err(Untrusted::BadSignature { .. })
        ));
    }

    #[test]
    fn key_files_of_the_wrong_kind_are_config_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        let public = dir.path().join(PUBLIC_KEY_FILE);
        let err = IndexSigner::load(&public).err().unwrap();
        assert!(err.to_string().contains("index.pub"), "{err}");
        let err = TrustedKeys::load(&[dir.path().join(PRIVATE_KEY_FILE)])
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("not an ed25519 public key"),
            "{err}"
        );
    }
}
