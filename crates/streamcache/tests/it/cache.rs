//! The cache through its public API: spec 6.1, each scenario with back pressure on and off.

use std::fs;
use std::io::{self, Read, Write};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use streamcache::{Cache, Error};

use crate::support::{
    drain, fetch_vec, never, produce, raise_open_file_limit, random_bytes,
    with_and_without_backpressure, TempCache,
};

// ported from internal/streamcache/cache_test.go: TestCache_writeOneReadMultiple
#[test]
fn one_entry_written_once_is_read_by_every_later_fetch() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        for i in 0..10 {
            let (out, created) = fetch_vec(&c.cache, "key", produce(format!("content {i}")))
                .expect("fetch succeeds");
            assert_eq!(created, i == 0, "only the first fetch creates (fetch {i})");
            assert_eq!(out, b"content 0", "fetch {i} gets the first content");
        }
        assert_eq!(c.files(), 1, "one entry, one file");
        let stats = c.cache.stats();
        assert_eq!((stats.misses, stats.hits), (1, 9));
    });
}

// ported from internal/streamcache/cache_test.go: TestCache_manyConcurrentWrites
#[test]
fn a_thousand_concurrent_fetches_of_one_key_share_one_producer() {
    const N: usize = 1000;
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        let inputs: Vec<Vec<u8>> = (0..N).map(|_| random_bytes(4096)).collect();
        let start = Barrier::new(N);
        let outputs: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = inputs
                .iter()
                .map(|input| {
                    let input = input.clone();
                    let (cache, start) = (&c.cache, &start);
                    s.spawn(move || {
                        start.wait();
                        let (out, _) = fetch_vec(cache, "key", produce(input)).expect("fetch");
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            outputs.iter().all(|out| *out == outputs[0]),
            "every fetch got the same bytes"
        );
        assert!(
            inputs.contains(&outputs[0]),
            "the bytes are one producer's input, not a mix"
        );
        assert_eq!(c.files(), 1, "exactly one entry file");
        assert_eq!(c.cache.stats().misses, 1, "exactly one producer ran");
    });
}

// ported from internal/streamcache/cache_test.go: TestCache_deletedFile
#[test]
fn an_entry_whose_file_was_wiped_is_made_again() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        let (first, created) = fetch_vec(&c.cache, "key", produce("content 1")).unwrap();
        assert!(created);
        assert_eq!(c.files(), 1);

        fs::remove_dir_all(c.root()).unwrap();
        fs::create_dir(c.root()).unwrap();
        assert_eq!(c.files(), 0, "the wipe removed the file");
        assert_eq!(
            c.cache.stats().index_entries,
            1,
            "the index still has the entry"
        );

        let (second, created) = fetch_vec(&c.cache, "key", produce("content 2")).unwrap();
        assert!(created, "the entry without a file is replaced");
        assert_eq!(second, b"content 2");
        assert_eq!(first, b"content 1");
        assert_eq!(c.files(), 1);
    });
}

#[test]
fn a_reader_opened_before_the_wipe_still_reads_everything() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        let content = random_bytes(256 << 10);
        let (mut stream, created) = c
            .cache
            .find_or_create("key", produce(content.clone()))
            .unwrap();
        assert!(created);
        fs::remove_dir_all(c.root()).unwrap();
        let (out, result) = drain(&mut stream);
        result.expect("the producer keeps writing to the unlinked file");
        assert_eq!(out, content);
    });
}

// ported from internal/streamcache/cache_test.go: TestCache_scope
#[test]
fn caches_sharing_one_directory_never_see_each_others_entries() {
    const N: usize = 100;
    with_and_without_backpressure(|backpressure| {
        let dir = tempfile::tempdir().unwrap();
        let caches: Vec<Cache> = (0..N)
            .map(|_| {
                let mut cfg = crate::support::real_config(dir.path());
                cfg.backpressure = backpressure;
                Cache::new(cfg).unwrap()
            })
            .collect();
        let inputs: Vec<String> = (0..N).map(|i| format!("content of cache {i}")).collect();
        let start = Barrier::new(N);
        let results: Vec<(Vec<u8>, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = caches
                .iter()
                .zip(&inputs)
                .map(|(cache, input)| {
                    let (input, start) = (input.clone(), &start);
                    s.spawn(move || {
                        start.wait();
                        fetch_vec(cache, "key", produce(input)).expect("fetch")
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, ((out, created), input)) in results.iter().zip(&inputs).enumerate() {
            assert!(*created, "cache {i} made its own entry");
            assert_eq!(out, input.as_bytes(), "cache {i} got its own content");
        }
        assert_eq!(crate::support::count_files(dir.path()), N);
    });
}

// ported from internal/streamcache/cache_test.go: TestCache_diskCleanup
#[test]
fn maintenance_with_max_age_zero_removes_entries_and_files() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::with(|cfg| {
            cfg.backpressure = backpressure;
            cfg.max_age = Duration::ZERO;
        });
        let (out, created) = fetch_vec(&c.cache, "key", produce("content 1")).unwrap();
        assert_eq!((out.as_slice(), created), (&b"content 1"[..], true));
        assert_eq!(c.files(), 1);
        assert_eq!(c.cache.stats().index_entries, 1);

        c.cache.run_maintenance();
        assert_eq!(c.files(), 0, "the entry's file was removed");
        let stats = c.cache.stats();
        assert_eq!(stats.index_entries, 0, "the entry left the index");
        assert_eq!(stats.evicted, 1);

        let (out, created) = fetch_vec(&c.cache, "key", produce("content 2")).unwrap();
        assert!(created, "the key is made afresh");
        assert_eq!(out, b"content 2", "no stale value");
    });
}

#[test]
fn an_evicted_entry_keeps_serving_the_readers_it_already_has() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::with(|cfg| {
            cfg.backpressure = backpressure;
            cfg.max_age = Duration::ZERO;
        });
        let (go, gate) = std::sync::mpsc::channel::<()>();
        let (mut stream, created) = c
            .cache
            .find_or_create("key", move |w| {
                w.write_all(b"before eviction, ")?;
                gate.recv().map_err(io::Error::other)?;
                w.write_all(b"after eviction")
            })
            .unwrap();
        assert!(created);
        let mut head = [0u8; 17];
        stream.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"before eviction, ");

        c.cache.run_maintenance();
        assert_eq!(c.cache.stats().index_entries, 0);
        assert_eq!(c.files(), 0);
        go.send(()).unwrap();

        let (rest, result) = drain(&mut stream);
        result.expect("the producer finishes");
        assert_eq!(rest, b"after eviction");
    });
}

// ported from internal/streamcache/cache_test.go: TestCache_failedWrite (create returns error)
#[test]
fn a_producer_error_fails_the_fetch_and_the_next_fetch_starts_afresh() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        let err = fetch_vec(&c.cache, "key", |w| {
            w.write_all(b"half an entry")?;
            Err(io::Error::other("the producer broke"))
        })
        .expect_err("the producer's error fails the fetch");
        assert!(matches!(err, Error::Producer(_)), "got {err:?}");
        assert_eq!(err.to_string(), "the producer broke");

        let (out, created) = fetch_vec(&c.cache, "key", produce("good content")).unwrap();
        assert!(created, "the failed entry is gone, a new producer runs");
        assert_eq!(out, b"good content");
        assert_eq!(c.cache.stats().failures, 1);
    });
}

// ported from internal/streamcache/cache_test.go: TestCache_failedWrite (create panics)
#[test]
fn a_producer_panic_fails_the_fetch_and_the_next_fetch_starts_afresh() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        let err = fetch_vec(&c.cache, "key", |w| {
            w.write_all(b"half an entry")?;
            panic!("the producer fell over")
        })
        .expect_err("the producer's panic fails the fetch");
        assert!(matches!(err, Error::Panic(_)), "got {err:?}");
        assert_eq!(err.to_string(), "panic: the producer fell over");

        let (out, created) = fetch_vec(&c.cache, "key", produce("good content")).unwrap();
        assert!(created, "the failed entry is gone, a new producer runs");
        assert_eq!(out, b"good content");
    });
}

// ported from internal/streamcache/cache_test.go: TestCache_failedWrite (legacy shape)
#[test]
fn a_failed_lookup_reports_created_and_every_reader_gets_the_producers_error() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        let (go, gate) = std::sync::mpsc::channel::<()>();
        let (mut first, created) = c
            .cache
            .find_or_create("key", move |w| {
                gate.recv().map_err(io::Error::other)?;
                w.write_all(b"partial")?;
                Err(io::Error::new(io::ErrorKind::InvalidData, "bad input"))
            })
            .unwrap();
        assert!(created, "the failing lookup created the entry");
        let (mut second, created) = c.cache.find_or_create("key", never).unwrap();
        assert!(!created, "a second reader joins the same producer");
        go.send(()).unwrap();

        for (name, stream) in [("first", &mut first), ("second", &mut second)] {
            let mut out = Vec::new();
            let read_err = stream
                .read_to_end(&mut out)
                .expect_err("reaching the end of a failed entry is an error, not EOF");
            assert_eq!(
                out, b"partial",
                "{name} reader got the bytes before the failure"
            );
            assert_eq!(read_err.kind(), io::ErrorKind::InvalidData);
            let err = Error::from_io(read_err);
            assert!(matches!(err, Error::Producer(_)), "{name}: {err:?}");
            assert_eq!(err.to_string(), "bad input");
            let waited = stream.wait().expect_err("wait gives the producer's error");
            assert_eq!(waited.to_string(), "bad input");
            assert_eq!(waited.kind(), io::ErrorKind::InvalidData);
            let again = stream.wait().expect_err("and gives it again");
            assert_eq!(again.to_string(), "bad input");
        }
        let (mut third, created) = c.cache.find_or_create("key", produce("fresh")).unwrap();
        assert!(created, "whoever saw the error gets a fresh entry");
        let (out, result) = drain(&mut third);
        result.unwrap();
        assert_eq!(out, b"fresh");
    });
}

#[test]
fn find_or_create_then_copy_then_wait_and_a_hit_reads_the_same_bytes() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        let content = random_bytes(3 << 20);
        let producer = {
            let content = content.clone();
            move |w: &mut streamcache::Writer| {
                for chunk in content.chunks(64 << 10) {
                    w.write_all(chunk)?;
                }
                assert_eq!(w.written(), content.len() as u64);
                Ok(())
            }
        };
        let (mut stream, created) = c.cache.find_or_create("blob", producer).unwrap();
        assert!(created);
        let mut out = Vec::new();
        let n = io::copy(&mut stream, &mut out).unwrap();
        stream.wait().unwrap();
        assert_eq!(n, content.len() as u64);
        assert_eq!(stream.position(), n);
        assert_eq!(out, content);
        assert!(matches!(stream.outcome(), Some(Ok(()))));
        drop(stream);

        let (mut hit, created) = c.cache.find_or_create("blob", never).unwrap();
        assert!(!created, "the complete entry is a hit");
        let mut again = Vec::new();
        io::copy(&mut hit, &mut again).unwrap();
        hit.wait().unwrap();
        assert_eq!(again, content);
        drop(hit);
        let stats = c.cache.stats();
        assert_eq!((stats.hits, stats.misses), (1, 1));
        assert_eq!(stats.generated_bytes, content.len() as u64);
        assert_eq!(stats.served_bytes, 2 * content.len() as u64);
    });
}

#[test]
fn a_producer_whose_readers_all_left_gets_broken_pipe_and_the_key_is_made_again() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::new(backpressure);
        let (go, gate) = std::sync::mpsc::channel::<()>();
        let (seen_tx, seen) = std::sync::mpsc::channel::<io::ErrorKind>();
        let (stream, created) = c
            .cache
            .find_or_create("key", move |w| {
                gate.recv().map_err(io::Error::other)?;
                let result = w.write_all(b"nobody reads this");
                let kind = result
                    .as_ref()
                    .map_or_else(|e| e.kind(), |()| io::ErrorKind::Other);
                seen_tx.send(kind).map_err(io::Error::other)?;
                result
            })
            .unwrap();
        assert!(created);
        drop(stream);
        go.send(()).unwrap();
        assert_eq!(seen.recv().unwrap(), io::ErrorKind::BrokenPipe);

        let (mut stream, created) = c.cache.find_or_create("key", produce("again")).unwrap();
        assert!(created, "an abandoned entry is never served");
        let (out, result) = drain(&mut stream);
        result.unwrap();
        assert_eq!(out, b"again");
    });
}

#[test]
fn a_stopped_cache_keeps_answering_lookups() {
    let c = TempCache::new(true);
    c.cache.stop();
    c.cache.stop();
    let (out, created) = fetch_vec(&c.cache, "key", produce("still here")).unwrap();
    assert_eq!((out.as_slice(), created), (&b"still here"[..], true));
    let (_, created) = fetch_vec(&c.cache, "key", never).unwrap();
    assert!(!created);
}

// ported from internal/streamcache/cache_test.go: TestNullCache
#[test]
fn the_disabled_cache_runs_every_producer_and_each_caller_gets_its_own_bytes() {
    const N: usize = 1000;
    raise_open_file_limit();
    let cache = Cache::disabled();
    assert!(!cache.is_enabled());
    assert!(cache.dir().is_none() && cache.config().is_none());
    let inputs: Vec<Vec<u8>> = (0..N).map(|_| random_bytes(4096)).collect();
    let start = Arc::new(Barrier::new(N));
    let results: Vec<(Vec<u8>, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|input| {
                let (input, start, cache) = (input.clone(), Arc::clone(&start), &cache);
                s.spawn(move || {
                    start.wait();
                    fetch_vec(cache, "key", move |w| {
                        for byte in input.chunks(1) {
                            w.write_all(byte)?;
                        }
                        Ok(())
                    })
                    .expect("fetch")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, ((out, created), input)) in results.iter().zip(&inputs).enumerate() {
        assert!(*created, "call {i} ran its own producer");
        assert_eq!(out, input, "call {i} got its own bytes");
    }
    let stats = cache.stats();
    assert_eq!(stats.bypassed, N as u64);
    assert_eq!(stats.generated_bytes, (N * 4096) as u64);
}

#[test]
fn the_disabled_cache_delivers_producer_errors_and_panics() {
    let cache = Cache::disabled();
    let err = fetch_vec(&cache, "key", |w| {
        w.write_all(b"some")?;
        Err(io::Error::other("direct failure"))
    })
    .expect_err("the producer's error");
    assert_eq!(err.to_string(), "direct failure");

    let (mut stream, created) = cache
        .find_or_create("key", |_| panic!("direct panic"))
        .unwrap();
    assert!(created);
    let (out, result) = drain(&mut stream);
    assert!(out.is_empty());
    let err = result.expect_err("the panic reaches the reader");
    assert_eq!(err.to_string(), "panic: direct panic");
    assert_eq!(
        stream.wait().unwrap_err().to_string(),
        "panic: direct panic"
    );
}

#[test]
fn a_relative_directory_is_rejected_naming_the_field() {
    let err = Cache::new(streamcache::Config::new("relative/dir")).unwrap_err();
    match &err {
        Error::Config { field, .. } => assert_eq!(*field, "dir"),
        other => panic!("expected a config error, got {other:?}"),
    }
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

/// Each cause is printed once when an error and its sources are printed as a chain
/// (as `anyhow`'s `{:#}` and most loggers do): `Display` names what failed, `source()`
/// gives the cause.
#[test]
fn an_error_chain_names_each_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    // The root lies below a regular file: making it fails with ENOTDIR.
    let mut cfg = streamcache::Config::new(file.join("cache"));
    cfg.min_occurrences = 0;
    let cache = streamcache::Cache::new(cfg).unwrap();
    let err = cache
        .find_or_create("k", |_| Ok(()))
        .map(|_| ())
        .unwrap_err();
    let text = crate::support::chain(&err);
    let cause = std::error::Error::source(&err).expect("the cause is the source");
    assert!(cause.source().is_none(), "one cause: {text}");
    assert_eq!(text.matches("Not a directory").count(), 1, "{text}");
    assert!(text.contains(&file.display().to_string()), "{text}");
}

#[test]
fn an_entry_past_max_age_is_never_served_even_when_maintenance_has_not_run() {
    let max_age = Duration::from_millis(50);
    let c = TempCache::with(|cfg| cfg.max_age = max_age);
    // No maintenance round can run: the thread is stopped.
    c.cache.stop();
    let (out, created) = fetch_vec(&c.cache, "key", produce("old")).unwrap();
    assert_eq!((out.as_slice(), created), (&b"old"[..], true));

    // The passage of time is what is tested here: the entry must be older than max_age.
    std::thread::sleep(max_age * 2);
    let (out, created) = fetch_vec(&c.cache, "key", produce("new")).unwrap();
    assert!(created, "the expired entry was not served");
    assert_eq!(out, b"new");
    let stats = c.cache.stats();
    assert_eq!(stats.evicted, 1, "the lookup evicted it");
    assert_eq!(
        c.files(),
        1,
        "and removed its file: only the new entry's is left"
    );
}

/// `entries` shows each entry of the index as it is: what its producer wrote, where its
/// fastest reader is (the producer's lead, which back pressure bounds to one write),
/// its readers, and its state, writing then complete.
#[test]
fn entries_show_what_each_entry_wrote_its_readers_and_its_state() {
    let tc = TempCache::new(true);
    assert!(tc.cache.entries().is_empty());
    let (wrote_one, go_on) = std::sync::mpsc::channel::<()>();
    let (resume, gate) = std::sync::mpsc::channel::<()>();
    let (mut stream, created) = tc
        .cache
        .find_or_create("k", move |w| {
            w.write_all(&[1u8; 100])?;
            wrote_one.send(()).map_err(io::Error::other)?;
            gate.recv().map_err(io::Error::other)?;
            w.write_all(&[2u8; 50])
        })
        .unwrap();
    assert!(created);
    go_on.recv().unwrap();
    let mut first = [0u8; 40];
    stream.read_exact(&mut first).unwrap();
    let entries = tc.cache.entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(
        (
            e.key.as_str(),
            e.written,
            e.fastest_read,
            e.readers,
            e.state
        ),
        ("k", 100, 40, 1, streamcache::EntryState::Writing)
    );
    resume.send(()).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    stream.wait().unwrap();
    drop(stream);
    let e = &tc.cache.entries()[0];
    assert_eq!(
        (e.written, e.fastest_read, e.readers, e.state),
        (150, 150, 0, streamcache::EntryState::Complete)
    );
}
