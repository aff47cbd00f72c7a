//! Running producers: each on a thread of the pool, guarded so that a panic or an error
//! becomes the result every reader gets, never a crashed process.

use std::io;
use std::sync::Arc;

use crate::error::{Chain, Error, Result};
use crate::metrics::Metrics;
use crate::sync::{lock, Mutex};
use crate::writer::Writer;

/// How a producer is called.
pub(crate) type Producer = Box<dyn FnOnce(&mut Writer) -> io::Result<()> + Send + 'static>;

/// Runs after a producer failed and before anyone learns of it (the cache takes the
/// entry out of its index there, so whoever sees the error and asks again starts
/// afresh).
pub(crate) type BeforeFailure = Box<dyn FnOnce() + Send + 'static>;

/// One producer and what it writes into.
pub(crate) struct Job {
    pub(crate) key: String,
    pub(crate) writer: Writer,
    pub(crate) producer: Producer,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) before_failure: Option<BeforeFailure>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("key", &self.key)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

/// Starts `job` on a producer thread.
///
/// # Errors
///
/// If no thread could be started: the job's writer has then failed with that error (its
/// readers get it), which is also returned.
pub(crate) fn start(job: Job) -> Result<()> {
    // The thread takes the job out of this slot; if the thread never starts, the job is
    // still here to fail properly.
    let slot = Arc::new(Mutex::new(Some(job)));
    let theirs = Arc::clone(&slot);
    let spawned = crate::pool::run(move || {
        let job = lock(&theirs).take();
        if let Some(job) = job {
            job.run();
        }
    });
    let Err(e) = spawned else {
        return Ok(());
    };
    let job = lock(&slot).take();
    let Some(mut job) = job else {
        return Ok(());
    };
    let err = match job.writer.path() {
        Some(path) => Error::io(crate::error::Op::Spawn, &**path, e),
        None => Error::Bypass(Arc::new(e)),
    };
    tracing::error!(key = %job.key, error = %Chain(&err), "streamcache: start producer");
    fail(
        &job.metrics,
        job.before_failure,
        &mut job.writer,
        err.clone(),
    );
    Err(err)
}

impl Job {
    fn run(mut self) {
        let span = tracing::debug_span!("streamcache producer", key = %self.key);
        let _enter = span.enter();
        let produced = run_guarded(self.producer, &mut self.writer);
        // Counted before the outcome is published: a reader that sees the end and then
        // reads the stats finds these bytes in them.
        let written = self.writer.written();
        self.metrics.add_generated_bytes(written);
        let outcome = produced.and_then(|()| self.writer.close());
        match outcome {
            Ok(()) => tracing::debug!(bytes = written, "streamcache: entry complete"),
            Err(err) => {
                tracing::error!(error = %Chain(&err), "streamcache: producer failed");
                fail(&self.metrics, self.before_failure, &mut self.writer, err);
            }
        }
    }
}

/// Counts a producer's failure, lets the cache act before anyone learns of it, then
/// publishes `err` to every reader of `writer`.
fn fail(metrics: &Metrics, before: Option<BeforeFailure>, writer: &mut Writer, err: Error) {
    metrics.add_failures(1);
    if let Some(before) = before {
        before();
    }
    writer.fail(err);
}

/// Runs the producer, turning a panic into [`Error::Panic`] and preferring the writer's
/// own failure (a failed write) over what the producer made of it.
fn run_guarded(producer: Producer, writer: &mut Writer) -> Result<()> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| producer(writer)));
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(writer.failure().unwrap_or_else(|| Error::from_io(e))),
        Err(payload) => Err(Error::Panic(panic_message(payload.as_ref()).into())),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}
