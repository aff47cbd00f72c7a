//! `testing::LoggingCache` records the key, `created` and the error of every lookup.

use std::io::{self, Write};

use streamcache::testing::LoggingCache;
use streamcache::Cache;

use crate::support::{never, produce, TempCache};

#[test]
fn the_logging_cache_records_key_created_and_error_of_each_fetch() {
    let c = TempCache::new(true);
    let logged = LoggingCache::new(c.cache.clone());
    let mut out = Vec::new();
    assert_eq!(
        logged.fetch("a", &mut out, produce("alpha")).unwrap(),
        (5, true)
    );
    assert_eq!(logged.fetch("a", &mut out, never).unwrap(), (5, false));
    let err = logged
        .fetch("b", &mut out, |w| {
            w.write_all(b"x")?;
            Err(io::Error::other("no b today"))
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "no b today");
    assert_eq!(out, b"alphaalphax");

    let log = logged.entries();
    let summary: Vec<(&str, bool, Option<String>)> = log
        .iter()
        .map(|e| {
            (
                e.key.as_str(),
                e.created,
                e.error.as_ref().map(|e| e.to_string()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("a", true, None),
            ("a", false, None),
            // Spec 1.1: a failed fetch that created the entry reports created = true.
            ("b", true, Some("no b today".to_owned())),
        ]
    );
    assert!(logged.inner().is_enabled());
    assert_eq!(
        logged.inner().stats().misses,
        2,
        "the lookups reached the wrapped cache"
    );
}

#[test]
fn the_logging_cache_records_find_or_create_lookups() {
    let logged = LoggingCache::new(Cache::disabled());
    let (mut stream, created) = logged.find_or_create("k", produce("v")).unwrap();
    assert!(created);
    let (out, result) = crate::support::drain(&mut stream);
    result.unwrap();
    assert_eq!(out, b"v");
    let log = logged.entries();
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].key.as_str(), log[0].created), ("k", true));
    assert!(log[0].error.is_none());
}
