//! The disk budget: how many bytes this cache's entry files may take
//! (`max_disk_bytes`), and how much free space it leaves on the file system
//! (`min_free_bytes`).
//!
//! An entry's size is unknown until its producer finishes, so an entry being written
//! *holds* room ahead of its writes, in chunks of at most an eighth of the budget, and
//! gives back what it did not use when it finishes. Every entry file has one
//! [`Footprint`]: what it holds and what of that is on disk now. The footprint lives as
//! long as anything can keep the file's blocks on disk: the entry (its name and its
//! kept read handle), the writer, and every open stream (an evicted file that a reader
//! still holds is unlinked but not yet freed, so it still counts). The totals over all
//! footprints are what the budget holds: `held` never passes `max_disk_bytes`.
//!
//! The free-space guard is asked at every new chunk, and by each entry being written
//! every [`GUARD_EVERY`] bytes: the file system's free space (`fstatvfs`), less what is
//! held but not yet written, must stay above `min_free_bytes`. So the guard also sees
//! what other programs wrote meanwhile. When they took the room our reservations
//! counted on, every entry being written gives back what it holds beyond what it has
//! written ([`Budget::check_guard`]) and asks again before its next write, so the
//! cache keeps `min_free_bytes` free, less at most [`GUARD_EVERY`] per entry being
//! written (what one may write between two looks).
//!
//! To find room, the budget asks the cache to evict its least recently used finished
//! entry, one at a time. An evicted file still held open frees nothing until its
//! readers finish; a chunk that cannot be had is refused, and the caller bypasses the
//! cache (a new entry) or turns transient (an entry being written, see
//! [`crate::room`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use crate::error::Chain;
use crate::filestore::FileStore;
use crate::sync::{lock, AtomicU64, Mutex};

/// What the cache does to make room: evict its least recently used finished entry.
/// Returns false when there is none.
pub(crate) type Evict = Box<dyn Fn() -> bool + Send + Sync>;

/// Bytes are held in whole pages: a file's last, partial page takes a whole one.
pub(crate) const PAGE: u64 = 4096;

/// The disk budget of one cache (see the module docs).
pub(crate) struct Budget {
    limit: Option<u64>,
    min_free: u64,
    /// The most one chunk holds, unless one write needs more.
    chunk: u64,
    store: Arc<FileStore>,
    totals: Mutex<Totals>,
    evict: OnceLock<Evict>,
    /// Raised each time the guard found that others took the room reservations counted
    /// on; each footprint then gives back what it holds ahead of its writes.
    squeezes: AtomicU64,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limit", &self.limit)
            .field("min_free", &self.min_free)
            .field("totals", &*lock(&self.totals))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    /// Held by all footprints: on disk, or reserved ahead of writes.
    held: u64,
    /// Of that, on disk now.
    on_disk: u64,
}

/// Without a budget, a chunk is this big (the free-space guard still applies).
const CHUNK_WITHOUT_BUDGET: u64 = 64 << 20;

/// An entry being written looks at the free-space guard at least this often, in bytes
/// written (see the module docs).
pub(crate) const GUARD_EVERY: u64 = 4 << 20;

impl Budget {
    /// A budget for a cache with these settings; `None` when neither a budget nor a
    /// free-space guard is set (nothing to count: today's behaviour).
    pub(crate) fn new(
        limit: Option<u64>,
        min_free: u64,
        store: Arc<FileStore>,
    ) -> Option<Arc<Budget>> {
        if limit.is_none() && min_free == 0 {
            return None;
        }
        let chunk = limit.map_or(CHUNK_WITHOUT_BUDGET, |l| (l / 8).max(PAGE));
        Some(Arc::new(Budget {
            limit,
            min_free,
            chunk: chunk - chunk % PAGE,
            store,
            totals: Mutex::new(Totals::default()),
            evict: OnceLock::new(),
            squeezes: AtomicU64::new(0),
        }))
    }

    /// Sets how the budget makes room. Called once, when the cache is built.
    pub(crate) fn evict_with(&self, evict: Evict) {
        let _ = self.evict.set(evict);
    }

    /// The budget in bytes, if one is set.
    pub(crate) fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// (bytes on disk, bytes held ahead of writes) over all footprints.
    pub(crate) fn usage(&self) -> (u64, u64) {
        let t = *lock(&self.totals);
        (t.on_disk, t.held - t.on_disk)
    }

    /// Checks the free-space guard against what is held ahead of writes: if others
    /// filled the file system so that our reservations would take it below
    /// `min_free_bytes`, every footprint gives back what it holds ahead of its writes
    /// (at its next [`Footprint::held`]).
    pub(crate) fn check_guard(&self) {
        if self.min_free == 0 {
            return;
        }
        let totals = lock(&self.totals);
        // Unknown free space squeezes nothing here; the next chunk asked for holds
        // nothing then (see `room`).
        if let Ok(free) = self.store.free_bytes() {
            self.squeeze_if_short(free, &totals);
        }
    }

    /// Raises a squeeze if what is held ahead of writes would take `free` below
    /// `min_free_bytes`.
    fn squeeze_if_short(&self, free: u64, totals: &Totals) {
        let ahead = totals.held - totals.on_disk;
        if ahead > 0 && free < self.min_free.saturating_add(ahead) {
            self.squeezes.fetch_add(1, Relaxed);
        }
    }

    /// A footprint for a new entry file, holding its first chunk; `None` if even
    /// `at_least` bytes cannot be had.
    pub(crate) fn open(self: &Arc<Self>, at_least: u64) -> Option<Arc<Footprint>> {
        let footprint = Arc::new(Footprint {
            budget: Arc::clone(self),
            held: AtomicU64::new(0),
            on_disk: AtomicU64::new(0),
            squeezes: AtomicU64::new(self.squeezes.load(Relaxed)),
        });
        footprint.grow(at_least).then_some(footprint)
    }

    /// Room for `want` bytes, at least `at_least`, under the budget and the guard.
    fn room(&self, totals: &Totals, at_least: u64, want: u64) -> Option<u64> {
        let mut room = self
            .limit
            .map_or(u64::MAX, |limit| limit.saturating_sub(totals.held));
        if self.min_free > 0 {
            let free = match self.store.free_bytes() {
                Ok(free) => free,
                Err(err) => {
                    tracing::warn!(error = %Chain(&err), "streamcache: free space unknown, holding nothing");
                    0
                }
            };
            // What is held but not yet written will come out of today's free space.
            let ahead = totals.held - totals.on_disk;
            self.squeeze_if_short(free, totals);
            room = room.min(free.saturating_sub(self.min_free).saturating_sub(ahead));
        }
        // Whole pages: a file takes its last page whole, so room granted in part of one
        // would let it pass the budget or the guard by up to a page.
        let room = room - room % PAGE;
        (room >= at_least).then(|| want.min(room))
    }
}

/// One entry file's share of the budget (see the module docs). Dropped when nothing
/// can keep the file's blocks on disk any more; its bytes then go back.
#[derive(Debug)]
pub(crate) struct Footprint {
    budget: Arc<Budget>,
    /// Held: on disk, or reserved ahead of writes. Changed under the budget's lock.
    held: AtomicU64,
    /// On disk now. Changed under the budget's lock.
    on_disk: AtomicU64,
    /// The budget's squeezes this footprint has answered.
    squeezes: AtomicU64,
}

impl Footprint {
    /// Bytes held; after a squeeze (see [`Budget::check_guard`]), no more than what is
    /// on disk.
    pub(crate) fn held(&self) -> u64 {
        let squeezes = self.budget.squeezes.load(Relaxed);
        if self.squeezes.swap(squeezes, Relaxed) != squeezes {
            self.shrink_to(0);
        }
        self.held.load(Relaxed)
    }

    /// Checks the free-space guard (see [`Budget::check_guard`]).
    pub(crate) fn check_guard(&self) {
        self.budget.check_guard();
    }

    /// Holds at least `at_least` more bytes (a chunk if there is room for one),
    /// evicting least recently used entries to make room. False if it cannot.
    pub(crate) fn grow(&self, at_least: u64) -> bool {
        let budget = &self.budget;
        let at_least = pages(at_least);
        let want = at_least.max(budget.chunk);
        loop {
            {
                let mut totals = lock(&budget.totals);
                if let Some(granted) = budget.room(&totals, at_least, want) {
                    totals.held += granted;
                    self.held.fetch_add(granted, Relaxed);
                    // Granted after any squeeze so far, so it answers none of them.
                    self.squeezes.store(budget.squeezes.load(Relaxed), Relaxed);
                    return true;
                }
            }
            // Outside the budget's lock: eviction takes the index lock, and a footprint
            // it frees takes the budget's lock as it goes.
            let evicted = budget.evict.get().is_some_and(|evict| evict());
            if !evicted {
                return false;
            }
        }
    }

    /// The file now takes `on_disk` bytes (at most what is held).
    pub(crate) fn set_on_disk(&self, on_disk: u64) {
        let mut totals = lock(&self.budget.totals);
        let before = self.on_disk.swap(on_disk, Relaxed);
        totals.on_disk = totals.on_disk - before + on_disk;
    }

    /// Gives back what is held beyond what is on disk (the entry is finished).
    pub(crate) fn settle(&self) {
        self.shrink_to(0);
    }

    /// Holds no more than `held` bytes, and never less than what is on disk.
    pub(crate) fn shrink_to(&self, held: u64) {
        let mut totals = lock(&self.budget.totals);
        let held = held.max(self.on_disk.load(Relaxed));
        let before = self.held.load(Relaxed);
        if held < before {
            self.held.store(held, Relaxed);
            totals.held -= before - held;
        }
    }
}

impl Drop for Footprint {
    fn drop(&mut self) {
        let mut totals = lock(&self.budget.totals);
        totals.held -= self.held.load(Relaxed);
        totals.on_disk -= self.on_disk.load(Relaxed);
    }
}

/// `n` rounded up to whole pages.
pub(crate) fn pages(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}
