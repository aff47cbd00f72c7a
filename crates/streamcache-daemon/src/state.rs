//! What every connection thread of the daemon shares: the cache, the settings, the
//! counters, the running commands, and the connections being served.
//!
//! `server` changes this state and `metrics` reads it; both depend on this module, and
//! it depends on neither.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use streamcache::Cache;

use crate::descriptors::Budget;
use crate::producer::Children;
use crate::queue::CommandQueue;
use crate::settings::ServeSettings;

/// Counters the daemon keeps on top of the library's.
///
/// The connections being served are not among them: [`Daemon`] counts those under a
/// lock (see [`Daemon::connections_active`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) bad_requests: AtomicU64,
    pub(crate) peer_refused: AtomicU64,
    pub(crate) client_gone: AtomicU64,
    pub(crate) busy: AtomicU64,
}

/// What every connection thread shares.
#[derive(Debug)]
pub(crate) struct Daemon {
    pub(crate) cache: Cache,
    pub(crate) settings: ServeSettings,
    /// What the descriptor limit allows: how many connections are served at once.
    pub(crate) descriptors: Budget,
    pub(crate) counters: Counters,
    pub(crate) children: Arc<Children>,
    /// The command limits' slots and line, if any limit is set.
    pub(crate) queue: Option<Arc<CommandQueue>>,
    pub(crate) started: Instant,
    /// Connections being served: what [`Daemon::admit`] holds to the limit, and what a
    /// stopping daemon waits on (`idle` is notified when it reaches 0).
    active: Mutex<usize>,
    idle: Condvar,
    /// The requests being streamed now, by number, so that a daemon that stops before
    /// they end can name each one it cuts.
    in_flight: Mutex<HashMap<u64, InFlight>>,
    next_request: AtomicU64,
}

/// One request being streamed: who asked for what.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    pub(crate) pid: i32,
    pub(crate) program: String,
    pub(crate) cwd: String,
    /// The key's first 16 hex digits.
    pub(crate) key: String,
    pub(crate) started: Instant,
}

/// A request's place among those in flight; it leaves when dropped.
#[derive(Debug)]
pub(crate) struct InFlightGuard<'a> {
    daemon: &'a Daemon,
    id: u64,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        lock(&self.daemon.in_flight).remove(&self.id);
    }
}

impl Daemon {
    pub(crate) fn new(cache: Cache, settings: ServeSettings, descriptors: Budget) -> Daemon {
        let queue = settings
            .commands
            .is_limited()
            .then(|| Arc::new(CommandQueue::new(settings.commands.clone())));
        Daemon {
            queue,
            cache,
            settings,
            descriptors,
            counters: Counters::default(),
            children: Arc::default(),
            started: Instant::now(),
            active: Mutex::new(0),
            idle: Condvar::new(),
            in_flight: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(0),
        }
    }

    /// Records `request` as in flight until the guard is dropped.
    pub(crate) fn in_flight(&self, request: InFlight) -> InFlightGuard<'_> {
        let id = self.next_request.fetch_add(1, Relaxed);
        lock(&self.in_flight).insert(id, request);
        InFlightGuard { daemon: self, id }
    }

    /// The requests in flight now, oldest first.
    pub(crate) fn requests_in_flight(&self) -> Vec<InFlight> {
        let mut requests: Vec<InFlight> = lock(&self.in_flight).values().cloned().collect();
        requests.sort_by_key(|r| r.started);
        requests
    }

    /// Takes a place among the connections served at once (`max_connections`, or fewer
    /// if the descriptor limit says so), if one is free. The place is given back when
    /// the [`Slot`] is dropped.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut active = lock(&self.active);
        if *active >= self.descriptors.connections {
            return None;
        }
        *active += 1;
        Some(Slot(Arc::clone(self)))
    }

    /// Connections being served now. Read it before any counter when taking a snapshot:
    /// a connection gives its slot back, under the same lock, only after it has counted
    /// everything else, so a snapshot that shows a connection ended holds all its counts.
    pub(crate) fn connections_active(&self) -> u64 {
        *lock(&self.active) as u64
    }

    /// Waits until no connection is being served, or until `deadline`. Returns how many
    /// still are.
    pub(crate) fn wait_idle(&self, deadline: Instant) -> usize {
        let mut active = lock(&self.active);
        while *active > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            active = self
                .idle
                .wait_timeout(active, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *active
    }
}

/// One connection's place among those served at once. The connection's thread owns it
/// and drops it last, after everything it counted.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Daemon>);

impl Slot {
    pub(crate) fn daemon(&self) -> &Daemon {
        &self.0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut active = lock(&self.0.active);
        *active -= 1;
        if *active == 0 {
            self.0.idle.notify_all();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
