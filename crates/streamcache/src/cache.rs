//! The cache: the index of entries, find-or-create, eviction and maintenance.
//!
//! A key's path: [`Cache::lookup`] asks admission (the min-occurrences rule), then the
//! index. A hit opens a reader on the entry (outside the index lock: opening a file may
//! take time, and nothing slow happens under that lock). A miss creates an entry file
//! in the file store, makes a pipe, opens the first reader, and inserts the entry; if
//! another caller inserted one for the key meanwhile, the new file is removed and that
//! entry is read instead, so one key has one producer. The producer then runs on a
//! pool thread ([`crate::runner`]).
//!
//! Lock order: the index lock is taken alone, never while opening a file or holding
//! another lock of the crate, and no other lock is taken under it. The kept-handles
//! queue's lock is taken alone too, with an entry's kept-handle lock (a leaf) inside.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime};

use crate::admission::Admission;
use crate::budget::Budget;
use crate::config::Config;
use crate::direct;
use crate::durable::{self, Commit, Commits, Refusal};
use crate::entry::Entry;
use crate::error::{Chain, Error, Op, Result};
#[cfg(test)]
use crate::filestore::EntryFile;
use crate::filestore::{Committed, FileStore};
use crate::janitor::{self, Janitor};
use crate::metrics::{Metrics, Stats};
use crate::pipe;
use crate::room::{OnTransient, Room};
use crate::runner::{self, Producer};
use crate::stream::Stream;
use crate::sync::{lock, Condvar, Mutex};
use crate::writer::Writer;

/// A cache of byte streams, each made once by a producer and read by any number of
/// readers while it is being made and after.
///
/// One entry of the index, as [`Cache::entries`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryStatus {
    /// The entry's key.
    pub key: String,
    /// Bytes the producer has written so far (all of them once complete).
    pub written: u64,
    /// How far the fastest reader has read: `written - fastest_read` is the producer's
    /// lead, which back pressure bounds (see [`Config::max_lead_bytes`]). Taken at the
    /// same instant as `written`.
    pub fastest_read: u64,
    /// Readers open on the entry now.
    pub readers: usize,
    /// Time since the entry was created.
    pub age: std::time::Duration,
    /// Whether its producer is still writing, finished, or failed.
    pub state: EntryState,
}

/// The state of an entry's producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryState {
    /// The producer is running.
    Writing,
    /// The producer finished successfully: the entry is whole.
    Complete,
    /// The producer failed (the entry leaves the index).
    Failed,
}

/// `Cache` is a cheap handle: clones share one index, one directory and one maintenance
/// thread. The thread stops on [`Cache::stop`], or when the last handle is dropped.
///
/// ```
/// use std::io::Read;
/// let dir = tempfile::tempdir()?;
/// let mut cfg = streamcache::Config::new(dir.path());
/// cfg.min_occurrences = 0;
/// let cache = streamcache::Cache::new(cfg)?;
/// let (mut stream, created) = cache.find_or_create("greeting", |w| {
///     use std::io::Write;
///     w.write_all(b"hello")
/// })?;
/// let mut text = String::new();
/// stream.read_to_string(&mut text)?;
/// stream.wait()?;
/// assert_eq!((text.as_str(), created), ("hello", true));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Cache {
    flavor: Flavor,
}

#[derive(Debug, Clone)]
enum Flavor {
    Enabled(Arc<Shared>),
    Disabled(Arc<Metrics>),
}

#[cfg(test)]
type CreateHook = Box<dyn Fn(&FileStore) -> Result<(File, EntryFile)> + Send + Sync>;
#[cfg(test)]
type RemoveHook = Box<dyn Fn(&Entry) + Send + Sync>;

struct Shared {
    config: Config,
    store: Arc<FileStore>,
    index: Mutex<HashMap<String, Arc<Entry>>>,
    metrics: Arc<Metrics>,
    /// The disk budget and free-space guard, if either is set.
    budget: Option<Arc<Budget>>,
    admission: Option<Admission>,
    janitor: Mutex<Option<Janitor>>,
    kept: KeptHandles,
    /// Keys whose committed files are being checked now (durable caches).
    checks: Checks,
    /// Set once the background adoption of committed entries is over (at once for a
    /// cache that is not durable).
    adopted: Arc<crate::waiter::Waiter>,
    /// The commits of durable entries under way.
    commits: Arc<Commits>,
    /// The uploads to the shared tier under way.
    uploads: Arc<Commits>,
    /// The sweeps of the shared tier.
    #[cfg(feature = "remote")]
    sweeper: crate::remote::Sweeper,
    /// Test hook: replaces file creation in tests of failure paths.
    #[cfg(test)]
    create_hook: Option<CreateHook>,
    /// Test hook: every new entry's writer fails its close with this error kind.
    #[cfg(test)]
    close_fault: std::sync::OnceLock<io::ErrorKind>,
    /// Test hook: sees each entry a failed producer takes out of the index, at that moment.
    #[cfg(test)]
    on_remove: std::sync::OnceLock<RemoveHook>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The bound on kept read handles: entries keep the read handle of their file open
/// after their last reader left, so that the next hit costs no `open(2)`, and this
/// queue bounds how many do: at most `capacity` (a sixteenth of the process's
/// descriptor limit, between 64 and 4096); the oldest gives its handle up first. An
/// entry that leaves the index gives its handle up at once, so the space of an evicted
/// file is freed as soon as its readers finish.
#[derive(Debug)]
struct KeptHandles {
    /// Entries that kept a handle, oldest first (some may have given it up since).
    order: Mutex<VecDeque<Weak<Entry>>>,
    capacity: usize,
}

impl KeptHandles {
    fn new() -> KeptHandles {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1024);
        let capacity = usize::try_from(limit / 16).unwrap_or(4096).clamp(64, 4096);
        KeptHandles {
            order: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// `entry` has just kept a new handle.
    fn kept(&self, entry: &Arc<Entry>) {
        let mut order = lock(&self.order);
        if order.len() >= self.capacity {
            if let Some(oldest) = order.pop_front().and_then(|e| e.upgrade()) {
                oldest.release_handle();
            }
        }
        order.push_back(Arc::downgrade(entry));
    }
}

/// The keys whose committed files are being checked against their digests now: one
/// check serves every lookup of the key that arrives meanwhile (they wait for it, then
/// find the entry in the index or miss).
#[derive(Debug, Default)]
struct Checks {
    keys: Mutex<HashSet<String>>,
    done: Condvar,
}

impl Checks {
    /// Claims the check of `key`. `None` if another thread was checking it: this call
    /// waited for that check to end, and the caller looks in the index again.
    fn claim<'a>(&'a self, key: &str) -> Option<CheckClaim<'a>> {
        let mut keys = lock(&self.keys);
        if keys.insert(key.to_owned()) {
            return Some(CheckClaim {
                checks: self,
                key: key.to_owned(),
            });
        }
        while keys.contains(key) {
            keys = crate::sync::wait(&self.done, keys);
        }
        None
    }
}

/// The check of one key, released when dropped.
struct CheckClaim<'a> {
    checks: &'a Checks,
    key: String,
}

impl Drop for CheckClaim<'_> {
    fn drop(&mut self) {
        lock(&self.checks.keys).remove(&self.key);
        self.checks.done.notify_all();
    }
}

/// What looking for a committed file did.
enum Adoption {
    /// The entry is in the index now (or another lookup's check just ended): look
    /// again.
    LookAgain,
    /// Nothing to serve: a miss.
    Nothing,
}

/// What a lookup did, from [`Cache::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lookup {
    /// An existing entry serves the stream.
    Hit,
    /// This call created the entry and started its producer.
    Miss,
    /// The producer runs outside the cache for this call alone: the cache is disabled,
    /// the key has not occurred often enough yet (min-occurrences rule), there is no
    /// room for a new entry under the disk budget or the free-space guard, or the key's
    /// entry turned transient. The caller still gets every byte.
    Bypass,
}

impl Cache {
    /// Creates a cache with `config`. No I/O happens here: the directory is created with
    /// the first entry. Starts the maintenance thread, which evicts entries older than
    /// `max_age` and removes files older than `max_age` under the directory (also those
    /// left by other processes) every `min(max_age, 1 minute)`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the configuration is invalid; [`Error::Io`] if the thread
    /// cannot be started.
    pub fn new(config: Config) -> Result<Cache> {
        Cache::build(
            config,
            #[cfg(test)]
            None,
        )
    }

    fn build(config: Config, #[cfg(test)] create_hook: Option<CreateHook>) -> Result<Cache> {
        config.validate()?;
        let admission = (config.min_occurrences > 0)
            .then(|| Admission::new(config.min_occurrences, config.max_age));
        let store = Arc::new(FileStore::new(config.dir.clone()));
        let budget = Budget::new(
            config.max_disk_bytes,
            config.min_free_bytes,
            Arc::clone(&store),
        );
        let shared = Arc::new(Shared {
            store,
            budget,
            config,
            index: Mutex::new(HashMap::new()),
            metrics: Arc::new(Metrics::default()),
            admission,
            janitor: Mutex::new(None),
            kept: KeptHandles::new(),
            checks: Checks::default(),
            adopted: Arc::new(crate::waiter::Waiter::default()),
            commits: Arc::default(),
            uploads: Arc::default(),
            #[cfg(feature = "remote")]
            sweeper: crate::remote::Sweeper::default(),
            #[cfg(test)]
            create_hook,
            #[cfg(test)]
            close_fault: std::sync::OnceLock::new(),
            #[cfg(test)]
            on_remove: std::sync::OnceLock::new(),
        });
        if let Some(budget) = &shared.budget {
            let weak = Arc::downgrade(&shared);
            budget.evict_with(Box::new(move || {
                weak.upgrade().is_some_and(|shared| shared.evict_for_room())
            }));
        }
        let weak = Arc::downgrade(&shared);
        let janitor = Janitor::start(janitor::period(shared.config.max_age), move || {
            match weak.upgrade() {
                Some(shared) => {
                    shared.maintain(Instant::now(), SystemTime::now());
                    true
                }
                None => false,
            }
        })
        .map_err(|e| Error::io(Op::Spawn, &shared.config.dir, e))?;
        *lock(&shared.janitor) = Some(janitor);
        if shared.config.durable {
            let weak = Arc::downgrade(&shared);
            let adopted = Arc::clone(&shared.adopted);
            std::thread::Builder::new()
                .name("streamcache-adopt".into())
                .spawn(move || {
                    // Set however the adoption ends, so that no waiter waits forever.
                    struct Done(Arc<crate::waiter::Waiter>);
                    impl Drop for Done {
                        fn drop(&mut self) {
                            self.0.set(Ok(()));
                        }
                    }
                    let _done = Done(adopted);
                    adopt_all(&weak);
                })
                .map_err(|e| Error::io(Op::Spawn, &shared.config.dir, e))?;
        } else {
            shared.adopted.set(Ok(()));
        }
        Ok(Cache {
            flavor: Flavor::Enabled(shared),
        })
    }

    /// The disabled cache: every lookup runs its producer, nothing is stored or shared.
    /// Streams behave as with a real cache (the producer runs on its own thread and its
    /// errors and panics reach the reader), so callers need no second code path.
    pub fn disabled() -> Cache {
        Cache {
            flavor: Flavor::Disabled(Arc::new(Metrics::default())),
        }
    }

    /// Whether this is a real cache (not [`Cache::disabled`]).
    pub fn is_enabled(&self) -> bool {
        matches!(self.flavor, Flavor::Enabled(_))
    }

    /// The configuration, for a real cache.
    pub fn config(&self) -> Option<&Config> {
        match &self.flavor {
            Flavor::Enabled(shared) => Some(&shared.config),
            Flavor::Disabled(_) => None,
        }
    }

    /// Finds the entry for `key`, or creates it and starts `producer` on a producer thread,
    /// and returns a stream positioned at its first byte. `created` is true when this
    /// call started the producer (a miss, or a lookup that bypassed the cache).
    ///
    /// Never waits for the producer. Concurrent calls with one key start one producer.
    /// An entry whose file has gone, or whose readers all left before it was complete,
    /// is replaced by a new one silently.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the entry file cannot be created ([`Op::Create`], [`Op::Mkdir`])
    /// or opened for reading ([`Op::OpenReader`]); nothing is cached then. The
    /// producer's own errors come later, from the stream.
    pub fn find_or_create<F>(&self, key: &str, producer: F) -> Result<(Stream, bool)>
    where
        F: FnOnce(&mut Writer) -> io::Result<()> + Send + 'static,
    {
        let (stream, lookup) = self.lookup(key, producer)?;
        Ok((stream, lookup != Lookup::Hit))
    }

    /// [`Cache::find_or_create`] that says which of the three things happened: a hit, a
    /// miss (this call created the entry), or a bypass (the producer runs outside the
    /// cache: the cache is disabled, or the key is not yet admitted).
    ///
    /// # Errors
    ///
    /// As [`Cache::find_or_create`].
    pub fn lookup<F>(&self, key: &str, producer: F) -> Result<(Stream, Lookup)>
    where
        F: FnOnce(&mut Writer) -> io::Result<()> + Send + 'static,
    {
        match &self.flavor {
            Flavor::Disabled(metrics) => {
                metrics.add_bypassed(1);
                Ok((
                    direct::start(key, Box::new(producer), metrics)?,
                    Lookup::Bypass,
                ))
            }
            Flavor::Enabled(shared) => shared.find_or_create(key, Box::new(producer)),
        }
    }

    /// Finds or creates the entry for `key`, copies all of it into `dst`, then waits for
    /// the producer's result. Returns the bytes copied and whether this call created the
    /// entry.
    ///
    /// # Errors
    ///
    /// The errors of [`Cache::find_or_create`]; the producer's error; [`Error::Copy`] if
    /// writing into `dst` failed. On any error, what was written to `dst` is incomplete
    /// and must be thrown away.
    pub fn fetch<W, F>(&self, key: &str, dst: &mut W, producer: F) -> Result<(u64, bool)>
    where
        W: Write + ?Sized,
        F: FnOnce(&mut Writer) -> io::Result<()> + Send + 'static,
    {
        let (copied, created, result) = self.fetch_detailed(key, dst, producer)?;
        result.map(|()| (copied, created))
    }

    /// [`Cache::fetch`] that keeps `created` and the bytes copied when the copy or the
    /// producer fails (the outer error is a lookup error, where nothing was created).
    pub(crate) fn fetch_detailed<W, F>(
        &self,
        key: &str,
        dst: &mut W,
        producer: F,
    ) -> Result<(u64, bool, Result<()>)>
    where
        W: Write + ?Sized,
        F: FnOnce(&mut Writer) -> io::Result<()> + Send + 'static,
    {
        let (mut stream, created) = self.find_or_create(key, producer)?;
        let mut buf = vec![0u8; 64 << 10];
        let mut copied = 0u64;
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Ok((copied, created, Err(Error::from_io(e)))),
            };
            if let Err(e) = dst.write_all(&buf[..n]) {
                return Ok((copied, created, Err(Error::Copy(Arc::new(e)))));
            }
            copied += n as u64;
        }
        Ok((copied, created, stream.wait()))
    }

    /// Stops the maintenance thread and waits for it. Idempotent. The cache keeps
    /// answering lookups; entries just no longer expire.
    pub fn stop(&self) {
        if let Flavor::Enabled(shared) = &self.flavor {
            let janitor = lock(&shared.janitor).take();
            drop(janitor);
        }
    }

    /// Runs one maintenance round now, as the background thread does periodically:
    /// evicts entries older than `max_age` (and removes their files), then removes files
    /// under the directory last modified more than `max_age` ago.
    pub fn run_maintenance(&self) {
        if let Flavor::Enabled(shared) = &self.flavor {
            shared.maintain(Instant::now(), SystemTime::now());
        }
    }

    /// A snapshot of the counters and gauges.
    pub fn stats(&self) -> Stats {
        match &self.flavor {
            Flavor::Enabled(shared) => {
                let mut stats = shared.metrics.snapshot();
                if let Some(budget) = &shared.budget {
                    let (used, reserved) = budget.usage();
                    stats.disk_budget_bytes = budget.limit();
                    stats.disk_used_bytes = used;
                    stats.disk_reserved_bytes = reserved;
                }
                stats
            }
            Flavor::Disabled(metrics) => metrics.snapshot(),
        }
    }

    /// A snapshot of the entries in the index, oldest first: what each has written,
    /// how far its fastest reader is, its open readers, its age and its state. For
    /// status pages and for measuring; it takes the index lock once, briefly. Empty for
    /// a disabled cache. (Transient entries have left the index and are not listed.)
    pub fn entries(&self) -> Vec<EntryStatus> {
        let Flavor::Enabled(shared) = &self.flavor else {
            return Vec::new();
        };
        let now = Instant::now();
        let entries: Vec<(String, Arc<Entry>)> = lock(&shared.index)
            .iter()
            .map(|(k, e)| (k.clone(), Arc::clone(e)))
            .collect();
        let mut statuses: Vec<EntryStatus> =
            entries.iter().map(|(k, e)| e.status(k, now)).collect();
        statuses.sort_by_key(|s| std::cmp::Reverse(s.age));
        statuses
    }

    /// Blocks until the background adoption of committed entries (see
    /// [`Config::durable`]) is over: every committed entry found in the directory at
    /// start-up was checked and is in the index, or was refused. Lookups never need
    /// this (a lookup checks its key's file itself); it is for status and measuring.
    /// Returns at once for a cache that is not durable, or disabled.
    pub fn wait_adopted(&self) {
        if let Flavor::Enabled(shared) = &self.flavor {
            let _ = shared.adopted.wait();
        }
    }

    /// Blocks until the commits of the durable entries whose producers have finished
    /// are over (see [`Config::durable`]): each is committed, or its commit failed
    /// (and was logged). A commit runs on a pool thread after the entry's end was
    /// published, so a program that exits right after its last read should call this
    /// first, or its newest entries are not kept. Returns at once for a cache that is
    /// not durable.
    pub fn wait_durable(&self) {
        if let Flavor::Enabled(shared) = &self.flavor {
            shared.commits.wait();
        }
    }

    /// Blocks until the uploads to the shared tier under way (feature `remote`) are
    /// over: each entry produced here is published (its manifest committed) or given
    /// up. A program that exits right after its producers finished calls this first,
    /// or its newest entries are not shared. Returns at once without a shared tier.
    pub fn wait_uploaded(&self) {
        if let Flavor::Enabled(shared) = &self.flavor {
            shared.uploads.wait();
        }
    }

    /// The cache directory, for a real cache.
    pub fn dir(&self) -> Option<&Path> {
        self.config().map(|c| c.dir.as_path())
    }
}

impl Shared {
    fn find_or_create(self: &Arc<Self>, key: &str, producer: Producer) -> Result<(Stream, Lookup)> {
        if let Some(admission) = &self.admission {
            if !admission.admit(key, Instant::now()) {
                self.metrics.add_bypassed(1);
                return Ok((direct::start(key, producer, &self.metrics)?, Lookup::Bypass));
            }
        }
        loop {
            let now = Instant::now();
            let found = lock(&self.index).get(key).map(Arc::clone);
            if let Some(entry) = found.as_ref().filter(|e| self.is_expired(e, now)) {
                // Age is checked here, not only at the maintenance tick: an entry past
                // `max_age` is never served, however long the tick is.
                if self.retire(key, entry) {
                    self.metrics.add_evicted(1);
                }
            } else if let Some(entry) = found {
                match entry.open_reader() {
                    Ok((rx, opened)) => {
                        if opened {
                            self.kept.kept(&entry);
                        }
                        entry.touch(now);
                        self.metrics.add_hits(1);
                        return Ok((self.stream(&entry, rx), Lookup::Hit));
                    }
                    Err(err) => {
                        tracing::debug!(key, error = %Chain(&err), "streamcache: entry unusable, replacing it");
                        self.forget(key, &entry);
                    }
                }
            }
            // A durable cache looks for the key's committed file (its own from before a
            // restart, or another process's) before it produces.
            if self.config.durable {
                match self.adopt(key) {
                    Adoption::LookAgain => continue,
                    Adoption::Nothing => {}
                }
            }
            // A miss: everything that touches the disk happens before the index lock.
            // With a budget, the entry first holds its first chunk; without room, the
            // producer runs outside the cache.
            let footprint = match &self.budget {
                None => None,
                Some(budget) => match budget.open(crate::budget::PAGE) {
                    Some(footprint) => Some(footprint),
                    None => return self.bypass_for_room(key, producer),
                },
            };
            let (file, entry_file) = match self.create_file() {
                Ok(created) => created,
                Err(err) if self.budget.is_some() && err.kind() == io::ErrorKind::StorageFull => {
                    return self.bypass_for_room(key, producer);
                }
                Err(err) => return Err(err),
            };
            let (sender, tap) = pipe::channel(
                self.config.backpressure,
                self.config.max_lead_bytes,
                footprint.is_some(),
            );
            let entry = Arc::new(Entry::new(entry_file, tap, footprint));
            let (rx, opened) = match entry.open_reader() {
                Ok(opened) => opened,
                Err(err) => {
                    entry.remove_file();
                    return Err(err);
                }
            };
            {
                let mut index = lock(&self.index);
                if index.contains_key(key) {
                    // Another caller made this key's entry meanwhile: read theirs.
                    drop(index);
                    drop(rx);
                    entry.remove_file();
                    continue;
                }
                index.insert(key.to_owned(), Arc::clone(&entry));
                self.metrics.set_index_entries(index.len());
            }
            if opened {
                self.kept.kept(&entry);
            }
            self.metrics.add_misses(1);
            let stream = self.stream(&entry, rx);
            let room = entry.footprint().map(|footprint| {
                Room::new(
                    Arc::clone(footprint),
                    self.leave_when_transient(key, &entry),
                    Arc::clone(&self.metrics),
                )
            });
            let durable = self.config.durable.then(|| {
                Commit::new(
                    key,
                    Arc::clone(entry.file()),
                    Arc::clone(&self.commits),
                    Arc::clone(&self.metrics),
                )
            });
            #[cfg(feature = "remote")]
            let producer = self.remote_job(key, &entry, producer);
            #[cfg_attr(not(test), allow(unused_mut))]
            let mut writer = Writer::entry(sender, file, entry.path(), room, durable.flatten());
            #[cfg(test)]
            if let Some(kind) = self.close_fault.get() {
                writer.inject_close_fault(*kind);
            }
            self.start_producer(key, entry, writer, producer);
            return Ok((stream, Lookup::Miss));
        }
    }

    /// With a shared tier, what the new entry of `key` runs in place of `producer`:
    /// look in the store, follow another host, or produce and publish (with one more
    /// reader of the entry for the upload).
    #[cfg(feature = "remote")]
    fn remote_job(&self, key: &str, entry: &Arc<Entry>, producer: Producer) -> Producer {
        let Some(remote) = &self.config.remote else {
            return producer;
        };
        let upload = match entry.open_reader() {
            Ok((rx, opened)) => {
                if opened {
                    self.kept.kept(entry);
                }
                // Its bytes are not served to anyone: counted apart.
                Some(Stream::entry(
                    rx,
                    entry.path(),
                    entry.footprint().map(Arc::clone),
                    Arc::new(Metrics::default()),
                ))
            }
            Err(err) => {
                tracing::debug!(key, error = %Chain(&err), "streamcache: no reader for the upload");
                None
            }
        };
        let job = crate::remote::Job {
            remote: remote.clone(),
            key: key.to_owned(),
            max_age: self.config.max_age,
            metrics: Arc::clone(&self.metrics),
            upload,
            uploads: Arc::clone(&self.uploads),
            staging: self.config.dir.clone(),
        };
        Box::new(move |w: &mut Writer| job.run(w, producer))
    }

    /// Looks for `key`'s committed file and, if it checks out, puts it in the index.
    fn adopt(&self, key: &str) -> Adoption {
        let Some(_claim) = self.checks.claim(key) else {
            return Adoption::LookAgain;
        };
        if lock(&self.index).contains_key(key) {
            return Adoption::LookAgain;
        }
        let committed = match self.store.open_committed(key) {
            Ok(Some(committed)) => committed,
            Ok(None) => return Adoption::Nothing,
            Err(err) => {
                tracing::warn!(key, error = %Chain(&err), "streamcache: open committed entry");
                return Adoption::Nothing;
            }
        };
        let record = durable::read_record(
            &committed.file,
            committed.size,
            &committed.entry_file.path(),
        );
        match self.admit_committed(committed, record, Some(key)) {
            Some(_) => {
                self.metrics.add_shared_hits(1);
                Adoption::LookAgain
            }
            None => Adoption::Nothing,
        }
    }

    /// Checks a committed file, whose commit record (`read_record`'s verdict) was read
    /// already, against `key` if given, and puts it in the index as a finished entry.
    /// Returns its key if it did. A damaged or expired file is removed; nothing
    /// unchecked is ever in the index.
    fn admit_committed(
        &self,
        committed: Committed,
        record: Result<std::result::Result<durable::Record, Refusal>>,
        key: Option<&str>,
    ) -> Option<String> {
        let Committed {
            file,
            size,
            entry_file,
        } = committed;
        let path = entry_file.path();
        let refuse = |refusal: Refusal| {
            if refusal.is_damage() {
                self.metrics.add_verification_failures(1);
                tracing::warn!(path = %path.display(), "streamcache: committed entry not served: {refusal}; removing it");
            } else {
                tracing::debug!(path = %path.display(), "streamcache: committed entry not served: {refusal}");
            }
            if refusal != Refusal::OtherKey {
                if let Err(err) = entry_file.remove() {
                    tracing::warn!(error = %Chain(&err), "streamcache: remove refused entry");
                }
            }
            None
        };
        let checked = record.and_then(|record| match record {
            Err(refusal) => Ok(Err(refusal)),
            Ok(record) if key.is_some_and(|key| key != record.key) => Ok(Err(Refusal::OtherKey)),
            Ok(record) if record.age(SystemTime::now()) > self.config.max_age => {
                Ok(Err(Refusal::Expired))
            }
            Ok(record) => Ok(if record.verify(&file, &path)? {
                Ok(record)
            } else {
                Err(Refusal::Altered)
            }),
        });
        let record = match checked {
            Ok(Ok(record)) => record,
            Ok(Err(refusal)) => return refuse(refusal),
            Err(err) => {
                // Unreadable now: not served, left for the sweep.
                tracing::warn!(error = %Chain(&err), "streamcache: check committed entry");
                return None;
            }
        };
        let footprint = match &self.budget {
            None => None,
            Some(budget) => {
                let on_disk = crate::budget::pages(size);
                let Some(footprint) = budget.open(on_disk.max(crate::budget::PAGE)) else {
                    // The budget governs the directory: what it cannot hold goes.
                    tracing::debug!(
                        key = record.key,
                        "streamcache: no room under the budget for a committed entry; removing it"
                    );
                    if let Err(err) = entry_file.remove() {
                        tracing::warn!(error = %Chain(&err), "streamcache: remove committed entry");
                    }
                    return None;
                };
                footprint.set_on_disk(on_disk);
                footprint.settle();
                Some(footprint)
            }
        };
        let created = Instant::now()
            .checked_sub(record.age(SystemTime::now()))
            .unwrap_or_else(Instant::now);
        let entry = Arc::new(Entry::adopted(
            entry_file,
            pipe::finished(record.length),
            footprint,
            created,
            file,
        ));
        let mut index = lock(&self.index);
        if index.contains_key(&record.key) {
            // Made here meanwhile: this one is dropped, its file left as it is.
            return None;
        }
        index.insert(record.key.clone(), Arc::clone(&entry));
        self.metrics.set_index_entries(index.len());
        drop(index);
        self.kept.kept(&entry);
        Some(record.key)
    }

    fn stream(&self, entry: &Entry, rx: pipe::Receiver) -> Stream {
        Stream::entry(
            rx,
            entry.path(),
            entry.footprint().map(Arc::clone),
            Arc::clone(&self.metrics),
        )
    }

    /// No room for a new entry: the producer streams to this caller alone.
    fn bypass_for_room(&self, key: &str, producer: Producer) -> Result<(Stream, Lookup)> {
        self.metrics.add_room_bypasses(1);
        self.metrics.add_bypassed(1);
        tracing::debug!(
            key,
            "streamcache: no room for a new entry, bypassing the cache"
        );
        Ok((direct::start(key, producer, &self.metrics)?, Lookup::Bypass))
    }

    /// What an entry does when it turns transient: it leaves the index (later lookups
    /// of its key miss), its name goes (nobody will open it again; open readers read
    /// on), and it admits no new readers.
    fn leave_when_transient(self: &Arc<Self>, key: &str, entry: &Arc<Entry>) -> OnTransient {
        let weak = Arc::downgrade(self);
        let key = key.to_owned();
        let entry = Arc::downgrade(entry);
        Box::new(move || {
            let Some(entry) = entry.upgrade() else {
                return;
            };
            entry.seal();
            match weak.upgrade() {
                Some(shared) => {
                    shared.retire(&key, &entry);
                }
                None => entry.remove_file(),
            }
            tracing::debug!(key, "streamcache: entry outgrew its room, now transient");
        })
    }

    /// Evicts the least recently used finished entry, to make room under the budget.
    /// Returns false if there is none.
    fn evict_for_room(&self) -> bool {
        let victim = {
            let mut index = lock(&self.index);
            let oldest = index
                .iter()
                .filter(|(_, entry)| entry.is_complete())
                .min_by_key(|(_, entry)| entry.last_used())
                .map(|(key, _)| key.clone());
            let Some(key) = oldest else {
                return false;
            };
            let victim = index.remove(&key);
            self.metrics.set_index_entries(index.len());
            victim
        };
        if let Some(entry) = victim {
            self.metrics.add_evicted(1);
            entry.retire();
        }
        true
    }

    fn create_file(&self) -> Result<(File, crate::filestore::EntryFile)> {
        #[cfg(test)]
        if let Some(hook) = &self.create_hook {
            return hook(&self.store);
        }
        self.store.create()
    }

    fn start_producer(
        self: &Arc<Self>,
        key: &str,
        entry: Arc<Entry>,
        writer: Writer,
        producer: Producer,
    ) {
        let weak = Arc::downgrade(self);
        let failed_key = key.to_owned();
        let before_failure: runner::BeforeFailure = Box::new(move || {
            // The failed entry leaves the index before anyone learns of the failure, so
            // whoever saw the error and asks again gets a fresh entry. Nobody will open
            // it by name again: its space goes back now (after a full disk that
            // matters) rather than when the sweep finds it. Readers that have the file
            // open keep reading what was written.
            match weak.upgrade() {
                Some(shared) => {
                    shared.retire(&failed_key, &entry);
                }
                None => entry.remove_file(),
            }
        });
        // A failure to start reaches the stream's readers; the lookup itself succeeded.
        let _ = runner::start(runner::Job {
            key: key.to_owned(),
            writer,
            producer,
            metrics: Arc::clone(&self.metrics),
            before_failure: Some(before_failure),
        });
    }

    /// Whether `entry` is past `max_age` at `now`: created strictly before
    /// `now - max_age`.
    fn is_expired(&self, entry: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(entry.created()) > self.config.max_age
    }

    /// Removes `key` from the index if it still maps to `entry` (not a newer entry).
    /// Returns whether it did.
    fn forget(&self, key: &str, entry: &Arc<Entry>) -> bool {
        let mut index = lock(&self.index);
        if index
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(current, entry))
        {
            index.remove(key);
            self.metrics.set_index_entries(index.len());
            #[cfg(test)]
            if let Some(hook) = self.on_remove.get() {
                hook(entry);
            }
            drop(index);
            entry.release_handle();
            return true;
        }
        false
    }

    /// Takes `key`'s `entry` out of the index (if it is still there) and removes its
    /// file's name: nobody will open it again; open readers read on. Returns whether
    /// this call took it out.
    fn retire(&self, key: &str, entry: &Arc<Entry>) -> bool {
        let forgot = self.forget(key, entry);
        entry.remove_file();
        forgot
    }

    fn maintain(&self, now: Instant, wall: SystemTime) {
        self.evict(now);
        #[cfg(feature = "remote")]
        if let Some(remote) = &self.config.remote {
            self.sweeper
                .start(remote, self.config.max_age, &self.metrics);
        }
        let Some(cutoff) = wall.checked_sub(self.config.max_age) else {
            return;
        };
        match self.store.sweep(cutoff) {
            Ok(sweep) => {
                self.metrics.add_swept_files(sweep.removed);
                self.metrics.set_disk_usage(sweep.usage);
            }
            Err(err) => tracing::error!(error = %Chain(&err), "streamcache: sweep"),
        }
    }

    fn evict(&self, now: Instant) {
        let expired: Vec<Arc<Entry>> = {
            let mut index = lock(&self.index);
            let mut expired = Vec::new();
            index.retain(|_, entry| {
                let expired_now = self.is_expired(entry, now);
                if expired_now {
                    expired.push(Arc::clone(entry));
                }
                !expired_now
            });
            self.metrics.set_index_entries(index.len());
            expired
        };
        self.metrics.add_evicted(expired.len() as u64);
        // Readers and the writer keep their open handles; only the name goes.
        for entry in expired {
            entry.retire();
        }
    }
}

/// Adopts the committed entries under the cache's directory, in the background after
/// [`Cache::new`]: each is checked against its digest before it enters the index, and
/// a lookup of a key not yet adopted checks that key's file itself. Stops early if the
/// cache is dropped.
fn adopt_all(shared: &Weak<Shared>) {
    let files = match shared
        .upgrade()
        .map(|shared| shared.store.committed_files())
    {
        Some(Ok(files)) => files,
        Some(Err(err)) => {
            tracing::warn!(error = %Chain(&err), "streamcache: list committed entries");
            return;
        }
        None => return,
    };
    let mut adopted = 0u64;
    for (dir, name) in files {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let committed = match shared.store.open_committed_at(dir, name) {
            Ok(Some(committed)) => committed,
            Ok(None) => continue,
            Err(err) => {
                tracing::warn!(error = %Chain(&err), "streamcache: open committed entry");
                continue;
            }
        };
        // Claimed by key once the key is known: read the record first.
        let record = durable::read_record(
            &committed.file,
            committed.size,
            &committed.entry_file.path(),
        );
        let key = match &record {
            Ok(Ok(record)) => Some(record.key.clone()),
            _ => None,
        };
        let claim = match key.as_deref() {
            Some(key) if lock(&shared.index).contains_key(key) => continue,
            Some(key) => match shared.checks.claim(key) {
                Some(claim) => Some(claim),
                // A lookup checked it meanwhile.
                None => continue,
            },
            None => None,
        };
        if shared
            .admit_committed(committed, record, key.as_deref())
            .is_some()
        {
            adopted += 1;
            shared.metrics.add_adopted_entries(1);
        }
        drop(claim);
    }
    tracing::info!(adopted, "streamcache: committed entries adopted");
}

#[cfg(test)]
mod tests;
