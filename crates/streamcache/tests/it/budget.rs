//! The disk budget and the free-space guard, on a real tmpfs that really fills up: the
//! budget holds at every instant (sampled every millisecond by a thread of the test),
//! lack of room never fails a lookup or a reader, and every caller gets every byte.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use streamcache::{Cache, Lookup};

use crate::support::{real_config, Tmpfs};

const MIB: u64 = 1 << 20;

/// `len` bytes that depend on `seed` and on their position.
fn content(seed: u64, len: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A producer writing `bytes` in 64 KiB writes.
fn producer(bytes: Arc<Vec<u8>>) -> impl FnOnce(&mut streamcache::Writer) -> io::Result<()> {
    move |w| {
        for chunk in bytes.chunks(64 << 10) {
            w.write_all(chunk)?;
        }
        Ok(())
    }
}

/// A [`producer`] that starts writing only when the test sends on the returned gate.
fn gated_producer(
    bytes: &Arc<Vec<u8>>,
) -> (
    std::sync::mpsc::Sender<()>,
    impl FnOnce(&mut streamcache::Writer) -> io::Result<()>,
) {
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let bytes = Arc::clone(bytes);
    let produce = move |w: &mut streamcache::Writer| {
        gate.recv().map_err(io::Error::other)?;
        producer(bytes)(w)
    };
    (go, produce)
}

/// Samples the bytes used on `tmpfs` every millisecond until dropped, keeping the most.
struct UsageSampler {
    stop: Arc<AtomicBool>,
    most: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UsageSampler {
    fn start(tmpfs: &Tmpfs) -> UsageSampler {
        let path = tmpfs.path().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let most = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, most) = (Arc::clone(&stop), Arc::clone(&most));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let st = nix::sys::statvfs::statvfs(&path).expect("statvfs");
                    let used = (st.blocks() - st.blocks_free()) * st.fragment_size();
                    most.fetch_max(used, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        UsageSampler {
            stop,
            most,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns the most bytes seen in use.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the sampler");
        }
        self.most.load(Ordering::SeqCst)
    }
}

fn budget_cache(tmpfs: &Tmpfs, budget: Option<u64>, min_free: u64) -> Cache {
    let mut cfg = real_config(&tmpfs.path().join("cache"));
    cfg.max_disk_bytes = budget;
    cfg.min_free_bytes = min_free;
    Cache::new(cfg).expect("a valid configuration")
}

fn read_all(stream: &mut streamcache::Stream) -> Vec<u8> {
    let mut out = Vec::new();
    stream.read_to_end(&mut out).expect("every byte");
    stream.wait().expect("the producer's success");
    out
}

#[test]
fn under_a_budget_concurrent_fetches_all_succeed_usage_never_passes_it_and_recent_keys_stay() {
    let tmpfs = Tmpfs::mount(64);
    let budget = 48 * MIB;
    let cache = budget_cache(&tmpfs, Some(budget), 0);
    let keys: Vec<Arc<Vec<u8>>> = (0..16).map(|k| Arc::new(content(k, 8 * MIB))).collect();
    let sampler = UsageSampler::start(&tmpfs);

    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (cache, keys) = (&cache, &keys);
            s.spawn(move || {
                // Every key three times per thread, in an order of the thread's own.
                let mut order: Vec<usize> = (0..16).chain(0..16).chain(0..16).collect();
                let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ (t + 1);
                for i in (1..order.len()).rev() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    order.swap(i, (state % (i as u64 + 1)) as usize);
                }
                for k in order {
                    let bytes = Arc::clone(&keys[k]);
                    let (mut stream, _) = cache
                        .lookup(&format!("key-{k}"), producer(bytes))
                        .unwrap_or_else(|e| panic!("thread {t}, key {k}: lookup failed: {e}"));
                    let got = read_all(&mut stream);
                    assert!(got == *keys[k], "thread {t}, key {k}: wrong bytes");
                }
            });
        }
    });

    // Every key once more, oldest first: the most recently used are the ones that stay.
    for (k, bytes) in keys.iter().enumerate() {
        let (mut stream, _) = cache
            .lookup(&format!("key-{k}"), producer(Arc::clone(bytes)))
            .unwrap();
        assert!(read_all(&mut stream) == **bytes, "key {k}: wrong bytes");
    }
    let most = sampler.finish();
    for (k, bytes) in keys.iter().enumerate().skip(12) {
        let (mut stream, lookup) = cache
            .lookup(&format!("key-{k}"), |_| Err(io::Error::other("ran again")))
            .unwrap();
        assert_eq!(
            lookup,
            Lookup::Hit,
            "key {k}, among the most recently used, stayed"
        );
        assert!(read_all(&mut stream) == **bytes);
    }
    let (mut stream, lookup) = cache
        .lookup("key-0", producer(Arc::clone(&keys[0])))
        .unwrap();
    assert_ne!(
        lookup,
        Lookup::Hit,
        "the least recently used key was evicted"
    );
    // Read to the end: a stream dropped early would leave its producer without readers,
    // and that producer fails (counted in `failures`).
    assert!(read_all(&mut stream) == *keys[0]);

    let stats = cache.stats();
    assert!(
        most <= budget,
        "the file system held {most} bytes at one time, over the budget of {budget}"
    );
    assert!(
        stats.evicted > 0,
        "entries were evicted to make room: {stats:?}"
    );
    assert_eq!(stats.failures, 0, "{stats:?}");
    assert_eq!(stats.disk_budget_bytes, Some(budget));
    assert!(stats.disk_used_bytes <= budget, "{stats:?}");
}

#[test]
fn an_entry_larger_than_the_budget_turns_transient_and_every_reader_gets_every_byte() {
    let tmpfs = Tmpfs::mount(64);
    let budget = 48 * MIB;
    let cache = budget_cache(&tmpfs, Some(budget), 0);
    let bytes = Arc::new(content(7, 256 * MIB));
    let sampler = UsageSampler::start(&tmpfs);

    let (go, gated) = gated_producer(&bytes);
    let (first, lookup) = cache.lookup("big", gated).unwrap();
    assert_eq!(lookup, Lookup::Miss);
    let joined: Vec<_> = (0..2)
        .map(|_| {
            let (stream, lookup) = cache
                .lookup("big", |_| Err(io::Error::other("ran twice")))
                .unwrap();
            assert_eq!(
                lookup,
                Lookup::Hit,
                "the readers join before it outgrows its room"
            );
            stream
        })
        .collect();
    go.send(()).unwrap();

    std::thread::scope(|s| {
        let mut readers = Vec::new();
        for (i, mut stream) in std::iter::once(first).chain(joined).enumerate() {
            let bytes = &bytes;
            readers.push(s.spawn(move || {
                let mut got = Vec::with_capacity(bytes.len());
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = stream.read(&mut buf).expect("a read");
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    // Reader 2 is slow: a pause after every MiB.
                    if i == 2 && got.len() as u64 % MIB < (64 << 10) {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                stream.wait().expect("the producer's success");
                assert!(
                    got == **bytes,
                    "reader {i}: wrong bytes ({} read)",
                    got.len()
                );
            }));
        }
        // A fourth reader, once the entry has turned transient, gets its own stream.
        while cache.stats().transient_entries == 0 {
            std::thread::yield_now();
            assert!(
                !readers.iter().all(|r| r.is_finished()),
                "the entry never turned transient"
            );
        }
        let (mut late, lookup) = cache.lookup("big", producer(Arc::clone(&bytes))).unwrap();
        assert_eq!(
            lookup,
            Lookup::Bypass,
            "no room, and the transient entry takes nobody"
        );
        assert!(read_all(&mut late) == *bytes, "the late reader's own bytes");
        for r in readers {
            r.join().unwrap();
        }
    });
    let most = sampler.finish();
    assert!(
        most <= budget,
        "the file system held {most} bytes at one time, over the budget of {budget}"
    );
    let stats = cache.stats();
    assert_eq!(stats.failures, 0, "{stats:?}");
    assert_eq!(
        stats.transient_entries, 0,
        "the transient entry finished: {stats:?}"
    );
    assert!(stats.room_bypasses >= 1, "{stats:?}");
    assert_eq!(
        stats.index_entries, 0,
        "the transient entry left the index: {stats:?}"
    );
}

#[test]
fn below_the_free_space_guard_misses_bypass_and_are_cached_again_once_space_returns() {
    let tmpfs = Tmpfs::mount(64);
    let min_free = 16 * MIB;
    let cache = budget_cache(&tmpfs, None, min_free);
    let filler = tmpfs.path().join("filler");
    // Others fill the file system to below the guard: 52 of 64 MiB.
    std::fs::write(&filler, vec![1u8; 52 * MIB as usize]).unwrap();

    for k in 0..3 {
        let bytes = Arc::new(content(k, 2 * MIB));
        let (mut stream, lookup) = cache
            .lookup(&format!("key-{k}"), producer(Arc::clone(&bytes)))
            .unwrap();
        assert_eq!(lookup, Lookup::Bypass, "key {k}: no room above the guard");
        assert!(read_all(&mut stream) == *bytes, "key {k}: wrong bytes");
    }
    assert_eq!(cache.stats().room_bypasses, 3);
    assert!(
        tmpfs.used() <= 52 * MIB + MIB,
        "nothing was stored meanwhile"
    );

    std::fs::remove_file(&filler).unwrap();
    let bytes = Arc::new(content(0, 2 * MIB));
    let (mut stream, lookup) = cache.lookup("key-0", producer(Arc::clone(&bytes))).unwrap();
    assert_eq!(lookup, Lookup::Miss, "cached again");
    assert!(read_all(&mut stream) == *bytes);
    let (mut stream, lookup) = cache
        .lookup("key-0", |_| Err(io::Error::other("ran again")))
        .unwrap();
    assert_eq!(lookup, Lookup::Hit);
    assert!(read_all(&mut stream) == *bytes);
    assert_eq!(cache.stats().failures, 0);
}

#[test]
fn when_others_fill_the_file_system_an_entry_being_written_gives_back_its_reservation() {
    let tmpfs = Tmpfs::mount(64);
    let min_free = 16 * MIB;
    let cache = budget_cache(&tmpfs, None, min_free);
    let bytes = Arc::new(content(5, 40 * MIB));
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let (filled, at_4_mib) = std::sync::mpsc::channel::<()>();
    let (mut stream, lookup) = cache
        .lookup("growing", {
            let bytes = Arc::clone(&bytes);
            move |w| {
                // 4 MiB under a reservation made when the file system was empty...
                for chunk in bytes[..4 * MIB as usize].chunks(64 << 10) {
                    w.write_all(chunk)?;
                }
                filled.send(()).map_err(io::Error::other)?;
                gate.recv().map_err(io::Error::other)?;
                // ...and 36 MiB more after others took most of the room.
                for chunk in bytes[4 * MIB as usize..].chunks(64 << 10) {
                    w.write_all(chunk)?;
                }
                Ok(())
            }
        })
        .unwrap();
    assert_eq!(lookup, Lookup::Miss);
    let sampler = UsageSampler::start(&tmpfs);
    std::thread::scope(|s| {
        let reader = s.spawn(|| read_all(&mut stream));
        at_4_mib.recv().unwrap();
        // Another program writes 40 MiB: 20 MiB stay free, 4 above the guard.
        std::fs::write(tmpfs.path().join("other"), vec![1u8; 40 * MIB as usize]).unwrap();
        go.send(()).unwrap();
        assert!(reader.join().unwrap() == *bytes, "wrong bytes");
    });
    let most = sampler.finish();
    // The guard holds but for what one entry may write between two looks at it.
    let allowed = 64 * MIB - (min_free - 4 * MIB);
    assert!(
        most <= allowed,
        "the file system held {most} bytes at one time, more than {allowed}"
    );
    let stats = cache.stats();
    assert_eq!(stats.failures, 0, "{stats:?}");
    assert_eq!(stats.disk_reserved_bytes, 0, "{stats:?}");
}

/// Fills the file system of `tmpfs` to the last page with a file of the test's own.
fn fill_up(tmpfs: &Tmpfs) -> std::path::PathBuf {
    let path = tmpfs.path().join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    for piece in [64 << 10, 4 << 10, 1] {
        let buf = vec![1u8; piece];
        while let Ok(n) = file.write(&buf) {
            assert!(n > 0, "a write of the filler stored nothing");
        }
    }
    assert_eq!(tmpfs.free(), 0, "the filler took every page");
    path
}

#[test]
fn a_write_that_finds_the_file_system_full_with_nothing_to_free_passes_its_bytes_through_memory() {
    let tmpfs = Tmpfs::mount(8);
    let cache = budget_cache(&tmpfs, None, 4096);
    let bytes = Arc::new(content(11, 6 * MIB));
    let (go, gated) = gated_producer(&bytes);
    let (mut reader, lookup) = cache.lookup("full", gated).unwrap();
    assert_eq!(lookup, Lookup::Miss);
    let (mut sender, lookup) = cache
        .lookup("full", |_| Err(io::Error::other("ran twice")))
        .unwrap();
    assert_eq!(lookup, Lookup::Hit);
    // After the entry got its room, another program takes every page that was left.
    let filler = fill_up(&tmpfs);
    go.send(()).unwrap();

    std::thread::scope(|s| {
        // One reader through `read`, one through `send_to` into a file elsewhere.
        let sent = s.spawn(move || {
            let mut out = tempfile::tempfile().unwrap();
            let n = sender.send_to(&out).expect("every byte, sent");
            sender.wait().expect("the producer's success");
            let mut copy = Vec::new();
            io::Seek::rewind(&mut out).unwrap();
            out.read_to_end(&mut copy).unwrap();
            (n, copy)
        });
        assert!(read_all(&mut reader) == *bytes, "wrong bytes read");
        let (n, copy) = sent.join().unwrap();
        assert_eq!(n, bytes.len() as u64);
        assert!(copy == *bytes, "wrong bytes sent");
    });
    let stats = cache.stats();
    assert_eq!((stats.failures, stats.transient_entries), (0, 0));

    // It was never kept: once there is room, the key is a miss and is cached.
    std::fs::remove_file(filler).unwrap();
    let (mut stream, lookup) = cache.lookup("full", producer(Arc::clone(&bytes))).unwrap();
    assert_eq!(lookup, Lookup::Miss);
    assert!(read_all(&mut stream) == *bytes);
    let (_, lookup) = cache
        .lookup("full", |_| Err(io::Error::other("ran again")))
        .unwrap();
    assert_eq!(lookup, Lookup::Hit);
}

#[test]
fn a_budget_of_zero_is_refused_with_the_field_named() {
    let mut cfg = streamcache::Config::new("/nowhere");
    cfg.max_disk_bytes = Some(0);
    let err = Cache::new(cfg).unwrap_err();
    assert!(
        matches!(
            err,
            streamcache::Error::Config {
                field: "max_disk_bytes",
                ..
            }
        ),
        "{err:?}"
    );
}
