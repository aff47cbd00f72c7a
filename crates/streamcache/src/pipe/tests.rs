// These tests use real threads and real files; under `--cfg loom` the pipe's locks are
// loom's, which only work inside a model, so the models in `loom_tests.rs` run instead.
#![cfg(not(loom))]

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread::{self, JoinHandle, ScopedJoinHandle};

use super::{channel, Core, Readable, Receiver, Tap};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::stream::Stream;
use crate::writer::Writer;

/// Runs one scenario as two tests, with back pressure on and off.
macro_rules! with_and_without_back_pressure {
    ($name:ident) => {
        mod $name {
            #[test]
            fn with_back_pressure() {
                super::$name(true);
            }
            #[test]
            fn without_back_pressure() {
                super::$name(false);
            }
        }
    };
}

/// A pipe's tap and the file it reads: what the cache's entry holds.
struct Pipe {
    tap: Tap,
    path: Arc<Path>,
}

impl Pipe {
    fn open_reader(&self) -> Result<Receiver> {
        self.tap
            .subscribe(|| Ok(Arc::new(File::open(&*self.path).unwrap())))
    }

    fn core(&self) -> &Core {
        &self.tap.shared.core
    }
}

/// A pipe over a real file in its own temporary directory, with its first reader.
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    pipe: Arc<Pipe>,
    writer: Writer,
    reader: Stream,
}

fn fixture(backpressure: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("entry");
    let file = File::create(&path).unwrap();
    let (sender, tap) = channel(backpressure, 0, false);
    let pipe = Arc::new(Pipe {
        tap,
        path: path.clone().into(),
    });
    let reader = open(&pipe).unwrap();
    let writer = Writer::entry(sender, file, Arc::clone(&pipe.path), None, None);
    Fixture {
        _dir: dir,
        path,
        pipe,
        writer,
        reader,
    }
}

/// Opens a reader and wraps it in the public read type.
fn open(pipe: &Arc<Pipe>) -> Result<Stream> {
    let reader = pipe.open_reader()?;
    Ok(Stream::entry(
        reader,
        Arc::clone(&pipe.path),
        None,
        Arc::new(Metrics::default()),
    ))
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).unwrap();
    bytes
}

/// Writes `data` one byte per write call, counting the completed calls in `progress`.
fn write_bytewise(writer: &mut Writer, data: &[u8], progress: &AtomicU64) -> Result<()> {
    for byte in data {
        writer
            .write_all(std::slice::from_ref(byte))
            .map_err(Error::from_io)?;
        progress.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

/// Waits, without sleeping, until the writer is parked in `begin_write` and held back by
/// back pressure; returns the bytes written by then. Fails if the writer thread finishes
/// instead, so a writer that is not held back fails the test rather than hanging it.
fn await_writer_held<T>(core: &Core, writer: &JoinHandle<T>) -> u64 {
    loop {
        if let Some(written) = core.writer_held() {
            return written;
        }
        assert!(
            !writer.is_finished(),
            "the writer finished instead of waiting for a reader"
        );
        thread::yield_now();
    }
}

/// As [`await_writer_held`], for a scoped thread.
fn await_scoped_writer_held<T>(core: &Core, writer: &ScopedJoinHandle<'_, T>) -> u64 {
    loop {
        if let Some(written) = core.writer_held() {
            return written;
        }
        assert!(
            !writer.is_finished(),
            "the writer finished instead of waiting for a reader"
        );
        thread::yield_now();
    }
}

/// Runs `f` on another thread and asserts that the writer is never held back by back
/// pressure while it runs.
fn without_waiting<T: Send>(core: &Core, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        let job = s.spawn(f);
        while !job.is_finished() {
            assert_eq!(core.writer_held(), None, "the writer had to wait");
            thread::yield_now();
        }
        job.join().unwrap()
    })
}

/// How many handles of this process have `path` open for writing.
fn write_handles_on(path: &Path) -> usize {
    let path = path.canonicalize().unwrap();
    let mut count = 0;
    for fd in fs::read_dir("/proc/self/fd").unwrap() {
        let fd = fd.unwrap().file_name();
        // A descriptor may close between listing and looking: skip it.
        let Ok(target) = fs::read_link(Path::new("/proc/self/fd").join(&fd)) else {
            continue;
        };
        if target != path {
            continue;
        }
        let Ok(info) = fs::read_to_string(Path::new("/proc/self/fdinfo").join(&fd)) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|line| line.strip_prefix("flags:"))
            .map(|flags| u32::from_str_radix(flags.trim(), 8).unwrap())
            .unwrap();
        // The access mode is the low two bits: O_RDONLY is 0.
        if flags & 0o3 != 0 {
            count += 1;
        }
    }
    count
}

fn assert_readers_gone<T: std::fmt::Debug>(result: Result<T>) {
    match result {
        Err(Error::ReadersGone) => {}
        other => panic!("expected ReadersGone, got {other:?}"),
    }
}

// ported from internal/streamcache/pipe_test.go: TestPipe
with_and_without_back_pressure!(ten_readers_each_get_exactly_the_bytes_written_one_at_a_time);
fn ten_readers_each_get_exactly_the_bytes_written_one_at_a_time(backpressure: bool) {
    let Fixture {
        _dir,
        pipe,
        mut writer,
        reader,
        ..
    } = fixture(backpressure);
    let input = random_bytes(4096);
    let mut readers = vec![reader];
    for _ in 0..9 {
        readers.push(open(&pipe).unwrap());
    }
    let copies: Vec<_> = readers
        .into_iter()
        .map(|mut reader| {
            thread::spawn(move || {
                let mut out = Vec::new();
                reader.read_to_end(&mut out).map(|_| out)
            })
        })
        .collect();
    write_bytewise(&mut writer, &input, &AtomicU64::new(0)).unwrap();
    writer.close().unwrap();
    for copy in copies {
        let out = copy.join().unwrap().unwrap();
        assert!(out == input, "a reader got other bytes than were written");
    }
}

// ported from internal/streamcache/pipe_test.go: TestPipe_readAfterClose
with_and_without_back_pressure!(
    a_reader_gets_everything_after_close_and_a_second_close_fails_and_a_late_reader_gets_everything
);
fn a_reader_gets_everything_after_close_and_a_second_close_fails_and_a_late_reader_gets_everything(
    backpressure: bool,
) {
    let Fixture {
        _dir,
        pipe,
        mut writer,
        mut reader,
        ..
    } = fixture(backpressure);
    let input = b"hello world";
    let producer = thread::spawn(move || {
        let result =
            write_bytewise(&mut writer, input, &AtomicU64::new(0)).and_then(|()| writer.close());
        (result, writer)
    });
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    assert_eq!(out, input);
    let (result, mut writer) = producer.join().unwrap();
    result.unwrap();
    match writer.close() {
        Err(Error::WriterClosed) => {}
        other => panic!("a second close must fail with WriterClosed, got {other:?}"),
    }
    let mut late = open(&pipe).unwrap();
    let mut out = Vec::new();
    late.read_to_end(&mut out).unwrap();
    assert_eq!(out, input);
}

// ported from internal/streamcache/pipe_test.go: TestPipe_backpressure (back pressure on)
#[test]
fn with_back_pressure_the_writer_stays_one_write_ahead_of_the_reader() {
    let Fixture {
        _dir,
        pipe,
        mut writer,
        mut reader,
        ..
    } = fixture(true);
    let input = b"hello world";
    let progress = Arc::new(AtomicU64::new(0));
    let producer = {
        let progress = Arc::clone(&progress);
        thread::spawn(move || {
            write_bytewise(&mut writer, input, &progress).and_then(|()| writer.close())
        })
    };
    let core = pipe.core();

    let mut byte = [0u8; 1];
    reader.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"h");
    // The reader has 1 byte: the writer did one more write and is parked before the third.
    assert_eq!(await_writer_held(core, &producer), 2);
    assert_eq!(progress.load(Ordering::SeqCst), 2);
    assert_eq!((core.written(), core.lead()), (2, 1));

    // Still blocked: a wake-up without reader progress sends it back to waiting at 2.
    core.nudge_writer();
    assert_eq!(await_writer_held(core, &producer), 2);
    assert_eq!(progress.load(Ordering::SeqCst), 2);

    reader.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"e");
    assert_eq!(await_writer_held(core, &producer), 3);
    assert_eq!(progress.load(Ordering::SeqCst), 3);

    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert_eq!([&b"he"[..], &rest].concat(), input);
    producer.join().unwrap().unwrap();
    assert_eq!(progress.load(Ordering::SeqCst), input.len() as u64);
}

// ported from internal/streamcache/pipe_test.go: TestPipe_backpressure (back pressure off)
#[test]
fn without_back_pressure_the_writer_finishes_before_anyone_reads() {
    let Fixture {
        _dir,
        pipe,
        mut writer,
        mut reader,
        ..
    } = fixture(false);
    let input = b"hello world";
    without_waiting(pipe.core(), || {
        write_bytewise(&mut writer, input, &AtomicU64::new(0)).and_then(|()| writer.close())
    })
    .unwrap();
    assert_eq!(pipe.core().lead(), input.len() as u64);
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    assert_eq!(out, input);
}

// ported from internal/streamcache/pipe_test.go: TestPipe_closeWhenAllReadersLeave (true)
#[test]
fn with_back_pressure_the_blocked_writer_fails_once_the_last_reader_leaves() {
    let Fixture {
        _dir,
        pipe,
        mut writer,
        reader,
        ..
    } = fixture(true);
    let producer = thread::spawn(move || {
        write_bytewise(&mut writer, b"hello world", &AtomicU64::new(0))
            .and_then(|()| writer.close())
    });
    let core = pipe.core();
    assert_eq!(await_writer_held(core, &producer), 1);
    let mut second = open(&pipe).unwrap();
    drop(reader);
    // One reader remains, so the writer is still waiting, not failed.
    assert_eq!(await_writer_held(core, &producer), 1);

    let mut byte = [0u8; 1];
    second.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"h");
    drop(second);
    assert_readers_gone(producer.join().unwrap());
    assert_readers_gone(open(&pipe));
}

// ported from internal/streamcache/pipe_test.go: TestPipe_closeWhenAllReadersLeave (false)
#[test]
fn without_back_pressure_writing_again_after_the_readers_left_fails() {
    let Fixture {
        _dir,
        pipe,
        mut writer,
        reader,
        ..
    } = fixture(false);
    let (go, wait_for_go) = mpsc::channel::<()>();
    let producer = thread::spawn(move || {
        writer.write_all(b"hello world").map_err(Error::from_io)?;
        // Whether this close beats the readers' leaving is up to the scheduler, as in
        // the reference; either answer is legitimate.
        let closed = writer.close();
        assert!(
            matches!(closed, Ok(()) | Err(Error::ReadersGone)),
            "unexpected close result {closed:?}"
        );
        wait_for_go.recv().unwrap();
        writer.write_all(b"bye").map_err(Error::from_io)
    });
    let mut second = open(&pipe).unwrap();
    drop(reader);
    let mut byte = [0u8; 1];
    second.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"h");
    drop(second);
    go.send(()).unwrap();
    // The reference fails this write because every reader left; ours fails it because
    // the writer was closed, which the check meets first.
    match producer.join().unwrap() {
        Err(Error::WriterClosed) => {}
        other => panic!("writing after close must fail with WriterClosed, got {other:?}"),
    }
}

// ported from internal/streamcache/pipe_test.go: TestPipe_closeWrongOrder
with_and_without_back_pressure!(closing_the_only_reader_first_fails_the_writer_and_new_readers);
fn closing_the_only_reader_first_fails_the_writer_and_new_readers(backpressure: bool) {
    let Fixture {
        _dir,
        path,
        pipe,
        mut writer,
        reader,
    } = fixture(backpressure);
    writer.write_all(b"hello").unwrap();
    drop(reader);
    assert_readers_gone(writer.write_all(b"world").map_err(Error::from_io));
    assert_eq!(
        fs::read(&path).unwrap(),
        b"hello",
        "nothing more was written"
    );
    assert_eq!(write_handles_on(&path), 1);
    assert_readers_gone(writer.close());
    assert_eq!(write_handles_on(&path), 0, "close closed the file anyway");
    assert_readers_gone(open(&pipe));
}

// ported from internal/streamcache/pipe_test.go: TestPipe_closeOrderHappy
with_and_without_back_pressure!(closing_the_writer_first_leaves_an_empty_entry_any_reader_can_read);
fn closing_the_writer_first_leaves_an_empty_entry_any_reader_can_read(backpressure: bool) {
    let Fixture {
        _dir,
        path,
        pipe,
        mut writer,
        mut reader,
    } = fixture(backpressure);
    assert_eq!(write_handles_on(&path), 1);
    writer.close().unwrap();
    assert_eq!(write_handles_on(&path), 0);
    let mut out = Vec::new();
    assert_eq!(reader.read_to_end(&mut out).unwrap(), 0);
    let mut second = open(&pipe).unwrap();
    assert_eq!(second.read_to_end(&mut out).unwrap(), 0);
}

// ported from internal/streamcache/pipe_test.go: TestPipe_concurrency
with_and_without_back_pressure!(
    readers_coming_and_going_while_the_writer_closes_see_one_consistent_outcome
);
fn readers_coming_and_going_while_the_writer_closes_see_one_consistent_outcome(backpressure: bool) {
    let Fixture {
        _dir,
        pipe,
        mut writer,
        reader,
        ..
    } = fixture(backpressure);
    writer.write_all(b"hello").unwrap();
    let start = Arc::new(Barrier::new(102));
    let visitors: Vec<_> = (0..100)
        .map(|_| {
            let pipe = Arc::clone(&pipe);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                match pipe.open_reader() {
                    Ok(reader) => drop(reader),
                    Err(Error::ReadersGone) => {}
                    Err(e) => panic!("opening a reader failed with {e:?}"),
                }
            })
        })
        .collect();
    let leaver = {
        let start = Arc::clone(&start);
        thread::spawn(move || {
            start.wait();
            drop(reader);
        })
    };
    let closer = thread::spawn(move || {
        start.wait();
        writer.close()
    });
    for visitor in visitors {
        visitor.join().unwrap();
    }
    leaver.join().unwrap();
    // Either the writer closed while a reader was open and the entry is complete, or
    // every reader had left and it is broken for good.
    match closer.join().unwrap() {
        Ok(()) => {
            let mut out = Vec::new();
            open(&pipe).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, b"hello");
        }
        Err(Error::ReadersGone) => assert_readers_gone(open(&pipe)),
        Err(e) => panic!("closing the writer failed with {e:?}"),
    }
}

// Core: the back-pressure rule of spec 2.3, without files.

fn core_with_readers(backpressure: bool, n: usize) -> (Core, Vec<crate::cursor::Subscription>) {
    let core = Core::new(backpressure, 0);
    let readers = (0..n)
        .map(|_| core.subscribe(|| Ok(())).unwrap().1)
        .collect();
    (core, readers)
}

/// One write call of `len` bytes, as the writer does it.
fn write(core: &Core, len: u64) -> Result<u64> {
    let at = core.begin_write()?;
    core.end_write(at + len);
    Ok(at + len)
}

#[test]
fn the_first_write_never_waits() {
    let (core, _readers) = core_with_readers(true, 1);
    assert_eq!(without_waiting(&core, || write(&core, 100)).unwrap(), 100);
}

#[test]
fn a_write_waits_for_the_fastest_reader_and_slow_readers_never_hold_it_back() {
    let (core, _readers) = core_with_readers(true, 2);
    write(&core, 5).unwrap();
    thread::scope(|s| {
        let writer = s.spawn(|| core.begin_write());
        assert_eq!(await_scoped_writer_held(&core, &writer), 5);
        // The fast reader is part way: still held.
        core.advance(3);
        assert_eq!(await_scoped_writer_held(&core, &writer), 5);
        core.advance(5);
        assert_eq!(writer.join().unwrap().unwrap(), 5);
    });
    core.end_write(9);
    // One write call ahead of the fastest reader; the slow one is still at 0.
    assert_eq!(core.lead(), 4);
    core.advance(9);
    // The slow reader moving up a little changes nothing: the mark is the fastest's.
    core.advance(2);
    assert_eq!(core.lead(), 0);
    assert_eq!(without_waiting(&core, || write(&core, 1)).unwrap(), 10);
    // And the slow reader can still read everything from where it is.
    assert_eq!(core.wait_readable(2), Readable::Until(10));
}

#[test]
fn with_a_lead_window_the_writer_runs_that_far_ahead_of_the_fastest_reader_plus_one_write() {
    let core = Core::new(true, 10);
    let _reader = core.subscribe(|| Ok(())).unwrap().1;
    // Writes start while at most 10 bytes are unread: at 0, 4 and 8; the one at 12 waits.
    for expected in [4, 8, 12] {
        assert_eq!(
            without_waiting(&core, || write(&core, 4)).unwrap(),
            expected
        );
    }
    assert_eq!(
        core.lead(),
        12,
        "the window (10) plus the last write (4) at most"
    );
    thread::scope(|s| {
        let writer = s.spawn(|| core.begin_write());
        assert_eq!(await_scoped_writer_held(&core, &writer), 12);
        // 11 unread: still more than the window.
        core.advance(1);
        assert_eq!(await_scoped_writer_held(&core, &writer), 12);
        // 10 unread: the write may start.
        core.advance(2);
        assert_eq!(writer.join().unwrap().unwrap(), 12);
    });
}

/// Waits, without sleeping, until `n` readers doze.
fn await_dozing(core: &Core, n: usize) {
    while core.dozing() != n {
        thread::yield_now();
    }
}

#[test]
fn with_a_wide_lead_window_a_dozing_reader_is_left_be_until_half_the_window_is_written() {
    let mut core = Core::new(true, 8 << 20);
    // Dozes that outlast the test: only the writer can end this one.
    core.doze = std::time::Duration::from_secs(3600);
    let _reader = core.subscribe(|| Ok(())).unwrap().1;
    thread::scope(|s| {
        // A new pipe's producer is about to write: the waiting reader dozes.
        let reader = s.spawn(|| core.wait_readable(0));
        await_dozing(&core, 1);
        write(&core, 64 << 10).unwrap();
        assert!(
            core.dozing() == 1 && !reader.is_finished(),
            "a write that leaves the reader dozing"
        );
        write(&core, (4 << 20) - (64 << 10)).unwrap();
        assert_eq!(reader.join().unwrap(), Readable::Until(4 << 20));
        assert_eq!(core.dozing(), 0);
    });
}

#[test]
fn with_a_wide_lead_window_a_reader_waiting_at_the_end_gets_a_small_write() {
    let core = Core::new(true, 8 << 20);
    let _reader = core.subscribe(|| Ok(())).unwrap().1;
    thread::scope(|s| {
        let reader = s.spawn(|| core.wait_readable(0));
        write(&core, 1).unwrap();
        // Left be while it dozed, or woken once it stopped dozing: it gets the byte
        // either way, by itself when its doze runs out.
        assert_eq!(reader.join().unwrap(), Readable::Until(1));
    });
}

#[test]
fn a_writer_that_waits_for_its_slowest_reader_first_wakes_the_readers_it_did_not_wake() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("entry");
    let mut file = File::create(&path).unwrap();
    let (sender, tap) = channel(true, 0, true);
    let open = || {
        tap.subscribe(|| Ok(Arc::new(File::open(&path).unwrap())))
            .unwrap()
    };
    let (a, b) = (open(), open());
    thread::scope(|s| {
        // Each reader waits at 0, takes what it is shown, and stays open.
        let follow = |mut rx: Receiver| {
            move || {
                if let Readable::Until(end) = rx.wait_readable() {
                    rx.consume(end - rx.position());
                }
                rx
            }
        };
        let (a, b) = (s.spawn(follow(a)), s.spawn(follow(b)));
        while tap.shared.core.parked() != 2 {
            thread::yield_now();
        }
        let at = sender.begin_write().unwrap();
        file.write_all(b"x").unwrap();
        // One write wakes one parked reader; the other is told later.
        sender.end_write(at + 1);
        assert_eq!(sender.await_slowest_past(at), Some(1));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert_eq!((a.position(), b.position()), (1, 1));
    });
}

#[test]
fn a_closed_readers_high_water_mark_still_counts() {
    let (core, mut readers) = core_with_readers(true, 2);
    write(&core, 4).unwrap();
    core.advance(4);
    core.close_reader(readers.remove(0));
    // The closed reader had caught up, so one more write goes through at once...
    assert_eq!(without_waiting(&core, || write(&core, 4)).unwrap(), 8);
    // ...and the next waits for the remaining reader to reach the new end.
    thread::scope(|s| {
        let writer = s.spawn(|| core.begin_write());
        assert_eq!(await_scoped_writer_held(&core, &writer), 8);
        core.advance(4);
        assert_eq!(await_scoped_writer_held(&core, &writer), 8);
        core.advance(8);
        assert_eq!(writer.join().unwrap().unwrap(), 8);
    });
}

#[test]
fn without_back_pressure_the_writer_never_waits_but_stops_once_readers_are_gone() {
    let (core, mut readers) = core_with_readers(false, 1);
    let written = without_waiting(&core, || (0..5).try_fold(0, |_, _| write(&core, 3))).unwrap();
    assert_eq!(written, 15);
    assert_eq!(core.lead(), 15);
    core.close_reader(readers.remove(0));
    assert_readers_gone(core.begin_write());
    assert_readers_gone(core.close_writer());
    assert_readers_gone(core.subscribe(|| Ok(())));
}

#[test]
fn a_blocked_writer_fails_when_the_last_reader_leaves() {
    let (core, mut readers) = core_with_readers(true, 1);
    write(&core, 1).unwrap();
    thread::scope(|s| {
        let writer = s.spawn(|| core.begin_write());
        assert_eq!(await_scoped_writer_held(&core, &writer), 1);
        core.close_reader(readers.remove(0));
        assert_readers_gone(writer.join().unwrap());
    });
}

#[test]
fn after_a_clean_close_new_readers_open_even_when_every_reader_left() {
    let (core, mut readers) = core_with_readers(true, 1);
    write(&core, 3).unwrap();
    core.close_writer().unwrap();
    core.close_reader(readers.remove(0));
    let ((), late) = core.subscribe(|| Ok(())).unwrap();
    assert_eq!(core.wait_readable(0), Readable::Until(3));
    assert_eq!(core.wait_readable(3), Readable::End);
    core.close_reader(late);
}

#[test]
fn readers_at_the_end_of_a_failed_entry_see_the_failure_not_the_end() {
    let (core, _readers) = core_with_readers(true, 1);
    write(&core, 3).unwrap();
    core.fail();
    assert_eq!(core.wait_readable(1), Readable::Until(3));
    assert_eq!(core.wait_readable(3), Readable::Failed);
    match core.close_writer() {
        Err(Error::WriterClosed) => {}
        other => panic!("a failed writer cannot close cleanly, got {other:?}"),
    }
}

#[test]
fn a_reader_waiting_at_the_end_wakes_when_the_writer_publishes_more() {
    let (core, _readers) = core_with_readers(true, 1);
    thread::scope(|s| {
        let reader = s.spawn(|| core.wait_readable(0));
        write(&core, 2).unwrap();
        assert_eq!(reader.join().unwrap(), Readable::Until(2));
    });
}
