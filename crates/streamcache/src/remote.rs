//! The shared tier: entries published to, found in, and followed through S3-compatible
//! object storage, so that several hosts run a producer once between them.
//!
//! The local disk stays the first tier: whatever comes from the store is written into
//! a local entry, which local readers follow as usual. The store is reached on the
//! producer's thread (a local miss runs [`Job::run`] in place of the producer), so a
//! lookup never waits for the network.
//!
//! Objects, below the prefix, for the key whose BLAKE3 is `<hh><62 hex>`:
//!
//! ```text
//!   <hh>/<62 hex>/manifest            the commit: length, part size, part digests
//!   <hh>/<62 hex>/lease               who is producing it now, and what it uploaded
//!   <hh>/<62 hex>/parts/<upload>/<n>  the n-th part of one upload (unique per upload)
//! ```
//!
//! A local miss: (1) a manifest younger than `max_age` is a *remote hit*, streamed part
//! by part into the local entry, each part checked against its digest before its first
//! byte is written. (2) Otherwise the host creates the lease (`PutMode::Create`): it
//! won, it produces, and a pool thread uploads the entry's bytes in parts while they
//! are written ([`publish`]), renewing the lease (`PutMode::Update`) at every part and
//! every quarter of `takeover_after`; at the end it commits the manifest with
//! `PutMode::Create` (the first host to commit wins; a loser removes its parts).
//! (3) A host that finds a live lease *follows* it ([`fetch`]): it downloads the parts
//! as the lease lists them into an unnamed local file, and serves them once the
//! manifest is committed, so that no byte of an upload that later dies is ever served.
//! A lease that does not change for `takeover_after` is taken over with a conditional
//! update, and the follower produces itself.
//!
//! The store never fails a lookup: an error or a timeout before the local entry got its
//! first byte makes the host produce by itself, and the store is left alone for a
//! while after an error ([`Health`]).

mod fetch;
mod format;
mod publish;
mod sweep;

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

use crate::durable::Commits;
use crate::error::{Error, Op, Result};
use crate::metrics::Metrics;
use crate::runner::Producer;
use crate::stream::Stream;
use crate::sync::{lock, Mutex};
use crate::writer::Writer;

pub(crate) use sweep::Sweeper;

/// The default size of the parts an entry is uploaded in.
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// The default time a lease may go without a change before another host takes it over.
pub const DEFAULT_TAKEOVER_AFTER: Duration = Duration::from_secs(30);
/// The default bound on one request to the store.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes a manifest or a lease may take: a manifest lists 66 bytes per part,
/// so this is more than a terabyte in 8 MiB parts. Larger objects are refused unread,
/// so that a damaged store cannot make a host allocate without bound.
const MAX_SMALL_OBJECT: u64 = 32 << 20;

/// How long the store is left alone after it failed a request: lookups meanwhile
/// produce locally without asking it, so an unreachable store costs one timeout per
/// this period, not one per lookup.
const COOLDOWN: Duration = Duration::from_secs(15);

/// The shared tier of a cache: an object store (any `object_store::ObjectStore`: S3,
/// GCS, Azure, R2, SeaweedFS, MinIO…) and a prefix in it. Set it as
/// [`Config::remote`](crate::Config::remote); caches of several hosts that use the same
/// store and prefix share their entries, also while they are being made.
///
/// The lease that decides which host produces relies on two guarantees of the store:
/// a `PUT` with `If-None-Match: *` fails when the object exists (`PutMode::Create`),
/// and a `PUT` with `If-Match: <etag>` fails when the object changed
/// (`PutMode::Update`), both atomically. AWS S3, SeaweedFS, MinIO, R2 and GCS give
/// both; `object_store`'s S3 client needs `S3ConditionalPut::ETagMatch` (its default).
///
/// ```no_run
/// # #[cfg(feature = "remote")] {
/// use std::sync::Arc;
/// let store = object_store::memory::InMemory::new();
/// let remote = streamcache::Remote::new(Arc::new(store), "streamcache")?;
/// let mut cfg = streamcache::Config::new("/var/cache/streamcache");
/// cfg.remote = Some(remote);
/// # }
/// # Ok::<(), streamcache::Error>(())
/// ```
#[derive(Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    part_size: usize,
    takeover_after: Duration,
    timeout: Duration,
    runtime: Arc<Runtime>,
    health: Arc<Health>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("store", &format_args!("{}", self.store))
            .field("prefix", &self.prefix.as_ref())
            .field("part_size", &self.part_size)
            .field("takeover_after", &self.takeover_after)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Remote {
    fn eq(&self, other: &Remote) -> bool {
        Arc::ptr_eq(&self.store, &other.store)
            && self.prefix == other.prefix
            && self.part_size == other.part_size
            && self.takeover_after == other.takeover_after
            && self.timeout == other.timeout
    }
}

impl Eq for Remote {}

impl Remote {
    /// The shared tier in `store`, below `prefix` (may be empty), with the default part
    /// size, takeover time and timeout.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `prefix` is not a valid object path; [`Error::Io`]
    /// ([`Op::Spawn`]) if the thread that drives requests cannot start.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Remote> {
        let prefix = ObjectPath::parse(prefix.trim_matches('/'))
            .map_err(|e| Error::config("remote", format!("bad prefix {prefix:?}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("streamcache-remote")
            .enable_all()
            .build()
            .map_err(|e| Error::io(Op::Spawn, std::path::Path::new(prefix.as_ref()), e))?;
        Ok(Remote {
            store,
            prefix,
            part_size: DEFAULT_PART_SIZE,
            takeover_after: DEFAULT_TAKEOVER_AFTER,
            timeout: DEFAULT_TIMEOUT,
            runtime: Arc::new(Runtime(Some(runtime))),
            health: Arc::new(Health::default()),
        })
    }

    /// Uploads entries in parts of `bytes` (default [`DEFAULT_PART_SIZE`]). A part is
    /// held in memory while it is uploaded or downloaded, and a follower serves nothing
    /// it has not checked, so this is the grain of sharing too.
    pub fn with_part_size(mut self, bytes: usize) -> Remote {
        self.part_size = bytes;
        self
    }

    /// Takes over a lease that has not changed for `after` (default
    /// [`DEFAULT_TAKEOVER_AFTER`]). A live producer renews its lease four times as
    /// often, also while it writes nothing.
    pub fn with_takeover_after(mut self, after: Duration) -> Remote {
        self.takeover_after = after;
        self
    }

    /// Gives up a request to the store after `timeout` (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Remote {
        self.timeout = timeout;
        self
    }

    /// The part size.
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.part_size < 4096 || self.part_size > (1 << 30) {
            return Err(Error::config(
                "remote",
                format!(
                    "part size must be between 4 KiB and 1 GiB, got {}",
                    self.part_size
                ),
            ));
        }
        if self.takeover_after.is_zero() || self.timeout.is_zero() {
            return Err(Error::config(
                "remote",
                "takeover time and timeout must be above zero",
            ));
        }
        Ok(())
    }

    /// The objects of `key`.
    fn names(&self, key: &str) -> Names {
        let hex = blake3::hash(key.as_bytes()).to_hex();
        let (fan, rest) = hex.as_str().split_at(2);
        let dir = self.prefix.clone().join(fan).join(rest);
        Names { dir }
    }

    /// Runs one request to the store on this tier's runtime, bounded by the timeout.
    /// Called from the cache's own threads (producers, uploads, maintenance), never
    /// from a caller's.
    fn call<T>(
        &self,
        what: &'static str,
        request: impl Future<Output = object_store::Result<T>>,
    ) -> std::result::Result<T, RemoteError> {
        self.runtime
            .handle()
            .block_on(bounded(what, self.timeout, request))
    }
}

impl Remote {
    /// [`Remote::call`] for a request that may take a while (a listing): six timeouts.
    fn call_long<T>(
        &self,
        what: &'static str,
        request: impl Future<Output = object_store::Result<T>>,
    ) -> std::result::Result<T, RemoteError> {
        self.runtime
            .handle()
            .block_on(bounded(what, self.timeout * 6, request))
    }
}

/// Awaits `request` for at most `timeout`.
async fn bounded<T>(
    what: &'static str,
    timeout: Duration,
    request: impl Future<Output = object_store::Result<T>>,
) -> std::result::Result<T, RemoteError> {
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(RemoteError::Store { what, source }),
        Err(_) => Err(RemoteError::Timeout {
            what,
            after: timeout,
        }),
    }
}

/// The tier's own runtime, shut down without waiting when the last handle goes (a
/// runtime dropped inside another one's task would panic).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    fn handle(&self) -> &tokio::runtime::Handle {
        match &self.0 {
            Some(runtime) => runtime.handle(),
            None => unreachable!("the runtime is only taken on drop"),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Whether the store answered lately: after an error it is left alone for
/// [`COOLDOWN`].
#[derive(Debug, Default)]
struct Health {
    down_until: Mutex<Option<Instant>>,
}

impl Health {
    fn is_up(&self) -> bool {
        let mut down = lock(&self.down_until);
        match *down {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                *down = None;
                true
            }
            None => true,
        }
    }

    fn failed(&self) {
        *lock(&self.down_until) = Some(Instant::now() + COOLDOWN);
    }
}

/// The object names of one key.
#[derive(Debug, Clone)]
struct Names {
    dir: ObjectPath,
}

impl Names {
    fn manifest(&self) -> ObjectPath {
        self.dir.clone().join("manifest")
    }

    fn lease(&self) -> ObjectPath {
        self.dir.clone().join("lease")
    }

    fn part(&self, upload: &str, index: usize) -> ObjectPath {
        self.dir
            .clone()
            .join("parts")
            .join(upload)
            .join(format!("{index:08}"))
    }
}

/// What went wrong with the store; logged and counted, never a caller's error unless
/// bytes were already served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RemoteError {
    #[error("remote {what}")]
    Store {
        what: &'static str,
        #[source]
        source: object_store::Error,
    },
    #[error("remote {what}: no answer within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("remote {what}: {why}")]
    Refused { what: &'static str, why: String },
    #[error("remote {what}: local file")]
    Local {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl RemoteError {
    fn is_not_found(&self) -> bool {
        matches!(
            self,
            RemoteError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }
        )
    }

    fn is_precondition(&self) -> bool {
        matches!(
            self,
            RemoteError::Store {
                source: object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. },
                ..
            }
        )
    }

    /// Damage in what the store holds (a digest or a format that does not match), as
    /// opposed to the store failing to answer.
    fn is_damage(&self) -> bool {
        matches!(self, RemoteError::Refused { .. })
    }
}

/// What a local miss of a cache with a shared tier runs in place of its producer.
pub(crate) struct Job {
    pub(crate) remote: Remote,
    pub(crate) key: String,
    pub(crate) max_age: Duration,
    pub(crate) metrics: Arc<Metrics>,
    /// A reader of the entry, for the upload (`None`: nothing is uploaded).
    pub(crate) upload: Option<Stream>,
    /// Uploads under way, so that the cache can wait for them.
    pub(crate) uploads: Arc<Commits>,
    /// Where a follower keeps what it downloaded before it may serve it.
    pub(crate) staging: PathBuf,
}

impl Job {
    /// Fills `w` from the store, or runs `producer` (and publishes what it writes).
    pub(crate) fn run(mut self, w: &mut Writer, producer: Producer) -> io::Result<()> {
        if !self.remote.health.is_up() {
            return producer(w);
        }
        let names = self.remote.names(&self.key);
        match fetch::look(&self, &names) {
            Ok(fetch::Found::Manifest(manifest)) => {
                // Nothing to upload: let the entry go on without that reader.
                drop(self.upload.take());
                return fetch::serve(&self, &names, &manifest, w, producer);
            }
            Ok(fetch::Found::Nothing) => {}
            Err(err) => {
                self.failed(&err);
                return producer(w);
            }
        }
        match publish::claim(&self, &names) {
            Ok(publish::Claim::Won(lease)) => self.produce(&names, lease, w, producer),
            Ok(publish::Claim::Held(seen)) => fetch::follow(self, &names, seen, w, producer),
            Err(err) => {
                self.failed(&err);
                producer(w)
            }
        }
    }

    /// Runs `producer` and uploads what it writes, holding `lease`.
    fn produce(
        self,
        names: &Names,
        lease: publish::Lease,
        w: &mut Writer,
        producer: Producer,
    ) -> io::Result<()> {
        publish::start(self, names.clone(), lease);
        producer(w)
    }

    /// Counts and logs a failure of the store; the lookup goes on without it.
    fn failed(&self, err: &RemoteError) {
        self.metrics.add_remote_errors(1);
        if err.is_damage() {
            self.metrics.add_verification_failures(1);
        } else {
            self.remote.health.failed();
        }
        tracing::warn!(key = self.key, error = %crate::error::Chain(err), "streamcache: shared tier");
    }
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("key", &self.key)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}
