//! sha256 content digests: the only name under which lazyimg stores or serves bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A `sha256:<64 hex>` digest. Other algorithms are refused at parse time, so a
/// `Digest` always names something lazyimg can verify.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

#[derive(Debug, thiserror::Error)]
#[error("invalid digest {text:?}: {reason}")]
pub struct DigestParseError {
    pub text: String,
    pub reason: &'static str,
}

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex characters, without the algorithm prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(hex_text: &str) -> Result<Self, DigestParseError> {
        let err = |reason| DigestParseError {
            text: hex_text.to_string(),
            reason,
        };
        if hex_text.len() != 64 || hex_text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err("expected 64 lowercase hex characters"));
        }
        let mut raw = [0u8; 32];
        hex::decode_to_slice(hex_text, &mut raw).map_err(|_| err("not hexadecimal"))?;
        Ok(Digest(raw))
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            Some(("sha256", hex_text)) => {
                Digest::from_hex(hex_text).map_err(|e| DigestParseError {
                    text: text.to_string(),
                    reason: e.reason,
                })
            }
            Some(_) => Err(DigestParseError {
                text: text.to_string(),
                reason: "only sha256 digests are supported",
            }),
            None => Err(DigestParseError {
                text: text.to_string(),
                reason: "expected ALGORITHM:HEX",
            }),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256 over a stream, counting bytes as it goes.
#[derive(Clone, Default)]
pub struct Hasher {
    state: Sha256,
    len: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.state.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Digest {
        Digest(self.state.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn empty_input_has_the_well_known_digest() {
        assert_eq!(Digest::of(b"").to_string(), EMPTY);
        assert_eq!(Hasher::new().finish().to_string(), EMPTY);
    }

    #[test]
    fn incremental_equals_one_shot() {
        let mut h = Hasher::new();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.len(), 11);
        assert_eq!(h.finish(), Digest::of(b"hello world"));
    }

    #[test]
    fn parse_round_trips_and_rejects_junk() {
        assert_eq!(EMPTY.parse::<Digest>().unwrap().to_string(), EMPTY);
        assert!("sha512:abcd".parse::<Digest>().is_err());
        assert!("sha256:abcd".parse::<Digest>().is_err());
        assert!(
            EMPTY
                .to_uppercase()
                .replace("SHA256", "sha256")
                .parse::<Digest>()
                .is_err()
        );
        assert!("e3b0".parse::<Digest>().is_err());
    }
}
