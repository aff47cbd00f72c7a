//! Durable entries: the commit record a finished entry carries, and the checks that
//! let a later process (or another one sharing the directory) serve it.
//!
//! # The commit protocol
//!
//! An entry is written to a private file (`<xx>/<id>-<n>`, see [`crate::filestore`]) as
//! always. When the producer succeeds, the writer takes room for the *commit record*,
//! publishes the end to the readers, and hands the commit to a pool thread, so the
//! producer pays nothing for it: that thread hashes the finished file (BLAKE3, through
//! the page cache), appends the record after the entry's bytes, and renames the file to
//! its committed name, `committed/<hh>/<62 hex digits>`, the BLAKE3 digest of the key in
//! hex, split after two digits. (Hashing on the producer's thread, after each write was
//! published, halved the producer's rate in W1 with one reader: `docs/BENCHMARKS.md`.)
//! `rename(2)` is atomic, so a crash at any instant leaves either a private file (never
//! served after a restart; the sweep removes it at `max_age`) or a committed name whose
//! record was written before the rename. Nothing is synced: a process that dies keeps
//! its writes in the page cache, and after a machine crash the digest catches what was
//! torn. [`crate::Cache::wait_durable`] waits for the commits under way.
//!
//! # The record
//!
//! Little-endian, after the entry's `length` bytes, so the file is `length + key + 88`
//! bytes long:
//!
//! ```text
//! key       key_len bytes, UTF-8
//! magic     8 bytes  "stcache\0"
//! version   u32      1
//! key_len   u32
//! length    u64      the entry's bytes
//! created   u64      nanoseconds since the Unix epoch, when the entry was created
//! digest    32 bytes BLAKE3 of the entry's bytes
//! check     16 bytes the first 16 bytes of BLAKE3 of the record before this field
//! end       8 bytes  "commit\0\x01"
//! ```
//!
//! A file is adopted only if its last 88 bytes hold both marks, the version is known,
//! the sizes add up to the file's size, the check matches, the key is the one looked
//! up (the name is only a digest of it), it is younger than `max_age`, and the digest of
//! its first `length` bytes is the recorded one. Anything else is never served; the
//! file is removed.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{Chain, Error, Op, Result};
use crate::filestore::EntryFile;
use crate::metrics::Metrics;
use crate::sync::{lock, Condvar, Mutex};

const MAGIC: &[u8; 8] = b"stcache\0";
const END: &[u8; 8] = b"commit\0\x01";
const VERSION: u32 = 1;
/// The record without the key.
const FIXED: usize = 8 + 4 + 4 + 8 + 8 + 32 + 16 + 8;
/// Keys longer than this are not committed (the entry is served, not kept).
pub(crate) const MAX_KEY: usize = 64 << 10;
/// How much of an entry is read at a time to hash it.
const VERIFY_CHUNK: usize = 1 << 20;

/// The directory, below the cache's root, that committed entries live in.
pub(crate) const COMMITTED: &str = "committed";

/// Where the committed entry of `key` lives: its fan-out directory below the root and
/// its name there.
pub(crate) fn committed_name(key: &str) -> (String, String) {
    let hex = blake3::hash(key.as_bytes()).to_hex();
    let (dir, name) = hex.as_str().split_at(2);
    (format!("{COMMITTED}/{dir}"), name.to_owned())
}

/// The commits under way, so that a cache can wait for them.
#[derive(Debug, Default)]
pub(crate) struct Commits {
    pending: Mutex<usize>,
    done: Condvar,
}

impl Commits {
    fn begin(&self) {
        *lock(&self.pending) += 1;
    }

    fn end(&self) {
        let mut pending = lock(&self.pending);
        *pending -= 1;
        if *pending == 0 {
            self.done.notify_all();
        }
    }

    /// Counts one more piece of work under way, until the result is dropped.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) fn enter(self: &Arc<Self>) -> Underway {
        self.begin();
        Underway(Arc::clone(self))
    }

    /// Blocks until no commit is under way.
    pub(crate) fn wait(&self) {
        let mut pending = lock(&self.pending);
        while *pending > 0 {
            pending = crate::sync::wait(&self.done, pending);
        }
    }
}

/// Ends a commit's place among those under way when dropped, whether its job ran or
/// was dropped unrun (no thread could start).
pub(crate) struct Underway(Arc<Commits>);

impl Drop for Underway {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// What a durable entry's commit needs, from its creation on.
#[derive(Debug)]
pub(crate) struct Commit {
    key: String,
    file: Arc<EntryFile>,
    created: SystemTime,
    commits: Arc<Commits>,
    metrics: Arc<Metrics>,
}

impl Commit {
    /// `None` if `key` is too long to commit.
    pub(crate) fn new(
        key: &str,
        file: Arc<EntryFile>,
        commits: Arc<Commits>,
        metrics: Arc<Metrics>,
    ) -> Option<Commit> {
        (key.len() <= MAX_KEY).then(|| Commit {
            key: key.to_owned(),
            file,
            created: SystemTime::now(),
            commits,
            metrics,
        })
    }

    /// The size of the commit record (known before the digest is).
    pub(crate) fn record_len(&self) -> u64 {
        (self.key.len() + FIXED) as u64
    }

    /// Counts the commit as under way, before the entry's end is published, so that
    /// whoever saw the end and then waits for the commits (`Cache::wait_durable`)
    /// waits for this one too. Dropping the result without starting it ends it.
    pub(crate) fn begin(self) -> Begun {
        self.commits.begin();
        Begun {
            underway: Underway(Arc::clone(&self.commits)),
            commit: self,
        }
    }

    fn run(&self, length: u64, write: &File) -> Result<()> {
        let path = self.file.path();
        let read = self.file.open_reader()?;
        let digest = digest_of(&read, length, &path)?;
        drop(read);
        let record = record(&self.key, length, self.created, &digest);
        write
            .write_all_at(&record, length)
            .map_err(|e| Error::io(Op::Commit, &*path, e))?;
        self.file.commit(&self.key)
    }
}

/// A commit counted as under way, not started yet.
pub(crate) struct Begun {
    commit: Commit,
    underway: Underway,
}

impl Begun {
    /// Commits the entry, whose producer succeeded with `length` bytes, on a pool
    /// thread: hashes the file, appends the record through `write` (a write handle of
    /// the file), renames the file. A commit that fails is logged; the entry is then
    /// served as before, only not past this process.
    pub(crate) fn start(self, length: u64, write: File) {
        let Begun { commit, underway } = self;
        let started = crate::pool::run(move || {
            let _underway = underway;
            match commit.run(length, &write) {
                Ok(()) => commit.metrics.add_committed_entries(1),
                // Its name went while it was written or hashed (evicted, expired, the
                // directory wiped): nothing to keep.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    tracing::debug!(key = commit.key, error = %Chain(&err), "streamcache: entry not committed");
                }
                Err(err) => {
                    tracing::warn!(key = commit.key, error = %Chain(&err), "streamcache: entry not committed; it is not kept past this process");
                }
            }
        });
        if let Err(e) = started {
            tracing::warn!(error = %e, "streamcache: no thread to commit an entry; it is not kept past this process");
        }
    }
}

/// The commit record of an entry of `length` bytes with `digest`.
fn record(key: &str, length: u64, created: SystemTime, digest: &[u8; 32]) -> Vec<u8> {
    let key = key.as_bytes();
    let created = created
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut record = Vec::with_capacity(key.len() + FIXED);
    record.extend_from_slice(key);
    record.extend_from_slice(MAGIC);
    record.extend_from_slice(&VERSION.to_le_bytes());
    // At most MAX_KEY, checked in `Commit::new`.
    record.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
    record.extend_from_slice(&length.to_le_bytes());
    record.extend_from_slice(&created.to_le_bytes());
    record.extend_from_slice(digest);
    let check = blake3::hash(&record);
    record.extend_from_slice(&check.as_bytes()[..16]);
    record.extend_from_slice(END);
    record
}

/// The BLAKE3 digest of the first `length` bytes of `file` (read through the page
/// cache, a MiB at a time).
fn digest_of(file: &File, length: u64, path: &Path) -> Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; VERIFY_CHUNK];
    let mut at = 0u64;
    while at < length {
        let want = usize::try_from(length - at)
            .unwrap_or(VERIFY_CHUNK)
            .min(VERIFY_CHUNK);
        read_exact_at(file, &mut buf[..want], at, path)?;
        hasher.update(&buf[..want]);
        at += want as u64;
    }
    Ok(*hasher.finalize().as_bytes())
}

/// A commit record read back from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) key: String,
    /// The entry's bytes (the file is longer by the record).
    pub(crate) length: u64,
    pub(crate) created: SystemTime,
    digest: [u8; 32],
}

/// Why a file is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No record at its end: never committed, or truncated.
    NotCommitted,
    /// A record whose sizes or check do not add up.
    Malformed,
    /// Committed for another key whose digest has the same name (or renamed by hand).
    OtherKey,
    /// Older than `max_age`.
    Expired,
    /// Its bytes are not the ones committed.
    Altered,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::NotCommitted => "no commit record at its end (never committed, or truncated)",
            Refusal::Malformed => "its commit record does not add up",
            Refusal::OtherKey => "it was committed for another key",
            Refusal::Expired => "it is older than max_age",
            Refusal::Altered => "its bytes do not match the committed digest",
        })
    }
}

impl Refusal {
    /// Whether the file is damaged (counted as a verification failure), rather than
    /// only old or someone else's.
    pub(crate) fn is_damage(self) -> bool {
        matches!(
            self,
            Refusal::NotCommitted | Refusal::Malformed | Refusal::Altered
        )
    }
}

/// Reads the commit record at the end of `file`, `size` bytes long.
///
/// # Errors
///
/// [`Error::Io`] ([`Op::Verify`]) if the file cannot be read.
pub(crate) fn read_record(
    file: &File,
    size: u64,
    path: &Path,
) -> Result<std::result::Result<Record, Refusal>> {
    let fixed = FIXED as u64;
    if size < fixed {
        return Ok(Err(Refusal::NotCommitted));
    }
    let mut tail = [0u8; FIXED];
    read_exact_at(file, &mut tail, size - fixed, path)?;
    let (fields, end) = tail.split_at(FIXED - 8);
    if &fields[..8] != MAGIC || end != END {
        return Ok(Err(Refusal::NotCommitted));
    }
    let u32_at = |at: usize| u32::from_le_bytes(fields[at..at + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |at: usize| u64::from_le_bytes(fields[at..at + 8].try_into().unwrap_or([0; 8]));
    let version = u32_at(8);
    let key_len = u32_at(12) as usize;
    let length = u64_at(16);
    let created = u64_at(24);
    if version != VERSION || key_len > MAX_KEY {
        return Ok(Err(Refusal::Malformed));
    }
    if length.checked_add(key_len as u64 + fixed) != Some(size) {
        return Ok(Err(Refusal::Malformed));
    }
    let mut key = vec![0u8; key_len];
    read_exact_at(file, &mut key, length, path)?;
    let mut checked = blake3::Hasher::new();
    checked.update(&key);
    checked.update(&fields[..FIXED - 8 - 16]);
    if checked.finalize().as_bytes()[..16] != fields[FIXED - 8 - 16..] {
        return Ok(Err(Refusal::Malformed));
    }
    let Ok(key) = String::from_utf8(key) else {
        return Ok(Err(Refusal::Malformed));
    };
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&fields[32..64]);
    Ok(Ok(Record {
        key,
        length,
        created: SystemTime::UNIX_EPOCH + Duration::from_nanos(created),
        digest,
    }))
}

impl Record {
    /// How old the entry is at `now` (zero if it claims to be from the future).
    pub(crate) fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.created).unwrap_or_default()
    }

    /// Whether the first `length` bytes of `file` are the committed ones. Reads them
    /// all (through the page cache, a MiB at a time).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] ([`Op::Verify`]) if the file cannot be read.
    pub(crate) fn verify(&self, file: &File, path: &Path) -> Result<bool> {
        Ok(digest_of(file, self.length, path)? == self.digest)
    }
}

/// Reads exactly `buf.len()` bytes at `at`; a file shorter than that is an
/// [`io::ErrorKind::UnexpectedEof`].
fn read_exact_at(file: &File, buf: &mut [u8], at: u64, path: &Path) -> Result<()> {
    file.read_exact_at(buf, at).map_err(|e| {
        let e = if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(e.kind(), "the file is shorter than its commit record says")
        } else {
            e
        };
        Error::io(Op::Verify, path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn committed(key: &str, bytes: &[u8]) -> (tempfile::NamedTempFile, u64) {
        let digest = *blake3::hash(bytes).as_bytes();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        file.write_all(&record(key, bytes.len() as u64, SystemTime::now(), &digest))
            .unwrap();
        let size = file.as_file().metadata().unwrap().len();
        (file, size)
    }

    #[test]
    fn a_record_reads_back_and_verifies() {
        let (file, size) = committed("the key", b"hello, world");
        let record = read_record(file.as_file(), size, file.path())
            .unwrap()
            .unwrap();
        assert_eq!(record.key, "the key");
        assert_eq!(record.length, 12);
        assert!(record.age(SystemTime::now()) < Duration::from_secs(60));
        assert!(record.verify(file.as_file(), file.path()).unwrap());
    }

    #[test]
    fn an_empty_entry_commits_too() {
        let (file, size) = committed("empty", b"");
        let record = read_record(file.as_file(), size, file.path())
            .unwrap()
            .unwrap();
        assert_eq!(record.length, 0);
        assert!(record.verify(file.as_file(), file.path()).unwrap());
    }

    #[test]
    fn every_flipped_byte_is_caught_by_the_marks_the_check_or_the_digest() {
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let (file, size) = committed("k", &bytes);
        let whole = std::fs::read(file.path()).unwrap();
        for at in 0..whole.len() {
            let mut damaged = whole.clone();
            damaged[at] ^= 0x40;
            let mut copy = tempfile::NamedTempFile::new().unwrap();
            copy.write_all(&damaged).unwrap();
            let verdict = match read_record(copy.as_file(), size, copy.path()).unwrap() {
                Ok(record) if record.key == "k" => {
                    record.verify(copy.as_file(), copy.path()).unwrap()
                }
                _ => false,
            };
            assert!(!verdict, "a flip at byte {at} went unnoticed");
        }
    }

    #[test]
    fn a_truncated_file_has_no_record() {
        let (file, size) = committed("k", &[7u8; 5000]);
        for cut in [1, 8, 88, 89, 5000] {
            file.as_file().set_len(size - cut).unwrap();
            let verdict = read_record(file.as_file(), size - cut, file.path()).unwrap();
            assert!(verdict.is_err(), "cut {cut}: {verdict:?}");
        }
    }

    #[test]
    fn a_file_without_a_record_is_not_committed() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&[0u8; 200]).unwrap();
        let verdict = read_record(file.as_file(), 200, file.path()).unwrap();
        assert_eq!(verdict, Err(Refusal::NotCommitted));
        let verdict = read_record(file.as_file(), 10, file.path()).unwrap();
        assert_eq!(verdict, Err(Refusal::NotCommitted));
    }

    #[test]
    fn names_are_two_levels_of_the_key_digest() {
        let (dir, name) = committed_name("abc");
        assert!(dir.starts_with("committed/"));
        assert_eq!(dir.len(), "committed/".len() + 2);
        assert_eq!(name.len(), 62);
        assert_ne!(committed_name("abd"), (dir, name));
    }
}
