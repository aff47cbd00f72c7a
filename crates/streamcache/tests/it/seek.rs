//! `Stream` as `std::io::Seek` (and `tokio::io::AsyncSeek`): random seeks and reads, on
//! entries still being written and on finished ones, return exactly the bytes at those
//! offsets; seeks that cannot be served say why.

use std::io::{self, Read, Seek, SeekFrom, Write};

use proptest::prelude::*;
use streamcache::{Cache, Lookup, Stream};

use crate::support::{
    chain, drain, never, produce, random_bytes, with_and_without_backpressure, TempCache,
};

/// One step of a reader.
#[derive(Debug, Clone)]
enum Step {
    Read(usize),
    Start(u64),
    Current(i64),
    End(i64),
}

fn steps(len: u64) -> impl Strategy<Value = Vec<Step>> {
    let span = i64::try_from(len).unwrap() + 64;
    prop::collection::vec(
        prop_oneof![
            4 => (1usize..20_000).prop_map(Step::Read),
            2 => (0..len + 64).prop_map(Step::Start),
            2 => (-span..span).prop_map(Step::Current),
            1 => (-span..32).prop_map(Step::End),
        ],
        1..40,
    )
}

/// What a step did, as seen through either face of the stream.
type Seen = io::Result<Vec<u8>>;

/// Checks one step's outcome against the model (`position` in `expected`), and moves
/// the model. `complete` says whether the producer had finished when the step ran.
fn check(step: &Step, seen: Seen, expected: &[u8], position: &mut u64, complete: bool) {
    let len = expected.len() as u64;
    match step {
        Step::Read(size) => {
            if *position > len {
                let err = seen.expect_err("a read past the end of a finished entry fails");
                assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
                assert!(chain(&err).contains("past the end"), "{}", chain(&err));
                return;
            }
            let got = seen.expect("a read within the entry succeeds");
            assert!(got.len() <= *size);
            let at = usize::try_from(*position).unwrap();
            if at == expected.len() {
                assert!(got.is_empty(), "end of file at the end");
            } else {
                assert!(!got.is_empty(), "a read before the end gets bytes");
            }
            assert!(
                got == expected[at..at + got.len()],
                "{} bytes read at {at} are those of the entry",
                got.len()
            );
            *position += got.len() as u64;
        }
        Step::Start(to) => {
            seen.expect("a seek from the start succeeds");
            *position = *to;
        }
        Step::Current(delta) => match position.checked_add_signed(*delta) {
            Some(to) => {
                seen.expect("a seek within range succeeds");
                *position = to;
            }
            None => {
                let err = seen.expect_err("a seek before byte 0 fails");
                assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
            }
        },
        Step::End(delta) => match seen {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                assert!(
                    !complete,
                    "a seek from the end of a finished entry succeeds"
                );
                assert!(err.to_string().contains("still being written"), "{err}");
            }
            Err(err) => {
                assert!(len.checked_add_signed(*delta).is_none(), "{err}");
                assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
            }
            Ok(_) => {
                *position = len
                    .checked_add_signed(*delta)
                    .expect("a seek before byte 0 failed");
            }
        },
    }
}

/// Runs `steps` on `stream` with blocking calls.
fn run(stream: &mut Stream, steps: &[Step], expected: &[u8]) {
    let mut position = 0u64;
    for step in steps {
        let complete = stream.outcome().is_some();
        let seen = match step {
            Step::Read(size) => {
                let mut buf = vec![0u8; *size];
                stream.read(&mut buf).map(|n| buf[..n].to_vec())
            }
            Step::Start(to) => seek(stream, SeekFrom::Start(*to)),
            Step::Current(delta) => seek(stream, SeekFrom::Current(*delta)),
            Step::End(delta) => seek(stream, SeekFrom::End(*delta)),
        };
        check(step, seen, expected, &mut position, complete);
        assert_eq!(stream.position(), position, "after {step:?}");
    }
}

fn seek(stream: &mut Stream, from: SeekFrom) -> Seen {
    let before = stream.position();
    let result = stream.seek(from);
    if let Ok(to) = result {
        assert_eq!(
            stream.position(),
            to,
            "the seek's result is the new position"
        );
    } else {
        assert_eq!(stream.position(), before, "a failed seek does not move");
    }
    result.map(|_| Vec::new())
}

/// Runs `steps` on `stream` through `AsyncRead` and `AsyncSeek`.
#[cfg(feature = "tokio")]
async fn run_async(stream: &mut Stream, steps: &[Step], expected: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut position = 0u64;
    for step in steps {
        let complete = stream.outcome().is_some();
        let seen = match step {
            Step::Read(size) => {
                let mut buf = vec![0u8; *size];
                AsyncReadExt::read(&mut *stream, &mut buf)
                    .await
                    .map(|n| buf[..n].to_vec())
            }
            Step::Start(to) => AsyncSeekExt::seek(&mut *stream, SeekFrom::Start(*to))
                .await
                .map(|_| Vec::new()),
            Step::Current(delta) => AsyncSeekExt::seek(&mut *stream, SeekFrom::Current(*delta))
                .await
                .map(|_| Vec::new()),
            Step::End(delta) => AsyncSeekExt::seek(&mut *stream, SeekFrom::End(*delta))
                .await
                .map(|_| Vec::new()),
        };
        check(step, seen, expected, &mut position, complete);
        assert_eq!(stream.position(), position, "after {step:?}");
    }
}

/// The entry of `chunks`, read by one stream that follows `steps` while the producer
/// writes (one chunk per write), then by a stream of the finished entry.
fn seeks_on_an_entry_in_progress_and_finished(
    backpressure: bool,
    chunks: &[Vec<u8>],
    steps: &[Step],
    asynchronous: bool,
) {
    let c = TempCache::new(backpressure);
    let expected = chunks.concat();
    let producer = {
        let chunks = chunks.to_vec();
        move |w: &mut streamcache::Writer| {
            for chunk in &chunks {
                w.write_all(chunk)?;
            }
            Ok(())
        }
    };
    let (mut live, lookup) = c.cache.lookup("k", producer).unwrap();
    assert_eq!(lookup, Lookup::Miss);
    // A second reader reads it all, so the producer finishes whatever the first does.
    let (mut whole, _) = c.cache.lookup("k", never).unwrap();
    let drained = std::thread::spawn(move || drain(&mut whole));
    let reader = |stream: &mut Stream| {
        if asynchronous {
            #[cfg(feature = "tokio")]
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(run_async(stream, steps, &expected));
        } else {
            run(stream, steps, &expected);
        }
    };
    reader(&mut live);
    drop(live);
    let (out, result) = drained.join().unwrap();
    result.unwrap();
    assert!(out == expected);
    let (mut finished, lookup) = c.cache.lookup("k", never).unwrap();
    assert_eq!(lookup, Lookup::Hit);
    reader(&mut finished);
}

fn entry() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<Step>)> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 1..4096),
            1 => prop::collection::vec(any::<u8>(), 60_000..140_000),
        ],
        0..12,
    )
    .prop_flat_map(|chunks| {
        let len = chunks.iter().map(Vec::len).sum::<usize>() as u64;
        (Just(chunks), steps(len))
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_seeks_and_reads_return_the_bytes_at_those_offsets((chunks, steps) in entry()) {
        with_and_without_backpressure(|backpressure| {
            seeks_on_an_entry_in_progress_and_finished(backpressure, &chunks, &steps, false);
        });
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn random_async_seeks_and_reads_return_the_bytes_at_those_offsets((chunks, steps) in entry()) {
        with_and_without_backpressure(|backpressure| {
            seeks_on_an_entry_in_progress_and_finished(backpressure, &chunks, &steps, true);
        });
    }
}

#[test]
fn a_seek_forward_into_bytes_not_yet_written_is_waited_for_by_the_next_read() {
    let c = TempCache::new(true);
    let bytes = random_bytes(1 << 20);
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let producer = {
        let bytes = bytes.clone();
        move |w: &mut streamcache::Writer| {
            w.write_all(&bytes[..1000])?;
            gate.recv().map_err(io::Error::other)?;
            for chunk in bytes[1000..].chunks(65536) {
                w.write_all(chunk)?;
            }
            Ok(())
        }
    };
    let (mut stream, _) = c.cache.lookup("k", producer).unwrap();
    assert_eq!(stream.seek(SeekFrom::Start(900_000)).unwrap(), 900_000);
    go.send(()).unwrap();
    // The only reader skipped ahead: with back pressure the producer goes on to it.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest == bytes[900_000..]);
    stream.wait().unwrap();
}

#[test]
fn send_to_sends_from_the_current_position() {
    let c = TempCache::new(true);
    let bytes = random_bytes(300_000);
    let (mut stream, _) = c.cache.lookup("k", produce(bytes.clone())).unwrap();
    stream.seek(SeekFrom::Start(123_456)).unwrap();
    let (mut rx, tx) = std::os::unix::net::UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        rx.read_to_end(&mut got).unwrap();
        got
    });
    let sent = stream.send_to(&tx).unwrap();
    drop(tx);
    assert_eq!(sent, 300_000 - 123_456);
    assert!(reader.join().unwrap() == bytes[123_456..]);
    // Past the end of the finished entry: an error, not a silent end.
    stream.seek(SeekFrom::End(10)).unwrap();
    let (_keep, tx) = std::os::unix::net::UnixStream::pair().unwrap();
    let err = stream.send_to(&tx).unwrap_err();
    assert!(chain(&err).contains("past the end"), "{}", chain(&err));
}

#[test]
fn a_stream_that_bypasses_the_cache_seeks_forward_by_skipping_and_never_back() {
    let bytes = random_bytes(200_000);
    let cache = Cache::disabled();
    let (mut stream, lookup) = cache.lookup("k", produce(bytes.clone())).unwrap();
    assert_eq!(lookup, Lookup::Bypass);
    assert_eq!(stream.seek(SeekFrom::Start(1000)).unwrap(), 1000);
    assert_eq!(stream.seek(SeekFrom::Current(500)).unwrap(), 1500);
    let err = stream.seek(SeekFrom::Current(-1)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
    let err = stream.seek(SeekFrom::End(0)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
    let mut first = [0u8; 10];
    stream.read_exact(&mut first).unwrap();
    assert_eq!(first, bytes[1500..1510]);
    assert_eq!(stream.position(), 1510);
    stream.seek(SeekFrom::Start(300_000)).unwrap();
    let err = stream.read(&mut first).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
}

#[test]
fn a_seek_back_into_bytes_a_transient_entry_released_fails() {
    // A budget far smaller than the entry: it turns transient and releases what every
    // reader passed; a reader that seeks back there is refused, never served holes.
    let c = TempCache::with(|cfg| cfg.max_disk_bytes = Some(256 << 10));
    let bytes = random_bytes(4 << 20);
    let (mut stream, _) = c
        .cache
        .lookup("k", {
            let bytes = bytes.clone();
            move |w| {
                for chunk in bytes.chunks(16 << 10) {
                    w.write_all(chunk)?;
                }
                Ok(())
            }
        })
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = Vec::new();
    while got.len() < 3 << 20 {
        let n = stream.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    let err = stream.seek(SeekFrom::Start(0)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("released"), "{err}");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    got.extend_from_slice(&rest);
    assert!(got == bytes);
    stream.wait().unwrap();
}

#[test]
fn a_seek_from_the_end_waits_for_no_one_and_says_the_length_is_unknown() {
    let c = TempCache::new(true);
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let (mut stream, _) = c
        .cache
        .lookup("k", move |w| {
            w.write_all(b"early")?;
            gate.recv().map_err(io::Error::other)?;
            w.write_all(b" and late")
        })
        .unwrap();
    let err = stream.seek(SeekFrom::End(-3)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
    go.send(()).unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"early and late");
    assert_eq!(stream.seek(SeekFrom::End(-4)).unwrap(), 10);
    let mut tail = String::new();
    stream.read_to_string(&mut tail).unwrap();
    assert_eq!(tail, "late");
}
