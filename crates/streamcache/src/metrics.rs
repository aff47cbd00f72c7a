//! Counters and gauges of one cache.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The live counters, shared by the cache, its producers and its streams.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    hits: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
    failures: AtomicU64,
    index_entries: AtomicU64,
    evicted: AtomicU64,
    generated_bytes: AtomicU64,
    served_bytes: AtomicU64,
    sendfile_bytes: AtomicU64,
    disk_usage_bytes: AtomicU64,
    swept_files: AtomicU64,
    room_bypasses: AtomicU64,
    transient_entries: AtomicU64,
    committed_entries: AtomicU64,
    adopted_entries: AtomicU64,
    shared_hits: AtomicU64,
    verification_failures: AtomicU64,
    remote_hits: AtomicU64,
    remote_follows: AtomicU64,
    remote_takeovers: AtomicU64,
    remote_uploads: AtomicU64,
    remote_uploaded_bytes: AtomicU64,
    remote_downloaded_bytes: AtomicU64,
    remote_errors: AtomicU64,
    remote_swept_objects: AtomicU64,
}

macro_rules! adders {
    ($(#[$attr:meta])* $($name:ident => $field:ident),* $(,)?) => {
        $(#[$attr])*
        impl Metrics {
            $(pub(crate) fn $name(&self, n: u64) { self.$field.fetch_add(n, Relaxed); })*
        }
    };
}

adders! {
    add_hits => hits,
    add_misses => misses,
    add_bypassed => bypassed,
    add_failures => failures,
    add_evicted => evicted,
    add_generated_bytes => generated_bytes,
    add_served_bytes => served_bytes,
    add_sendfile_bytes => sendfile_bytes,
    add_swept_files => swept_files,
    add_room_bypasses => room_bypasses,
    add_committed_entries => committed_entries,
    add_adopted_entries => adopted_entries,
    add_shared_hits => shared_hits,
    add_verification_failures => verification_failures,
}

adders! {
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    add_remote_hits => remote_hits,
    add_remote_follows => remote_follows,
    add_remote_takeovers => remote_takeovers,
    add_remote_uploads => remote_uploads,
    add_remote_uploaded_bytes => remote_uploaded_bytes,
    add_remote_downloaded_bytes => remote_downloaded_bytes,
    add_remote_errors => remote_errors,
    add_remote_swept_objects => remote_swept_objects,
}

impl Metrics {
    pub(crate) fn set_index_entries(&self, n: usize) {
        self.index_entries.store(n as u64, Relaxed);
    }

    /// Entries transient now: `+1` when one turns, `-1` when it finishes.
    pub(crate) fn add_transient_entries(&self, delta: i64) {
        if delta >= 0 {
            self.transient_entries
                .fetch_add(delta.unsigned_abs(), Relaxed);
        } else {
            self.transient_entries
                .fetch_sub(delta.unsigned_abs(), Relaxed);
        }
    }

    pub(crate) fn set_disk_usage(&self, bytes: u64) {
        self.disk_usage_bytes.store(bytes, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            bypassed: self.bypassed.load(Relaxed),
            failures: self.failures.load(Relaxed),
            index_entries: self.index_entries.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            generated_bytes: self.generated_bytes.load(Relaxed),
            served_bytes: self.served_bytes.load(Relaxed),
            sendfile_bytes: self.sendfile_bytes.load(Relaxed),
            disk_usage_bytes: self.disk_usage_bytes.load(Relaxed),
            swept_files: self.swept_files.load(Relaxed),
            room_bypasses: self.room_bypasses.load(Relaxed),
            transient_entries: self.transient_entries.load(Relaxed),
            committed_entries: self.committed_entries.load(Relaxed),
            adopted_entries: self.adopted_entries.load(Relaxed),
            shared_hits: self.shared_hits.load(Relaxed),
            verification_failures: self.verification_failures.load(Relaxed),
            remote_hits: self.remote_hits.load(Relaxed),
            remote_follows: self.remote_follows.load(Relaxed),
            remote_takeovers: self.remote_takeovers.load(Relaxed),
            remote_uploads: self.remote_uploads.load(Relaxed),
            remote_uploaded_bytes: self.remote_uploaded_bytes.load(Relaxed),
            remote_downloaded_bytes: self.remote_downloaded_bytes.load(Relaxed),
            remote_errors: self.remote_errors.load(Relaxed),
            remote_swept_objects: self.remote_swept_objects.load(Relaxed),
            // Filled in by the cache, which owns the budget.
            disk_budget_bytes: None,
            disk_used_bytes: 0,
            disk_reserved_bytes: 0,
        }
    }
}

/// A snapshot of a cache's counters and gauges, from [`Cache::stats`](crate::Cache::stats).
///
/// Counters only grow for the life of the cache. The daemon exports them in Prometheus
/// form as `streamcache_<field>` (with `_total` on counters).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Lookups served by an existing entry.
    pub hits: u64,
    /// Lookups that created an entry and started its producer.
    pub misses: u64,
    /// Lookups that ran their producer outside the cache: the cache is disabled, or the
    /// key has not yet occurred often enough (min-occurrences rule).
    pub bypassed: u64,
    /// Producers that failed (error, panic, or every reader gone).
    pub failures: u64,
    /// Entries in the index now (gauge).
    pub index_entries: u64,
    /// Entries removed from the index by age, or to make room under the disk budget.
    pub evicted: u64,
    /// Bytes written by producers.
    pub generated_bytes: u64,
    /// Bytes delivered to readers (counted when a stream is dropped).
    pub served_bytes: u64,
    /// Bytes delivered without a copy through user space: [`Stream::send_to`]'s
    /// `sendfile(2)` and `splice(2)`.
    ///
    /// [`Stream::send_to`]: crate::Stream::send_to
    pub sendfile_bytes: u64,
    /// Bytes in the cache directory at the last sweep (gauge).
    pub disk_usage_bytes: u64,
    /// Files removed by the directory sweep.
    pub swept_files: u64,
    /// `max_disk_bytes`, if a budget is set.
    pub disk_budget_bytes: Option<u64>,
    /// Bytes this cache's entry files take now, by its own count (in whole pages;
    /// with a budget or a free-space guard, else 0): finished entries, entries being
    /// written, and evicted files that readers still hold open (gauge).
    pub disk_used_bytes: u64,
    /// Bytes held ahead of writes by entries being written (gauge).
    pub disk_reserved_bytes: u64,
    /// Entries that outgrew the room they could get and are being written as
    /// transient entries now: no new readers, read parts released (gauge).
    pub transient_entries: u64,
    /// Lookups that bypassed the cache because there was no room for a new entry
    /// (also counted in `bypassed`).
    pub room_bypasses: u64,
    /// Durable entries committed: whole, with their digest, kept past this process
    /// (see [`Config::durable`](crate::Config::durable)).
    pub committed_entries: u64,
    /// Committed entries found in the directory when the cache started, checked
    /// against their digests and put in the index.
    pub adopted_entries: u64,
    /// Lookups that missed the index and found the key's committed file on disk,
    /// checked it and served it: made by another process sharing the directory, or
    /// by this cache's predecessor before the background adoption reached it. Also
    /// counted in `hits`.
    pub shared_hits: u64,
    /// Committed files not served because they are damaged: truncated, altered, or
    /// without a whole commit record. Each is removed.
    pub verification_failures: u64,
    /// Local misses served from the shared tier (`Config::remote`, feature `remote`): a committed entry of another host (or of this one before its disk was wiped), or another host's upload followed to its end.
    pub remote_hits: u64,
    /// Local misses that found another host producing the key and followed its upload.
    pub remote_follows: u64,
    /// Leases of stalled or abandoned uploads taken over: this host then produced.
    pub remote_takeovers: u64,
    /// Entries this host published: uploaded whole, manifest committed.
    pub remote_uploads: u64,
    /// Bytes of parts uploaded to the shared tier.
    pub remote_uploaded_bytes: u64,
    /// Bytes of parts downloaded from the shared tier (checked against their digests).
    pub remote_downloaded_bytes: u64,
    /// Requests to the shared tier that failed or timed out, and damaged objects found there. A lookup never fails for them: the host produces by itself.
    pub remote_errors: u64,
    /// Objects of the shared tier removed by the sweep: expired manifests and leases, parts of dead or superseded uploads.
    pub remote_swept_objects: u64,
}
