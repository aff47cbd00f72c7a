//! One writer, many readers, one file.
//!
//! ```text
//!                 write cursor (bytes written; subscribers = open readers)
//!                      |
//!   producer --write--> [ entry file on disk / page cache ] --pread--> reader 1
//!      ^                                                    --pread--> reader 2
//!      |                                                    --pread--> reader N
//!      +-- waits while written > read cursor + lead (the fastest reader's high-water
//!          mark, plus the lead window, 0 by default)
//! ```
//!
//! Like tokio's `sync::watch`, a pipe is a private shared state with sealed ends:
//!
//! * [`Sender`], the writer's end: begin and end a write, close, or fail with an error
//!   (the producer's result and the readers' wake-up in one call);
//! * [`Tap`], held by the entry that owns the file: opens readers;
//! * [`Receiver`], one reader's end: wait or poll for readable bytes, "I consumed n",
//!   its position and its file.
//!
//! The pipe knows no path and calls nothing outside itself. Inside, [`Core`] is the
//! coordination: integers under one lock, two condition variables and a list of task
//! wakers. It does no I/O and knows no file, so the back-pressure rule, end-of-stream
//! and the "all readers left" state are tested and model-checked on their own (loom).
//!
//! Readers of one entry share one read-only file handle (the entry hands it to
//! [`Tap::subscribe`]) and read with `pread` at their own offsets, so opening the second
//! and later readers of a live entry costs no `open(2)`.
//!
//! Lock order: the core's lock is the innermost lock of the crate. [`Tap::subscribe`]
//! runs its `open` under it (the entry's shared-handle lock is taken inside `open`, so
//! that one comes after; nothing takes the core's lock while holding the entry's).

use std::fs::File;
use std::sync::Arc;
use std::task::Waker;
#[cfg(any(feature = "tokio", test))]
use std::task::{Context, Poll};

use crate::cursor::{Cursor, Subscription};
use std::sync::atomic::Ordering::SeqCst;

use crate::error::{Error, Result};
use crate::floor::{Floor, Mark};
use crate::recent::Recent;
use crate::sync::{lock, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Condvar, Mutex};
use crate::waiter::Waiter;
use crate::window::Windows;

/// What a reader at some position may do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readable {
    /// Bytes up to this position (exclusive) are in the file.
    Until(u64),
    /// The writer finished successfully and the reader has everything.
    End,
    /// The producer failed and the reader has everything that was written.
    Failed,
}

const OPEN: u8 = 0;
const CLOSED: u8 = 1;
const FAILED: u8 = 2;

/// Waiting readers are all woken at least once per this many bytes written; in between,
/// each write wakes one of them (see [`Core::end_write`]). Smaller batches spread the
/// readers' copying over the writer's progress; larger ones save wake-ups. A/B at 16 and
/// 64 readers (fan-out GB/s, tmpfs and ext4): 256 KiB beat 1 MiB by about 10% and 4 MiB
/// by about 15%.
const WAKE_ALL_EVERY: u64 = if cfg!(loom) { 2 } else { 256 << 10 };

/// How long a reader spins for bytes while the writer is inside a write, before it
/// parks: about two 64 KiB writes to the page cache.
const READER_SPIN: std::time::Duration = std::time::Duration::from_micros(50);
/// With a lead window of at least [`DOZE_MIN_LEAD`] (or no back pressure), a reader that
/// caught up with the producer dozes this long instead of spinning or waiting to be
/// woken (once; finding nothing new after it, it waits to be woken), and the writer
/// wakes no dozing reader while it is less than half the window ahead of the fastest
/// reader. A reader that follows the writer write by write costs the writer a wake-up
/// (a system call, and on a virtual machine an interrupt to the reader's CPU) per
/// write, or, spinning, contention in the page cache: 13% of its rate on ext4 with a
/// lead of 8 MiB. Dozing, the reader takes what came in one go.
const DOZE: std::time::Duration = std::time::Duration::from_micros(100);
/// The smallest lead window that makes readers doze (see [`DOZE`]): smaller windows
/// would hold the writer back before a dozing reader looks again.
const DOZE_MIN_LEAD: u64 = 1 << 20;
/// How long the writer spins for a *hot* reader (one that got its last bytes by
/// spinning, so it is copying them right now) before it parks.
const WRITER_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

#[derive(Debug)]
struct State {
    writer_subscription: Option<Subscription>,
    /// The writer is parked on [`Core::writer`].
    writer_parked: bool,
    /// Wakers of tasks waiting in [`Core::poll_readable`].
    wakers: Vec<Waker>,
    /// Bytes written when waiting readers were last all woken.
    announced: u64,
    /// Some waiting readers were not woken for the latest writes.
    unannounced: bool,
    /// No new readers: the entry is transient (see [`crate::room`]).
    sealed: bool,
}

/// The coordination state of one pipe (see the module docs).
///
/// # Hot path and locking
///
/// Positions are atomics: a reader with bytes to read and a writer within its
/// back-pressure allowance touch no lock. The lock guards what is rare (subscribing,
/// closing, the writer's state) and every *parking*. A thread about to park raises the
/// parked flag of the cursor it waits on, with the lock held, and parks only if the
/// position that read-modify-write returned still gives it nothing to do. Whoever moves
/// that cursor does so with a read-modify-write of the same word, so it sees the flag
/// if the waiter parked first, and then takes the lock to notify. Two read-modify-writes
/// of one location cannot miss each other: no wake-up is lost (the loom models check
/// this).
///
/// A reader that finds nothing to read spins briefly before parking, if no other reader
/// is spinning: with one reader the hand-off per write then costs no sleep and wake-up.
///
/// Waking every parked reader on every write made 64 readers thrash on two cores. A
/// write wakes **one** parked reader, enough to keep the writer going under back
/// pressure, and all of them once per [`WAKE_ALL_EVERY`] bytes. The one it woke, when it
/// has caught up and is about to park again, wakes the rest if any write went
/// unannounced and the producer is not in a write, so no reader waits long for bytes
/// that are there while a producer thinks. (Waking them on every such park, with the
/// producer writing flat out, woke every reader on every write again: 16 readers made
/// 1.1 context switches each per 64 KiB.)
#[derive(Debug)]
pub(crate) struct Core {
    state: Mutex<State>,
    /// Bytes written; subscribers are the open readers; done once they all left.
    written: Cursor,
    /// The highest position any reader reached; done once the writer closed cleanly.
    read: Cursor,
    /// [`OPEN`], [`CLOSED`] or [`FAILED`]; changed under the lock.
    writer_state: AtomicU8,
    /// The writer is in or about to start a write: bytes are coming, so a waiting
    /// reader may spin.
    writing: AtomicBool,
    /// A reader got its last bytes by spinning and has not parked since: it is copying
    /// them now and will advance soon, so a waiting writer may spin.
    hot_reader: AtomicBool,
    /// A reader is spinning; at most one does, the writer may spin beside it.
    reader_spinning: AtomicBool,
    /// Readers parked on [`Core::readers`], dozing or not. Changed under the lock, so
    /// it is exact there; a spinner reads it without the lock.
    parked_readers: AtomicUsize,
    /// Readers dozing (see [`DOZE`]): parked, but looking again by themselves, so they
    /// raise no parked flag and the writer takes no lock for them. Changed under the
    /// lock.
    dozers: AtomicUsize,
    /// Tasks waiting in [`State::wakers`]: like parked readers, they take no core.
    /// Changed under the lock.
    waiting_tasks: AtomicUsize,
    readers: Condvar,
    writer: Condvar,
    backpressure: bool,
    /// With back pressure, how far past the fastest reader a write may start (0: only
    /// when that reader has read everything, the reference's rule).
    lead: u64,
    /// Readers doze (see [`DOZE`]), and the writer leaves dozing readers be while it is
    /// less than this many bytes ahead of the fastest reader; 0: readers never doze.
    /// Half the lead window, so they are woken before it holds the writer back.
    doze_batch: u64,
    /// How long a reader dozes: [`DOZE`] (tests stretch it).
    doze: std::time::Duration,
}

impl Core {
    pub(crate) fn new(backpressure: bool, lead: u64) -> Core {
        let read = Cursor::default();
        let writer_subscription = backpressure.then(|| read.subscribe());
        Core {
            state: Mutex::new(State {
                writer_subscription,
                writer_parked: false,
                wakers: Vec::new(),
                announced: 0,
                unannounced: false,
                sealed: false,
            }),
            written: Cursor::default(),
            read,
            writer_state: AtomicU8::new(OPEN),
            // A new pipe's producer is about to start: a reader may spin for its first
            // bytes (once; a producer that thinks first costs one spin per reader).
            writing: AtomicBool::new(true),
            hot_reader: AtomicBool::new(false),
            reader_spinning: AtomicBool::new(false),
            parked_readers: AtomicUsize::new(0),
            dozers: AtomicUsize::new(0),
            waiting_tasks: AtomicUsize::new(0),
            readers: Condvar::new(),
            writer: Condvar::new(),
            backpressure,
            lead,
            doze_batch: match (backpressure, lead) {
                _ if cfg!(loom) => 0,
                (false, _) => WAKE_ALL_EVERY,
                (true, lead) if lead >= DOZE_MIN_LEAD => lead / 2,
                _ => 0,
            },
            doze: DOZE,
        }
    }

    /// All readers left before the writer closed cleanly: nobody may join any more.
    fn is_broken(&self) -> bool {
        self.written.is_done() && !self.read.is_done()
    }

    /// Registers a reader, calling `open` under the pipe lock so that opening is atomic
    /// with the decision that the pipe is broken.
    pub(crate) fn subscribe<T>(
        &self,
        open: impl FnOnce() -> Result<T>,
    ) -> Result<(T, Subscription)> {
        let st = lock(&self.state);
        if self.is_broken() || st.sealed {
            return Err(Error::ReadersGone);
        }
        let opened = open()?;
        Ok((opened, self.written.subscribe()))
    }

    /// Admits no new readers from now on; those open read on.
    pub(crate) fn seal(&self) {
        lock(&self.state).sealed = true;
    }

    pub(crate) fn close_reader(&self, subscription: Subscription) {
        let mut st = lock(&self.state);
        let last = self.written.unsubscribe(subscription);
        // This reader may have been the one woken for writes the others did not hear
        // about; it hands them on before it goes.
        if st.unannounced {
            self.announce_locked(&mut st);
        }
        if last && st.writer_parked {
            self.writer.notify_one();
        }
    }

    /// Waits until the writer may start a write (back pressure) and returns the write
    /// position. Fails once every reader has left.
    pub(crate) fn begin_write(&self) -> Result<u64> {
        // Announced before the wait: a reader that just advanced and finds nothing new
        // sees a write coming and spins for it instead of parking. (While the writer
        // waits for back pressure no reader is caught up, so nobody spins in vain.)
        self.writing.store(true, SeqCst);
        let granted = self.wait_to_write();
        if granted.is_err() {
            self.writing.store(false, SeqCst);
        }
        granted
    }

    fn wait_to_write(&self) -> Result<u64> {
        if let Some(ready) = self.try_begin_write() {
            return ready;
        }
        if let Some(ready) = self.spin(
            WRITER_SPIN,
            None,
            || self.hot_reader.load(SeqCst),
            || self.try_begin_write(),
        ) {
            return ready;
        }
        let mut st = lock(&self.state);
        loop {
            if let Some(ready) = self.try_begin_write() {
                return ready;
            }
            let read = self.read.flag_parked();
            if self.written.position() <= read.saturating_add(self.lead) {
                self.read.clear_parked();
                continue;
            }
            st.writer_parked = true;
            st = crate::sync::wait(&self.writer, st);
            st.writer_parked = false;
        }
    }

    fn try_begin_write(&self) -> Option<Result<u64>> {
        if self.writer_state.load(SeqCst) != OPEN {
            return Some(Err(Error::WriterClosed));
        }
        if self.written.is_done() {
            return Some(Err(Error::ReadersGone));
        }
        let written = self.written.position();
        if !self.backpressure || written <= self.read.position().saturating_add(self.lead) {
            return Some(Ok(written));
        }
        None
    }

    /// Spins for up to `limit` while `ready` says no and `worth_it` says yes, if the
    /// pipe's running threads leave a core free ([`Core::has_a_free_core`]) and `slot`
    /// (if any) is free.
    ///
    /// With as many running readers as cores, some reader always has bytes to copy,
    /// and a spinner would take its core: at 64 readers on 2 cores, spinning was a
    /// quarter of all CPU time. But readers that are parked take no core: counting all
    /// readers kept 4 readers on 2 cores from ever spinning, and every write then cost
    /// a wake-up each way (W1 N = 4 fan-out below N = 1's; counting running readers
    /// only, +55% on tmpfs, +30% on ext4). Readers share one slot, so at most one of them spins; the writer
    /// takes none and may spin beside that reader. (With one slot for all, a reader
    /// coming back for more found the writer still leaving its spin, parked, and from
    /// then on both sides parked on every write: 0.9 context switches per 64 KiB and a
    /// third of the rate.) And a reader waiting for a producer that is thinking, not
    /// writing (git pack-objects counting objects), must not spin at all: it was a
    /// fifth of the daemon's CPU.
    fn spin<T>(
        &self,
        limit: std::time::Duration,
        slot: Option<&AtomicBool>,
        worth_it: impl Fn() -> bool,
        ready: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        if !worth_it() || !self.has_a_free_core() {
            return None;
        }
        if slot.is_some_and(|taken| taken.swap(true, SeqCst)) {
            return None;
        }
        let found = crate::sync::spin(limit, worth_it, ready);
        if let Some(taken) = slot {
            taken.store(false, SeqCst);
        }
        found
    }

    /// Whether the threads of this pipe that are running (the writer, and the readers
    /// not parked) leave a core idle; a spinner would otherwise take a core from one of
    /// them. With 4 readers on 2 cores, the others parked, one may spin beside the
    /// writer; with 64 readers copying, none does. Tasks waiting for their waker count
    /// as parked too: counted as running, 4 tasks on 2 workers never spun and every
    /// write cost a worker's wake-up (W1-async N = 4: 3.5 GB/s, counted as parked 6.2;
    /// N = 16: 13 to 18).
    fn has_a_free_core(&self) -> bool {
        let readers = self.written.subscriber_count();
        let waiting = self.parked_readers.load(SeqCst) + self.waiting_tasks.load(SeqCst);
        let running = readers.saturating_sub(waiting) + 1;
        running <= crate::sync::cores()
    }

    /// Publishes that the file now holds `position` bytes.
    pub(crate) fn end_write(&self, position: u64) {
        let parked = self.written.raise(position, false).parked;
        self.writing.store(false, SeqCst);
        if !parked {
            self.wake_dozers_if_far_behind(position);
            return;
        }
        let mut st = lock(&self.state);
        let wakers = std::mem::take(&mut st.wakers);
        self.waiting_tasks.store(0, SeqCst);
        if self.parked_readers.load(SeqCst) > self.dozers.load(SeqCst) {
            if position - st.announced >= WAKE_ALL_EVERY {
                st.announced = position;
                st.unannounced = false;
                self.readers.notify_all();
            } else {
                st.unannounced = true;
                self.readers.notify_one();
            }
        } else {
            // Only tasks were waiting, and they are all being woken; dozers look again
            // by themselves.
            self.written.clear_parked();
            drop(st);
            self.wake_dozers_if_far_behind(position);
        }
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Wakes dozing readers once the writer at `position` is half the lead window
    /// ahead of the fastest reader (see [`DOZE`]): a late timer must not let the
    /// window hold the writer back. Missing a reader that starts to doze just now
    /// costs nothing: it looks again after its doze.
    fn wake_dozers_if_far_behind(&self, position: u64) {
        if self.dozers.load(SeqCst) > 0
            && position.saturating_sub(self.read.position()) >= self.doze_batch
        {
            let _st = lock(&self.state);
            self.readers.notify_all();
        }
    }

    /// Wakes the waiting readers if some were not told of the latest writes.
    fn announce(&self) {
        let mut st = lock(&self.state);
        if st.unannounced {
            self.announce_locked(&mut st);
        }
    }

    /// Tells every waiting reader of every byte written, with the lock held.
    fn announce_locked(&self, st: &mut State) {
        st.unannounced = false;
        st.announced = self.written.position();
        if self.parked_readers.load(SeqCst) > 0 {
            self.readers.notify_all();
        }
    }

    /// Parks a reader on [`Core::readers`] with `wait`, counted as parked meanwhile
    /// (and as dozing, if `dozing`).
    fn park<'a>(
        &self,
        st: crate::sync::MutexGuard<'a, State>,
        dozing: bool,
        wait: impl FnOnce(crate::sync::MutexGuard<'a, State>) -> crate::sync::MutexGuard<'a, State>,
    ) -> crate::sync::MutexGuard<'a, State> {
        self.parked_readers.fetch_add(1, SeqCst);
        if dozing {
            self.dozers.fetch_add(1, SeqCst);
        }
        let st = wait(st);
        if dozing {
            self.dozers.fetch_sub(1, SeqCst);
        }
        self.parked_readers.fetch_sub(1, SeqCst);
        st
    }

    /// A reader's brief spin for bytes of a write under way (see [`Core::spin`]),
    /// before it parks or goes `Pending`; none where readers doze (see [`DOZE`]).
    /// Marks the reader hot if bytes came.
    fn spin_for_bytes(&self, position: u64) -> Option<Readable> {
        let found = if self.doze_batch > 0 {
            None
        } else {
            self.spin(
                READER_SPIN,
                Some(&self.reader_spinning),
                || self.writing.load(SeqCst),
                || self.try_readable(position),
            )
        };
        self.hot_reader.store(found.is_some(), SeqCst);
        found
    }

    /// Wakes every waiting reader (the writer's state changed).
    fn wake_all_readers(&self, mut st: crate::sync::MutexGuard<'_, State>) {
        self.writing.store(false, SeqCst);
        st.unannounced = false;
        st.announced = self.written.position();
        let wakers = std::mem::take(&mut st.wakers);
        self.waiting_tasks.store(0, SeqCst);
        // Counted under the lock, so nobody can be about to park unseen; a notify with
        // no one parked is still a system call.
        let parked = self.parked_readers.load(SeqCst) > 0;
        drop(st);
        if parked {
            self.readers.notify_all();
        }
        wakers.into_iter().for_each(Waker::wake);
    }

    /// The writer finished successfully. Fails if every reader had left (the pipe is
    /// then broken for good) or if it was closed before.
    pub(crate) fn close_writer(&self) -> Result<()> {
        let mut st = lock(&self.state);
        if self.writer_state.load(SeqCst) != OPEN {
            return Err(Error::WriterClosed);
        }
        if self.written.is_done() {
            self.writer_state.store(FAILED, SeqCst);
            self.wake_all_readers(st);
            return Err(Error::ReadersGone);
        }
        match st.writer_subscription.take() {
            Some(subscription) => self.read.unsubscribe(subscription),
            None => self.read.unsubscribe_absent(),
        };
        self.writer_state.store(CLOSED, SeqCst);
        self.wake_all_readers(st);
        Ok(())
    }

    /// The producer failed: readers that reach the end get the failure.
    pub(crate) fn fail(&self) {
        let st = lock(&self.state);
        let _ = self
            .writer_state
            .compare_exchange(OPEN, FAILED, SeqCst, SeqCst);
        self.wake_all_readers(st);
    }

    /// What a reader at `position` may do now, if anything.
    fn try_readable(&self, position: u64) -> Option<Readable> {
        // The state first: once the writer is seen closed, the position read after it
        // is final.
        let state = self.writer_state.load(SeqCst);
        let written = self.written.position();
        if position < written {
            return Some(Readable::Until(written));
        }
        match state {
            OPEN => None,
            CLOSED => Some(Readable::End),
            _ => Some(Readable::Failed),
        }
    }

    /// Blocks until a reader at `position` has something to do.
    pub(crate) fn wait_readable(&self, position: u64) -> Readable {
        loop {
            if let Some(readable) = self.wait_readable_for(position, None) {
                return readable;
            }
        }
    }

    /// Like [`Core::wait_readable`], giving up (`None`) after about `timeout`, so the
    /// caller can look around (has my destination gone?) and wait again.
    pub(crate) fn wait_readable_for(
        &self,
        position: u64,
        timeout: Option<std::time::Duration>,
    ) -> Option<Readable> {
        if let Some(readable) = self.try_readable(position) {
            return Some(readable);
        }
        if let Some(readable) = self.spin_for_bytes(position) {
            return Some(readable);
        }
        let doze = self.doze_batch > 0;
        let mut st = lock(&self.state);
        let mut waited = false;
        let mut dozed = false;
        loop {
            if let Some(readable) = self.try_readable(position) {
                return Some(readable);
            }
            if doze && !dozed && !waited {
                // Look again after a while, unwoken, once (see DOZE): the writer takes
                // no lock for us meanwhile. Not only while the producer is inside a
                // write: a reader catches up just as a write ends, and waiting to be
                // woken then cost the producer a wake-up per write.
                st = self.park(st, true, |st| {
                    crate::sync::wait_timeout(&self.readers, st, self.doze)
                });
                dozed = true;
                continue;
            }
            let written = self.written.flag_parked();
            if position < written {
                return Some(Readable::Until(written));
            }
            if waited && timeout.is_some() {
                return None;
            }
            if st.unannounced && !self.writing.load(SeqCst) {
                // Caught up after being the one woken, and the producer is not in a
                // write: wake the others for what they were not told about. While a
                // write is under way, its end wakes a reader again, and everyone at
                // least once per WAKE_ALL_EVERY.
                self.announce_locked(&mut st);
            }
            st = self.park(st, false, |st| match timeout {
                None => crate::sync::wait(&self.readers, st),
                Some(timeout) => crate::sync::wait_timeout(&self.readers, st, timeout),
            });
            waited = true;
        }
    }

    /// Like [`Core::wait_readable`], for tasks.
    #[cfg(any(feature = "tokio", test))]
    pub(crate) fn poll_readable(&self, position: u64, cx: &mut Context<'_>) -> Poll<Readable> {
        if let Some(readable) = self.try_readable(position) {
            return Poll::Ready(readable);
        }
        // As a blocking reader does: a task is woken through its runtime, a hand-off that
        // costs a thread wake-up per write, so with a core free and a write under way, a
        // brief spin (at most READER_SPIN) is cheaper than going Pending.
        if let Some(readable) = self.spin_for_bytes(position) {
            return Poll::Ready(readable);
        }
        let mut st = lock(&self.state);
        if let Some(readable) = self.try_readable(position) {
            return Poll::Ready(readable);
        }
        if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.wakers.push(cx.waker().clone());
            self.waiting_tasks.store(st.wakers.len(), SeqCst);
        }
        let written = self.written.flag_parked();
        if position < written {
            return Poll::Ready(Readable::Until(written));
        }
        Poll::Pending
    }

    /// Records that a reader reached `position`; wakes a writer held back by it.
    pub(crate) fn advance(&self, position: u64) {
        let raised = self.read.raise(position, true);
        if raised.advanced && raised.parked {
            let _st = lock(&self.state);
            self.writer.notify_one();
        }
    }

    /// The writer's lead over the fastest reader, in bytes.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn lead(&self) -> u64 {
        self.written.position().saturating_sub(self.read.position())
    }

    #[cfg(test)]
    pub(crate) fn written(&self) -> u64 {
        self.written.position()
    }

    /// `Some(bytes written)` while the writer is parked in [`Core::begin_write`] and held
    /// back by a reader (not merely woken and about to re-check), so tests can await
    /// "the writer is blocked" instead of sleeping.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn writer_held(&self) -> Option<u64> {
        let st = lock(&self.state);
        let written = self.written.position();
        let held = st.writer_parked && written > self.read.position();
        held.then_some(written)
    }

    /// Readers dozing.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn dozing(&self) -> usize {
        self.dozers.load(SeqCst)
    }

    /// Readers parked, dozing or not.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn parked(&self) -> usize {
        self.parked_readers.load(SeqCst)
    }

    /// Wakes a parked writer for no reason (tests of spurious wake-ups).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn nudge_writer(&self) {
        let _st = lock(&self.state);
        self.writer.notify_all();
    }
}

/// Makes a pipe: the writer's end, and the tap that opens readers. With
/// `backpressure`, a write may start while the writer is at most `lead` bytes ahead of
/// its fastest reader. With `floor`, the pipe tracks where its slowest reader is (an
/// entry that may turn transient needs that).
pub(crate) fn channel(backpressure: bool, lead: u64, floor: bool) -> (Sender, Tap) {
    let shared = Arc::new(Shared {
        core: Core::new(backpressure, lead),
        outcome: Arc::new(Waiter::default()),
        floor: Floor::new(floor),
        tail: Tail::default(),
        windows: Windows::default(),
        recent: Recent::default(),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
            done: false,
        },
        Tap { shared },
    )
}

/// The tap of a pipe whose producer already finished: `length` bytes, all published,
/// the outcome a success. An entry found whole on disk (see [`crate::durable`]) is read
/// through one.
pub(crate) fn finished(length: u64) -> Tap {
    let (mut sender, tap) = channel(false, 0, false);
    // Without back pressure and before any reader, neither call can be refused; if one
    // were, the tap would report a failed pipe, which no reader is ever served from.
    if sender.begin_write().is_ok() {
        sender.end_write(length);
        let _ = sender.close();
    }
    tap
}

/// What both ends see: the coordination core, the producer's result, where the
/// slowest reader is, and the bytes that are not in the file.
#[derive(Debug)]
struct Shared {
    core: Core,
    outcome: Arc<Waiter>,
    floor: Floor,
    tail: Tail,
    /// The maps readers copy the file from, when they doze (see [`crate::window`]).
    windows: Windows,
    /// The latest writes, for readers close behind the writer (see [`crate::recent`]).
    recent: Recent,
}

/// The bytes of a *passing* entry that are not in its file: the producer's latest
/// piece, handed to the readers through memory because the file system had no room
/// for it and the entry none to free (see [`crate::room`]). Readers at or past `start`
/// copy from here; the producer replaces the piece only once every reader has it.
#[derive(Debug)]
struct Tail {
    /// Where `bytes` start in the stream; `u64::MAX` while everything is in the file.
    start: AtomicU64,
    bytes: Mutex<Vec<u8>>,
}

impl Default for Tail {
    fn default() -> Tail {
        Tail {
            start: AtomicU64::new(u64::MAX),
            bytes: Mutex::new(Vec::new()),
        }
    }
}

/// Opens readers of a pipe. The entry that owns the pipe's file holds it.
#[derive(Debug)]
pub(crate) struct Tap {
    shared: Arc<Shared>,
}

impl Tap {
    /// Opens a reader at position 0 over `file`, which `open` gives. `open` runs under
    /// the pipe's lock, so a reader is never added to a pipe that has just broken
    /// (every reader gone before the writer finished); nothing else runs under it.
    pub(crate) fn subscribe(&self, open: impl FnOnce() -> Result<Arc<File>>) -> Result<Receiver> {
        // On the floor under the pipe's lock too: once `seal` returns, every reader
        // that got in is on it.
        let ((file, mark), subscription) = self
            .shared
            .core
            .subscribe(|| Ok((open()?, self.shared.floor.join())))?;
        Ok(Receiver {
            shared: Arc::clone(&self.shared),
            file,
            position: 0,
            subscription: Some(subscription),
            mark,
            copying: false,
            hint: 0,
        })
    }

    /// Admits no new readers; those open read on (a transient entry).
    pub(crate) fn seal(&self) {
        self.shared.core.seal();
    }

    /// Whether the producer finished successfully.
    pub(crate) fn is_complete(&self) -> bool {
        matches!(self.shared.outcome.get(), Some(Ok(())))
    }

    /// The producer's result: `None` while it runs, `Some(true)` on success.
    pub(crate) fn succeeded(&self) -> Option<bool> {
        self.shared.outcome.get().map(|outcome| outcome.is_ok())
    }

    /// (bytes written, the fastest reader's position, open readers), the two positions
    /// as of one instant: the fastest reader did not move while the writer's position
    /// was read.
    pub(crate) fn cursors(&self) -> (u64, u64, usize) {
        let core = &self.shared.core;
        loop {
            let read = core.read.position();
            let written = core.written.position();
            if core.read.position() == read {
                return (written, read, core.written.subscriber_count());
            }
        }
    }

    /// The producer's result, once published.
    #[cfg(test)]
    pub(crate) fn outcome(&self) -> &Arc<Waiter> {
        &self.shared.outcome
    }
}

/// The writer's end. It publishes each write, and the producer's result exactly once:
/// [`Sender::close`] on success, [`Sender::fail`] on failure; dropped without either,
/// it fails the pipe, so no reader ever waits for a writer that is gone.
#[derive(Debug)]
pub(crate) struct Sender {
    shared: Arc<Shared>,
    done: bool,
}

impl Sender {
    /// Waits until a write may start (back pressure) and returns the write position.
    /// Fails once every reader has left, or after the end was published.
    pub(crate) fn begin_write(&self) -> Result<u64> {
        self.shared.core.begin_write()
    }

    /// Publishes that the file now holds `position` bytes.
    pub(crate) fn end_write(&self, position: u64) {
        self.shared.core.end_write(position);
    }

    /// Keeps `bytes`, just written to the file at `start`, in memory for the readers
    /// close behind (see [`crate::recent`]); call before publishing them.
    pub(crate) fn keep(&self, start: u64, bytes: &[u8]) {
        self.shared.recent.put(start, bytes);
    }

    /// Claims the release of the file below `bound(slowest reader's position)` and
    /// returns that bound; `None` once every reader left. Readers that seek back below
    /// a claimed bound are refused (see [`Receiver::seek`]).
    pub(crate) fn claim_release(&self, bound: impl FnOnce(u64) -> u64) -> Option<u64> {
        self.shared.floor.claim_release(bound)
    }

    /// Waits until the slowest open reader is past `position` and returns where it is;
    /// `None` once every reader left. Every waiting reader is first told of every byte
    /// published: one left unwoken (see [`Core`]) would otherwise wait for a writer
    /// that waits for it.
    pub(crate) fn await_slowest_past(&self, position: u64) -> Option<u64> {
        self.shared.core.announce();
        self.shared.floor.wait_above(position)
    }

    /// Hands `bytes`, the stream's bytes from `start` on, to the readers through
    /// memory instead of the file (a passing entry). The caller publishes them with
    /// [`Sender::end_write`], and replaces them only once every reader has them.
    pub(crate) fn pass(&self, start: u64, bytes: &[u8]) {
        let mut tail = lock(&self.shared.tail.bytes);
        tail.clear();
        tail.extend_from_slice(bytes);
        self.shared.tail.start.store(start, SeqCst);
    }

    /// Publishes the end of a complete stream. Fails, publishing nothing, if every
    /// reader had left (the caller then fails the pipe with that error).
    pub(crate) fn close(&mut self) -> Result<()> {
        self.shared.core.close_writer()?;
        self.done = true;
        self.shared.outcome.set(Ok(()));
        self.shared.recent.clear();
        Ok(())
    }

    /// Publishes the producer's failure: [`Receiver::failure`] and the outcome give
    /// `err`, and readers that reach the end of what was written get it.
    pub(crate) fn fail(&mut self, err: Error) {
        self.done = true;
        // The outcome first: a reader that sees the failed state reads it next.
        self.shared.outcome.set(Err(err));
        self.shared.core.fail();
        self.shared.recent.clear();
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if !self.done {
            self.fail(Error::WriterClosed);
        }
    }
}

/// One reader's end: the shared read handle of the file, its own position, and its
/// place among the pipe's readers (dropping it leaves).
#[derive(Debug)]
pub(crate) struct Receiver {
    shared: Arc<Shared>,
    file: Arc<File>,
    position: u64,
    subscription: Option<Subscription>,
    mark: Mark,
    /// Counted among the readers that copy from [`crate::recent`].
    copying: bool,
    /// Where this reader last found its bytes in [`crate::recent`].
    hint: usize,
}

impl Receiver {
    /// Bytes this reader has consumed: where its next read starts.
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// The file, to read at [`Receiver::position`] (`pread`, `sendfile`, `splice`),
    /// unless [`Receiver::past_file`].
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The maps of the file this reader copies from, when readers doze beside the
    /// producer (see [`DOZE`] and [`crate::window`]); `None`: read with `pread`.
    pub(crate) fn windows(&self) -> Option<&Windows> {
        (self.shared.core.doze_batch > 0).then_some(&self.shared.windows)
    }

    /// Whether the bytes at this reader's position come through memory, not the file
    /// (see [`Sender::pass`]); read them with [`Receiver::read_passed`].
    pub(crate) fn past_file(&self) -> bool {
        self.position >= self.shared.tail.start.load(SeqCst)
    }

    /// Copies passed bytes at this reader's position into `buf` (without consuming
    /// them); 0 if there are none.
    pub(crate) fn read_passed(&self, buf: &mut [u8]) -> usize {
        let tail = lock(&self.shared.tail.bytes);
        let start = self.shared.tail.start.load(SeqCst);
        let from = self
            .position
            .checked_sub(start)
            .and_then(|from| usize::try_from(from).ok());
        let Some(passed) = from.and_then(|from| tail.get(from..)) else {
            return 0;
        };
        let n = passed.len().min(buf.len());
        buf[..n].copy_from_slice(&passed[..n]);
        n
    }

    /// Copies bytes at this reader's position, up to `end` (published), from the
    /// writer's latest writes kept in memory (without consuming them); `None`: they are
    /// not kept (any more), read the file.
    pub(crate) fn copy_recent(&mut self, end: u64, buf: &mut [u8]) -> Option<usize> {
        let recent = &self.shared.recent;
        if !self.copying {
            self.copying = true;
            recent.join();
        }
        recent.copy(self.position, end, buf, &mut self.hint)
    }

    /// Bytes the writer has published so far (all of them once it closed).
    pub(crate) fn published(&self) -> u64 {
        self.shared.core.written.position()
    }

    /// Moves this reader to `position`, before or past the bytes published. Moving
    /// forward counts as reading what it skips: the writer, which waits for the fastest
    /// reader, may go on, and a transient entry may release the skipped bytes. A
    /// position not yet written is waited for by the next read. Moving back is refused
    /// (false, nothing changes) where a transient entry may have released the bytes.
    pub(crate) fn seek(&mut self, position: u64) -> bool {
        if position < self.position {
            if !self.mark.set_back(position, &self.shared.floor) {
                return false;
            }
            self.position = position;
        } else if position > self.position {
            self.position = position;
            self.shared.core.advance(position);
            self.mark.set(position, &self.shared.floor);
        }
        true
    }

    /// Records that this reader consumed `n` more bytes. This is where a reader's
    /// position moves and where the writer, if it waits for the fastest reader, learns
    /// of it: always both, in this order.
    pub(crate) fn consume(&mut self, n: u64) {
        self.position += n;
        self.shared.core.advance(self.position);
        self.mark.set(self.position, &self.shared.floor);
    }

    /// Blocks until this reader has something to do.
    pub(crate) fn wait_readable(&self) -> Readable {
        self.shared.core.wait_readable(self.position)
    }

    /// Like [`Receiver::wait_readable`], giving up (`None`) after about `timeout`.
    pub(crate) fn wait_readable_for(&self, timeout: std::time::Duration) -> Option<Readable> {
        self.shared
            .core
            .wait_readable_for(self.position, Some(timeout))
    }

    /// Like [`Receiver::wait_readable`], for tasks.
    #[cfg(any(feature = "tokio", test))]
    pub(crate) fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<Readable> {
        self.shared.core.poll_readable(self.position, cx)
    }

    /// The error a reader reports when it reaches the end of a failed pipe.
    pub(crate) fn failure(&self) -> Error {
        match self.shared.outcome.get() {
            Some(Err(e)) => e,
            // The outcome is published before readers learn of the failure.
            _ => Error::ReadersGone,
        }
    }

    /// The producer's result, once published.
    pub(crate) fn outcome(&self) -> &Arc<Waiter> {
        &self.shared.outcome
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(subscription) = self.subscription.take() {
            self.shared.core.close_reader(subscription);
        }
        if self.copying {
            self.shared.recent.leave();
        }
        self.mark.close(&self.shared.floor);
    }
}

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(test)]
mod tests;
