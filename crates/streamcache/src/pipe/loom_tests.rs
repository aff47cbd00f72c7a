//! Loom models of the pipe's coordination core: every interleaving of a writer and its
//! readers (up to the preemption bound) must end with everyone done, no thread parked
//! forever (loom reports a lost wake-up as a deadlock) and the "broken" decision made
//! once. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p streamcache --lib --release loom`.

use std::task::{Context, Poll, Waker};

use loom::sync::Arc;
use loom::thread;

use super::{Core, Readable};
use crate::cursor::Subscription;
use crate::error::{Error, Result};

/// Opens `n` readers on the main thread, so they exist before the writer starts.
fn open_readers(core: &Core, n: usize) -> Vec<Subscription> {
    (0..n)
        .map(|_| core.subscribe(|| Ok(())).expect("a fresh pipe opens").1)
        .collect()
}

/// A writer making `chunks` one-byte write calls, then closing.
fn write_chunks(core: &Core, chunks: u64) -> Result<()> {
    for _ in 0..chunks {
        let at = core.begin_write()?;
        core.end_write(at + 1);
    }
    core.close_writer()
}

/// A reader following the writer to the end; returns where it ended.
fn read_to_end(core: &Core) -> u64 {
    let mut position = 0;
    loop {
        match core.wait_readable(position) {
            Readable::Until(end) => {
                // One byte per read, so a fast reader and a slow one interleave.
                assert!(end > position);
                position += 1;
                core.advance(position);
            }
            Readable::End => return position,
            Readable::Failed => panic!("a reader saw a failure nobody caused"),
        }
    }
}

fn assert_readers_gone<T: std::fmt::Debug>(result: Result<T>) {
    match result {
        Err(Error::ReadersGone) => {}
        other => panic!("expected ReadersGone, got {other:?}"),
    }
}

/// (a) The writer, held back while ahead, and the readers, waiting for bytes, wake each
/// other up until every reader has all the bytes and the writer has closed.
fn writer_and_readers_reach_the_end(backpressure: bool, readers: usize, chunks: u64) {
    loom::model(move || {
        let core = Arc::new(Core::new(backpressure, 0));
        let subscriptions = open_readers(&core, readers);
        let reading: Vec<_> = subscriptions
            .into_iter()
            .map(|subscription| {
                let core = Arc::clone(&core);
                thread::spawn(move || {
                    let end = read_to_end(&core);
                    core.close_reader(subscription);
                    end
                })
            })
            .collect();
        write_chunks(&core, chunks).expect("the readers stay until the end");
        for reader in reading {
            assert_eq!(reader.join().unwrap(), chunks);
        }
    });
}

#[test]
fn loom_a_writer_ahead_waits_for_its_reader_without_lost_wakeups() {
    writer_and_readers_reach_the_end(true, 1, 3);
}

#[test]
fn loom_a_writer_ahead_waits_for_the_faster_of_two_readers_without_lost_wakeups() {
    writer_and_readers_reach_the_end(true, 2, 3);
}

#[test]
fn loom_without_back_pressure_readers_still_wake_for_every_write() {
    writer_and_readers_reach_the_end(false, 2, 3);
}

/// (b) The last reader leaves while the writer is blocked (or about to block) in
/// `begin_write`: the writer must wake with `ReadersGone`, and the pipe stays broken.
#[test]
fn loom_the_last_reader_leaving_wakes_a_blocked_writer_with_readers_gone() {
    loom::model(|| {
        let core = Arc::new(Core::new(true, 0));
        let mut subscriptions = open_readers(&core, 1);
        // One write ahead of a reader at 0: the next write has to wait.
        let at = core.begin_write().unwrap();
        core.end_write(at + 1);
        let writer = {
            let core = Arc::clone(&core);
            thread::spawn(move || core.begin_write())
        };
        let reader = {
            let core = Arc::clone(&core);
            let subscription = subscriptions.remove(0);
            thread::spawn(move || core.close_reader(subscription))
        };
        reader.join().unwrap();
        assert_readers_gone(writer.join().unwrap());
        assert_readers_gone(core.close_writer());
        assert_readers_gone(core.subscribe(|| Ok(())));
    });
}

/// (b) Two readers leave at once while a writer keeps writing: whichever leaves last,
/// the writer ends with `ReadersGone`, never stuck and never after a clean close.
#[test]
fn loom_two_readers_leaving_together_stop_a_writing_writer() {
    loom::model(|| {
        let core = Arc::new(Core::new(true, 0));
        let subscriptions = open_readers(&core, 2);
        let writer = {
            let core = Arc::clone(&core);
            thread::spawn(move || loop {
                if let Err(e) = core.begin_write().map(|at| core.end_write(at + 1)) {
                    return e;
                }
            })
        };
        let leaving: Vec<_> = subscriptions
            .into_iter()
            .enumerate()
            .map(|(i, subscription)| {
                let core = Arc::clone(&core);
                thread::spawn(move || {
                    // The first reads a byte first, so the writer gets one more write.
                    if i == 0 && core.wait_readable(0) != Readable::End {
                        core.advance(1);
                    }
                    core.close_reader(subscription);
                })
            })
            .collect();
        for reader in leaving {
            reader.join().unwrap();
        }
        let err = writer.join().unwrap();
        assert!(matches!(err, Error::ReadersGone), "got {err:?}");
        // A reader at 1 lets the writer make one more write past the first; no more.
        assert!(core.written() <= 2, "wrote {}", core.written());
        assert_readers_gone(core.close_writer());
    });
}

/// (c) The writer closes while the first reader leaves and a new reader tries to join.
/// The "broken" decision is atomic with opening: either the new reader opens, the close
/// succeeds and the reader reads to the end, or it gets `ReadersGone` and so does the
/// close. Nothing in between.
fn close_races_with_readers_coming_and_going(backpressure: bool) {
    loom::model(move || {
        let core = Arc::new(Core::new(backpressure, 0));
        let mut subscriptions = open_readers(&core, 1);
        let at = core.begin_write().unwrap();
        core.end_write(at + 1);
        let closer = {
            let core = Arc::clone(&core);
            thread::spawn(move || core.close_writer())
        };
        let leaver = {
            let core = Arc::clone(&core);
            let subscription = subscriptions.remove(0);
            thread::spawn(move || core.close_reader(subscription))
        };
        let joiner = {
            let core = Arc::clone(&core);
            thread::spawn(move || match core.subscribe(|| Ok(())) {
                Ok(((), subscription)) => {
                    let end = read_to_end(&core);
                    core.close_reader(subscription);
                    Some(end)
                }
                Err(Error::ReadersGone) => None,
                Err(e) => panic!("opening failed with {e:?}"),
            })
        };
        let closed = closer.join().unwrap();
        leaver.join().unwrap();
        match (closed, joiner.join().unwrap()) {
            (Ok(()), Some(1)) | (Err(Error::ReadersGone), None) => {}
            other => panic!("inconsistent outcome: {other:?}"),
        }
    });
}

#[test]
fn loom_a_reader_joining_during_close_either_reads_to_the_end_or_is_refused() {
    close_races_with_readers_coming_and_going(true);
}

#[test]
fn loom_without_back_pressure_a_reader_joining_during_close_either_reads_to_the_end_or_is_refused()
{
    close_races_with_readers_coming_and_going(false);
}

/// Wakes a loom thread parked in [`block_on`].
struct Unpark(thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls until ready, parking the (loom) thread in between, as an executor would.
fn block_on<T>(mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> T {
    let waker = Waker::from(std::sync::Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(value) = poll(&mut cx) {
            return value;
        }
        thread::park();
    }
}

/// (a) for tasks: a reader that polls, registering its waker, is woken for every write
/// and for the close, and the writer it holds back is woken by its progress.
fn an_async_reader_follows_the_writer(backpressure: bool) {
    loom::model(move || {
        let core = Arc::new(Core::new(backpressure, 0));
        let subscription = open_readers(&core, 1).remove(0);
        let reader = {
            let core = Arc::clone(&core);
            thread::spawn(move || {
                let mut position = 0;
                loop {
                    let readable = block_on(|cx| core.poll_readable(position, cx));
                    match readable {
                        Readable::Until(_) => {
                            position += 1;
                            core.advance(position);
                        }
                        Readable::End => break,
                        Readable::Failed => panic!("a reader saw a failure nobody caused"),
                    }
                }
                core.close_reader(subscription);
                position
            })
        };
        write_chunks(&core, 3).expect("the reader stays until the end");
        assert_eq!(reader.join().unwrap(), 3);
    });
}

#[test]
fn loom_an_async_reader_is_woken_for_every_write_and_the_close() {
    an_async_reader_follows_the_writer(true);
}

#[test]
fn loom_without_back_pressure_an_async_reader_is_woken_for_every_write_and_the_close() {
    an_async_reader_follows_the_writer(false);
}
