//! The min-occurrences rule seen from the cache (spec 6.6 and the hook's 6.8 patterns):
//! early occurrences of a key run outside the cache and never touch the disk.

use crate::support::{fetch_vec, never, produce, with_and_without_backpressure, TempCache};

// ported from internal/gitaly/service/hook/pack_objects_test.go: TestServer_PackObjectsHook_usesCache (min_occurrences 1)
#[test]
fn with_min_occurrences_one_the_first_fetch_bypasses_the_second_creates_the_third_hits() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::with(|cfg| {
            cfg.backpressure = backpressure;
            cfg.min_occurrences = 1;
        });

        let (out, created) = fetch_vec(&c.cache, "key", produce("first")).unwrap();
        assert_eq!((out.as_slice(), created), (&b"first"[..], true));
        assert_eq!(
            c.cache.stats().bypassed,
            1,
            "the first occurrence bypassed the cache"
        );
        assert_eq!(c.files(), 0, "nothing was written to disk");
        assert_eq!(c.cache.stats().index_entries, 0);

        let (out, created) = fetch_vec(&c.cache, "key", produce("second")).unwrap();
        assert_eq!((out.as_slice(), created), (&b"second"[..], true));
        assert_eq!(c.files(), 1, "the second occurrence made an entry");
        let stats = c.cache.stats();
        assert_eq!((stats.bypassed, stats.misses), (1, 1));

        let (out, created) = fetch_vec(&c.cache, "key", never).unwrap();
        assert_eq!((out.as_slice(), created), (&b"second"[..], false), "a hit");
        assert_eq!(c.cache.stats().hits, 1);
        assert_eq!(c.files(), 1);
    });
}

// ported from internal/gitaly/service/hook/pack_objects_test.go: TestServer_PackObjectsHook_usesCache (min_occurrences 5)
#[test]
fn with_min_occurrences_five_the_first_five_fetches_all_run_their_producers() {
    with_and_without_backpressure(|backpressure| {
        let c = TempCache::with(|cfg| {
            cfg.backpressure = backpressure;
            cfg.min_occurrences = 5;
        });
        for i in 0..5 {
            let (out, created) = fetch_vec(&c.cache, "key", produce(format!("call {i}"))).unwrap();
            assert!(created, "call {i} ran its own producer");
            assert_eq!(out, format!("call {i}").as_bytes());
        }
        assert_eq!(c.files(), 0, "no occurrence so far was cached");
        assert_eq!(c.cache.stats().bypassed, 5);

        let (out, created) = fetch_vec(&c.cache, "key", produce("call 5")).unwrap();
        assert_eq!((out.as_slice(), created), (&b"call 5"[..], true));
        assert_eq!(c.files(), 1, "the sixth occurrence is cached");
        let (out, created) = fetch_vec(&c.cache, "key", never).unwrap();
        assert_eq!((out.as_slice(), created), (&b"call 5"[..], false));
    });
}

// ported from internal/streamcache/min_occurrences_test.go: TestMinOccurrences_manyDifferentCalls
#[test]
fn many_distinct_one_off_keys_never_touch_the_disk() {
    let c = TempCache::with(|cfg| cfg.min_occurrences = 1);
    std::thread::scope(|s| {
        for t in 0..8 {
            let cache = &c.cache;
            s.spawn(move || {
                for i in 0..125 {
                    let key = format!("key {t}-{i}");
                    let (out, created) = fetch_vec(cache, &key, produce(key.clone())).unwrap();
                    assert!(created);
                    assert_eq!(out, key.as_bytes());
                }
            });
        }
    });
    assert_eq!(c.files(), 0);
    let stats = c.cache.stats();
    assert_eq!((stats.bypassed, stats.misses, stats.hits), (1000, 0, 0));
}

#[test]
fn lookup_tells_a_bypass_from_a_miss_and_a_hit() {
    use streamcache::Lookup;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = streamcache::Config::new(dir.path());
    cfg.min_occurrences = 1;
    let cache = streamcache::Cache::new(cfg).unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (mut stream, lookup) = cache
            .lookup("k", |w| std::io::Write::write_all(w, b"v"))
            .unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut out).unwrap();
        stream.wait().unwrap();
        assert_eq!(out, b"v");
        seen.push(lookup);
    }
    assert_eq!(seen, [Lookup::Bypass, Lookup::Miss, Lookup::Hit]);
    let (_, lookup) = streamcache::Cache::disabled()
        .lookup("k", |_| Ok(()))
        .unwrap();
    assert_eq!(lookup, Lookup::Bypass);
}
