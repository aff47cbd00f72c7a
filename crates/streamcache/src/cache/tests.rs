// Real threads and files; not loom models (see `pipe/loom_tests.rs` for those).
#![cfg(not(loom))]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use super::{Cache, CreateHook, Entry, Flavor, Shared};
use crate::config::Config;
use crate::error::{Error, Op};
use crate::filestore::FileStore;
use crate::sync::lock;

const MAX_AGE: Duration = Duration::from_secs(3600);

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

fn config(dir: &Path, backpressure: bool) -> Config {
    let mut cfg = Config::new(dir);
    cfg.max_age = MAX_AGE;
    cfg.backpressure = backpressure;
    cfg.min_occurrences = 0;
    cfg
}

fn cache_with_hook(dir: &Path, backpressure: bool, hook: CreateHook) -> Cache {
    Cache::build(config(dir, backpressure), Some(hook)).unwrap()
}

fn shared(cache: &Cache) -> &Arc<Shared> {
    match &cache.flavor {
        Flavor::Enabled(shared) => shared,
        Flavor::Disabled(_) => panic!("the test needs a real cache"),
    }
}

fn indexed(cache: &Cache, key: &str) -> Option<Arc<Entry>> {
    lock(&shared(cache).index).get(key).cloned()
}

fn index_len(cache: &Cache) -> usize {
    lock(&shared(cache).index).len()
}

/// Non-directory entries under `root`; a missing root has none.
fn files_under(root: &Path) -> usize {
    let Ok(entries) = fs::read_dir(root) else {
        return 0;
    };
    entries
        .map(|entry| {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                files_under(&entry.path())
            } else {
                1
            }
        })
        .sum()
}

fn fetch_text(
    cache: &Cache,
    key: &str,
    content: &'static str,
) -> crate::error::Result<(String, bool)> {
    let mut out = Vec::new();
    let (n, created) = cache.fetch(key, &mut out, move |w| w.write_all(content.as_bytes()))?;
    assert_eq!(n, out.len() as u64);
    Ok((String::from_utf8(out).unwrap(), created))
}

fn read_text(stream: &mut crate::stream::Stream) -> io::Result<String> {
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

// ported from internal/streamcache/cache_test.go: TestCache_failCreateFile
with_and_without_back_pressure!(fetch_returns_exactly_the_error_of_failed_file_creation);
fn fetch_returns_exactly_the_error_of_failed_file_creation(backpressure: bool) {
    let dir = tempfile::tempdir().unwrap();
    let injected = Error::io(
        Op::Mkdir,
        dir.path().join("injected"),
        io::Error::new(io::ErrorKind::PermissionDenied, "injected create failure"),
    );
    let hook_error = injected.clone();
    let cache = cache_with_hook(
        dir.path(),
        backpressure,
        Box::new(move |_store: &FileStore| Err(hook_error.clone())),
    );
    let ran = Arc::new(AtomicBool::new(false));
    let producer_ran = Arc::clone(&ran);
    let err = cache
        .fetch("key", &mut Vec::new(), move |_| {
            producer_ran.store(true, Ordering::SeqCst);
            Ok(())
        })
        .unwrap_err();
    assert_eq!(err.to_string(), injected.to_string());
    assert_eq!(err.kind(), injected.kind());
    assert_eq!(err.op(), Some(Op::Mkdir));
    match (&err, &injected) {
        (
            Error::Io {
                path, source: got, ..
            },
            Error::Io {
                path: want_path,
                source: want,
                ..
            },
        ) => {
            assert_eq!(path, want_path);
            assert!(Arc::ptr_eq(got, want), "the hook's error came back wrapped");
        }
        other => panic!("expected the injected Io error, got {other:?}"),
    }
    assert!(!ran.load(Ordering::SeqCst), "no entry, so no producer");
    assert_eq!(index_len(&cache), 0);
    assert_eq!(cache.stats().misses, 0);
}

// ported from internal/streamcache/cache_test.go: TestCache_unWriteableFile
with_and_without_back_pressure!(a_file_that_cannot_be_written_fails_the_fetch_with_a_write_error);
fn a_file_that_cannot_be_written_fails_the_fetch_with_a_write_error(backpressure: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_with_hook(
        dir.path(),
        backpressure,
        Box::new(|store: &FileStore| {
            let (writable, entry) = store.create()?;
            drop(writable);
            let read_only =
                File::open(&*entry.path()).map_err(|e| Error::io(Op::Create, &*entry.path(), e))?;
            Ok((read_only, entry))
        }),
    );
    let err = fetch_text(&cache, "key", "hello").unwrap_err();
    assert_eq!(err.op(), Some(Op::Write), "got {err:?}");
    assert!(
        indexed(&cache, "key").is_none(),
        "the failed entry left the index"
    );
    assert_eq!(cache.stats().misses, 1);
}

// ported from internal/streamcache/cache_test.go: TestCache_unCloseableFile
with_and_without_back_pressure!(a_file_that_fails_to_close_fails_the_fetch_with_a_close_error);
fn a_file_that_fails_to_close_fails_the_fetch_with_a_close_error(backpressure: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(config(dir.path(), backpressure)).unwrap();
    shared(&cache)
        .close_fault
        .set(io::ErrorKind::StorageFull)
        .unwrap();
    let mut out = Vec::new();
    let err = cache.fetch("key", &mut out, |_| Ok(())).unwrap_err();
    assert_eq!(err.op(), Some(Op::Close), "got {err:?}");
    assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    assert!(out.is_empty());
    assert!(
        indexed(&cache, "key").is_none(),
        "the failed entry left the index"
    );
}

// ported from internal/streamcache/cache_test.go: TestCache_cannotOpenFileForReading
with_and_without_back_pressure!(a_file_that_cannot_be_opened_for_reading_fails_the_lookup);
fn a_file_that_cannot_be_opened_for_reading_fails_the_lookup(backpressure: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_with_hook(
        dir.path(),
        backpressure,
        Box::new(|store: &FileStore| {
            let (file, entry) = store.create()?;
            entry.remove()?;
            Ok((file, entry))
        }),
    );
    let err = fetch_text(&cache, "key", "hello").unwrap_err();
    assert_eq!(err.op(), Some(Op::OpenReader), "got {err:?}");
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert_eq!(index_len(&cache), 0, "nothing is cached");
    assert_eq!(cache.stats().misses, 0);
}

/// A producer failure and what the first fetch must say about it.
fn a_failed_producer_is_reported_and_the_next_fetch_starts_afresh(
    backpressure: bool,
    producer: impl FnOnce(&mut crate::writer::Writer) -> io::Result<()> + Send + 'static,
    message: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(config(dir.path(), backpressure)).unwrap();

    let (mut stream, created) = cache.find_or_create("key", producer).unwrap();
    assert!(created);
    let mut partial = Vec::new();
    let err = Error::from_io(stream.read_to_end(&mut partial).unwrap_err());
    assert_eq!(err.to_string(), message);
    assert_eq!(partial, b"partial", "the bytes written before the failure");
    assert_eq!(stream.wait().unwrap_err().to_string(), message);
    drop(stream);

    let (content, created) = fetch_text(&cache, "key", "good").unwrap();
    assert_eq!((content.as_str(), created), ("good", true));
    let (content, created) = fetch_text(&cache, "key", "ignored").unwrap();
    assert_eq!((content.as_str(), created), ("good", false));
}

// ported from internal/streamcache/cache_test.go: TestCache_failedWrite (create returns error)
with_and_without_back_pressure!(
    a_producer_error_reaches_the_reader_and_the_next_fetch_starts_afresh
);
fn a_producer_error_reaches_the_reader_and_the_next_fetch_starts_afresh(backpressure: bool) {
    a_failed_producer_is_reported_and_the_next_fetch_starts_afresh(
        backpressure,
        |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("producer failed"))
        },
        "producer failed",
    );
}

// ported from internal/streamcache/cache_test.go: TestCache_failedWrite (create panics)
with_and_without_back_pressure!(
    a_producer_panic_reaches_the_reader_and_the_next_fetch_starts_afresh
);
fn a_producer_panic_reaches_the_reader_and_the_next_fetch_starts_afresh(backpressure: bool) {
    a_failed_producer_is_reported_and_the_next_fetch_starts_afresh(
        backpressure,
        |w| {
            w.write_all(b"partial")?;
            panic!("producer exploded")
        },
        "panic: producer exploded",
    );
}

// ported from internal/streamcache/cache_test.go: TestCache_failedWrite (fetch form)
with_and_without_back_pressure!(fetch_returns_the_producer_error_and_counts_the_miss);
fn fetch_returns_the_producer_error_and_counts_the_miss(backpressure: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(config(dir.path(), backpressure)).unwrap();
    let err = cache
        .fetch("key", &mut Vec::new(), |_| {
            Err(io::Error::other("producer failed"))
        })
        .unwrap_err();
    assert!(matches!(err, Error::Producer(_)), "got {err:?}");
    assert_eq!(err.to_string(), "producer failed");
    // The failed fetch was the miss that created the entry.
    assert_eq!((cache.stats().misses, cache.stats().failures), (1, 1));
    let (content, created) = fetch_text(&cache, "key", "good").unwrap();
    assert_eq!((content.as_str(), created), ("good", true));
}

// Spec 1.1: the failed entry leaves the index before anyone learns of the failure.
with_and_without_back_pressure!(
    a_failed_entry_is_out_of_the_index_before_its_readers_see_the_error
);
fn a_failed_entry_is_out_of_the_index_before_its_readers_see_the_error(backpressure: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(config(dir.path(), backpressure)).unwrap();
    // What the outcome was when the entry left the index: nobody can have learned of a
    // failure that was not yet published.
    let at_removal = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&at_removal);
    let hook = move |entry: &Entry| seen.lock().unwrap().push(entry.outcome().get());
    assert!(shared(&cache).on_remove.set(Box::new(hook)).is_ok());
    let (release, released) = mpsc::channel::<()>();
    let (reading, created) = cache
        .find_or_create("key", move |w| {
            w.write_all(b"abc")?;
            released.recv().unwrap();
            Err(io::Error::other("gave up"))
        })
        .unwrap();
    assert!(created);
    let (waiting, created) = cache.find_or_create("key", |_| Ok(())).unwrap();
    assert!(!created, "the second lookup joins the running producer");
    assert!(indexed(&cache, "key").is_some());

    // One reader learns of the failure by reading, the other by waiting; each looks at
    // the index the moment it knows.
    let by_read = {
        let shared = Arc::clone(shared(&cache));
        let mut stream = reading;
        thread::spawn(move || {
            let err = stream.read_to_end(&mut Vec::new()).unwrap_err();
            let still_indexed = lock(&shared.index).contains_key("key");
            (Error::from_io(err), still_indexed)
        })
    };
    let by_wait = {
        let shared = Arc::clone(shared(&cache));
        thread::spawn(move || {
            let err = waiting.wait().unwrap_err();
            let still_indexed = lock(&shared.index).contains_key("key");
            (err, still_indexed)
        })
    };
    release.send(()).unwrap();
    for observer in [by_read, by_wait] {
        let (err, still_indexed) = observer.join().unwrap();
        assert_eq!(err.to_string(), "gave up");
        assert!(
            !still_indexed,
            "a reader saw the error while the entry was indexed"
        );
    }
    let at_removal = at_removal.lock().unwrap();
    assert_eq!(at_removal.len(), 1, "the failed entry was removed once");
    assert!(
        at_removal[0].is_none(),
        "the failure was published before the entry left the index: {:?}",
        at_removal[0]
    );
    let (content, created) = fetch_text(&cache, "key", "fresh").unwrap();
    assert_eq!((content.as_str(), created), ("fresh", true));
}

#[derive(Debug, Clone, Copy)]
enum Replaced {
    /// Every reader left, so the next lookup replaced the broken entry.
    ByBrokenPipe,
    /// The entry aged out of the index while its producer was still running.
    ByEviction,
}

/// Spec 8.7, fixed: the failing producer removes only its own entry.
fn a_failing_producer_keeps_the_newer_entry_under_its_key(backpressure: bool, how: Replaced) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(config(dir.path(), backpressure)).unwrap();
    let (release, released) = mpsc::channel::<()>();
    let (old_stream, created) = cache
        .find_or_create("key", move |_| {
            released.recv().unwrap();
            Err(io::Error::other("old producer failed"))
        })
        .unwrap();
    assert!(created);
    let old = indexed(&cache, "key").unwrap();

    let old_stream = match how {
        Replaced::ByBrokenPipe => {
            drop(old_stream);
            None
        }
        Replaced::ByEviction => {
            shared(&cache).maintain(Instant::now() + 2 * MAX_AGE, SystemTime::now());
            assert!(indexed(&cache, "key").is_none());
            Some(old_stream)
        }
    };
    let (mut new_stream, created) = cache
        .find_or_create("key", |w| w.write_all(b"new"))
        .unwrap();
    assert!(created, "the old entry was replaced");
    assert_eq!(read_text(&mut new_stream).unwrap(), "new");
    new_stream.wait().unwrap();
    let new = indexed(&cache, "key").unwrap();
    assert!(!Arc::ptr_eq(&old, &new));

    release.send(()).unwrap();
    // The outcome is published after the failed producer touched the index.
    let err = old.outcome().wait().unwrap_err();
    assert_eq!(err.to_string(), "old producer failed");
    let current = indexed(&cache, "key").expect("the newer entry is still indexed");
    assert!(Arc::ptr_eq(&current, &new));
    let (mut hit, created) = cache.find_or_create("key", |_| Ok(())).unwrap();
    assert!(!created, "the newer entry still serves");
    assert_eq!(read_text(&mut hit).unwrap(), "new");

    if let Some(mut old_stream) = old_stream {
        // Its own reader, evicted or not, still learns of the failure.
        let err = Error::from_io(old_stream.read_to_end(&mut Vec::new()).unwrap_err());
        assert_eq!(err.to_string(), "old producer failed");
    }
}

with_and_without_back_pressure!(a_failing_producer_keeps_the_entry_that_replaced_its_broken_one);
fn a_failing_producer_keeps_the_entry_that_replaced_its_broken_one(backpressure: bool) {
    a_failing_producer_keeps_the_newer_entry_under_its_key(backpressure, Replaced::ByBrokenPipe);
}

with_and_without_back_pressure!(a_failing_producer_keeps_the_entry_that_replaced_its_evicted_one);
fn a_failing_producer_keeps_the_entry_that_replaced_its_evicted_one(backpressure: bool) {
    a_failing_producer_keeps_the_newer_entry_under_its_key(backpressure, Replaced::ByEviction);
}

// Spec 4: age-based eviction, with time passed in rather than slept.
with_and_without_back_pressure!(
    entries_older_than_max_age_are_evicted_with_their_files_while_open_readers_read_on
);
fn entries_older_than_max_age_are_evicted_with_their_files_while_open_readers_read_on(
    backpressure: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(config(dir.path(), backpressure)).unwrap();
    let before = Instant::now();
    let (mut first, created) = cache
        .find_or_create("key", |w| w.write_all(b"content 1"))
        .unwrap();
    let after = Instant::now();
    assert!(created);
    first.wait().unwrap();
    let (mut hit, created) = cache.find_or_create("key", |_| Ok(())).unwrap();
    assert!(!created);
    let path = indexed(&cache, "key").unwrap().path().to_path_buf();
    assert!(path.exists());

    // Exactly max_age old is not older than max_age.
    shared(&cache).maintain(before + MAX_AGE, SystemTime::now());
    assert!(indexed(&cache, "key").is_some());
    assert!(path.exists());
    assert_eq!(cache.stats().evicted, 0);

    let later = MAX_AGE + Duration::from_nanos(1);
    shared(&cache).maintain(after + later, SystemTime::now() + later);
    assert!(indexed(&cache, "key").is_none());
    assert!(!path.exists());
    assert_eq!(files_under(dir.path()), 0);
    let stats = cache.stats();
    assert_eq!((stats.evicted, stats.index_entries), (1, 0));

    // Readers opened before the eviction read everything.
    assert_eq!(read_text(&mut hit).unwrap(), "content 1");
    assert_eq!(read_text(&mut first).unwrap(), "content 1");
    hit.wait().unwrap();

    let (content, created) = fetch_text(&cache, "key", "content 2").unwrap();
    assert_eq!((content.as_str(), created), ("content 2", true));
}

// Spec 1.4 / 4: an entry evicted while still being written keeps streaming to its readers.
with_and_without_back_pressure!(an_entry_evicted_mid_write_still_streams_to_its_readers);
fn an_entry_evicted_mid_write_still_streams_to_its_readers(backpressure: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(config(dir.path(), backpressure)).unwrap();
    let (release, released) = mpsc::channel::<()>();
    let (mut stream, created) = cache
        .find_or_create("key", move |w| {
            w.write_all(b"hel")?;
            released.recv().unwrap();
            w.write_all(b"lo")
        })
        .unwrap();
    assert!(created);
    let path = indexed(&cache, "key").unwrap().path().to_path_buf();
    let mut head = [0u8; 3];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"hel");

    let later = 2 * MAX_AGE;
    shared(&cache).maintain(Instant::now() + later, SystemTime::now() + later);
    assert!(indexed(&cache, "key").is_none());
    assert!(!path.exists());

    release.send(()).unwrap();
    assert_eq!(read_text(&mut stream).unwrap(), "lo");
    stream.wait().unwrap();
}

// ported from internal/streamcache/cache_test.go: TestCache_diskCleanup (back pressure on only)
#[test]
fn with_max_age_zero_one_maintenance_round_removes_entry_and_file_and_the_next_fetch_is_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), true);
    cfg.max_age = Duration::ZERO;
    let cache = Cache::new(cfg).unwrap();

    let (content, created) = fetch_text(&cache, "key", "content 1").unwrap();
    assert_eq!((content.as_str(), created), ("content 1", true));
    assert_eq!(files_under(dir.path()), 1);
    assert_eq!(index_len(&cache), 1);

    let a_moment = Duration::from_secs(1);
    shared(&cache).maintain(Instant::now() + a_moment, SystemTime::now() + a_moment);
    assert_eq!(files_under(dir.path()), 0);
    assert_eq!(index_len(&cache), 0);

    let (content, created) = fetch_text(&cache, "key", "content 2").unwrap();
    assert_eq!((content.as_str(), created), ("content 2", true));
}

/// Descriptors of this process open on `path` (found through /proc/self/fd links).
fn descriptors_on(path: &Path) -> usize {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| {
            let target = target.to_string_lossy();
            let target = target.trim_end_matches(" (deleted)");
            Path::new(target) == path
        })
        .count()
}

#[test]
fn a_recently_read_entry_keeps_its_read_handle_and_gives_it_up_when_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), true);
    cfg.max_age = Duration::from_secs(60);
    let cache = Cache::new(cfg).unwrap();
    assert_eq!(
        fetch_text(&cache, "k", "kept").unwrap(),
        ("kept".to_owned(), true)
    );
    let entry = indexed(&cache, "k").unwrap();
    let path = entry.path().to_path_buf();
    // No reader is left, but the read handle is kept for the next hit.
    assert_eq!(descriptors_on(&path), 1);
    let kept = entry.shared_file().expect("the handle is kept");
    assert_eq!(
        fetch_text(&cache, "k", "unused").unwrap(),
        ("kept".to_owned(), false)
    );
    let reused = entry.shared_file().unwrap();
    assert!(
        Arc::ptr_eq(&kept, &reused),
        "the hit reused the kept handle"
    );
    drop((kept, reused));
    // Eviction removes the file and closes the kept handle, freeing the space.
    shared(&cache).maintain(Instant::now() + Duration::from_secs(120), SystemTime::now());
    assert!(!path.exists());
    assert_eq!(
        descriptors_on(&path),
        0,
        "no descriptor holds the evicted file"
    );
}

#[test]
fn a_kept_handle_of_a_deleted_file_is_not_served_and_the_key_is_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(config(dir.path(), true)).unwrap();
    assert_eq!(
        fetch_text(&cache, "k", "one").unwrap(),
        ("one".to_owned(), true)
    );
    let path = indexed(&cache, "k").unwrap().path().to_path_buf();
    fs::remove_file(&path).unwrap();
    assert_eq!(
        fetch_text(&cache, "k", "two").unwrap(),
        ("two".to_owned(), true)
    );
}
