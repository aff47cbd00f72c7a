//! The reader's end of an entry.
//!
//! # How reads touch the file
//!
//! A read waits (blocking, or by registering a waker) until the writer has published
//! bytes past the reader's position, then copies at most that many bytes: from the
//! writer's latest writes kept in memory if they still hold them ([`crate::recent`]),
//! else from a memory map of the file where readers doze ([`crate::window`]), else with
//! `pread` from the shared file handle. In async code the copy runs on the polling task rather than
//! on a blocking pool: it only ever asks for bytes the writer has already written, which
//! sit in the page cache, so it does not wait on a device in practice. That keeps a
//! cache hit free of thread hand-offs; `tokio::fs` would pay one per read.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::budget::Footprint;
use crate::direct;
use crate::error::{Error, Op, Result};
use crate::metrics::Metrics;
use crate::pipe::{Readable, Receiver};
use crate::waiter::Waiter;
use crate::window::Window;
use crate::zerocopy;

/// A task that has read this many bytes without once waiting yields to the others of
/// its runtime. A reader behind its producer finds bytes on every poll, and without a
/// yield it keeps its worker thread until it has caught up, while the tasks queued
/// behind it fall further back: at 64 tasks on 2 workers they fell so far behind that
/// their copies came from memory, not the CPU caches.
#[cfg(feature = "tokio")]
const TASK_STREAK: u64 = 1 << 20;

/// Buffer size of the plain copy loop of a bypass stream.
const COPY_BUFFER: usize = 64 << 10;

/// A stream of one entry's bytes, plus the producer's result.
///
/// Read it with [`std::io::Read`] (or [`tokio::io::AsyncRead`] with the `tokio` feature),
/// or copy it into a descriptor with [`Stream::send_to`]. A read blocks until the producer
/// has written more, and returns end-of-file once the producer finished successfully and
/// everything has been read. If the producer failed, the read that reaches the end of
/// what was written returns the producer's error instead of end-of-file, so a truncated
/// entry never looks complete; [`Stream::wait`] returns the same error.
///
/// Dropping the stream closes the reader. If it was the last reader of an entry still
/// being produced, the producer's next write fails and the entry is abandoned.
#[derive(Debug)]
pub struct Stream {
    source: Source,
    outcome: Arc<Waiter>,
    metrics: Arc<Metrics>,
    served: u64,
}

#[derive(Debug)]
enum Source {
    Entry(EntryReader),
    Direct(direct::Reader),
}

/// A reader of a cached entry: the pipe's reader end, the file's path for messages,
/// and the file's share of the disk budget (an open file keeps its blocks, so it
/// counts until its last reader closes it).
#[derive(Debug)]
pub(crate) struct EntryReader {
    pub(crate) rx: Receiver,
    path: Arc<Path>,
    /// The stretch of the file this reader copies from (see [`crate::window`]). Before
    /// the footprint: a map keeps the blocks of an evicted file on disk too.
    window: Option<Arc<Window>>,
    /// Mapping failed: this reader reads with `pread`.
    unmappable: bool,
    /// Bytes a task read since it last went `Pending` (see [`TASK_STREAK`]).
    #[cfg(feature = "tokio")]
    streak: u64,
    _footprint: Option<Arc<Footprint>>,
}

impl EntryReader {
    /// Reads what the writer has published past this reader's position, waiting for
    /// it. An empty `buf` reads nothing and changes nothing.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match self.rx.wait_readable() {
            Readable::End => Ok(0),
            Readable::Failed => Err(self.rx.failure().into()),
            Readable::Until(end) => self.pread_available(buf, end),
        }
    }

    /// Like [`EntryReader::read`], for tasks.
    #[cfg(feature = "tokio")]
    fn poll_read(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        use std::task::Poll;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.streak >= TASK_STREAK {
            // Let the runtime's other tasks have their turn (see TASK_STREAK).
            self.streak = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let readable = match self.rx.poll_readable(cx) {
            Poll::Ready(readable) => readable,
            Poll::Pending => {
                self.streak = 0;
                return Poll::Pending;
            }
        };
        match readable {
            Readable::End => Poll::Ready(Ok(0)),
            Readable::Failed => Poll::Ready(Err(self.rx.failure().into())),
            Readable::Until(end) => {
                let read = self.pread_available(buf, end);
                if let Ok(n) = read {
                    self.streak += n as u64;
                }
                Poll::Ready(read)
            }
        }
    }

    /// Reads bytes in `[position, end)` into `buf` and consumes them.
    fn pread_available(&mut self, buf: &mut [u8], end: u64) -> io::Result<usize> {
        let position = self.rx.position();
        let want = usize::try_from(end - position).map_or(buf.len(), |a| a.min(buf.len()));
        if self.rx.past_file() {
            return match self.rx.read_passed(&mut buf[..want]) {
                0 => Err(self.file_too_short().into()),
                n => {
                    self.rx.consume(n as u64);
                    Ok(n)
                }
            };
        }
        if let Some(n) = self.rx.copy_recent(end, &mut buf[..want]) {
            self.rx.consume(n as u64);
            return Ok(n);
        }
        if let Some(n) = self.copy_mapped(&mut buf[..want])? {
            self.rx.consume(n as u64);
            return Ok(n);
        }
        loop {
            match self.rx.file().read_at(&mut buf[..want], position) {
                Ok(0) => return Err(self.file_too_short().into()),
                Ok(n) => {
                    self.rx.consume(n as u64);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(Op::Read, &*self.path, e).into()),
            }
        }
    }

    /// Copies from the window that holds this reader's position, mapping it first if
    /// need be; `None` if the file cannot be mapped (then `pread`).
    fn copy_mapped(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        if self.unmappable {
            return Ok(None);
        }
        let Some(windows) = self.rx.windows() else {
            self.unmappable = true;
            return Ok(None);
        };
        let position = self.rx.position();
        if !self.window.as_ref().is_some_and(|w| w.holds(position)) {
            // The one passed goes first: a reader holds one map at a time.
            self.window = None;
            self.window = windows.get(self.rx.file(), position);
        }
        let Some(window) = &self.window else {
            self.unmappable = true;
            return Ok(None);
        };
        match window.copy(position, buf) {
            Some(n) => Ok(Some(n)),
            None => Err(self.file_too_short()),
        }
    }

    /// The file held fewer bytes than the writer had published: someone truncated it.
    pub(crate) fn file_too_short(&self) -> Error {
        let err = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "entry file is shorter than what was written to it",
        );
        Error::io(Op::Read, &*self.path, err)
    }
}

impl Stream {
    pub(crate) fn entry(
        rx: Receiver,
        path: Arc<Path>,
        footprint: Option<Arc<Footprint>>,
        metrics: Arc<Metrics>,
    ) -> Stream {
        Stream {
            outcome: Arc::clone(rx.outcome()),
            source: Source::Entry(EntryReader {
                rx,
                path,
                window: None,
                unmappable: false,
                #[cfg(feature = "tokio")]
                streak: 0,
                _footprint: footprint,
            }),
            metrics,
            served: 0,
        }
    }

    pub(crate) fn direct(reader: direct::Reader, metrics: Arc<Metrics>) -> Stream {
        Stream {
            outcome: Arc::clone(reader.outcome()),
            source: Source::Direct(reader),
            metrics,
            served: 0,
        }
    }

    /// Blocks until the producer has finished and returns its result: `Ok(())`, the
    /// producer's error, or `panic: …` if it panicked. Every reader of the entry gets the
    /// same result, and calling it again returns it again.
    ///
    /// Call it after reading to the end. Waiting first, while this stream is the only
    /// reader, can block forever with back pressure on: the producer waits for a reader.
    /// It blocks the thread; in async code use [`Stream::wait_async`].
    pub fn wait(&self) -> Result<()> {
        self.outcome.wait()
    }

    /// Like [`Stream::wait`], giving up with [`Error::TimedOut`] after `timeout`. The
    /// result stays available for later calls.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        self.outcome.wait_timeout(timeout)
    }

    /// The producer's result if it has finished, without waiting.
    pub fn outcome(&self) -> Option<Result<()>> {
        self.outcome.get()
    }

    /// Waits for the producer's result in async code. Dropping the future cancels the
    /// wait, not the producer.
    #[cfg(feature = "tokio")]
    pub fn wait_async(&self) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        crate::waiter::WaitFuture {
            waiter: Arc::clone(&self.outcome),
        }
    }

    /// Bytes this stream has delivered so far.
    pub fn position(&self) -> u64 {
        self.served
    }

    /// Copies the rest of the stream into `dst`, a socket, pipe or file, and returns the
    /// number of bytes copied.
    ///
    /// On Linux the bytes never enter user space: what is already far behind the producer
    /// goes with `sendfile(2)`, and what follows a live producer is spliced (`splice(2)`)
    /// through a pipe of the stream's own, so the producer may write its next piece while
    /// this one goes out; back pressure still applies. If the destination takes neither
    /// (a file opened to append, say), the copy falls back to `pread` and `write`.
    /// A non-blocking `dst` is waited on with `poll(2)`.
    ///
    /// # Errors
    ///
    /// The producer's error if it failed, [`Error::Copy`] if writing to `dst` failed, or
    /// [`Error::Io`] if reading the entry file failed. The producer's result is not
    /// waited for; call [`Stream::wait`] after.
    pub fn send_to<F: AsFd + ?Sized>(&mut self, dst: &F) -> Result<u64> {
        let dst = dst.as_fd();
        let before = self.served;
        let result = match &mut self.source {
            Source::Entry(reader) => {
                zerocopy::send_entry(reader, dst, &self.metrics, &mut self.served)
            }
            Source::Direct(_) => self.copy_plain(dst),
        };
        result.map(|()| self.served - before)
    }

    fn copy_plain(&mut self, dst: BorrowedFd<'_>) -> Result<()> {
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            let n = self.read(&mut buf).map_err(Error::from_io)?;
            if n == 0 {
                return Ok(());
            }
            zerocopy::write_all_fd(dst, &buf[..n])?;
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.source {
            Source::Entry(reader) => reader.read(buf)?,
            Source::Direct(reader) => reader.read(buf)?,
        };
        self.served += n as u64;
        Ok(n)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.metrics.add_served_bytes(self.served);
    }
}

#[cfg(feature = "tokio")]
impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        let unfilled = buf.initialize_unfilled();
        let n = std::task::ready!(match &mut this.source {
            Source::Entry(reader) => reader.poll_read(cx, unfilled),
            Source::Direct(reader) => reader.poll_read(cx, unfilled),
        })?;
        buf.advance(n);
        this.served += n as u64;
        std::task::Poll::Ready(Ok(()))
    }
}
