//! The producer's end of an entry.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::direct::Sink;
use crate::durable::Commit;
use crate::error::{Error, Op, Result};
use crate::pipe::Sender;
use crate::room::Room;

/// The largest piece a passing entry holds in memory (see [`crate::room`]): a larger
/// write goes to the readers in pieces of this size.
const PASS_PIECE: usize = 1 << 20;

/// Where a producer writes the entry's bytes.
///
/// Every `write` call stores the whole buffer or fails: a short write is never reported,
/// and readers never see part of a failed call.
/// With back pressure on (the default), a call first waits until the fastest reader has
/// caught up with everything written so far, so the producer runs at most one write call
/// ahead of its fastest reader. Bound your write sizes to bound that lead (64 KiB is a
/// good size).
///
/// With a disk budget or a free-space guard, an entry that has no more room turns
/// transient (see [`Config::max_disk_bytes`](crate::Config::max_disk_bytes)): a write
/// may then wait for the slowest reader, and goes to the file in pieces that readers
/// see as they come.
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
        sender: Sender,
        file: Option<File>,
        path: Arc<Path>,
        failure: Option<Error>,
        /// The entry's room on disk, with a budget or a free-space guard.
        room: Option<Room>,
        /// The file system is full and the entry holds nothing to free: its bytes go
        /// to its readers through memory, piece by piece (see [`crate::room`]).
        passing: bool,
        /// A durable entry's commit, started when the producer succeeds (see
        /// [`crate::durable`]); dropped when the file stops holding every byte (a
        /// transient or passing entry is never committed).
        durable: Option<Commit>,
        #[cfg(test)]
        close_fault: Option<io::ErrorKind>,
    },
    /// Straight to one reader, bypassing the cache (see [`crate::direct`]).
    Direct(Sink),
}

impl Writer {
    pub(crate) fn entry(
        sender: Sender,
        file: File,
        path: Arc<Path>,
        room: Option<Room>,
        durable: Option<Commit>,
    ) -> Writer {
        Writer {
            inner: Inner::Entry {
                sender,
                file: Some(file),
                path,
                failure: None,
                room,
                passing: false,
                durable,
                #[cfg(test)]
                close_fault: None,
            },
            written: 0,
        }
    }

    pub(crate) fn direct(sink: Sink) -> Writer {
        Writer {
            inner: Inner::Direct(sink),
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

    /// The entry file's path, for a cached entry.
    pub(crate) fn path(&self) -> Option<&Arc<Path>> {
        match &self.inner {
            Inner::Entry { path, .. } => Some(path),
            Inner::Direct(_) => None,
        }
    }

    /// The producer returned `Ok`: closes the file and publishes the end of the entry.
    /// A durable entry's commit then starts on a pool thread (its record's room is
    /// taken first, so the budget holds); readers do not wait for it.
    /// On an error nothing is published; the caller fails the writer with it.
    pub(crate) fn close(&mut self) -> Result<()> {
        match &mut self.inner {
            Inner::Entry {
                sender,
                file,
                failure,
                room,
                passing,
                durable,
                #[cfg(test)]
                close_fault,
                #[cfg(test)]
                path,
                ..
            } => {
                // The commit needs a write handle for its record, and room for it: a
                // transient entry has none (and its file no longer holds every byte).
                let commit = match (durable.take(), file.as_ref()) {
                    (Some(commit), Some(handle)) if !*passing && failure.is_none() => {
                        let len = commit.record_len();
                        let fits = room
                            .as_mut()
                            .is_none_or(|room| room.reserve_tail(self.written, len));
                        match handle.try_clone() {
                            Ok(write) if fits => {
                                if let Some(room) = room {
                                    room.wrote(self.written + len);
                                }
                                Some((commit, write))
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                };
                // The file is closed first, as the reference does, then the pipe decides.
                drop(file.take());
                if let Some(room) = room {
                    room.finish();
                }
                #[cfg(test)]
                if let Some(kind) = close_fault.take() {
                    let err = Error::io(Op::Close, &**path, io::Error::from(kind));
                    *failure = Some(err);
                }
                if let Some(err) = failure {
                    return Err(err.clone());
                }
                // Under way before the end is published (see `Commit::begin`).
                let commit = commit.map(|(commit, write)| (commit.begin(), write));
                sender.close()?;
                if let Some((commit, write)) = commit {
                    commit.start(self.written, write);
                }
                Ok(())
            }
            Inner::Direct(sink) => {
                sink.finish(Ok(()));
                Ok(())
            }
        }
    }

    /// The producer failed: publishes `err` to every reader, in one step.
    pub(crate) fn fail(&mut self, err: Error) {
        match &mut self.inner {
            Inner::Entry {
                sender, file, room, ..
            } => {
                drop(file.take());
                if let Some(room) = room {
                    room.finish();
                }
                sender.fail(err);
            }
            Inner::Direct(sink) => sink.finish(Err(err)),
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
                sender,
                file,
                path,
                failure,
                room,
                passing,
                durable,
                ..
            } => {
                if let Some(err) = failure {
                    return Err(err.clone().into());
                }
                // One piece, unless the entry is transient and short of room.
                let mut rest = buf;
                while !rest.is_empty() {
                    sender.begin_write()?;
                    if *passing {
                        let n = rest.len().min(PASS_PIECE);
                        // The piece before this one must have reached every reader.
                        if self.written > 0 && sender.await_slowest_past(self.written - 1).is_none()
                        {
                            return Err(Error::ReadersGone.into());
                        }
                        sender.pass(self.written, &rest[..n]);
                        self.written += n as u64;
                        sender.end_write(self.written);
                        rest = &rest[n..];
                        continue;
                    }
                    let Some(file) = file.as_mut() else {
                        return Err(Error::WriterClosed.into());
                    };
                    let n = match room {
                        None => rest.len(),
                        Some(room) => {
                            let len = rest.len() as u64;
                            match room.admit(sender, file, path, self.written, len) {
                                // At most `len`, which is a `usize`.
                                Ok(n) => usize::try_from(n).unwrap_or(rest.len()),
                                Err(Error::ReadersGone) => return Err(Error::ReadersGone.into()),
                                Err(err) => {
                                    *failure = Some(err.clone());
                                    return Err(err.into());
                                }
                            }
                        }
                    };
                    // At the writer's own position, so that a piece tried again after a
                    // full file system starts where the last one that counted ended.
                    if let Err(e) = file.write_all_at(&rest[..n], self.written) {
                        let full = matches!(
                            e.kind(),
                            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                        );
                        // The file system filled up under the budget (another program
                        // raced the guard): make room from what readers have passed.
                        if let (true, Some(room)) = (full, room.as_mut()) {
                            // Nothing on disk to free: pass the bytes through memory.
                            *passing = !room.out_of_space(self.written);
                            *durable = None;
                            continue;
                        }
                        // The part of this piece that did reach the file is not
                        // published: readers never see a torn write, only what came
                        // before it and then the error. (The reference publishes the
                        // partial bytes.)
                        let err = Error::io(Op::Write, &**path, e);
                        *failure = Some(err.clone());
                        return Err(err.into());
                    }
                    sender.keep(self.written, &rest[..n]);
                    self.written += n as u64;
                    if let Some(room) = room {
                        room.wrote(self.written);
                    }
                    sender.end_write(self.written);
                    rest = &rest[n..];
                }
                Ok(buf.len())
            }
            Inner::Direct(sink) => {
                sink.write_all(buf)?;
                self.written += buf.len() as u64;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
