//! A streaming cache for very large blobs.
//!
//! # Overview
//!
//! Some outputs are expensive to make, large (gigabytes), and wanted by many callers at
//! once: the pack that `git pack-objects` makes for a clone is the classic case. This
//! cache runs the producer once per key and streams its output to every caller,
//! **while it is being made**: storing gigabytes is slow, so nobody waits for the end
//! before reading the start.
//!
//! The output goes to a file (it does not fit in memory), and readers follow the writer
//! through that file. Callers that arrive later, during production or after, start at
//! byte 0 and catch up from the page cache. The process's memory stays flat however
//! large the blobs are.
//!
//! ```text
//!   find_or_create(key) --hit---> new reader on the entry's file
//!          |
//!         miss --> new file <root>/<xx>/<id>-<n>, producer thread starts
//!
//!   producer --write--> [ entry file ] --pread/sendfile/splice--> reader 1 .. N
//!       ^                                                      |
//!       +------ waits while it is ahead of the fastest reader -+
//! ```
//!
//! The parts (`docs/ARCHITECTURE.md` has the arrows between them, the lock order, and
//! the path of a key and of a byte):
//!
//! * [`Cache`]: the in-memory index of entries, find-or-create, eviction, maintenance;
//! * an **entry** per cached key: it owns its entry file, the tap of its pipe and the
//!   read handle its readers share;
//! * the **file store**: creates entry files beneath the root, hands out the value that
//!   owns each file's name, sweeps stale files, all through directory descriptors;
//! * a **pipe** per entry with sealed ends: the writer's end (in [`Writer`]), and a
//!   reader's end per [`Stream`], which adds the producer's result;
//! * the **runner**: producers on a pool of threads, panics and errors turned into the
//!   result every reader gets;
//! * the **bypass**: a producer streaming to one caller through an OS pipe, for keys the
//!   cache does not hold (yet);
//! * the **zero-copy engine** behind [`Stream::send_to`].
//!
//! ```
//! use std::io::{Read, Write};
//! # let dir = tempfile::tempdir()?;
//! let mut cfg = streamcache::Config::new(dir.path());
//! cfg.min_occurrences = 0; // cache from the first occurrence
//! let cache = streamcache::Cache::new(cfg)?;
//!
//! let make = |w: &mut streamcache::Writer| {
//!     for _ in 0..16 {
//!         w.write_all(&[b'x'; 64 << 10])?;
//!     }
//!     Ok(())
//! };
//! let (mut first, created) = cache.find_or_create("blob", make)?;
//! assert!(created);
//! // A second caller joins the running producer instead of starting another.
//! let (mut second, created) = cache.find_or_create("blob", |_| unreachable!())?;
//! assert!(!created);
//!
//! let mut a = Vec::new();
//! let mut b = Vec::new();
//! first.read_to_end(&mut a)?;
//! second.read_to_end(&mut b)?;
//! first.wait()?;
//! assert_eq!(a.len(), 1 << 20);
//! assert_eq!(a, b);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Back pressure
//!
//! With [`Config::backpressure`] on (the default), each write call of the producer first
//! waits until the **fastest** reader has read everything written so far. The producer
//! thus runs at most one write call ahead of its fastest reader, the disk fills no
//! faster than someone reads, and slow readers never hold the producer back (the data
//! is on disk for them). With it off, the producer writes at full speed. Either way, a
//! producer whose readers have all gone gets [`std::io::ErrorKind::BrokenPipe`] from its
//! next write, and the entry is abandoned: nobody wants what it makes.
//! [`Config::max_lead_bytes`] widens the one write to a window of that many bytes, so
//! producer and readers work at once instead of taking turns.
//!
//! # Errors
//!
//! A producer returns `std::io::Result<()>`. Its error, or `panic: …` if it panicked,
//! reaches every reader: [`Stream::wait`] returns it, and a read that reaches the end of
//! what was written returns it instead of end-of-file, so a truncated entry never looks
//! complete. The failed entry leaves the index before anyone learns of the failure, so
//! whoever retries gets a fresh producer. A failed write (a full disk) fails the entry
//! even if the producer ignores the error.
//!
//! # Eviction
//!
//! Entries live for [`Config::max_age`] from their creation. A background thread evicts
//! old entries from the index and removes their files; Unix semantics let readers that
//! still have the file open finish. The same thread sweeps the directory and removes any
//! file older than `max_age`, whoever made it: that is how files of crashed or restarted
//! processes are reclaimed. Processes may share one directory. A lookup never serves
//! an entry past `max_age`, whenever the thread last ran.
//!
//! # Disk budget
//!
//! [`Config::max_disk_bytes`] bounds the bytes this cache's files take, at every
//! instant: an entry being written holds room ahead of its writes (its final size is
//! unknown), and a file that readers still hold open counts until they close it, even
//! once evicted. [`Config::min_free_bytes`] keeps free space on the file system above
//! a floor, whatever else fills it. To make room, finished entries are evicted least
//! recently used first. A miss that finds no room runs its producer outside the cache
//! ([`Lookup::Bypass`]); an entry that outgrows the room it can get turns *transient*:
//! it takes no new readers, releases the part of its file that every reader has passed
//! (`fallocate(FALLOC_FL_PUNCH_HOLE)`), and holds its producer back to its slowest
//! reader. Every reader gets every byte; lack of room never fails a caller.
//!
//! # Durable entries
//!
//! With [`Config::durable`], a finished entry outlives its process: when its producer
//! succeeds, a pool thread *commits* it (readers and the producer do not wait): it
//! hashes the file (BLAKE3) and puts a record of the key, length, digest and creation
//! time after its bytes, under a name made from the key, in one `rename(2)`
//! ([`Cache::wait_durable`] waits for the commits under way). A cache started later on
//! the directory adopts the committed entries in the background ([`Cache::wait_adopted`]
//! waits for that), and a lookup that misses the index opens its key's committed file
//! directly, so processes sharing a directory serve each other's finished entries.
//! Nothing is served that does not match its digest: a truncated, altered or
//! uncommitted file is a miss, and is removed. Entries being written stay private to
//! their process. `docs/ARCHITECTURE.md` gives the format and the protocol.
//!
//! # Several hosts (feature `remote`)
//!
//! With `Config::remote`, caches of several hosts share one bucket of S3-compatible
//! object storage through the `object_store` crate: a local miss first looks for the
//! key's committed manifest there (a *remote hit*, streamed part by part into the local
//! entry, each part checked against its digest before it is written), else takes the
//! key's lease with a conditional create and produces, uploading the entry in parts
//! while it is written and committing a manifest with a conditional create; a host that
//! finds a live lease follows that upload instead of producing, and takes the lease over
//! if it stops changing. The store never fails a lookup: an error or a timeout makes
//! the host produce by itself. `docs/ARCHITECTURE.md` gives the objects and the protocol.
//!
//! # Seeking
//!
//! [`Stream`] implements [`std::io::Seek`] (and `tokio::io::AsyncSeek`), also into an
//! entry still being written: a position the producer has not reached is waited for by
//! the next read, and seeking from the end works once the entry is complete. That is
//! what an HTTP front end needs for `Range` requests and resumed downloads.
//!
//! # Admission
//!
//! With [`Config::min_occurrences`] = n (default 1), a key is cached only from its
//! (n+1)-th occurrence within about two `max_age` periods; earlier ones run their
//! producer outside the cache, writing nothing to disk. Most one-off keys never touch
//! the disk.
//!
//! # Sync and async
//!
//! Threads are the native mode: producers run on threads of their own (a pool whose idle threads exit after 5 s) and [`Stream`]
//! implements [`std::io::Read`]. With the `tokio` feature, `Stream` also implements
//! `tokio::io::AsyncRead` and has [`Stream::wait_async`]. [`Stream::send_to`] copies into
//! a socket, pipe or file with `sendfile(2)` and `splice(2)`, never through user space.
//!
//! # Where this differs from the reference
//!
//! The behaviour follows Gitaly's Go package `streamcache`. These differences are
//! deliberate:
//!
//! * **No torn writes.** A write call that fails halfway publishes none of its bytes;
//!   the reference publishes the part that reached the file.
//! * **Sticky write failures.** After a failed write the entry is never served as
//!   complete, even if the producer ignores the error and returns `Ok`.
//! * **A failed entry's file goes at once**, not when the sweep finds it: after a full
//!   disk, the space comes back right away.
//! * **A panicking producer never crashes the process**, with the same `panic: …`
//!   result as the reference, also for producers that bypass the cache.
//! * **Nothing below the root is reached through a link**, and a FIFO or other
//!   non-regular file under an entry's name never blocks a lookup.
//! * **Lookups say what happened**: [`Cache::lookup`] says whether a call hit, missed or
//!   bypassed the cache.
//! * **Readers share one read handle** per entry and the cache keeps recent handles
//!   open, so a hit usually costs no `open(2)`.
//! * **Async readers** (`tokio` feature) and **zero copy** with `splice(2)` as well as
//!   `sendfile(2)`.
//! * **Errors print each cause once**: `Display` says what failed, `source()` why.
//! * **Durable, verified entries** ([`Config::durable`]): the reference never reuses a
//!   file after a restart because it cannot know the file is whole; a committed entry
//!   carries its digest, and nothing that does not match it is served.
//! * **Seekable streams**, into entries still being written.
//! * **A shared tier** (feature `remote`): hosts share entries through object storage,
//!   also while they are made; the reference is one host's disk.
//! * **A disk budget and a free-space guard** ([`Config::max_disk_bytes`],
//!   [`Config::min_free_bytes`]) that hold while entries of unknown size are written;
//!   the reference is bounded by age alone. Lack of room bypasses the cache or makes an
//!   entry transient, and never fails a caller.
//! * **Age is checked at lookup**: an entry older than `max_age` is never served; the
//!   reference serves it until the next maintenance tick (up to a minute later).
//! * **A lead window**: [`Config::max_lead_bytes`] lets a producer run up to that many
//!   bytes ahead of its fastest reader, so both work at once; 0 keeps the reference's
//!   one write.
//!
//! # Memory for readers close behind the producer
//!
//! While more readers copy an entry (with `read`, not [`Stream::send_to`]) than the
//! machine has cores, its producer keeps its latest 8 MiB of writes in memory as well,
//! and readers within them copy from there instead of calling `pread`: at 64 readers
//! that took a fifth of the CPU time off the page-cache lookups (W1 N = 64 on tmpfs:
//! +30%). The memory is freed when the producer finishes; a cache whose readers all
//! `send_to` a socket (the daemon) never allocates it.
//!
//! # Memory maps and `SIGBUS`
//!
//! With a lead window of 1 MiB or more, readers copy an entry from a shared read-only
//! memory map of its file (16 MiB at a time, shared by the entry's readers) instead of
//! `pread`, which on tmpfs costs the producer an eighth of its rate. The mapped pages
//! count in the process's resident size while mapped. If another program truncates an
//! entry file under such a reader, the copy faults: the cache installs a `SIGBUS`
//! handler (once, at the first map) that turns that fault into an error for the reader
//! ([`std::io::ErrorKind::UnexpectedEof`], "entry file is shorter than what was written
//! to it") and hands every other `SIGBUS` to the handler that was there before, or to
//! the default action. A program that installs its own `SIGBUS` handler afterwards
//! should chain to the previous one, or use no lead window.
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `tokio` | `AsyncRead` for [`Stream`], [`Stream::wait_async`] |
//! | `remote` | the shared tier on S3-compatible object storage: `Config::remote`, `Remote` |
//! | `testing` | `testing::LoggingCache`, a wrapper that records every lookup, for tests of code that uses the cache |

// One module maps entry files into memory and guards the maps against truncation
// (`window`); it alone may use `unsafe`, and says why at each use.
#![deny(unsafe_code)]

mod admission;
mod budget;
mod cache;
mod config;
mod cursor;
mod direct;
mod durable;
mod entry;
mod error;
mod filestore;
mod floor;
mod janitor;
mod metrics;
mod pipe;
mod pool;
mod recent;
#[cfg(feature = "remote")]
mod remote;
mod room;
mod runner;
mod stream;
mod sync;
mod waiter;
#[allow(unsafe_code)]
mod window;
mod writer;
mod zerocopy;

#[cfg(feature = "testing")]
pub mod testing;

pub use crate::cache::{Cache, EntryState, EntryStatus, Lookup};
pub use crate::config::{Config, DEFAULT_MAX_AGE};
pub use crate::error::{Error, Op, Result};
pub use crate::metrics::Stats;
#[cfg(feature = "remote")]
pub use crate::remote::{Remote, DEFAULT_PART_SIZE, DEFAULT_TAKEOVER_AFTER, DEFAULT_TIMEOUT};
pub use crate::stream::Stream;
pub use crate::writer::Writer;
