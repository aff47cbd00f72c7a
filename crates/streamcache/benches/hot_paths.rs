//! Criterion benches of the cache's hot paths, through the public API only, so that a
//! regression shows in review: the writer-to-reader hand-off of one 64 KiB chunk, the
//! same with four readers (cursor notification), a hit and a miss of the index, and the
//! sendfile copy of a 1 MiB entry.
//!
//! Entry files go to `/dev/shm` when it exists (tmpfs: no device, no writeback noise),
//! otherwise to the system temp dir. Run with `cargo bench -p streamcache`.

// criterion_group! and criterion_main! generate undocumented public items.
#![allow(missing_docs)]

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use streamcache::{Cache, Config};

const CHUNK: usize = 64 << 10;
const SMALL: usize = 4 << 10;
const MIB: usize = 1 << 20;

fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("streamcache-hot-paths-");
        b
    };
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return dir;
        }
    }
    builder.tempdir().expect("create a temp dir")
}

/// The cache as the benchmark workloads use it: max age 1 h, no admission rule, the
/// maintenance thread stopped so it cannot run during a measurement.
fn cache(dir: &Path) -> Cache {
    let mut cfg = Config::new(dir);
    cfg.max_age = Duration::from_secs(3600);
    cfg.min_occurrences = 0;
    let cache = Cache::new(cfg).expect("cache");
    cache.stop();
    cache
}

fn pattern(len: usize) -> Arc<[u8]> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Reads the stream to the end into `buf`, waits for the producer, returns the bytes.
fn drain(stream: &mut streamcache::Stream, buf: &mut [u8]) -> usize {
    let mut got = 0;
    loop {
        match stream.read(buf).expect("read") {
            0 => break,
            n => got += n,
        }
    }
    stream.wait().expect("producer");
    got
}

/// Time for `iters` steps of `readers` readers following one producer that writes
/// 64 KiB per step. Entries are cut into batches so files stay small; each batch has its
/// own directory, removed outside the timing.
fn follow(iters: u64, readers: usize, data: &Arc<[u8]>) -> Duration {
    const BATCH: u64 = 2048;
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let steps = left.min(BATCH);
        left -= steps;
        let dir = scratch();
        let cache = cache(dir.path());
        let barrier = Barrier::new(readers + 1);
        let elapsed = std::thread::scope(|s| {
            for _ in 0..readers {
                let (cache, barrier) = (&cache, &barrier);
                let data = Arc::clone(data);
                s.spawn(move || {
                    let mut buf = vec![0u8; CHUNK];
                    barrier.wait();
                    let (mut stream, _) = cache
                        .find_or_create("follow", move |w| {
                            for _ in 0..steps {
                                w.write_all(&data)?;
                            }
                            Ok(())
                        })
                        .expect("find_or_create");
                    let got = drain(&mut stream, &mut buf);
                    assert_eq!(got as u64, steps * CHUNK as u64);
                });
            }
            barrier.wait();
            Instant::now()
        })
        .elapsed();
        total += elapsed;
    }
    total
}

fn handoff(c: &mut Criterion) {
    let data = pattern(CHUNK);
    let mut g = c.benchmark_group("pipe");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.bench_function("write_read_64k_one_reader", |b| {
        b.iter_custom(|iters| follow(iters, 1, &data))
    });
    g.bench_function("write_read_64k_four_readers", |b| {
        b.iter_custom(|iters| follow(iters, 4, &data))
    });
    g.finish();
}

fn lookups(c: &mut Criterion) {
    let small = pattern(SMALL);
    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(1));

    let dir = scratch();
    let hot = cache(dir.path());
    let mut buf = vec![0u8; CHUNK];
    {
        let small = Arc::clone(&small);
        let (mut s, _) = hot
            .find_or_create("hot", move |w| w.write_all(&small))
            .expect("find_or_create");
        drain(&mut s, &mut buf);
    }
    g.bench_function("hit_find_read_4k_wait", |b| {
        b.iter(|| {
            let (mut s, created) = hot
                .find_or_create("hot", |_| {
                    Err(std::io::Error::other("a hit ran the producer"))
                })
                .expect("find_or_create");
            assert!(!created);
            assert_eq!(drain(&mut s, &mut buf), SMALL);
        })
    });

    g.bench_function("miss_create_read_4k_wait", |b| {
        b.iter_custom(|iters| {
            const BATCH: u64 = 4096;
            let mut total = Duration::ZERO;
            let mut left = iters;
            let mut buf = vec![0u8; CHUNK];
            while left > 0 {
                let n = left.min(BATCH);
                left -= n;
                let dir = scratch();
                let cache = cache(dir.path());
                let keys: Vec<String> = (0..n).map(|i| format!("miss-{i}")).collect();
                let start = Instant::now();
                for key in &keys {
                    let small = Arc::clone(&small);
                    let (mut s, created) = cache
                        .find_or_create(key, move |w| w.write_all(&small))
                        .expect("find_or_create");
                    assert!(created);
                    assert_eq!(drain(&mut s, &mut buf), SMALL);
                }
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn sendfile(c: &mut Criterion) {
    let big = pattern(MIB);
    let dir = scratch();
    let cache = cache(dir.path());
    let mut buf = vec![0u8; CHUNK];
    {
        let (mut s, _) = cache
            .find_or_create("big", move |w| {
                for chunk in big.chunks(CHUNK) {
                    w.write_all(chunk)?;
                }
                Ok(())
            })
            .expect("find_or_create");
        drain(&mut s, &mut buf);
    }
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null");
    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("send_to_dev_null_1m", |b| {
        b.iter(|| {
            let (mut s, created) = cache
                .find_or_create("big", |_| {
                    Err(std::io::Error::other("a hit ran the producer"))
                })
                .expect("find_or_create");
            assert!(!created);
            assert_eq!(s.send_to(&null).expect("send_to"), MIB as u64);
            s.wait().expect("producer");
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = handoff, lookups, sendfile
}
criterion_main!(benches);
