//! The room an entry being written holds on disk, from the writer's side.
//!
//! Before each write the writer asks [`Room::admit`] how much of it may go to the file
//! now. The entry holds room in chunks from the budget ([`crate::budget`]); when the
//! next chunk cannot be had, the entry turns **transient** instead of failing:
//!
//! * it leaves the index and admits no new readers (later lookups of its key miss, and
//!   bypass if there is still no room);
//! * the part of its file that every open reader has passed is released with
//!   `fallocate(FALLOC_FL_PUNCH_HOLE)`, so the file takes no more than what lies
//!   between the slowest reader and the producer;
//! * when even that does not fit in what it holds, the producer waits for the slowest
//!   reader (back pressure against it, not the fastest), and a write that is larger
//!   than the room left goes in pieces (a short `write`, which `write_all` repeats).
//!
//! Every reader that was attached gets every byte: nothing below the slowest reader is
//! ever read again, because nobody new can join.
//!
//! A write can still find the file system full (another program raced the guard). The
//! entry then turns transient holding only what is on disk, and makes room by
//! releasing; if it has nothing on disk to release, it turns **passing**: the rest of
//! its bytes go to its readers through memory, one piece (at most a write, at most
//! 1 MiB) at a time, the producer waiting for the slowest reader before each piece
//! ([`crate::pipe::Sender::pass`]). Lack of room fails no reader, also mid-entry.

use std::fs::File;
use std::sync::Arc;

use rustix::fs::FallocateFlags;

use crate::budget::{pages, Footprint, GUARD_EVERY, PAGE};
use crate::error::{Error, Op, Result};
use crate::metrics::Metrics;
use crate::pipe::Sender;

/// Called once when the entry turns transient: take it out of the index and seal it.
pub(crate) type OnTransient = Box<dyn FnOnce() + Send + Sync>;

/// An entry's room while it is written (see the module docs).
pub(crate) struct Room {
    footprint: Arc<Footprint>,
    /// The start of the file up to here (whole pages) has been released.
    released: u64,
    /// The next write from here on looks at the free-space guard.
    next_guard_check: u64,
    on_transient: Option<OnTransient>,
    metrics: Arc<Metrics>,
    transient: bool,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("footprint", &self.footprint)
            .field("released", &self.released)
            .field("transient", &self.transient)
            .finish_non_exhaustive()
    }
}

impl Room {
    pub(crate) fn new(
        footprint: Arc<Footprint>,
        on_transient: OnTransient,
        metrics: Arc<Metrics>,
    ) -> Room {
        Room {
            footprint,
            released: 0,
            next_guard_check: GUARD_EVERY,
            on_transient: Some(on_transient),
            metrics,
            transient: false,
        }
    }

    /// How many of the `len` bytes to be written at `written` may go to the file now
    /// (at least one), after growing, releasing, or waiting for the slowest reader.
    ///
    /// # Errors
    ///
    /// [`Error::ReadersGone`] if every reader left while the writer waited; an
    /// [`Error::Io`] if releasing failed.
    pub(crate) fn admit(
        &mut self,
        sender: &Sender,
        file: &File,
        path: &std::path::Path,
        written: u64,
        len: u64,
    ) -> Result<u64> {
        if written >= self.next_guard_check {
            self.footprint.check_guard();
            self.next_guard_check = written + GUARD_EVERY;
        }
        loop {
            let held = self.footprint.held();
            let needed = pages(written + len) - self.released;
            if needed <= held {
                return Ok(len);
            }
            if !self.transient {
                if self.footprint.grow(needed - held) {
                    continue;
                }
                self.turn_transient();
            }
            if self.release(sender, file, path, written)? {
                continue;
            }
            // What fits: the file may reach `released + held` bytes (`held` is whole
            // pages, as is `released`).
            let fits = (self.released + held).saturating_sub(written).min(len);
            if fits > 0 {
                return Ok(fits);
            }
            // Nothing fits until the slowest reader passes the next whole page.
            if sender
                .await_slowest_past(self.released + PAGE - 1)
                .is_none()
            {
                return Err(Error::ReadersGone);
            }
        }
    }

    /// Room for `extra` bytes after the `written` ones (a durable entry's commit
    /// record), growing the footprint if needed. False if the budget has none, or the
    /// entry is transient; nothing changes then.
    pub(crate) fn reserve_tail(&mut self, written: u64, extra: u64) -> bool {
        if self.transient {
            return false;
        }
        let held = self.footprint.held();
        let needed = pages(written + extra) - self.released;
        needed <= held || self.footprint.grow(needed - held)
    }

    /// The file now holds `written` bytes.
    pub(crate) fn wrote(&self, written: u64) {
        self.footprint
            .set_on_disk(pages(written).saturating_sub(self.released));
    }

    /// A write found the file system full although the budget had room (the guard
    /// raced with another program). Turns transient, holding no more than is on disk,
    /// so the next [`Room::admit`] waits for readers and releases. Returns false when
    /// nothing is on disk to release: no room can be made, and the entry passes its
    /// bytes through memory from now on.
    pub(crate) fn out_of_space(&mut self, written: u64) -> bool {
        if !self.transient {
            self.turn_transient();
        }
        let on_disk = pages(written).saturating_sub(self.released);
        self.footprint.shrink_to(on_disk);
        on_disk > 0
    }

    /// The entry is finished (or failed): what is held beyond the file goes back.
    pub(crate) fn finish(&mut self) {
        self.footprint.settle();
        if std::mem::take(&mut self.transient) {
            self.metrics.add_transient_entries(-1);
        }
    }

    fn turn_transient(&mut self) {
        self.transient = true;
        self.metrics.add_transient_entries(1);
        if let Some(leave) = self.on_transient.take() {
            leave();
        }
    }

    /// Releases the whole pages below the slowest reader (and below `written`).
    /// Returns whether anything was released.
    fn release(
        &mut self,
        sender: &Sender,
        file: &File,
        path: &std::path::Path,
        written: u64,
    ) -> Result<bool> {
        let Some(to) = sender.claim_release(|lowest| lowest.min(written) / PAGE * PAGE) else {
            return Err(Error::ReadersGone);
        };
        if to <= self.released {
            return Ok(false);
        }
        rustix::fs::fallocate(
            file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            self.released,
            to - self.released,
        )
        .map_err(|e| Error::io(Op::Release, path, e.into()))?;
        self.released = to;
        self.wrote(written);
        Ok(true)
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.finish();
    }
}
