//! Helpers for tests of code that uses the cache.

use std::io::{self, Write};
use std::sync::Arc;

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::stream::Stream;
use crate::sync::{lock, Mutex};
use crate::writer::Writer;

/// One lookup seen by a [`LoggingCache`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LogEntry {
    /// The key looked up.
    pub key: String,
    /// Whether the lookup created the entry.
    pub created: bool,
    /// The lookup's error, if it failed. For [`LoggingCache::fetch`] this is the whole
    /// call's result (producer, copy or lookup error), and `created` is kept even when
    /// the producer failed; for
    /// [`LoggingCache::find_or_create`] only the lookup's.
    pub error: Option<Error>,
}

/// Wraps a [`Cache`] and records every lookup, for tests that want to see which calls
/// hit and which created. The log grows without bound: not for production.
#[derive(Debug, Clone)]
pub struct LoggingCache {
    inner: Cache,
    log: Arc<Mutex<Vec<LogEntry>>>,
}

impl LoggingCache {
    /// Wraps `inner`.
    pub fn new(inner: Cache) -> LoggingCache {
        LoggingCache {
            inner,
            log: Arc::default(),
        }
    }

    /// [`Cache::find_or_create`], recorded.
    ///
    /// # Errors
    ///
    /// As [`Cache::find_or_create`].
    pub fn find_or_create<F>(&self, key: &str, producer: F) -> Result<(Stream, bool)>
    where
        F: FnOnce(&mut Writer) -> io::Result<()> + Send + 'static,
    {
        let result = self.inner.find_or_create(key, producer);
        let (created, error) = match &result {
            Ok((_, created)) => (*created, None),
            Err(e) => (false, Some(e.clone())),
        };
        self.record(key, created, error);
        result
    }

    /// [`Cache::fetch`], recorded.
    ///
    /// # Errors
    ///
    /// As [`Cache::fetch`].
    pub fn fetch<W, F>(&self, key: &str, dst: &mut W, producer: F) -> Result<(u64, bool)>
    where
        W: Write + ?Sized,
        F: FnOnce(&mut Writer) -> io::Result<()> + Send + 'static,
    {
        match self.inner.fetch_detailed(key, dst, producer) {
            Ok((copied, created, result)) => {
                self.record(key, created, result.as_ref().err().cloned());
                result.map(|()| (copied, created))
            }
            Err(e) => {
                self.record(key, false, Some(e.clone()));
                Err(e)
            }
        }
    }

    fn record(&self, key: &str, created: bool, error: Option<Error>) {
        lock(&self.log).push(LogEntry {
            key: key.to_owned(),
            created,
            error,
        });
    }

    /// The lookups so far, oldest first.
    pub fn entries(&self) -> Vec<LogEntry> {
        lock(&self.log).clone()
    }

    /// The wrapped cache.
    pub fn inner(&self) -> &Cache {
        &self.inner
    }
}
