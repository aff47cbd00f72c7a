//! The bypass: a producer that streams to one caller through an OS pipe, touching no
//! disk. The disabled cache runs every producer this way, and a real cache runs the
//! first occurrences of a key this way until the min-occurrences rule admits it.
//!
//! Both ends live here: [`Sink`], what the producer's [`crate::Writer`] writes into,
//! and [`Reader`], what the caller's [`crate::Stream`] reads from. The producer
//! publishes its result before it closes the OS pipe, so the reader that sees
//! end-of-file looks at the result and reports a failure instead of a clean end.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::runner::{self, Producer};
use crate::stream::Stream;
use crate::waiter::Waiter;
use crate::writer::Writer;

/// Starts `producer` outside the cache and returns the one stream that reads it.
///
/// # Errors
///
/// [`Error::Bypass`] if no OS pipe or no thread could be had.
pub(crate) fn start(key: &str, producer: Producer, metrics: &Arc<Metrics>) -> Result<Stream> {
    let (reader, writer) = io::pipe().map_err(|e| Error::Bypass(Arc::new(e)))?;
    let outcome = Arc::new(Waiter::default());
    let stream = Stream::direct(
        Reader {
            pipe: Some(reader),
            #[cfg(feature = "tokio")]
            registered: None,
            eof: false,
            outcome: Arc::clone(&outcome),
        },
        Arc::clone(metrics),
    );
    let sink = Sink {
        pipe: Some(writer),
        outcome,
    };
    runner::start(runner::Job {
        key: key.to_owned(),
        writer: Writer::direct(sink),
        producer,
        metrics: Arc::clone(metrics),
        before_failure: None,
    })?;
    Ok(stream)
}

/// The producer's end: the OS pipe's write side and the result it publishes.
#[derive(Debug)]
pub(crate) struct Sink {
    pipe: Option<io::PipeWriter>,
    outcome: Arc<Waiter>,
}

impl Sink {
    pub(crate) fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Err(Error::WriterClosed.into());
        };
        match pipe.write_all(buf) {
            Ok(()) => Ok(()),
            // The reader left: as with a cached entry whose readers all left.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(Error::ReadersGone.into()),
            Err(e) => Err(e),
        }
    }

    /// Publishes `outcome`, then closes the OS pipe: the reader sees end-of-file after
    /// the result is there to look at.
    pub(crate) fn finish(&mut self, outcome: Result<()>) {
        self.outcome.set(outcome);
        drop(self.pipe.take());
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if self.pipe.is_some() {
            self.finish(Err(Error::WriterClosed));
        }
    }
}

/// The caller's end: the OS pipe's read side and the producer's result.
#[derive(Debug)]
pub(crate) struct Reader {
    pipe: Option<io::PipeReader>,
    /// The same pipe once an async read registered it with tokio (non-blocking).
    #[cfg(feature = "tokio")]
    registered: Option<tokio::net::unix::pipe::Receiver>,
    eof: bool,
    outcome: Arc<Waiter>,
}

impl Reader {
    pub(crate) fn outcome(&self) -> &Arc<Waiter> {
        &self.outcome
    }

    /// Reads what the producer wrote next. An empty `buf` reads nothing and changes
    /// nothing.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.eof {
            return self.finish();
        }
        loop {
            match self.read_once(buf) {
                Ok(0) => return self.finish(),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Registered with tokio (non-blocking) and now read from sync code.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_readable()?,
                Err(e) => return Err(e),
            }
        }
    }

    /// One read from the pipe; `WouldBlock` only if registered with tokio.
    fn read_once(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(feature = "tokio")]
        if let Some(rx) = &self.registered {
            return rx.try_read(buf);
        }
        match &mut self.pipe {
            Some(pipe) => pipe.read(buf),
            // Unreachable: the pipe is either here or registered.
            None => Err(no_pipe()),
        }
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        #[cfg(feature = "tokio")]
        if let Some(rx) = &self.registered {
            return Some(rx.as_fd());
        }
        self.pipe.as_ref().map(|p| p.as_fd())
    }

    fn wait_readable(&self) -> io::Result<()> {
        let Some(fd) = self.fd() else {
            return Err(no_pipe());
        };
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// End of the stream: end-of-file if the producer succeeded, its error otherwise.
    fn finish(&mut self) -> io::Result<usize> {
        self.eof = true;
        match self.outcome.get() {
            Some(Err(e)) => Err(e.into()),
            _ => Ok(0),
        }
    }

    /// Like [`Reader::read`], for tasks: the pipe is registered with tokio on first use.
    #[cfg(feature = "tokio")]
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        use std::task::{ready, Poll};
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.eof {
            return Poll::Ready(self.finish());
        }
        if self.registered.is_none() {
            let Some(pipe) = self.pipe.take() else {
                return Poll::Ready(Err(no_pipe()));
            };
            let fd = std::os::fd::OwnedFd::from(pipe);
            self.registered = Some(tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?);
        }
        loop {
            let Some(rx) = self.registered.as_ref() else {
                return Poll::Ready(Err(no_pipe()));
            };
            ready!(rx.poll_read_ready(cx))?;
            match rx.try_read(buf) {
                Ok(0) => return Poll::Ready(self.finish()),
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// A bypass reader holds its pipe either plainly or registered with tokio; neither is
/// an internal error, never end-of-file.
fn no_pipe() -> io::Error {
    io::Error::other("streamcache: bypass stream has no pipe")
}
