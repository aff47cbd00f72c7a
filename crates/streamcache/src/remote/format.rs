//! The two small objects of a key in the store: the manifest (the commit) and the
//! lease. Both are JSON, so that an operator can read them with any S3 tool.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The version of both formats.
pub(super) const VERSION: u32 = 1;

/// A committed entry: what its parts are and how to check them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) version: u32,
    pub(super) key: String,
    /// The upload whose parts these are (`parts/<upload>/<n>`).
    pub(super) upload: String,
    pub(super) length: u64,
    pub(super) part_size: u64,
    /// BLAKE3 of each part, in hex.
    pub(super) parts: Vec<String>,
    /// BLAKE3 of the concatenated part digests (binary), the length and the part size:
    /// checked before the first byte is served, so a manifest whose parts do not add
    /// up is never served.
    pub(super) digest: String,
    /// When the entry was made, in seconds since the epoch (for `max_age`).
    pub(super) created: u64,
}

impl Manifest {
    pub(super) fn new(
        key: &str,
        upload: &str,
        length: u64,
        part_size: u64,
        parts: Vec<String>,
        created: SystemTime,
    ) -> Manifest {
        let digest = digest_of(length, part_size, &parts);
        Manifest {
            version: VERSION,
            key: key.to_owned(),
            upload: upload.to_owned(),
            length,
            part_size,
            parts,
            digest,
            created: seconds(created),
        }
    }

    /// Why this manifest must not be served for `key` now, if it must not.
    pub(super) fn refusal(&self, key: &str, max_age: Duration, now: SystemTime) -> Option<String> {
        if self.version != VERSION {
            return Some(format!("manifest version {}", self.version));
        }
        if self.key != key {
            return Some("manifest of another key".into());
        }
        if self.part_size == 0 {
            return Some("manifest with a part size of 0".into());
        }
        if self.length.div_ceil(self.part_size) != self.parts.len() as u64 {
            return Some(format!(
                "manifest lists {} parts for {} bytes in parts of {}",
                self.parts.len(),
                self.length,
                self.part_size
            ));
        }
        if digest_of(self.length, self.part_size, &self.parts) != self.digest {
            return Some("manifest digest does not match its parts".into());
        }
        let age = seconds(now).saturating_sub(self.created);
        if Duration::from_secs(age) > max_age {
            return Some("expired".into());
        }
        None
    }

    /// The length of part `index`.
    pub(super) fn part_len(&self, index: usize) -> u64 {
        let start = index as u64 * self.part_size;
        self.length.saturating_sub(start).min(self.part_size)
    }
}

/// Whether a lease's upload is going on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum LeaseState {
    /// The producer is running and its parts are being uploaded.
    Writing,
    /// The manifest is committed.
    Done,
    /// The upload was given up (the producer failed, or the store did): take it over
    /// at once.
    Abandoned,
}

/// Who is producing a key now, and what it has uploaded so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LeaseBody {
    pub(super) version: u32,
    pub(super) key: String,
    pub(super) upload: String,
    pub(super) part_size: u64,
    /// BLAKE3 of each part uploaded so far, in hex, in order.
    pub(super) parts: Vec<String>,
    pub(super) state: LeaseState,
    /// Bumped at every renewal, so that a live lease always changes.
    pub(super) beat: u64,
}

impl LeaseBody {
    pub(super) fn new(key: &str, upload: &str, part_size: u64) -> LeaseBody {
        LeaseBody {
            version: VERSION,
            key: key.to_owned(),
            upload: upload.to_owned(),
            part_size,
            parts: Vec::new(),
            state: LeaseState::Writing,
            beat: 0,
        }
    }
}

fn digest_of(length: u64, part_size: u64, parts: &[String]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&length.to_le_bytes());
    hasher.update(&part_size.to_le_bytes());
    for part in parts {
        hasher.update(part.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

pub(super) fn seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A fresh upload name: 128 random bits in hex.
pub(super) fn upload_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: the time and the pid still make clashes unlikely, and a clash
        // only costs an upload (the manifest commit is conditional).
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_whose_digest_does_not_match_its_parts_is_refused() {
        let now = SystemTime::now();
        let parts = vec!["aa".to_string(), "bb".to_string()];
        let good = Manifest::new("k", "u", 10, 8, parts, now);
        assert_eq!(good.refusal("k", Duration::from_secs(60), now), None);
        let mut bad = good.clone();
        bad.parts[1] = "cc".into();
        assert_eq!(
            bad.refusal("k", Duration::from_secs(60), now).as_deref(),
            Some("manifest digest does not match its parts")
        );
        assert_eq!(
            good.refusal("other", Duration::from_secs(60), now)
                .as_deref(),
            Some("manifest of another key")
        );
        let mut short = good.clone();
        short.parts.pop();
        assert!(short
            .refusal("k", Duration::from_secs(60), now)
            .unwrap()
            .contains("lists 1 parts"));
        let later = now + Duration::from_secs(120);
        assert_eq!(
            good.refusal("k", Duration::from_secs(60), later).as_deref(),
            Some("expired")
        );
        assert_eq!(good.part_len(0), 8);
        assert_eq!(good.part_len(1), 2);
    }
}
