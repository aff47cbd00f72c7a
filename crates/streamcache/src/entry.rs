//! One cache entry: the owner of an entry file, the pipe's tap, and the read handle its
//! readers share.
//!
//! The index holds entries; the producer's writer holds the pipe's other end. The entry
//! is the only place that turns the file into readers, so the rule "a file whose name
//! is gone gains no readers" lives here.
//!
//! Lock order: [`Entry::open_reader`] takes the entry's shared-handle lock inside the
//! pipe's lock (see [`crate::pipe`]), and the kept-handle lock, a leaf, inside that;
//! nothing takes them the other way round.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Instant;

use crate::budget::Footprint;
use crate::error::Result;
use crate::filestore::EntryFile;
use crate::pipe::{Receiver, Tap};
use crate::sync::{lock, Mutex};
#[cfg(test)]
use crate::waiter::Waiter;

#[derive(Debug)]
pub(crate) struct Entry {
    /// Shared with the writer of a durable entry, which commits it (renames it).
    file: Arc<EntryFile>,
    tap: Tap,
    /// The read handle shared by the open readers; dead when no reader has it open and
    /// it is not kept.
    shared: Mutex<Weak<File>>,
    /// The read handle, kept open after the last reader left so that the next hit costs
    /// no `open(2)`; the cache bounds how many entries keep one (`KeptHandles`).
    kept: Mutex<Option<Arc<File>>>,
    created: Instant,
    /// The file's share of the disk budget, if there is one: the entry holds it as
    /// long as it lives, each stream as long as it reads.
    footprint: Option<Arc<Footprint>>,
    /// When a lookup last found the entry, in nanoseconds after `created` (for
    /// eviction to make room, least recently used first).
    last_used: AtomicU64,
}

impl Entry {
    pub(crate) fn new(file: EntryFile, tap: Tap, footprint: Option<Arc<Footprint>>) -> Entry {
        Entry {
            file: Arc::new(file),
            tap,
            shared: Mutex::new(Weak::new()),
            kept: Mutex::new(None),
            created: Instant::now(),
            footprint,
            last_used: AtomicU64::new(0),
        }
    }

    /// An entry for a committed file found on disk (see [`crate::durable`]): `tap` is
    /// a finished pipe of the entry's length, `handle` the read handle it was checked
    /// through (kept for the first readers), `created` when it was made.
    pub(crate) fn adopted(
        file: EntryFile,
        tap: Tap,
        footprint: Option<Arc<Footprint>>,
        created: Instant,
        handle: File,
    ) -> Entry {
        let handle = Arc::new(handle);
        Entry {
            file: Arc::new(file),
            tap,
            shared: Mutex::new(Arc::downgrade(&handle)),
            kept: Mutex::new(Some(handle)),
            created,
            footprint,
            last_used: AtomicU64::new(0),
        }
    }

    /// The entry's file, for the writer that commits it.
    pub(crate) fn file(&self) -> &Arc<EntryFile> {
        &self.file
    }

    pub(crate) fn created(&self) -> Instant {
        self.created
    }

    pub(crate) fn footprint(&self) -> Option<&Arc<Footprint>> {
        self.footprint.as_ref()
    }

    /// A lookup found the entry at `now`.
    pub(crate) fn touch(&self, now: Instant) {
        let since = now.saturating_duration_since(self.created).as_nanos();
        self.last_used
            .store(u64::try_from(since).unwrap_or(u64::MAX), Relaxed);
    }

    /// When a lookup last found the entry (its creation if none did).
    pub(crate) fn last_used(&self) -> Instant {
        self.created + std::time::Duration::from_nanos(self.last_used.load(Relaxed))
    }

    /// Whether the producer finished successfully (only such entries are evicted to
    /// make room).
    pub(crate) fn is_complete(&self) -> bool {
        self.tap.is_complete()
    }

    /// What [`crate::Cache::entries`] shows of this entry.
    pub(crate) fn status(&self, key: &str, now: Instant) -> crate::EntryStatus {
        let (written, fastest_read, readers) = self.tap.cursors();
        crate::EntryStatus {
            key: key.to_owned(),
            written,
            fastest_read,
            readers,
            age: now.saturating_duration_since(self.created),
            state: match self.tap.succeeded() {
                None => crate::EntryState::Writing,
                Some(true) => crate::EntryState::Complete,
                Some(false) => crate::EntryState::Failed,
            },
        }
    }

    /// Admits no new readers (the entry turned transient).
    pub(crate) fn seal(&self) {
        self.tap.seal();
    }

    /// The entry file's path, for messages.
    pub(crate) fn path(&self) -> Arc<Path> {
        self.file.path()
    }

    /// Opens a reader at byte 0. Also returns whether this call opened a new read handle,
    /// which the entry then keeps open for later hits (the caller counts it against its
    /// bound and may [`Entry::release_handle`] it).
    ///
    /// # Errors
    ///
    /// [`crate::Error::ReadersGone`] if the entry was abandoned; [`crate::Error::Io`]
    /// if its file cannot be opened (its name is gone, or is no regular file now).
    pub(crate) fn open_reader(&self) -> Result<(Receiver, bool)> {
        let mut opened = false;
        let receiver = self.tap.subscribe(|| {
            let mut shared = lock(&self.shared);
            if let Some(file) = shared.upgrade() {
                // A file unlinked under us (evicted, swept, or the directory wiped) must
                // not gain readers: open by name again, which fails, as it would
                // without the shared handle.
                if rustix::fs::fstat(&*file).is_ok_and(|st| st.st_nlink > 0) {
                    return Ok(file);
                }
            }
            let file = Arc::new(self.file.open_reader()?);
            *shared = Arc::downgrade(&file);
            *lock(&self.kept) = Some(Arc::clone(&file));
            opened = true;
            Ok(file)
        })?;
        Ok((receiver, opened))
    }

    /// The read handle, if a reader or the entry still holds it open.
    #[cfg(test)]
    pub(crate) fn shared_file(&self) -> Option<Arc<File>> {
        lock(&self.shared).upgrade()
    }

    /// Closes the kept read handle, if any; open readers keep theirs.
    pub(crate) fn release_handle(&self) {
        drop(lock(&self.kept).take());
    }

    /// Gives up the kept read handle and the file's name: the entry has left the
    /// index for good. Open readers read on.
    pub(crate) fn retire(&self) {
        self.release_handle();
        self.remove_file();
    }

    /// Removes the file's name; open readers read on.
    pub(crate) fn remove_file(&self) {
        if let Err(err) = self.file.remove() {
            tracing::warn!(error = %crate::error::Chain(&err), "streamcache: remove entry file");
        }
    }

    /// The producer's result, once published.
    #[cfg(test)]
    pub(crate) fn outcome(&self) -> &Arc<Waiter> {
        self.tap.outcome()
    }
}
