//! Command limits: at most `max_commands` commands at once, and at most
//! `max_commands_per_dir` in one canonical working directory (for git: one repository),
//! as Gitaly limits its pack-objects.
//!
//! A producer takes a [`CommandSlot`] before it starts its command and gives it back
//! when the command and everything it started are gone. The producer runs only on a
//! miss (or a bypass), never on a hit, so a hit never waits here: a client that joins
//! an entry whose producer is queued waits with that producer, for the same command.
//!
//! Producers that find no free slot wait in line, first come first served, for at most
//! `max_queue_wait`; then they give up with [`Busy`] before their command has written a
//! byte, and the clients of that entry run the command themselves (or, with
//! `queue_full = "refuse"`, are told so and fail). A slot is taken in two steps: first
//! one of the directory's (in the directory's own line), then one of all (in the line
//! for all). A directory at its limit so holds back only its own requests, never
//! another directory's; one that waits for a slot of all holds one of its directory's
//! meanwhile, which only its own requests could have used.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What clients are told when no slot was free within `max_queue_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueFull {
    /// `busy`: they run the command themselves (the default).
    FailOpen,
    /// A refusal on stderr and exit code [`REFUSED_EXIT_CODE`]: they fail.
    Refuse,
}

/// The exit code of a client refused for want of a slot (`queue_full = "refuse"`):
/// `EX_TEMPFAIL` of `sysexits.h`, "try again later".
pub(crate) const REFUSED_EXIT_CODE: i32 = 75;

/// The command limits, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandLimits {
    /// Commands at once, over all directories; `None`: no limit.
    pub(crate) max_commands: Option<usize>,
    /// Commands at once in one canonical working directory; `None`: no limit.
    pub(crate) max_commands_per_dir: Option<usize>,
    /// How long a producer waits in line for a slot.
    pub(crate) max_queue_wait: Duration,
    pub(crate) queue_full: QueueFull,
}

impl CommandLimits {
    /// Whether any limit is set.
    pub(crate) fn is_limited(&self) -> bool {
        self.max_commands.is_some() || self.max_commands_per_dir.is_some()
    }
}

/// A producer gave up waiting for a slot. Its text is what clients are told.
#[derive(Debug, Clone, thiserror::Error)]
#[error("busy: no command slot within max_queue_wait ({waited}): {why}")]
pub(crate) struct Busy {
    waited: String,
    why: String,
    /// What clients are told.
    pub(crate) queue_full: QueueFull,
}

/// The slots and the lines of producers waiting for them.
#[derive(Debug)]
pub(crate) struct CommandQueue {
    limits: CommandLimits,
    state: Mutex<State>,
    changed: Condvar,
    waits: AtomicU64,
    wait_micros: AtomicU64,
    timeouts: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// The slots of all.
    all: Slots,
    /// The slots of each directory.
    dirs: HashMap<PathBuf, Slots>,
    next_ticket: u64,
    /// Producers waiting now, in either line.
    waiting: usize,
}

/// Slots of one kind (all, or one directory's): how many are taken, and the tickets
/// waiting for one, first first.
#[derive(Debug, Default)]
struct Slots {
    running: usize,
    line: VecDeque<u64>,
}

/// A command's place among those that may run at once, given back on drop.
#[derive(Debug)]
pub(crate) struct CommandSlot {
    queue: Arc<CommandQueue>,
    dir: Option<PathBuf>,
    global: bool,
}

impl CommandQueue {
    pub(crate) fn new(limits: CommandLimits) -> CommandQueue {
        CommandQueue {
            limits,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            waits: AtomicU64::new(0),
            wait_micros: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        }
    }

    /// Takes a slot for a command in `dir`, waiting in line for up to `max_queue_wait`.
    ///
    /// # Errors
    ///
    /// [`Busy`] if no slot was free in time.
    pub(crate) fn acquire(self: &Arc<Self>, dir: &Path) -> Result<CommandSlot, Busy> {
        let started = Instant::now();
        let deadline = started + self.limits.max_queue_wait;
        let mut slot = CommandSlot {
            queue: Arc::clone(self),
            dir: None,
            global: false,
        };
        let mut waited = false;
        let mut state = lock(&self.state);
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        let result = (|| {
            if let Some(max) = self.limits.max_commands_per_dir {
                state = self.wait_for_dir(state, dir, max, ticket, deadline, &mut waited)?;
                slot.dir = Some(dir.to_path_buf());
            }
            if let Some(max) = self.limits.max_commands {
                state = self.wait_for_all(state, max, ticket, deadline, &mut waited)?;
                slot.global = true;
            }
            Ok(state)
        })();
        if waited {
            self.waits.fetch_add(1, Relaxed);
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.wait_micros.fetch_add(micros, Relaxed);
        }
        match result {
            Ok(_) => Ok(slot),
            Err(why) => {
                self.timeouts.fetch_add(1, Relaxed);
                // `slot` drops here: a directory slot it took goes back.
                Err(Busy {
                    waited: humantime::format_duration(self.limits.max_queue_wait).to_string(),
                    why,
                    queue_full: self.limits.queue_full,
                })
            }
        }
    }

    /// Step one: a slot of `dir`'s. On a timeout, says why.
    fn wait_for_dir<'a>(
        &self,
        state: MutexGuard<'a, State>,
        dir: &Path,
        max: usize,
        ticket: u64,
        deadline: Instant,
        waited: &mut bool,
    ) -> Result<MutexGuard<'a, State>, String> {
        self.wait_in_line(state, Some(dir), max, ticket, deadline, waited)
            .map_err(|mut state| {
                state.forget_dir_if_idle(dir);
                format!(
                    "all {max} command slots of {} taken (max_commands_per_dir {max})",
                    dir.display()
                )
            })
    }

    /// Step two: a slot of all. On a timeout, says why.
    fn wait_for_all<'a>(
        &self,
        state: MutexGuard<'a, State>,
        max: usize,
        ticket: u64,
        deadline: Instant,
        waited: &mut bool,
    ) -> Result<MutexGuard<'a, State>, String> {
        self.wait_in_line(state, None, max, ticket, deadline, waited)
            .map_err(|_| format!("all {max} command slots taken (max_commands {max})"))
    }

    /// Takes one of the `max` slots of `dir` (`None`: of all), in their line, first
    /// come first served, until `deadline`; on a timeout, leaves the line and gives the
    /// state back as the error.
    fn wait_in_line<'a>(
        &self,
        mut state: MutexGuard<'a, State>,
        dir: Option<&Path>,
        max: usize,
        ticket: u64,
        deadline: Instant,
        waited: &mut bool,
    ) -> Result<MutexGuard<'a, State>, MutexGuard<'a, State>> {
        let mine = state.slots(dir);
        if mine.line.is_empty() && mine.running < max {
            mine.running += 1;
            return Ok(state);
        }
        mine.line.push_back(ticket);
        *waited = true;
        state.waiting += 1;
        loop {
            state = self.wait_until(state, deadline);
            let mine = state.slots(dir);
            if mine.line.front() == Some(&ticket) && mine.running < max {
                mine.line.pop_front();
                mine.running += 1;
                state.waiting -= 1;
                // The next in this line may be able to go too.
                self.changed.notify_all();
                return Ok(state);
            }
            if Instant::now() >= deadline {
                mine.line.retain(|&t| t != ticket);
                state.waiting -= 1;
                self.changed.notify_all();
                return Err(state);
            }
        }
    }

    fn wait_until<'a>(
        &self,
        state: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> MutexGuard<'a, State> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return state;
        }
        self.changed
            .wait_timeout(state, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    fn release(&self, dir: Option<&Path>, global: bool) {
        let mut state = lock(&self.state);
        if global {
            state.all.running -= 1;
        }
        if let Some(dir) = dir {
            if let Some(entry) = state.dirs.get_mut(dir) {
                entry.running -= 1;
            }
            state.forget_dir_if_idle(dir);
        }
        drop(state);
        self.changed.notify_all();
    }

    /// Producers waiting for a slot now.
    pub(crate) fn waiting(&self) -> u64 {
        lock(&self.state).waiting as u64
    }

    /// Producers that found no free slot and waited (until they got one or gave up).
    pub(crate) fn waits(&self) -> u64 {
        self.waits.load(Relaxed)
    }

    /// The time those producers waited, in all.
    pub(crate) fn waited(&self) -> Duration {
        Duration::from_micros(self.wait_micros.load(Relaxed))
    }

    /// Producers that gave up waiting ([`Busy`]).
    pub(crate) fn timeouts(&self) -> u64 {
        self.timeouts.load(Relaxed)
    }
}

impl State {
    /// The slots of `dir` (made if need be), or of all.
    fn slots(&mut self, dir: Option<&Path>) -> &mut Slots {
        match dir {
            Some(dir) => self.dirs.entry(dir.to_path_buf()).or_default(),
            None => &mut self.all,
        }
    }

    fn forget_dir_if_idle(&mut self, dir: &Path) {
        if self
            .dirs
            .get(dir)
            .is_some_and(|d| d.running == 0 && d.line.is_empty())
        {
            self.dirs.remove(dir);
        }
    }
}

impl Drop for CommandSlot {
    fn drop(&mut self) {
        if self.dir.is_some() || self.global {
            self.queue.release(self.dir.as_deref(), self.global);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// How long a test waits for an event before it fails: a guard, not a measure.
    const PATIENCE: Duration = Duration::from_secs(60);

    fn queue(all: Option<usize>, per_dir: Option<usize>, wait: Duration) -> Arc<CommandQueue> {
        Arc::new(CommandQueue::new(CommandLimits {
            max_commands: all,
            max_commands_per_dir: per_dir,
            max_queue_wait: wait,
            queue_full: QueueFull::FailOpen,
        }))
    }

    /// Polls until `n` producers wait (a test helper: the queue has no event for it).
    fn until_waiting(q: &CommandQueue, n: u64) {
        let deadline = Instant::now() + PATIENCE;
        while q.waiting() != n {
            assert!(Instant::now() < deadline, "never {n} waiting");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn producers_past_the_limit_get_their_slots_first_come_first_served() {
        let q = queue(Some(1), None, PATIENCE);
        let first = q.acquire(Path::new("/r")).unwrap();
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for i in 0..3 {
            let (theirs, tx) = (Arc::clone(&q), tx.clone());
            threads.push(std::thread::spawn(move || {
                let slot = theirs.acquire(Path::new("/r")).unwrap();
                tx.send((i, slot)).unwrap();
            }));
            // In line before the next one starts.
            until_waiting(&q, i + 1);
        }
        drop(first);
        for expected in 0..3 {
            let (i, slot) = rx.recv_timeout(PATIENCE).unwrap();
            assert_eq!(i, expected);
            // Nobody else got in while this one holds the only slot.
            assert!(rx.try_recv().is_err());
            drop(slot);
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!((q.waiting(), q.waits(), q.timeouts()), (0, 3, 0));
    }

    #[test]
    fn a_directory_at_its_limit_holds_back_only_its_own_requests() {
        let q = queue(Some(3), Some(1), PATIENCE);
        let a = q.acquire(Path::new("/a")).unwrap();
        let (tx, rx) = mpsc::channel();
        let (q2, tx2) = (Arc::clone(&q), tx.clone());
        let waiter = std::thread::spawn(move || {
            let slot = q2.acquire(Path::new("/a")).unwrap();
            tx2.send(()).unwrap();
            drop(slot);
        });
        until_waiting(&q, 1);
        // Another directory goes ahead of the waiting one, at once.
        let b = q.acquire(Path::new("/b")).unwrap();
        assert_eq!(q.waiting(), 1);
        assert!(rx.try_recv().is_err());
        drop(a);
        rx.recv_timeout(PATIENCE).unwrap();
        waiter.join().unwrap();
        drop(b);
        assert_eq!(q.waits(), 1);
    }

    #[test]
    fn a_producer_that_waits_past_max_queue_wait_is_busy_and_leaves_no_slot_taken() {
        let q = queue(Some(2), Some(1), Duration::from_millis(20));
        let a = q.acquire(Path::new("/a")).unwrap();
        let busy = q.acquire(Path::new("/a")).unwrap_err();
        assert!(busy.to_string().starts_with("busy: "), "{busy}");
        assert!(
            busy.to_string().contains("max_commands_per_dir 1"),
            "{busy}"
        );
        let b = q.acquire(Path::new("/b")).unwrap();
        // Both slots of all are taken now: a third directory waits, and gives up.
        let busy = q.acquire(Path::new("/c")).unwrap_err();
        assert!(busy.to_string().contains("max_commands 2"), "{busy}");
        assert_eq!((q.waiting(), q.waits(), q.timeouts()), (0, 2, 2));
        drop((a, b));
        // The slot of /c that the timed-out producer held while it waited went back.
        let state = lock(&q.state);
        assert_eq!(state.all.running, 0);
        assert!(state.dirs.is_empty(), "{:?}", state.dirs);
    }

    #[test]
    fn without_limits_nothing_waits() {
        let q = queue(None, None, Duration::ZERO);
        let slots: Vec<_> = (0..100)
            .map(|_| q.acquire(Path::new("/r")).unwrap())
            .collect();
        assert_eq!((q.waits(), q.timeouts()), (0, 0));
        drop(slots);
    }
}
