//! The floor of a pipe: the position of its slowest open reader.
//!
//! The pipe's back pressure follows the *fastest* reader (a slow reader must not hold
//! the producer back), so the pipe itself never asks where the slowest one is. A
//! transient entry does (see [`crate::room`]): it may release the part of its file that
//! every open reader has passed, and when it has no room left it waits for the slowest
//! reader instead. That is rare, so the price on the data path is kept to one atomic
//! store and one atomic load per read: each reader publishes its position in a mark
//! of its own, and looks whether anyone waits for the floor to move.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use crate::sync::{lock, AtomicBool, AtomicU64, Condvar, Mutex};

/// A closed reader's mark: it no longer holds anything back.
const CLOSED: u64 = u64::MAX;

/// The open readers' positions, and a writer that may wait for the lowest to rise.
#[derive(Debug, Default)]
pub(crate) struct Floor {
    /// Whether readers are tracked at all: only an entry that may turn transient (a
    /// cache with a budget or a free-space guard) needs it; the others pay nothing.
    tracked: bool,
    marks: Mutex<Vec<Arc<AtomicU64>>>,
    /// The bytes below this may be gone from the file (a transient entry released
    /// them); raised under the marks' lock, so a reader that seeks back below it is
    /// refused rather than served holes.
    released: AtomicU64,
    /// Someone waits in [`Floor::wait_above`]: readers that move must wake it.
    waiting: AtomicBool,
    moved: Condvar,
}

/// One reader's place on the floor (none if the floor is not tracked).
#[derive(Debug)]
pub(crate) struct Mark {
    position: Option<Arc<AtomicU64>>,
}

impl Floor {
    /// A floor that tracks its readers if `tracked`; else [`Floor::lowest`] is `None`.
    pub(crate) fn new(tracked: bool) -> Floor {
        Floor {
            tracked,
            ..Floor::default()
        }
    }

    /// Puts a reader at position 0 on the floor.
    pub(crate) fn join(&self) -> Mark {
        if !self.tracked {
            return Mark { position: None };
        }
        let position = Arc::new(AtomicU64::new(0));
        let mut marks = lock(&self.marks);
        // Closed readers go here too, so a long-lived entry's list stays as long as its
        // open readers, not as long as all it ever had.
        marks.retain(|m| m.load(SeqCst) != CLOSED);
        marks.push(Arc::clone(&position));
        Mark {
            position: Some(position),
        }
    }

    /// The lowest position of an open reader; `None` if no reader is open.
    #[cfg(test)]
    pub(crate) fn lowest(&self) -> Option<u64> {
        lowest(&mut lock(&self.marks))
    }

    /// Claims the release of the file below `bound(lowest)`, where `lowest` is the
    /// slowest open reader's position; returns that bound, or `None` if no reader is
    /// open. Under the marks' lock, so a reader seeking back either moved its mark
    /// first (and `lowest` counts it) or sees the claim and is refused.
    pub(crate) fn claim_release(&self, bound: impl FnOnce(u64) -> u64) -> Option<u64> {
        // Held until the claim is made (see `Mark::set_back`).
        let mut marks = lock(&self.marks);
        let to = bound(lowest(&mut marks)?);
        self.released.fetch_max(to, SeqCst);
        Some(to)
    }

    /// Waits until every open reader is past `position`, and returns the lowest
    /// position then (`None` once no reader is open).
    pub(crate) fn wait_above(&self, position: u64) -> Option<u64> {
        let mut marks = lock(&self.marks);
        // Raised before the positions are read, and readers store their position before
        // they look at it (both SeqCst): a reader that moves after the check below sees
        // the flag and wakes us, under the lock, so the wake-up cannot be lost.
        self.waiting.store(true, SeqCst);
        let floor = loop {
            match lowest(&mut marks) {
                Some(floor) if floor <= position => {}
                floor => break floor,
            }
            marks = crate::sync::wait(&self.moved, marks);
        };
        self.waiting.store(false, SeqCst);
        floor
    }

    fn moved(&self) {
        if self.waiting.load(SeqCst) {
            let _marks = lock(&self.marks);
            self.moved.notify_all();
        }
    }
}

/// The lowest of the open readers' `marks`, dropping the closed ones; `None` if none
/// is open.
fn lowest(marks: &mut Vec<Arc<AtomicU64>>) -> Option<u64> {
    marks.retain(|m| m.load(SeqCst) != CLOSED);
    marks.iter().map(|m| m.load(SeqCst)).min()
}

impl Mark {
    /// This reader is now at `position`.
    pub(crate) fn set(&self, position: u64, floor: &Floor) {
        if let Some(mark) = &self.position {
            mark.store(position, SeqCst);
            floor.moved();
        }
    }

    /// This reader moves back to `position`, unless the bytes there may have been
    /// released (see [`Floor::claim_release`]): then it stays and this returns false.
    pub(crate) fn set_back(&self, position: u64, floor: &Floor) -> bool {
        let Some(mark) = &self.position else {
            return true;
        };
        let _marks = lock(&floor.marks);
        if position < floor.released.load(SeqCst) {
            return false;
        }
        mark.store(position, SeqCst);
        true
    }

    /// This reader has closed.
    pub(crate) fn close(&self, floor: &Floor) {
        self.set(CLOSED, floor);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_the_lowest_open_reader_and_closed_readers_do_not_count() {
        let floor = Floor::new(true);
        assert_eq!(floor.lowest(), None);
        let (a, b) = (floor.join(), floor.join());
        a.set(10, &floor);
        assert_eq!(floor.lowest(), Some(0));
        b.set(4, &floor);
        assert_eq!(floor.lowest(), Some(4));
        b.close(&floor);
        assert_eq!(floor.lowest(), Some(10));
        a.close(&floor);
        assert_eq!(floor.lowest(), None);
    }

    #[test]
    fn a_wait_for_the_floor_ends_when_the_slowest_reader_passes_or_closes() {
        let floor = Floor::new(true);
        let (slow, fast) = (floor.join(), floor.join());
        fast.set(100, &floor);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| floor.wait_above(5));
            slow.set(5, &floor);
            slow.set(6, &floor);
            assert_eq!(waiter.join().unwrap(), Some(6));
        });
        std::thread::scope(|s| {
            let waiter = s.spawn(|| floor.wait_above(6));
            slow.close(&floor);
            assert_eq!(waiter.join().unwrap(), Some(100));
        });
        std::thread::scope(|s| {
            let waiter = s.spawn(|| floor.wait_above(100));
            fast.close(&floor);
            assert_eq!(waiter.join().unwrap(), None);
        });
    }
}
