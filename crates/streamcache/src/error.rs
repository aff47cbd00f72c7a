//! The error type of the crate.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// What the cache was doing to a file or directory when an [`Error::Io`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Creating a fan-out directory.
    Mkdir,
    /// Creating a new entry file.
    Create,
    /// Opening an entry file for reading.
    OpenReader,
    /// Writing producer output into an entry file.
    Write,
    /// Reading an entry file.
    Read,
    /// Closing an entry file after the producer finished.
    Close,
    /// Removing an entry file.
    Remove,
    /// Walking the cache directory.
    Walk,
    /// Drawing the random name prefix of this cache's files.
    Random,
    /// Starting a thread (a producer or the maintenance thread).
    Spawn,
    /// Releasing the part of a transient entry's file that every reader has read.
    Release,
    /// Asking the file system how much space is free (the free-space guard).
    FreeSpace,
    /// Giving a durable entry's file its committed name.
    Commit,
    /// Checking a committed entry against its digest.
    Verify,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Mkdir => "mkdir",
            Op::Create => "create",
            Op::OpenReader => "open reader",
            Op::Write => "write",
            Op::Read => "read",
            Op::Close => "close",
            Op::Remove => "remove",
            Op::Walk => "walk",
            Op::Random => "random name",
            Op::Spawn => "spawn thread for",
            Op::Release => "release read part of",
            Op::FreeSpace => "measure free space of",
            Op::Commit => "commit",
            Op::Verify => "verify",
        })
    }
}

/// Errors returned by the cache.
///
/// `Display` says what failed, `source()` gives the cause: print the whole chain (as
/// `anyhow`'s `{:#}` does, or by walking [`std::error::Error::source`]) to see both;
/// each cause appears once.
///
/// `Error` is [`Clone`] because one producer failure fans out to every reader of the entry:
/// each of them gets the same value from [`Stream::wait`](crate::Stream::wait).
///
/// Reads through [`std::io::Read`] see these errors wrapped in an [`io::Error`]; the
/// conversion keeps the [`io::ErrorKind`] of an underlying I/O error, and
/// [`Error::from_io`] unwraps such an `io::Error` again.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// I/O on a cache file or directory failed; `path` names it and `op` says what was tried.
    #[error("streamcache: {op} {}", path.display())]
    Io {
        /// What the cache was doing.
        op: Op,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The producer returned this error. Its text and its source are the producer's
    /// own.
    #[error(transparent)]
    Producer(Arc<io::Error>),
    /// The producer panicked; the text is the panic message.
    #[error("panic: {0}")]
    Panic(Arc<str>),
    /// Every reader left before the producer finished, so the entry was abandoned.
    #[error("streamcache.pipe: all readers closed before writer finished")]
    ReadersGone,
    /// The producer had already finished when it was closed a second time.
    #[error("streamcache.pipe: writer already closed")]
    WriterClosed,
    /// Copying the entry into the caller's destination failed.
    #[error("streamcache: copy to destination")]
    Copy(#[source] Arc<io::Error>),
    /// A producer could not be started outside the cache (a bypass): no OS pipe or no
    /// thread could be had.
    #[error("streamcache: start a producer outside the cache")]
    Bypass(#[source] Arc<io::Error>),
    /// A wait for the producer's result timed out.
    #[error("streamcache: timed out waiting for the producer")]
    TimedOut,
    /// The configuration is invalid; `field` names the setting.
    #[error("streamcache config: {field}: {reason}")]
    Config {
        /// The name of the offending field of [`crate::Config`].
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// A specialized [`Result`](std::result::Result) for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: Op, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Error {
        Error::Config {
            field,
            reason: reason.into(),
        }
    }

    /// Turns an [`io::Error`] back into the crate error it carries, if it carries one;
    /// otherwise treats it as the producer's own error.
    pub fn from_io(err: io::Error) -> Error {
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            if let Some(inner) = err.into_inner() {
                if let Ok(ours) = inner.downcast::<Error>() {
                    return *ours;
                }
            }
            // Unreachable in practice: the check above saw an `Error` inside.
            return Error::Producer(Arc::new(io::Error::other("lost inner error")));
        }
        Error::Producer(Arc::new(err))
    }

    /// The operation that failed, for [`Error::Io`].
    pub fn op(&self) -> Option<Op> {
        match self {
            Error::Io { op, .. } => Some(*op),
            _ => None,
        }
    }

    /// The [`io::ErrorKind`] this error maps to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Io { source, .. }
            | Error::Producer(source)
            | Error::Copy(source)
            | Error::Bypass(source) => source.kind(),
            Error::Panic(_) => io::ErrorKind::Other,
            Error::ReadersGone => io::ErrorKind::BrokenPipe,
            Error::WriterClosed => io::ErrorKind::Other,
            Error::TimedOut => io::ErrorKind::TimedOut,
            Error::Config { .. } => io::ErrorKind::InvalidInput,
        }
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        io::Error::new(err.kind(), err)
    }
}

/// Shows an error and each of its causes, `: `-separated, for logs.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
