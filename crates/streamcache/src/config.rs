//! Configuration: [`Config`] is what a [`Cache`](crate::Cache) runs with.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// The default maximum age of an entry.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// How a [`Cache`](crate::Cache) behaves.
///
/// ```
/// use std::time::Duration;
/// let mut cfg = streamcache::Config::new("/var/cache/streamcache");
/// cfg.max_age = Duration::from_secs(60);
/// cfg.validate()?;
/// # Ok::<(), streamcache::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The directory entry files live in. Must be absolute; created on first use.
    ///
    /// The directory must belong to the cache alone: maintenance removes **every** file
    /// under it older than `max_age`, whoever made it (that is how files of crashed
    /// processes are reclaimed). Several caches and processes may share it if they use
    /// the same `max_age`.
    pub dir: PathBuf,
    /// How long an entry is served after it was created (not after it was last used).
    /// Also the rotation period of the min-occurrences counters. Zero evicts every entry
    /// at the next maintenance run.
    pub max_age: Duration,
    /// Hold producers back so they run at most one write ahead of their fastest reader
    /// (`true`, the default), or let them write at full speed (`false`). Either way a
    /// producer whose readers have all gone is stopped.
    pub backpressure: bool,
    /// With back pressure, how far the producer may run ahead of its fastest reader, in
    /// bytes. 0 (the default) is the reference's rule: a write starts only once some
    /// reader has read everything written, so producer and readers take turns. A window
    /// (a few MiB) lets them overlap, so a producer that is faster than one reader
    /// writes at its own speed, while still bounding what it writes that nobody has
    /// read. A producer may pass the window by at most one write. Ignored without back
    /// pressure.
    ///
    /// With a window of 1 MiB or more, readers that catch up with the producer take
    /// what it wrote about every 100 µs rather than write by write: the producer then
    /// pays no wake-up per write, and wakes them itself only once it is half the window
    /// ahead. A producer that pauses wakes them at its next write.
    pub max_lead_bytes: u64,
    /// The most bytes this cache's entry files may take, counting finished entries,
    /// entries being written, and evicted files that readers still hold open. `None`
    /// (the default): no budget.
    ///
    /// An entry being written holds room ahead of its writes in chunks of at most an
    /// eighth of the budget, and gives back what it did not use when it finishes. To
    /// make room, finished entries are evicted, least recently used first; an entry
    /// being written never is. A miss that cannot get room runs its producer outside
    /// the cache ([`Lookup::Bypass`](crate::Lookup::Bypass)); an entry that outgrows
    /// the room it can get turns *transient*: it takes no new readers, releases the
    /// part of its file every reader has read, and holds its producer back to its
    /// slowest reader, so every reader that was attached gets every byte. Lack of room
    /// never fails a lookup or a reader.
    pub max_disk_bytes: Option<u64>,
    /// Keep at least this many bytes free on the file system of `dir` (`statvfs`),
    /// whatever else fills it: checked at every reservation and every 4 MiB an entry
    /// writes, with the same means as the budget (evict, bypass, turn transient). When
    /// other programs took the room reservations counted on, entries being written give
    /// back what they hold ahead of their writes. A write that finds the file system
    /// full anyway turns its entry transient, or, with nothing of it on disk to free,
    /// *passing*: the rest goes to its readers through memory. 0 (the default): no
    /// guard, and a full file system fails the entry being written.
    pub min_free_bytes: u64,
    /// A key is cached only once it has been asked for more than this many times; the
    /// first occurrences run their producer outside the cache. 0 caches every key.
    pub min_occurrences: u32,
    /// Keep finished entries past this process (default `false`).
    ///
    /// When a durable cache's producer succeeds, the entry is *committed* on a pool
    /// thread, after its end was published (readers and the producer do not wait): its
    /// digest (BLAKE3) is computed, a record with the key, length, digest and creation
    /// time goes after its bytes, and the file takes a name made from the key, in one
    /// `rename(2)` ([`Cache::wait_durable`](crate::Cache::wait_durable) waits for the
    /// commits under way). A crash leaves either a committed entry or one that is
    /// plainly not committed. A cache started on the directory later adopts the
    /// committed entries younger than `max_age` in the background, and a lookup that
    /// misses the index opens the key's committed file directly, so caches of
    /// several processes sharing the directory serve each other's finished entries
    /// (entries being written stay private to their process). Every adopted file is
    /// checked against its digest before it is first served; a truncated, altered or
    /// uncommitted file is never served and is removed. Nothing is synced to disk: a
    /// process restart keeps the page cache, and after a machine crash the digest
    /// catches torn files.
    ///
    /// Entries that turn transient, or pass their bytes through memory, are not
    /// committed (their files do not hold every byte), nor are keys over 64 KiB.
    pub durable: bool,
    /// The shared tier on object storage (feature `remote`; default `None`): a local
    /// miss looks there before it produces, follows another host's upload of the key
    /// instead of producing it again, and publishes what it produces. See
    /// [`Remote`](crate::Remote).
    #[cfg(feature = "remote")]
    pub remote: Option<crate::Remote>,
}

impl Config {
    /// A configuration for `dir` with the defaults: 5 minutes, back pressure on with no
    /// lead window, min-occurrences 1.
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            max_age: DEFAULT_MAX_AGE,
            backpressure: true,
            max_lead_bytes: 0,
            max_disk_bytes: None,
            min_free_bytes: 0,
            min_occurrences: 1,
            durable: false,
            #[cfg(feature = "remote")]
            remote: None,
        }
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field if `dir` is empty or relative, or
    /// `max_disk_bytes` is 0.
    pub fn validate(&self) -> Result<()> {
        if self.max_disk_bytes == Some(0) {
            return Err(Error::config(
                "max_disk_bytes",
                "must be above 0 (leave it unset for no budget)",
            ));
        }
        if self.dir.as_os_str().is_empty() {
            return Err(Error::config("dir", "must not be empty"));
        }
        #[cfg(feature = "remote")]
        if let Some(remote) = &self.remote {
            remote.validate()?;
        }
        if !self.dir.is_absolute() {
            return Err(Error::config(
                "dir",
                format!("must be an absolute path, got {:?}", self.dir),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_the_field() {
        assert!(Config::new("/abs").validate().is_ok());
        let err = Config::new("relative/path").validate().unwrap_err();
        assert!(matches!(err, Error::Config { field: "dir", .. }));
        assert!(err.to_string().contains("relative/path"), "{err}");
        let err = Config::new("").validate().unwrap_err();
        assert!(matches!(err, Error::Config { field: "dir", .. }));
    }
}
