//! The reader's end of an entry.
//!
//! # How reads touch the file
//!
//! A read waits (blocking, or by registering a waker) until the writer has published
//! bytes past the reader's position, then `pread`s at most that many bytes from the
//! shared file handle. In async code this `pread` runs on the polling task rather than on
//! a blocking pool: it only ever asks for bytes the writer has already written, which sit
//! in the page cache, so it does not wait on a device in practice. That keeps a cache hit
//! free of thread hand-offs; `tokio::fs` would pay one per read.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::pipe::{PipeReader, Readable};
use crate::waiter::Waiter;
use crate::{Error, Op, Result};

/// Most bytes moved by one `sendfile(2)` call.
const SENDFILE_CHUNK: u64 = 4 << 20;
/// How often [`Stream::send_to`] looks at its destination while the producer is quiet.
const HANGUP_CHECK: Duration = Duration::from_secs(1);
/// Buffer size of the plain copy loops.
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
    Entry(PipeReader),
    Direct(Direct),
}

#[derive(Debug)]
struct Direct {
    pipe: Option<io::PipeReader>,
    /// The same pipe once an async read registered it with tokio (non-blocking).
    #[cfg(feature = "tokio")]
    registered: Option<tokio::net::unix::pipe::Receiver>,
    eof: bool,
}

impl Direct {
    /// One read from the pipe; `WouldBlock` only if registered with tokio.
    fn read_once(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(feature = "tokio")]
        if let Some(rx) = &self.registered {
            return rx.try_read(buf);
        }
        match &mut self.pipe {
            Some(pipe) => pipe.read(buf),
            None => Ok(0),
        }
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        #[cfg(feature = "tokio")]
        if let Some(rx) = &self.registered {
            return Some(rx.as_fd());
        }
        self.pipe.as_ref().map(|p| p.as_fd())
    }
}

impl Stream {
    pub(crate) fn entry(reader: PipeReader, metrics: Arc<Metrics>) -> Stream {
        Stream {
            outcome: Arc::clone(&reader.pipe.outcome),
            source: Source::Entry(reader),
            metrics,
            served: 0,
        }
    }

    pub(crate) fn direct(
        pipe: io::PipeReader,
        outcome: Arc<Waiter>,
        metrics: Arc<Metrics>,
    ) -> Stream {
        Stream {
            source: Source::Direct(Direct {
                pipe: Some(pipe),
                #[cfg(feature = "tokio")]
                registered: None,
                eof: false,
            }),
            outcome,
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
            Source::Entry(reader) => send_entry(reader, dst, &self.metrics, &mut self.served),
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
            write_all_fd(dst, &buf[..n])?;
        }
    }
}

fn read_entry(reader: &mut PipeReader, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    match reader.pipe.core.wait_readable(reader.position) {
        Readable::End => Ok(0),
        Readable::Failed => Err(reader.failure().into()),
        Readable::Until(end) => {
            let n = pread_available(reader, buf, end)?;
            reader.pipe.core.advance(reader.position);
            Ok(n)
        }
    }
}

/// The file held fewer bytes than the writer had published: someone truncated it.
fn file_too_short(reader: &PipeReader) -> Error {
    let err = io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "entry file is shorter than what was written to it",
    );
    Error::io(Op::Read, &reader.pipe.path, err)
}

/// Reads bytes in `[position, end)` into `buf` and moves the position.
fn pread_available(reader: &mut PipeReader, buf: &mut [u8], end: u64) -> io::Result<usize> {
    let want = usize::try_from(end - reader.position).map_or(buf.len(), |a| a.min(buf.len()));
    loop {
        match reader.file.read_at(&mut buf[..want], reader.position) {
            Ok(0) => return Err(file_too_short(reader).into()),
            Ok(n) => {
                reader.position += n as u64;
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(Op::Read, &reader.pipe.path, e).into()),
        }
    }
}

fn read_direct(direct: &mut Direct, outcome: &Waiter, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() || direct.eof {
        return finish_direct(direct, outcome);
    }
    loop {
        match direct.read_once(buf) {
            Ok(0) => return finish_direct(direct, outcome),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Registered with tokio (non-blocking) and read from sync code.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let Some(fd) = direct.fd() else {
                    return Ok(0);
                };
                let mut fds = [rustix::event::PollFd::new(
                    &fd,
                    rustix::event::PollFlags::IN,
                )];
                match rustix::event::poll(&mut fds, None) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// End of a direct stream: end-of-file if the producer succeeded, its error otherwise.
/// The producer publishes its outcome before it closes the pipe.
fn finish_direct(direct: &mut Direct, outcome: &Waiter) -> io::Result<usize> {
    direct.eof = true;
    match outcome.get() {
        Some(Err(e)) => Err(e.into()),
        _ => Ok(0),
    }
}

/// How far behind the writer [`Stream::send_to`] still copies straight from the file with
/// `sendfile`; closer than this it stages each piece in a pipe of its own.
const STAGE_BELOW: u64 = 1 << 20;
/// The capacity asked for that pipe (the kernel may give less).
const STAGE_CAPACITY: usize = 256 << 10;

/// A pipe that holds bytes taken from the entry file until the destination takes them.
///
/// Following a live writer, `sendfile` makes reader and writer take turns: the reader
/// may only report its new position once `sendfile` has returned, so the writer (held
/// to one write ahead of its fastest reader) waits for the copy into the destination. A
/// plain `read` + `write` loop does not: the bytes are the reader's once `read` returns,
/// and the writer writes the next piece while the reader writes this one out. Splicing
/// into a pipe of our own is that `read` without the copy: the pipe takes references to
/// the page-cache pages, the reader reports its position, and then splices the pipe into
/// the destination. At one reader (W1 zero copy) this took `send_to` from 1.16-1.28
/// times the wall time of read+write with plain `sendfile` to 0.70-0.83 times.
struct Stage {
    rx: std::os::fd::OwnedFd,
    tx: std::os::fd::OwnedFd,
    capacity: usize,
}

impl Stage {
    fn new() -> Option<Stage> {
        let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok()?;
        let capacity = rustix::pipe::fcntl_setpipe_size(&tx, STAGE_CAPACITY)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&tx))
            .ok()?;
        Some(Stage { rx, tx, capacity })
    }
}

/// How one staged step ended.
enum Staged {
    /// Bytes went through the pipe into the destination.
    Sent,
    /// The entry file cannot be spliced from; nothing moved.
    Unsupported,
    /// The destination refused the pipe's bytes; they were copied to it plainly.
    CopiedPlainly,
}

/// Moves up to `available` bytes from the entry into the stage, reports the reader's
/// new position, then empties the stage into `dst`.
fn stage_step(
    reader: &mut PipeReader,
    dst: BorrowedFd<'_>,
    stage: &Stage,
    available: u64,
    metrics: &Metrics,
    served: &mut u64,
) -> Result<Staged> {
    let want = usize::try_from(available).map_or(stage.capacity, |a| a.min(stage.capacity));
    let mut offset = reader.position;
    let taken = loop {
        match rustix::pipe::splice(
            reader.file.as_fd(),
            Some(&mut offset),
            &stage.tx,
            None,
            want,
            rustix::pipe::SpliceFlags::MOVE,
        ) {
            Ok(0) => return Err(file_too_short(reader)),
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return Ok(Staged::Unsupported),
        }
    };
    reader.position += taken as u64;
    reader.pipe.core.advance(reader.position);
    let mut held = taken;
    while held > 0 {
        match rustix::pipe::splice(
            &stage.rx,
            None,
            dst,
            None,
            held,
            rustix::pipe::SpliceFlags::MOVE,
        ) {
            Ok(0) => return Err(Error::Copy(Arc::new(io::ErrorKind::WriteZero.into()))),
            Ok(n) => {
                held -= n;
                *served += n as u64;
                metrics.add_sendfile_bytes(n as u64);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => wait_writable(dst)?,
            Err(
                rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP,
            ) => {
                // The destination takes no splices (a file opened to append, say): hand
                // the staged bytes over with plain writes.
                let mut buf = vec![0u8; held];
                let mut got = 0;
                while got < held {
                    match rustix::io::read(&stage.rx, &mut buf[got..]) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(rustix::io::Errno::INTR) => {}
                        Err(e) => return Err(Error::Copy(Arc::new(e.into()))),
                    }
                }
                write_all_fd(dst, &buf[..got])?;
                *served += got as u64;
                return Ok(Staged::CopiedPlainly);
            }
            Err(e) => return Err(Error::Copy(Arc::new(e.into()))),
        }
    }
    Ok(Staged::Sent)
}

fn send_entry(
    reader: &mut PipeReader,
    dst: BorrowedFd<'_>,
    metrics: &Metrics,
    served: &mut u64,
) -> Result<()> {
    let mut progressed = false;
    // Made when first needed; `None` for good once staging proved impossible.
    let mut stage: Option<Option<Stage>> = None;
    loop {
        let readable = loop {
            if let Some(readable) = reader
                .pipe
                .core
                .wait_readable_for(reader.position, Some(HANGUP_CHECK))
            {
                break readable;
            }
            // The producer is quiet. If our destination hung up meanwhile, leave now:
            // holding the reader would keep a producer alive for nobody.
            if has_hung_up(dst) {
                return Err(Error::Copy(Arc::new(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the destination hung up while waiting for the producer",
                ))));
            }
        };
        let end = match readable {
            Readable::End => return Ok(()),
            Readable::Failed => return Err(reader.failure()),
            Readable::Until(end) => end,
        };
        if end - reader.position < STAGE_BELOW {
            if let Some(staging) = stage.get_or_insert_with(Stage::new) {
                match stage_step(reader, dst, staging, end - reader.position, metrics, served)? {
                    Staged::Sent => {
                        progressed = true;
                        continue;
                    }
                    Staged::CopiedPlainly => return copy_entry_plain(reader, dst, served),
                    Staged::Unsupported => stage = Some(None),
                }
            }
        }
        let count =
            usize::try_from((end - reader.position).min(SENDFILE_CHUNK)).unwrap_or(usize::MAX);
        let mut offset = reader.position;
        match rustix::fs::sendfile(dst, reader.file.as_fd(), Some(&mut offset), count) {
            Ok(0) => return Err(file_too_short(reader)),
            Ok(n) => {
                progressed = true;
                reader.position += n as u64;
                *served += n as u64;
                metrics.add_sendfile_bytes(n as u64);
                reader.pipe.core.advance(reader.position);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => wait_writable(dst)?,
            Err(_) if !progressed => return copy_entry_plain(reader, dst, served),
            Err(e) => return Err(Error::Copy(Arc::new(e.into()))),
        }
    }
}

fn copy_entry_plain(reader: &mut PipeReader, dst: BorrowedFd<'_>, served: &mut u64) -> Result<()> {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = read_entry(reader, &mut buf).map_err(Error::from_io)?;
        if n == 0 {
            return Ok(());
        }
        write_all_fd(dst, &buf[..n])?;
        *served += n as u64;
    }
}

fn write_all_fd(dst: BorrowedFd<'_>, mut buf: &[u8]) -> Result<()> {
    while !buf.is_empty() {
        match rustix::io::write(dst, buf) {
            Ok(0) => {
                return Err(Error::Copy(Arc::new(io::ErrorKind::WriteZero.into())));
            }
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => wait_writable(dst)?,
            Err(e) => return Err(Error::Copy(Arc::new(e.into()))),
        }
    }
    Ok(())
}

/// Whether `dst` reports a hang-up or an error (a socket whose peer closed, a pipe
/// whose reader left); never for regular files.
fn has_hung_up(dst: BorrowedFd<'_>) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(&dst, PollFlags::empty())];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(n) if n > 0 => fds[0]
            .revents()
            .intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL),
        _ => false,
    }
}

fn wait_writable(dst: BorrowedFd<'_>) -> Result<()> {
    let mut fds = [rustix::event::PollFd::new(
        &dst,
        rustix::event::PollFlags::OUT,
    )];
    match rustix::event::poll(&mut fds, None) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(Error::Copy(Arc::new(e.into()))),
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.source {
            Source::Entry(reader) => read_entry(reader, buf)?,
            Source::Direct(direct) => read_direct(direct, &self.outcome, buf)?,
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
mod nonblocking {
    use super::*;
    use std::pin::Pin;
    use std::task::{ready, Context, Poll};
    use tokio::io::{AsyncRead, ReadBuf};

    impl AsyncRead for Stream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let n = match &mut this.source {
                Source::Entry(reader) => {
                    ready!(poll_read_entry(reader, cx, buf.initialize_unfilled()))?
                }
                Source::Direct(direct) => ready!(poll_read_direct(
                    direct,
                    &this.outcome,
                    cx,
                    buf.initialize_unfilled()
                ))?,
            };
            buf.advance(n);
            this.served += n as u64;
            Poll::Ready(Ok(()))
        }
    }

    fn poll_read_entry(
        reader: &mut PipeReader,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        match ready!(reader.pipe.core.poll_readable(reader.position, cx)) {
            Readable::End => Poll::Ready(Ok(0)),
            Readable::Failed => Poll::Ready(Err(reader.failure().into())),
            Readable::Until(end) => {
                let n = pread_available(reader, buf, end)?;
                reader.pipe.core.advance(reader.position);
                Poll::Ready(Ok(n))
            }
        }
    }

    fn poll_read_direct(
        direct: &mut Direct,
        outcome: &Waiter,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() || direct.eof {
            return Poll::Ready(finish_direct(direct, outcome));
        }
        if direct.registered.is_none() {
            let Some(pipe) = direct.pipe.take() else {
                return Poll::Ready(Ok(0));
            };
            let fd = std::os::fd::OwnedFd::from(pipe);
            direct.registered = Some(tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?);
        }
        loop {
            let Some(rx) = direct.registered.as_ref() else {
                return Poll::Ready(Ok(0));
            };
            ready!(rx.poll_read_ready(cx))?;
            match rx.try_read(buf) {
                Ok(0) => return Poll::Ready(finish_direct(direct, outcome)),
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}
