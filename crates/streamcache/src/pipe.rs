//! One writer, many readers, one file.
//!
//! ```text
//!                 write cursor (bytes written; subscribers = open readers)
//!                      |
//!   producer --write--> [ entry file on disk / page cache ] --pread--> reader 1
//!      ^                                                    --pread--> reader 2
//!      |                                                    --pread--> reader N
//!      +-- waits while written > read cursor (the fastest reader's high-water mark)
//! ```
//!
//! The pipe is split in two. [`Core`] is the coordination: integers under one lock, two
//! condition variables and a list of task wakers. It does no I/O and knows no file, so
//! the back-pressure rule, end-of-stream and the "all readers left" state can be tested
//! and model-checked on their own. [`Pipe`] adds the file: the writer's handle and the
//! readers' shared read handle.
//!
//! Readers share one read-only file handle and read with `pread` at their own offsets,
//! so opening the second and later readers of a live entry costs no `open(2)`. The
//! shared handle lives only as long as some reader holds it; an idle entry holds no
//! descriptor, so the number of open descriptors is bounded by the number of readers,
//! not by the number of entries.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::task::Waker;
#[cfg(any(feature = "tokio", test))]
use std::task::{Context, Poll};

use crate::cursor::{Cursor, Subscription};
use crate::sync::{lock, Condvar, Mutex};
use crate::waiter::Waiter;
use crate::{Error, Op, Result};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterState {
    Open,
    Closed,
    Failed,
}

#[derive(Debug)]
struct State {
    /// Bytes written; subscribers are the open readers; done once they all left.
    written: Cursor,
    /// Highest position any reader ever reached; done once the writer closed cleanly.
    read: Cursor,
    writer_subscription: Option<Subscription>,
    writer: WriterState,
    readers_waiting: usize,
    writer_waiting: bool,
    wakers: Vec<Waker>,
}

impl State {
    /// All readers left before the writer closed cleanly: nobody may join any more.
    fn is_broken(&self) -> bool {
        self.written.is_done() && !self.read.is_done()
    }

    fn readable(&self, position: u64) -> Option<Readable> {
        if position < self.written.position() {
            return Some(Readable::Until(self.written.position()));
        }
        match self.writer {
            WriterState::Open => None,
            WriterState::Closed => Some(Readable::End),
            WriterState::Failed => Some(Readable::Failed),
        }
    }
}

/// The coordination state of one pipe (see the module docs).
#[derive(Debug)]
pub(crate) struct Core {
    state: Mutex<State>,
    readers: Condvar,
    writer: Condvar,
    backpressure: bool,
}

impl Core {
    pub(crate) fn new(backpressure: bool) -> Core {
        let mut read = Cursor::default();
        let writer_subscription = backpressure.then(|| read.subscribe());
        Core {
            state: Mutex::new(State {
                written: Cursor::default(),
                read,
                writer_subscription,
                writer: WriterState::Open,
                readers_waiting: 0,
                writer_waiting: false,
                wakers: Vec::new(),
            }),
            readers: Condvar::new(),
            writer: Condvar::new(),
            backpressure,
        }
    }

    /// Registers a reader, calling `open` under the pipe lock so that opening is atomic
    /// with the decision that the pipe is broken.
    pub(crate) fn open_reader<T>(
        &self,
        open: impl FnOnce() -> Result<T>,
    ) -> Result<(T, Subscription)> {
        let mut st = lock(&self.state);
        if st.is_broken() {
            return Err(Error::ReadersGone);
        }
        let opened = open()?;
        Ok((opened, st.written.subscribe()))
    }

    pub(crate) fn close_reader(&self, subscription: Subscription) {
        let mut st = lock(&self.state);
        if st.written.unsubscribe(subscription) && st.writer_waiting {
            drop(st);
            self.writer.notify_one();
        }
    }

    /// Waits until the writer may start a write (back pressure) and returns the write
    /// position. Fails once every reader has left.
    pub(crate) fn begin_write(&self) -> Result<u64> {
        let mut st = lock(&self.state);
        loop {
            if st.writer != WriterState::Open {
                return Err(Error::WriterClosed);
            }
            if st.written.is_done() {
                return Err(Error::ReadersGone);
            }
            if !self.backpressure || st.written.position() <= st.read.position() {
                return Ok(st.written.position());
            }
            st.writer_waiting = true;
            st = crate::sync::wait(&self.writer, st);
            st.writer_waiting = false;
        }
    }

    /// Publishes that the file now holds `position` bytes.
    pub(crate) fn end_write(&self, position: u64) {
        let mut st = lock(&self.state);
        st.written.set(position);
        self.wake_readers(st);
    }

    fn wake_readers(&self, mut st: crate::sync::MutexGuard<'_, State>) {
        let notify = st.readers_waiting > 0;
        let wakers = if st.wakers.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut st.wakers)
        };
        drop(st);
        if notify {
            self.readers.notify_all();
        }
        wakers.into_iter().for_each(Waker::wake);
    }

    /// The writer finished successfully. Fails if every reader had left (the pipe is
    /// then broken for good) or if it was closed before.
    pub(crate) fn close_writer(&self) -> Result<()> {
        let mut st = lock(&self.state);
        if st.writer != WriterState::Open {
            return Err(Error::WriterClosed);
        }
        if st.written.is_done() {
            st.writer = WriterState::Failed;
            self.wake_readers(st);
            return Err(Error::ReadersGone);
        }
        match st.writer_subscription.take() {
            Some(subscription) => st.read.unsubscribe(subscription),
            None => st.read.unsubscribe_absent(),
        };
        st.writer = WriterState::Closed;
        self.wake_readers(st);
        Ok(())
    }

    /// The producer failed: readers that reach the end get the failure.
    pub(crate) fn fail(&self) {
        let mut st = lock(&self.state);
        if st.writer == WriterState::Open {
            st.writer = WriterState::Failed;
        }
        self.wake_readers(st);
    }

    /// Blocks until a reader at `position` has something to do.
    pub(crate) fn wait_readable(&self, position: u64) -> Readable {
        let mut st = lock(&self.state);
        loop {
            if let Some(readable) = st.readable(position) {
                return readable;
            }
            st.readers_waiting += 1;
            st = crate::sync::wait(&self.readers, st);
            st.readers_waiting -= 1;
        }
    }

    /// Like [`Core::wait_readable`], for tasks.
    #[cfg(any(feature = "tokio", test))]
    pub(crate) fn poll_readable(&self, position: u64, cx: &mut Context<'_>) -> Poll<Readable> {
        let mut st = lock(&self.state);
        if let Some(readable) = st.readable(position) {
            return Poll::Ready(readable);
        }
        if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Records that a reader reached `position`; wakes a writer held back by it.
    pub(crate) fn advance(&self, position: u64) {
        let mut st = lock(&self.state);
        if st.read.set(position) && st.writer_waiting {
            drop(st);
            self.writer.notify_one();
        }
    }

    /// The writer's lead over the fastest reader, in bytes.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn lead(&self) -> u64 {
        let st = lock(&self.state);
        st.written.position().saturating_sub(st.read.position())
    }

    #[cfg(test)]
    pub(crate) fn written(&self) -> u64 {
        lock(&self.state).written.position()
    }

    /// `Some(bytes written)` while the writer is parked in [`Core::begin_write`] and held
    /// back by a reader (not merely woken and about to re-check), so tests can await
    /// "the writer is blocked" instead of sleeping.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn writer_held(&self) -> Option<u64> {
        let st = lock(&self.state);
        let held = st.writer_waiting && st.written.position() > st.read.position();
        held.then(|| st.written.position())
    }
}

/// A pipe over one named file: the coordination core plus the file.
#[derive(Debug)]
pub(crate) struct Pipe {
    pub(crate) core: Core,
    pub(crate) path: PathBuf,
    /// The read handle shared by the open readers; dead when none is open.
    shared: Mutex<Weak<File>>,
    /// The producer's final result.
    pub(crate) outcome: Arc<Waiter>,
    open: OpenFn,
    /// Told of every newly opened read handle (the cache keeps recent ones open).
    on_open: OnOpen,
}

struct OnOpen(Box<OpenedFile>);

type OpenedFile = dyn Fn(&Arc<File>) + Send + Sync;

impl std::fmt::Debug for OnOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnOpen")
    }
}

/// How a pipe opens its file for reading (the file store opens without following links).
pub(crate) struct OpenFn(pub(crate) Box<OpenFile>);

type OpenFile = dyn Fn(&Path) -> std::io::Result<File> + Send + Sync;

impl std::fmt::Debug for OpenFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenFn")
    }
}

impl Pipe {
    /// A pipe over the file at `path`; `open` opens it for reading.
    pub(crate) fn new(
        path: PathBuf,
        backpressure: bool,
        open: impl Fn(&Path) -> std::io::Result<File> + Send + Sync + 'static,
    ) -> Pipe {
        Pipe {
            core: Core::new(backpressure),
            path,
            shared: Mutex::new(Weak::new()),
            outcome: Arc::new(Waiter::default()),
            open: OpenFn(Box::new(open)),
            on_open: OnOpen(Box::new(|_| {})),
        }
    }

    /// Calls `on_open` with every read handle the pipe opens.
    pub(crate) fn with_on_open(
        mut self,
        on_open: impl Fn(&Arc<File>) + Send + Sync + 'static,
    ) -> Pipe {
        self.on_open = OnOpen(Box::new(on_open));
        self
    }

    /// Opens a new reader at position 0.
    pub(crate) fn open_reader(self: &Arc<Self>) -> Result<PipeReader> {
        let (file, subscription) = self.core.open_reader(|| self.reader_file())?;
        Ok(PipeReader {
            pipe: Arc::clone(self),
            file,
            position: 0,
            subscription: Some(subscription),
        })
    }

    fn reader_file(&self) -> Result<Arc<File>> {
        let mut shared = lock(&self.shared);
        if let Some(file) = shared.upgrade() {
            // A file unlinked under us (evicted, swept, or the directory wiped) must not
            // gain readers: re-open by path, which fails, as it would without the
            // shared handle.
            if rustix::fs::fstat(&*file).is_ok_and(|st| st.st_nlink > 0) {
                return Ok(file);
            }
        }
        let file =
            (self.open.0)(&self.path).map_err(|e| Error::io(Op::OpenReader, &self.path, e))?;
        let file = Arc::new(file);
        *shared = Arc::downgrade(&file);
        (self.on_open.0)(&file);
        Ok(file)
    }

    /// The read handle, if a reader or the cache still holds it open.
    pub(crate) fn shared_file(&self) -> Option<Arc<File>> {
        lock(&self.shared).upgrade()
    }
}

/// One reader of a [`Pipe`]: a shared file handle and its own position.
#[derive(Debug)]
pub(crate) struct PipeReader {
    pub(crate) pipe: Arc<Pipe>,
    pub(crate) file: Arc<File>,
    pub(crate) position: u64,
    subscription: Option<Subscription>,
}

impl PipeReader {
    /// The error a reader reports when it reaches the end of a failed entry.
    pub(crate) fn failure(&self) -> Error {
        match self.pipe.outcome.get() {
            Some(Err(e)) => e,
            // The outcome is published before readers learn of the failure, so this
            // only happens if the pipe was abandoned without one.
            _ => Error::ReadersGone,
        }
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        if let Some(subscription) = self.subscription.take() {
            self.pipe.core.close_reader(subscription);
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(test)]
mod tests;
