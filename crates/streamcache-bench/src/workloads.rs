//! What the workloads share: the cache under test, the reference figures, and the
//! fan-out run that W1, its zero-copy variant and the peak-RSS child all use.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::data::{self, Span, CHUNK};
use crate::sys::{self, Fs, Who};

/// The cache under test: max age 1 h, no admission rule (min occurrences 0), the lead
/// window `max_lead` (`--max-lead`; 0, the reference's rule, by default). Its
/// maintenance thread is stopped at once, so neither eviction nor the directory sweep
/// can run during a measurement (the reference's tick once a minute never came either).
pub(crate) fn cache(dir: &Path, setup: Setup) -> io::Result<streamcache::Cache> {
    let mut cfg = streamcache::Config::new(dir);
    cfg.max_age = Duration::from_secs(3600);
    cfg.min_occurrences = 0;
    cfg.backpressure = setup.backpressure;
    cfg.max_lead_bytes = setup.max_lead;
    cfg.durable = setup.durable;
    let cache = streamcache::Cache::new(cfg)?;
    cache.stop();
    Ok(cache)
}

/// What the cache under test is told: back pressure, the lead window, durable entries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    pub(crate) backpressure: bool,
    pub(crate) max_lead: u64,
    pub(crate) durable: bool,
}

impl Setup {
    /// Entries that are not durable (the reference has none).
    pub(crate) fn new(backpressure: bool, max_lead: u64) -> Setup {
        Setup {
            backpressure,
            max_lead,
            durable: false,
        }
    }
}

/// The reference implementation's figure for `what` on `fs`, in the unit the harness
/// reports (the table under "The workloads" in docs/BENCHMARKS.md).
pub(crate) fn reference(what: &str, fs: Fs) -> Option<f64> {
    let (tmpfs, ext4) = match what {
        "w0 write" => (2.87, 3.02),
        "w0 read" => (4.6, 5.2),
        "w0 cache1" => (21.1, 21.1),
        "w0 cache2" => (39.9, 39.9),
        "w0 dram1" => (5.3, 5.3),
        "w0 dram2" => (11.1, 11.1),
        "w1 aggregate 1" | "w1 writer 1" => (1.92, 2.60),
        "w1 aggregate 4" => (6.2, 10.7),
        "w1 writer 4" => (1.55, 2.67),
        "w1 aggregate 16" => (14.1, 20.8),
        "w1 writer 16" => (0.88, 1.30),
        "w1 aggregate 64" => (23.1, 34.5),
        "w1 writer 64" => (0.36, 0.54),
        "w1 rss 64" => (19.5, 19.4),
        "w2 total" => (1.075, 0.730),
        "w2 ttfb" => (0.40, 7.2),
        "w3 misses" => (38.8, 13.4),
        "w3 hits" => (212.0, 203.0),
        "w4 lead" => (64.0, 64.0),
        _ => return None,
    };
    Some(match fs {
        Fs::Tmpfs => tmpfs,
        Fs::Ext4 => ext4,
    })
}

/// Where a fan-out reader puts what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sink {
    /// Reads into its 64 KiB buffer and drops the bytes.
    Discard,
    /// `Stream::send_to` into a Unix socket drained by a thread.
    SendTo,
    /// Reads into its buffer and writes that into a Unix socket drained by a thread.
    PlainSocket,
}

/// What one fan-out run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fanout {
    /// From the barrier opening to the last reader done, seconds.
    pub(crate) wall: f64,
    /// From the producer's start to its return, seconds.
    pub(crate) writer: f64,
    /// CPU seconds of the whole process (readers, writer, drain threads) from just
    /// before the barrier to the last drain thread done.
    pub(crate) cpu_process: f64,
    /// CPU seconds of the reader threads alone.
    pub(crate) cpu_readers: f64,
    /// Bytes the cache moved with sendfile during the run.
    pub(crate) sendfile_bytes: u64,
    /// With durable entries: from the last reader done to the entry committed, seconds.
    pub(crate) commit: f64,
}

const KEY: &str = "w1-fanout";

/// W1's fan-out: `n` readers wait on a barrier, then each calls find-or-create on one
/// key (exactly one must create), reads `size` bytes to the end into `sink`, checks the
/// count, and waits for the producer's result.
pub(crate) fn fanout(
    dir: &Path,
    data: &Arc<[u8]>,
    n: usize,
    size: u64,
    setup: Setup,
    sink: Sink,
) -> io::Result<Fanout> {
    let cache = cache(dir, setup)?;
    let span: Span = Arc::default();
    let barrier = Barrier::new(n + 1);
    let created = AtomicUsize::new(0);

    let mut sockets = Vec::with_capacity(n);
    let mut drains = Vec::new();
    for _ in 0..n {
        if sink == Sink::Discard {
            sockets.push(None);
            continue;
        }
        let (ours, theirs) = UnixStream::pair()?;
        sockets.push(Some(ours));
        drains.push(
            std::thread::Builder::new()
                .name("drain".into())
                .spawn(move || drain(theirs))?,
        );
    }

    let (t0, results, cpu0) = std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(n);
        for socket in sockets.drain(..) {
            let (cache, barrier, created, span) = (&cache, &barrier, &created, &span);
            handles.push(s.spawn(move || -> io::Result<(Instant, f64)> {
                let mut buf = vec![0u8; CHUNK];
                barrier.wait();
                let cpu = sys::cpu_seconds(Who::Thread);
                let (mut stream, was_created) =
                    cache.find_or_create(KEY, data::producer(data, size, span))?;
                if was_created {
                    created.fetch_add(1, Ordering::Relaxed);
                }
                let got = match (sink, socket.as_ref()) {
                    (Sink::SendTo, Some(sock)) => stream.send_to(sock)?,
                    (Sink::PlainSocket, Some(sock)) => {
                        let mut sock = sock;
                        let mut got = 0u64;
                        loop {
                            let k = stream.read(&mut buf)?;
                            if k == 0 {
                                break got;
                            }
                            sock.write_all(&buf[..k])?;
                            got += k as u64;
                        }
                    }
                    _ => {
                        let mut got = 0u64;
                        loop {
                            let k = stream.read(&mut buf)?;
                            if k == 0 {
                                break got;
                            }
                            got += k as u64;
                        }
                    }
                };
                stream.wait()?;
                drop(stream);
                drop(socket);
                let done = Instant::now();
                if got != size {
                    return Err(io::Error::other(format!(
                        "a reader got {got} bytes of {size}"
                    )));
                }
                Ok((done, sys::cpu_seconds(Who::Thread) - cpu))
            }));
        }
        let cpu0 = sys::cpu_seconds(Who::Process);
        barrier.wait();
        let t0 = Instant::now();
        let results: Vec<io::Result<(Instant, f64)>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("reader panicked")))
            })
            .collect();
        (t0, results, cpu0)
    });
    for d in drains {
        d.join()
            .unwrap_or_else(|_| Err(io::Error::other("drain thread panicked")))?;
    }
    let cpu_process = sys::cpu_seconds(Who::Process) - cpu0;
    let mut last = t0;
    let mut cpu_readers = 0.0;
    for r in results {
        let (done, cpu) = r?;
        last = last.max(done);
        cpu_readers += cpu;
    }
    let writer = producer_seconds(&created, &span)?;
    cache.wait_durable();
    let committed = Instant::now();
    let commit = if setup.durable {
        if cache.stats().committed_entries != 1 {
            return Err(io::Error::other("the durable entry was not committed"));
        }
        committed.saturating_duration_since(last).as_secs_f64()
    } else {
        0.0
    };
    Ok(Fanout {
        wall: (last - t0).as_secs_f64(),
        writer,
        cpu_process,
        cpu_readers,
        sendfile_bytes: cache.stats().sendfile_bytes,
        commit,
    })
}

/// What one W1-async run measured.
#[derive(Debug)]
pub(crate) struct FanoutAsync {
    /// Seconds from the tasks' start until the last reader finished.
    pub(crate) wall: f64,
    /// Seconds the producer took.
    pub(crate) writer: f64,
}

/// W1 read by `n` tokio tasks through `AsyncRead` on a runtime of two worker threads
/// (the fair twin of `n` goroutines on `GOMAXPROCS=2`): each looks the key up, reads to
/// the end into a 64 KiB buffer and awaits the producer's result.
pub(crate) fn fanout_async(
    dir: &Path,
    data: &Arc<[u8]>,
    n: usize,
    size: u64,
    max_lead: u64,
) -> io::Result<FanoutAsync> {
    use tokio::io::AsyncReadExt;
    let cache = cache(dir, Setup::new(true, max_lead))?;
    let span: Span = Arc::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let created = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let results: Vec<io::Result<u64>> = runtime.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (cache, data, span, created) = (
                    cache.clone(),
                    Arc::clone(data),
                    Arc::clone(&span),
                    Arc::clone(&created),
                );
                tokio::spawn(async move {
                    let (mut stream, was_created) =
                        cache.find_or_create(KEY, data::producer(&data, size, &span))?;
                    if was_created {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut buf = vec![0u8; CHUNK];
                    let mut got = 0u64;
                    loop {
                        let k = AsyncReadExt::read(&mut stream, &mut buf).await?;
                        if k == 0 {
                            break;
                        }
                        got += k as u64;
                    }
                    stream.wait_async().await?;
                    Ok::<u64, io::Error>(got)
                })
            })
            .collect();
        let mut results = Vec::with_capacity(n);
        for task in tasks {
            results.push(
                task.await
                    .unwrap_or_else(|_| Err(io::Error::other("a reader task panicked"))),
            );
        }
        results
    });
    let wall = t0.elapsed().as_secs_f64();
    for got in results {
        let got = got?;
        if got != size {
            return Err(io::Error::other(format!(
                "a reader got {got} bytes of {size}"
            )));
        }
    }
    let writer = producer_seconds(&created, &span)?;
    Ok(FanoutAsync { wall, writer })
}

/// Seconds the producer of a fan-out took, once exactly one reader created the entry.
fn producer_seconds(created: &AtomicUsize, span: &Span) -> io::Result<f64> {
    let creators = created.load(Ordering::Relaxed);
    if creators != 1 {
        return Err(io::Error::other(format!(
            "{creators} readers created the entry, not 1"
        )));
    }
    let (start, end) = span
        .lock()
        .ok()
        .and_then(|s| *s)
        .ok_or_else(|| io::Error::other("the producer did not finish"))?;
    Ok((end - start).as_secs_f64())
}

/// Reads and discards until end-of-file.
fn drain(mut sock: UnixStream) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The one entry file under a cache directory (`<dir>/<xx>/<file>`).
pub(crate) fn entry_file(dir: &Path) -> io::Result<PathBuf> {
    for sub in std::fs::read_dir(dir)? {
        let sub = sub?;
        if !sub.file_type()?.is_dir() {
            continue;
        }
        if let Some(file) = std::fs::read_dir(sub.path())?.next() {
            return Ok(file?.path());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no entry file under {}", dir.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> sys::ScratchDir {
        let path = std::env::temp_dir().join(format!(
            "streamcache-bench-test-{}-{name}",
            std::process::id()
        ));
        sys::ScratchDir::new(path).unwrap()
    }

    #[test]
    fn fanout_delivers_every_byte_to_every_reader_with_one_producer() {
        let dir = tmp("fanout");
        let data = data::buffer();
        let r = fanout(
            dir.path(),
            &data,
            3,
            3 * data::MIB,
            Setup::new(true, 0),
            Sink::Discard,
        )
        .unwrap();
        assert!(r.wall > 0.0 && r.writer > 0.0);
        assert_eq!(r.sendfile_bytes, 0);
    }

    #[test]
    fn fanout_async_delivers_every_byte_to_every_task_with_one_producer() {
        let dir = tmp("fanout-async");
        let data = data::buffer();
        let r = fanout_async(dir.path(), &data, 5, 3 * data::MIB, 0).unwrap();
        assert!(r.wall > 0.0 && r.writer > 0.0);
    }

    #[test]
    fn fanout_through_send_to_moves_every_byte_with_sendfile() {
        let dir = tmp("sendto");
        let data = data::buffer();
        let r = fanout(
            dir.path(),
            &data,
            2,
            2 * data::MIB,
            Setup::new(true, 0),
            Sink::SendTo,
        )
        .unwrap();
        assert_eq!(r.sendfile_bytes, 4 * data::MIB);
    }

    #[test]
    fn entry_file_finds_the_file_of_a_live_entry() {
        let dir = tmp("entry");
        let c = cache(dir.path(), Setup::new(true, 0)).unwrap();
        let (mut s, created) = c.find_or_create("k", |w| w.write_all(b"abc")).unwrap();
        assert!(created);
        let path = entry_file(dir.path()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        s.wait().unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"abc");
    }
}
