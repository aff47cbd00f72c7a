//! The producer's end of an entry.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use crate::pipe::Pipe;
use crate::{Error, Op, Result};

/// Where a producer writes the entry's bytes.
///
/// Every `write` call stores the whole buffer or fails: a short write is never reported,
/// and readers never see part of a failed call.
/// With back pressure on (the default), a call first waits until the fastest reader has
/// caught up with everything written so far, so the producer runs at most one write call
/// ahead of its fastest reader. Bound your write sizes to bound that lead (64 KiB is a
/// good size).
///
/// Once every reader has gone, writes fail with [`io::ErrorKind::BrokenPipe`], as a Unix
/// pipe would: nobody is left to read what the producer makes, so it should stop.
/// A failed write is sticky: the entry is never served as complete afterwards, even if
/// the producer ignores the error and returns `Ok`.
#[derive(Debug)]
pub struct Writer {
    inner: Inner,
    written: u64,
}

#[derive(Debug)]
enum Inner {
    /// Into an entry file of a real cache.
    Entry {
        pipe: Arc<Pipe>,
        file: Option<File>,
        failure: Option<Error>,
        #[cfg(test)]
        close_fault: Option<io::ErrorKind>,
    },
    /// Straight into an OS pipe to one reader: the disabled cache, and keys not yet
    /// admitted by the min-occurrences rule.
    Direct(Option<io::PipeWriter>),
}

impl Writer {
    pub(crate) fn entry(pipe: Arc<Pipe>, file: File) -> Writer {
        Writer {
            inner: Inner::Entry {
                pipe,
                file: Some(file),
                failure: None,
                #[cfg(test)]
                close_fault: None,
            },
            written: 0,
        }
    }

    pub(crate) fn direct(pipe: io::PipeWriter) -> Writer {
        Writer {
            inner: Inner::Direct(Some(pipe)),
            written: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn inject_close_fault(&mut self, kind: io::ErrorKind) {
        if let Inner::Entry { close_fault, .. } = &mut self.inner {
            *close_fault = Some(kind);
        }
    }

    /// Bytes stored so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The producer returned `Ok`: closes the file and publishes the end of the entry.
    pub(crate) fn close(&mut self) -> Result<()> {
        match &mut self.inner {
            Inner::Entry {
                pipe,
                file,
                failure,
                #[cfg(test)]
                close_fault,
            } => {
                // The file is closed first, as the reference does, then the pipe decides.
                drop(file.take());
                #[cfg(test)]
                if let Some(kind) = close_fault.take() {
                    let err = Error::io(Op::Close, &pipe.path, io::Error::from(kind));
                    *failure = Some(err);
                }
                if let Some(err) = failure {
                    return Err(err.clone());
                }
                pipe.core.close_writer()
            }
            // The reader sees end-of-file when the writer is dropped, after the outcome
            // has been published.
            Inner::Direct(_) => Ok(()),
        }
    }

    /// The producer failed (the outcome is already published): readers that reach the
    /// end learn of it.
    pub(crate) fn abandon(&mut self) {
        match &mut self.inner {
            Inner::Entry { pipe, file, .. } => {
                drop(file.take());
                pipe.core.fail();
            }
            Inner::Direct(pipe) => drop(pipe.take()),
        }
    }

    /// The failure the writer saw itself (a failed write), which beats whatever the
    /// producer made of it.
    pub(crate) fn failure(&self) -> Option<Error> {
        match &self.inner {
            Inner::Entry { failure, .. } => failure.clone(),
            Inner::Direct(_) => None,
        }
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match &mut self.inner {
            Inner::Entry {
                pipe,
                file,
                failure,
                ..
            } => {
                if let Some(err) = failure {
                    return Err(err.clone().into());
                }
                pipe.core.begin_write()?;
                let Some(file) = file.as_mut() else {
                    return Err(Error::WriterClosed.into());
                };
                let mut done = 0;
                let mut error = None;
                while done < buf.len() {
                    match file.write(&buf[done..]) {
                        Ok(0) => {
                            error = Some(io::Error::from(io::ErrorKind::WriteZero));
                            break;
                        }
                        Ok(n) => done += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                if let Some(e) = error {
                    // The part of this call that did reach the file is not published:
                    // readers never see a torn write, only what came before it and
                    // then the error. (The reference publishes the partial bytes.)
                    let err = Error::io(Op::Write, &pipe.path, e);
                    *failure = Some(err.clone());
                    return Err(err.into());
                }
                self.written += done as u64;
                pipe.core.end_write(self.written);
                Ok(buf.len())
            }
            Inner::Direct(pipe) => {
                let Some(pipe) = pipe.as_mut() else {
                    return Err(Error::WriterClosed.into());
                };
                match pipe.write_all(buf) {
                    Ok(()) => {
                        self.written += buf.len() as u64;
                        Ok(buf.len())
                    }
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                        Err(Error::ReadersGone.into())
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
