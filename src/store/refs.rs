//! Image names → manifest digests, so an image pulled once opens without asking
//! the registry what its tag points to.

use std::fs;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Store, write_atomically};
use crate::digest::Digest;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The normalised reference the image was pulled as.
    pub name: String,
    /// What the reference resolved to: an index for multi-platform images.
    pub digest: Digest,
    /// The image manifest for the platform that was chosen.
    pub manifest: Digest,
    pub platform: String,
    /// Seconds since the epoch.
    pub pulled_at: u64,
}

impl ImageRecord {
    pub fn new(name: String, digest: Digest, manifest: Digest, platform: String) -> Self {
        let pulled_at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        ImageRecord {
            name,
            digest,
            manifest,
            platform,
            pulled_at,
        }
    }
}

impl Store {
    /// Records (atomically replacing) what `record.name` resolved to.
    pub fn record_image(&self, record: &ImageRecord) -> Result<()> {
        let target = self
            .root
            .join("refs")
            .join(file_name(&record.name, &record.platform));
        let json = serde_json::to_vec_pretty(record).expect("an ImageRecord always serialises");
        write_atomically(&target, &json)
    }

    pub fn image_record(&self, name: &str, platform: &str) -> Result<Option<ImageRecord>> {
        let path = self.root.join("refs").join(file_name(name, platform));
        match fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Every recorded image, sorted by name.
    pub fn image_records(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.root.join("refs");
        let entries = fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut records: Vec<ImageRecord> = entries
            .flatten()
            .filter_map(|entry| fs::read(entry.path()).ok())
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect();
        records.sort_by(|a, b| (&a.name, &a.platform).cmp(&(&b.name, &b.platform)));
        Ok(records)
    }
}

/// Reference names hold `/`, `:` and `@`: escape everything but a safe set.
fn file_name(name: &str, platform: &str) -> String {
    format!("{name} {platform}")
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
