//! A write-once result cell that threads and tasks can wait on.

#[cfg(any(feature = "tokio", test))]
use std::sync::Arc;
use std::task::Waker;
#[cfg(any(feature = "tokio", test))]
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering::SeqCst;

use crate::error::Error;
use crate::sync::{lock, AtomicBool, Condvar, Mutex};

type Outcome = Result<(), Error>;

#[derive(Debug, Default)]
struct Slot {
    outcome: Option<Outcome>,
    wakers: Vec<Waker>,
    /// Threads blocked on the condition variable (notifying nobody is a system call).
    blocked: usize,
}

/// The producer's result, set once; later sets are ignored.
#[derive(Debug, Default)]
pub(crate) struct Waiter {
    slot: Mutex<Slot>,
    cv: Condvar,
    /// The outcome is in the slot (a lock-free look for [`Waiter::wait`]'s spin).
    is_set: AtomicBool,
}

/// How long [`Waiter::wait`] looks for the outcome before it sleeps. A reader that saw
/// the end of a complete entry waits for an outcome the producer stores a moment
/// after publishing that end; sleeping for it cost a wake-up per small cache miss.
const SPIN: Duration = Duration::from_micros(20);

impl Waiter {
    /// Stores `outcome` unless one is stored already. Returns whether this call stored it.
    pub(crate) fn set(&self, outcome: Outcome) -> bool {
        let (wakers, blocked) = {
            let mut slot = lock(&self.slot);
            if slot.outcome.is_some() {
                return false;
            }
            slot.outcome = Some(outcome);
            self.is_set.store(true, SeqCst);
            (std::mem::take(&mut slot.wakers), slot.blocked > 0)
        };
        if blocked {
            self.cv.notify_all();
        }
        wakers.into_iter().for_each(Waker::wake);
        true
    }

    fn spin(&self) {
        crate::sync::spin(SPIN, || true, || self.is_set.load(SeqCst).then_some(()));
    }

    pub(crate) fn get(&self) -> Option<Outcome> {
        lock(&self.slot).outcome.clone()
    }

    /// Blocks until the outcome is set.
    pub(crate) fn wait(&self) -> Outcome {
        self.spin();
        let mut slot = lock(&self.slot);
        loop {
            if let Some(outcome) = &slot.outcome {
                return outcome.clone();
            }
            slot.blocked += 1;
            slot = crate::sync::wait(&self.cv, slot);
            slot.blocked -= 1;
        }
    }

    /// Blocks until the outcome is set or `timeout` passes ([`Error::TimedOut`]).
    pub(crate) fn wait_timeout(&self, timeout: Duration) -> Outcome {
        let deadline = Instant::now().checked_add(timeout);
        let mut slot = lock(&self.slot);
        loop {
            if let Some(outcome) = &slot.outcome {
                return outcome.clone();
            }
            let Some(deadline) = deadline else {
                slot.blocked += 1;
                slot = crate::sync::wait(&self.cv, slot);
                slot.blocked -= 1;
                continue;
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::TimedOut);
            }
            slot.blocked += 1;
            slot = self
                .cv
                .wait_timeout(slot, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
            slot.blocked -= 1;
        }
    }

    #[cfg(any(feature = "tokio", test))]
    pub(crate) fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut slot = lock(&self.slot);
        if let Some(outcome) = &slot.outcome {
            return Poll::Ready(outcome.clone());
        }
        if !slot.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            slot.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A future that resolves to the outcome of a [`Waiter`]. Dropping it cancels the wait
/// and leaves the waiter intact for others.
#[cfg(any(feature = "tokio", test))]
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub(crate) struct WaitFuture {
    pub(crate) waiter: Arc<Waiter>,
}

#[cfg(any(feature = "tokio", test))]
impl std::future::Future for WaitFuture {
    type Output = Outcome;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        self.waiter.poll_wait(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ported from internal/streamcache/cache_test.go: TestWaiter
    #[test]
    fn a_set_error_is_what_wait_returns_and_later_sets_are_ignored() {
        let w = Waiter::default();
        assert!(w.set(Err(Error::Panic("boom".into()))));
        assert!(!w.set(Ok(())));
        let err = w.wait().unwrap_err();
        assert_eq!(err.to_string(), "panic: boom");
        assert_eq!(w.wait().unwrap_err().to_string(), "panic: boom");
    }

    // ported from internal/streamcache/cache_test.go: TestWaiter_cancel
    #[test]
    fn a_timed_out_wait_reports_timeout_and_leaves_the_cell_intact() {
        let w = Arc::new(Waiter::default());
        let bg = {
            let w = Arc::clone(&w);
            std::thread::spawn(move || w.wait_timeout(Duration::from_millis(1)))
        };
        assert!(matches!(bg.join().unwrap(), Err(Error::TimedOut)));
        w.set(Ok(()));
        assert!(w.wait_timeout(Duration::from_secs(3600)).is_ok());
    }

    #[tokio::test]
    async fn a_cancelled_async_wait_leaves_the_cell_for_others() {
        let w = Arc::new(Waiter::default());
        let cancelled = tokio::time::timeout(
            Duration::from_millis(1),
            WaitFuture {
                waiter: Arc::clone(&w),
            },
        )
        .await;
        assert!(
            cancelled.is_err(),
            "nothing was set, so the wait was cancelled"
        );
        let setter = {
            let w = Arc::clone(&w);
            tokio::spawn(async move { w.set(Err(Error::ReadersGone)) })
        };
        let out = WaitFuture { waiter: w }.await;
        assert!(setter.await.unwrap());
        assert!(matches!(out, Err(Error::ReadersGone)));
    }
}
