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
///
/// # Seeking
///
/// A stream implements [`std::io::Seek`] (and `tokio::io::AsyncSeek`), for `Range`
/// requests and resumed downloads, also into an entry still being made:
///
/// * `SeekFrom::Start` and `SeekFrom::Current` go anywhere at or after byte 0. A
///   position the producer has not reached yet is waited for by the next read.
///   Seeking forward counts as reading the bytes skipped: with back pressure, the
///   producer goes on as if this reader had read them.
/// * `SeekFrom::End` works once the entry is complete; while it is being written the
///   seek fails with [`io::ErrorKind::WouldBlock`] ("its length is not known yet"),
///   and after a failed producer it returns the producer's error.
/// * A read at a position past the end of a finished entry fails with
///   [`io::ErrorKind::InvalidInput`] (it is never a silent end of file).
/// * An entry that ran out of room under a disk budget and turned transient releases
///   what every reader passed: a seek back into released bytes fails.
/// * A stream that bypasses the cache ([`Lookup::Bypass`](crate::Lookup::Bypass))
///   reads from its producer directly: it seeks forward by skipping bytes on its next
///   reads and cannot seek back.
///
/// [`Stream::send_to`] sends from the current position.
#[derive(Debug)]
pub struct Stream {
    source: Source,
    outcome: Arc<Waiter>,
    metrics: Arc<Metrics>,
    /// Bytes delivered to the caller (the served-bytes metric).
    served: u64,
    /// A bypass stream's position: bytes read from its producer plus those still to
    /// skip.
    direct_position: u64,
    /// Bytes a bypass stream skips before its next read delivers anything.
    skip: u64,
    /// The result of the seek started by `AsyncSeek::start_seek`.
    #[cfg(feature = "tokio")]
    seeked: Option<io::Result<u64>>,
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
            Readable::End => self.at_end().map(|()| 0).map_err(Into::into),
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
            Readable::End => Poll::Ready(self.at_end().map(|()| 0).map_err(Into::into)),
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

    /// The producer finished and this reader is at or past its last byte: the end of
    /// the stream, or, past it (a seek beyond the end), an error that says so.
    pub(crate) fn at_end(&self) -> Result<()> {
        let (position, length) = (self.rx.position(), self.rx.published());
        if position <= length {
            return Ok(());
        }
        let err = io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("read at byte {position}, past the end of the entry ({length} bytes)"),
        );
        Err(Error::io(Op::Read, &*self.path, err))
    }

    /// Moves to `target` (see [`Stream`]'s `Seek`).
    fn seek(&mut self, target: io::SeekFrom) -> io::Result<u64> {
        let (base, delta) = match target {
            io::SeekFrom::Start(offset) => return self.seek_to(offset),
            io::SeekFrom::Current(delta) => (self.rx.position(), delta),
            io::SeekFrom::End(delta) => match self.rx.outcome().get() {
                Some(Ok(())) => (self.rx.published(), delta),
                Some(Err(err)) => return Err(err.into()),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "cannot seek from the end: the entry is still being written, its length is not known yet",
                    ))
                }
            },
        };
        match base.checked_add_signed(delta) {
            Some(position) => self.seek_to(position),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot seek to byte {base} {delta:+}: before the start of the stream"),
            )),
        }
    }

    fn seek_to(&mut self, position: u64) -> io::Result<u64> {
        if self.rx.seek(position) {
            // A map holds one stretch of the file; the next copy finds the right one.
            Ok(position)
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot seek back to byte {position}: the entry ran out of room on disk and released the bytes every reader had passed"
                ),
            ))
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
            direct_position: 0,
            skip: 0,
            #[cfg(feature = "tokio")]
            seeked: None,
        }
    }

    pub(crate) fn direct(reader: direct::Reader, metrics: Arc<Metrics>) -> Stream {
        Stream {
            outcome: Arc::clone(reader.outcome()),
            source: Source::Direct(reader),
            metrics,
            served: 0,
            direct_position: 0,
            skip: 0,
            #[cfg(feature = "tokio")]
            seeked: None,
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

    /// Where the next read starts: the bytes delivered so far, unless the stream
    /// seeked.
    pub fn position(&self) -> u64 {
        match &self.source {
            Source::Entry(reader) => reader.rx.position(),
            Source::Direct(_) => self.direct_position,
        }
    }

    /// Moves a bypass stream: forward by skipping, never back.
    fn seek_direct(&mut self, target: io::SeekFrom) -> io::Result<u64> {
        let here = self.direct_position;
        let position = match target {
            io::SeekFrom::Start(offset) => Some(offset),
            io::SeekFrom::Current(delta) => here.checked_add_signed(delta),
            io::SeekFrom::End(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "cannot seek from the end: this stream bypasses the cache and its length is not known",
                ))
            }
        };
        match position {
            Some(position) if position >= here => {
                self.skip += position - here;
                self.direct_position = position;
                Ok(position)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("cannot seek back from byte {here}: this stream bypasses the cache and reads its producer's output once"),
            )),
        }
    }

    /// Skips what a bypass stream's seek passed over, reading into `buf`. Returns
    /// false at the end of the stream.
    fn skip_direct(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        while self.skip > 0 {
            let Source::Direct(reader) = &mut self.source else {
                return Ok(true);
            };
            let want = usize::try_from(self.skip).map_or(buf.len(), |s| s.min(buf.len()));
            match reader.read(&mut buf[..want])? {
                0 => return Ok(false),
                n => self.skip -= n as u64,
            }
        }
        Ok(true)
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
        if self.skip > 0 && !buf.is_empty() && !self.skip_direct(buf)? {
            return Err(past_the_end(self.direct_position, self.skip));
        }
        let n = match &mut self.source {
            Source::Entry(reader) => reader.read(buf)?,
            Source::Direct(reader) => {
                let n = reader.read(buf)?;
                self.direct_position += n as u64;
                n
            }
        };
        self.served += n as u64;
        Ok(n)
    }
}

/// A bypass stream ended `skip` bytes short of the position it seeked to.
fn past_the_end(position: u64, skip: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "read at byte {position}, past the end of the stream ({} bytes)",
            position - skip
        ),
    )
}

impl io::Seek for Stream {
    /// See [`Stream`]'s "Seeking".
    fn seek(&mut self, from: io::SeekFrom) -> io::Result<u64> {
        match &mut self.source {
            Source::Entry(reader) => reader.seek(from),
            Source::Direct(_) => self.seek_direct(from),
        }
    }
}

#[cfg(feature = "tokio")]
impl tokio::io::AsyncSeek for Stream {
    /// Seeks at once (a seek never waits; the next read waits for the bytes).
    fn start_seek(self: std::pin::Pin<&mut Self>, from: io::SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        let result = io::Seek::seek(this, from);
        this.seeked = Some(result);
        Ok(())
    }

    fn poll_complete(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<u64>> {
        let this = self.get_mut();
        std::task::Poll::Ready(this.seeked.take().unwrap_or_else(|| Ok(this.position())))
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
        if unfilled.is_empty() {
            return std::task::Poll::Ready(Ok(()));
        }
        while this.skip > 0 {
            let Source::Direct(reader) = &mut this.source else {
                break;
            };
            let want = usize::try_from(this.skip).map_or(unfilled.len(), |s| s.min(unfilled.len()));
            match std::task::ready!(reader.poll_read(cx, &mut unfilled[..want]))? {
                0 => {
                    return std::task::Poll::Ready(Err(past_the_end(
                        this.direct_position,
                        this.skip,
                    )))
                }
                n => this.skip -= n as u64,
            }
        }
        let n = std::task::ready!(match &mut this.source {
            Source::Entry(reader) => reader.poll_read(cx, unfilled),
            Source::Direct(reader) => reader.poll_read(cx, unfilled),
        })?;
        if let Source::Direct(_) = this.source {
            this.direct_position += n as u64;
        }
        buf.advance(n);
        this.served += n as u64;
        std::task::Poll::Ready(Ok(()))
    }
}
