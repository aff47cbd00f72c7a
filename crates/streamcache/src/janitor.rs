//! The background thread that evicts old entries and sweeps stale files.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Owns the maintenance thread. The thread wakes every `period` and runs one round; it
/// exits when the janitor is stopped or dropped (its channel disconnects), or when the
/// work function says the cache is gone.
#[derive(Debug)]
#[must_use = "dropping the janitor stops it"]
pub(crate) struct Janitor {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The period of the maintenance loop: `max_age`, at most one minute; one minute if
/// `max_age` is zero.
pub(crate) fn period(max_age: Duration) -> Duration {
    const MINUTE: Duration = Duration::from_secs(60);
    if max_age.is_zero() {
        MINUTE
    } else {
        max_age.min(MINUTE)
    }
}

impl Janitor {
    /// Starts the thread. `round` returns false once there is nothing left to maintain.
    pub(crate) fn start(
        period: Duration,
        mut round: impl FnMut() -> bool + Send + 'static,
    ) -> std::io::Result<Janitor> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("streamcache-janitor".into())
            .spawn(move || loop {
                match stopped.recv_timeout(period) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        // A panic in one round must not end maintenance for good.
                        let keep_going =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut round))
                                .unwrap_or_else(|_| {
                                    tracing::error!("streamcache: maintenance round panicked");
                                    true
                                });
                        if !keep_going {
                            return;
                        }
                    }
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(Janitor {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it, unless called from the thread itself.
    pub(crate) fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_period_is_max_age_capped_at_a_minute() {
        assert_eq!(period(Duration::ZERO), Duration::from_secs(60));
        assert_eq!(period(Duration::from_secs(5)), Duration::from_secs(5));
        assert_eq!(period(Duration::from_secs(3600)), Duration::from_secs(60));
    }

    #[test]
    fn stopping_joins_the_thread_and_a_panicking_round_does_not_end_the_loop() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let mut janitor = {
            let rounds = Arc::clone(&rounds);
            Janitor::start(Duration::from_millis(1), move || {
                let n = rounds.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    panic!("first round fails");
                }
                let _ = tx.send(n);
                true
            })
            .unwrap()
        };
        // A round after the panicking one ran.
        assert_eq!(rx.recv().unwrap(), 1);
        janitor.stop();
        let after = rounds.load(Ordering::SeqCst);
        assert!(janitor.thread.is_none());
        assert_eq!(
            rounds.load(Ordering::SeqCst),
            after,
            "no round runs after stop returned"
        );
    }
}
