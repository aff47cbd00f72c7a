//! `Stream` as a `tokio::io::AsyncRead`, and `Stream::wait_async` (feature `tokio`).

use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use streamcache::{Cache, Error, Stream};
use tokio::io::{AsyncRead, ReadBuf};

use crate::support::{random_bytes, with_and_without_backpressure, TempCache};

/// A waker that counts its wake-ups and lets a thread wait for them.
#[derive(Default)]
struct Recorder {
    wakes: Mutex<usize>,
    woken: Condvar,
}

impl Wake for Recorder {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        *self.wakes.lock().unwrap() += 1;
        self.woken.notify_all();
    }
}

impl Recorder {
    fn wakes(&self) -> usize {
        *self.wakes.lock().unwrap()
    }

    /// Blocks until there have been more than `seen` wake-ups. A wake-up that never
    /// comes is a lost wake-up: after five minutes (a deadlock guard, not a speed limit)
    /// the test fails instead of hanging.
    fn wait_past(&self, seen: usize) {
        let guard = self.wakes.lock().unwrap();
        let (_guard, waited) = self
            .woken
            .wait_timeout_while(guard, Duration::from_secs(300), |n| *n <= seen)
            .unwrap();
        assert!(
            !waited.timed_out(),
            "lost wake-up: the task was never woken"
        );
    }
}

fn poll_read(stream: &mut Stream, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
    let mut buf = ReadBuf::new(buf);
    match Pin::new(stream).poll_read(cx, &mut buf) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().len())),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// Polls until the read is ready, waiting for a wake-up after every `Pending`.
fn read_when_woken(
    stream: &mut Stream,
    recorder: &Arc<Recorder>,
    buf: &mut [u8],
) -> io::Result<usize> {
    let waker = Waker::from(Arc::clone(recorder));
    let mut cx = Context::from_waker(&waker);
    loop {
        let seen = recorder.wakes();
        match poll_read(stream, &mut cx, buf) {
            Poll::Ready(result) => return result,
            Poll::Pending => recorder.wait_past(seen),
        }
    }
}

#[test]
fn an_async_read_is_parked_until_the_writer_moves_and_woken_when_it_does() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        let (step, gate) = mpsc::channel::<()>();
        let (stream, created) = c
            .cache
            .find_or_create("key", move |w| {
                gate.recv().map_err(io::Error::other)?;
                w.write_all(b"first")?;
                gate.recv().map_err(io::Error::other)?;
                w.write_all(b"second")
            })
            .unwrap();
        assert!(created);
        let mut stream = stream;
        let recorder = Arc::new(Recorder::default());
        let waker = Waker::from(Arc::clone(&recorder));
        let mut cx = Context::from_waker(&waker);
        let mut buf = [0u8; 64];

        assert!(
            poll_read(&mut stream, &mut cx, &mut buf).is_pending(),
            "nothing written yet: the read is parked"
        );
        assert_eq!(
            recorder.wakes(),
            0,
            "nobody woke the reader before the writer moved"
        );

        step.send(()).unwrap();
        recorder.wait_past(0);
        match poll_read(&mut stream, &mut cx, &mut buf) {
            Poll::Ready(Ok(n)) => assert_eq!(&buf[..n], b"first"),
            other => panic!("after the wake-up the read is ready, got {other:?}"),
        }
        let seen = recorder.wakes();
        assert!(
            poll_read(&mut stream, &mut cx, &mut buf).is_pending(),
            "the reader has everything written so far: parked again"
        );

        step.send(()).unwrap();
        recorder.wait_past(seen);
        let n = read_when_woken(&mut stream, &recorder, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"second");
        let n = read_when_woken(&mut stream, &recorder, &mut buf).unwrap();
        assert_eq!(n, 0, "end of stream once the producer finished");
        stream.wait().unwrap();
    });
}

#[test]
fn wait_async_is_pending_until_the_producer_finishes() {
    let c = TempCache::new(true);
    let (go, gate) = mpsc::channel::<()>();
    let (mut stream, _) = c
        .cache
        .find_or_create("key", move |w| {
            gate.recv().map_err(io::Error::other)?;
            w.write_all(b"done")
        })
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let waker = Waker::from(Arc::clone(&recorder));
    let mut cx = Context::from_waker(&waker);
    let mut waiting = Box::pin(stream.wait_async());
    assert!(
        waiting.as_mut().poll(&mut cx).is_pending(),
        "the producer has not run"
    );

    go.send(()).unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"done");
    loop {
        let seen = recorder.wakes();
        match waiting.as_mut().poll(&mut cx) {
            Poll::Ready(result) => {
                result.expect("the producer succeeded");
                break;
            }
            Poll::Pending => recorder.wait_past(seen),
        }
    }
}

#[tokio::test]
async fn tokio_copy_streams_a_live_entry_and_wait_async_gives_the_result() {
    for backpressure in [true, false] {
        let c = TempCache::new(backpressure);
        let content = random_bytes(2 << 20);
        let producer = {
            let content = content.clone();
            move |w: &mut streamcache::Writer| {
                for chunk in content.chunks(8 << 10) {
                    w.write_all(chunk)?;
                }
                Ok(())
            }
        };
        let (mut stream, created) = c.cache.find_or_create("key", producer).unwrap();
        assert!(created);
        let (mut hit, created) = c
            .cache
            .find_or_create("key", crate::support::never)
            .unwrap();
        assert!(!created);
        let mut out = Vec::new();
        let n = tokio::io::copy(&mut stream, &mut out).await.unwrap();
        stream.wait_async().await.expect("the producer succeeds");
        assert_eq!(n, content.len() as u64, "backpressure = {backpressure}");
        assert!(out == content, "backpressure = {backpressure}");

        let mut again = Vec::new();
        tokio::io::copy(&mut hit, &mut again).await.unwrap();
        hit.wait_async().await.unwrap();
        assert!(again == content, "backpressure = {backpressure}");
    }
}

#[tokio::test]
async fn an_async_reader_of_a_failed_entry_gets_the_producers_error() {
    for backpressure in [true, false] {
        let c = TempCache::new(backpressure);
        let (mut stream, _) = c
            .cache
            .find_or_create("key", |w| {
                w.write_all(b"partial")?;
                Err(io::Error::new(io::ErrorKind::InvalidData, "async failure"))
            })
            .unwrap();
        let mut out = Vec::new();
        let err = tokio::io::copy(&mut stream, &mut out)
            .await
            .expect_err("the end of a failed entry is an error");
        assert_eq!(out, b"partial", "backpressure = {backpressure}");
        let err = Error::from_io(err);
        assert!(matches!(err, Error::Producer(_)), "{err:?}");
        assert_eq!(err.to_string(), "async failure");
        let waited = stream.wait_async().await.unwrap_err();
        assert_eq!(waited.to_string(), "async failure");
    }
}

#[tokio::test]
async fn the_disabled_cache_streams_asynchronously_too() {
    let cache = Cache::disabled();
    let content = random_bytes(1 << 20);
    let (mut stream, created) = cache
        .find_or_create("key", crate::support::produce(content.clone()))
        .unwrap();
    assert!(created);
    let mut out = Vec::new();
    tokio::io::copy(&mut stream, &mut out).await.unwrap();
    stream.wait_async().await.unwrap();
    assert!(out == content);

    let (mut stream, _) = cache
        .find_or_create("key", |_| panic!("async panic"))
        .unwrap();
    let err = tokio::io::copy(&mut stream, &mut Vec::new())
        .await
        .expect_err("the panic reaches the reader");
    assert_eq!(Error::from_io(err).to_string(), "panic: async panic");
}

/// Tasks on a runtime of two workers, more than the machine has cores, all joined
/// before the producer starts: the producer keeps its latest writes in memory for them,
/// the entry is longer than what it keeps (so kept buffers are reused under the
/// readers), and tasks that read a long way without waiting yield to the others. Every
/// task must get every byte, in order, whatever path each read took.
#[test]
fn many_tasks_on_two_workers_each_get_every_byte_of_an_entry_longer_than_what_is_kept() {
    const TASKS: usize = 16;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let c = TempCache::new(true);
    let content = Arc::new(random_bytes(20 << 20));
    let (go, gate) = mpsc::channel::<()>();
    let producer = {
        let content = Arc::clone(&content);
        move |w: &mut streamcache::Writer| {
            gate.recv().map_err(io::Error::other)?;
            // Writes of varied sizes, some longer than a kept piece (64 KiB).
            let mut rest = &content[..];
            let mut size = 1000;
            while !rest.is_empty() {
                let n = size.min(rest.len());
                w.write_all(&rest[..n])?;
                rest = &rest[n..];
                size = size * 7 % 150_001 + 1;
            }
            Ok(())
        }
    };
    let (first, created) = c.cache.find_or_create("key", producer).unwrap();
    assert!(created);
    let mut streams = vec![first];
    for _ in 1..TASKS {
        let (stream, created) = c
            .cache
            .find_or_create("key", crate::support::never)
            .unwrap();
        assert!(!created);
        streams.push(stream);
    }
    let outputs: Vec<Vec<u8>> = runtime.block_on(async {
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    // Not a multiple of any write: reads end inside pieces.
                    let mut buf = vec![0u8; 50_000];
                    loop {
                        let n = tokio::io::AsyncReadExt::read(&mut stream, &mut buf)
                            .await
                            .expect("reads succeed");
                        if n == 0 {
                            break;
                        }
                        out.extend_from_slice(&buf[..n]);
                    }
                    stream.wait_async().await.expect("the producer succeeds");
                    out
                })
            })
            .collect();
        go.send(()).unwrap();
        let mut outputs = Vec::new();
        for t in tasks {
            outputs.push(t.await.unwrap());
        }
        outputs
    });
    for (i, out) in outputs.iter().enumerate() {
        assert_eq!(out.len(), content.len(), "task {i}");
        assert!(out[..] == content[..], "task {i} got other bytes");
    }
}
