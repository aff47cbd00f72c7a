//! A position that only goes up, with subscribers and a sticky "done" state.
//!
//! The position is an atomic, so the data path reads and raises it without a lock.
//! Subscribing and unsubscribing are rare; the pipe does them under its own lock, which
//! keeps them atomic with the decisions that depend on them ("all readers left"). The
//! cursor wakes nobody: [`Cursor::raise`] reports whether someone flagged that they
//! parked, and the pipe turns that into condition-variable and waker notifications.
//!
//! The reference's cursor kept a notification per subscriber; ours needs none (parked
//! waiters re-check the position). Only the ported reference tests still look at one,
//! through `Cursor::set` and `Cursor::take_notification`, which exist in test builds
//! alone.

use std::sync::atomic::Ordering::SeqCst;

use crate::sync::{AtomicBool, AtomicU64, AtomicUsize};

/// A monotonic counter with subscribers.
///
/// * Raising it to a value at or below the current one changes nothing.
/// * The cursor becomes *done* the first time an unsubscribe leaves it with no
///   subscribers, and stays done forever, even if new subscribers arrive later.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    /// The position in the low 63 bits; bit 63 is the "someone parked" flag (see
    /// [`Cursor::raise`]). One word, so raising the position and raising the flag are
    /// read-modify-writes of one location and cannot miss each other.
    word: AtomicU64,
    subscribers: AtomicUsize,
    done: AtomicBool,
}

const PARKED: u64 = 1 << 63;

/// What [`Cursor::raise`] did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Raised {
    /// The position went up.
    pub(crate) advanced: bool,
    /// The parked flag was up before the call.
    pub(crate) parked: bool,
}

/// One subscriber's view of a [`Cursor`]. Consumed by [`Cursor::unsubscribe`], so a
/// subscriber cannot leave twice.
#[derive(Debug)]
#[must_use = "a subscription must be handed back to Cursor::unsubscribe"]
pub(crate) struct Subscription {
    /// The position this subscriber last looked at.
    #[cfg_attr(any(not(test), loom), allow(dead_code))]
    seen: u64,
}

impl Cursor {
    pub(crate) fn position(&self) -> u64 {
        self.word.load(SeqCst) & !PARKED
    }

    /// Raises the position to `position` if it is larger. Returns whether anyone is
    /// subscribed to hear about it (the caller then wakes them).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn set(&self, position: u64) -> bool {
        self.raise(position, false).advanced && self.subscribers.load(SeqCst) > 0
    }

    /// Raises the position to `position` if it is larger, and says whether the parked
    /// flag was up. With `clear`, an advance also lowers the flag (the caller then wakes
    /// the one thread that parked).
    pub(crate) fn raise(&self, position: u64, clear: bool) -> Raised {
        let position = position & !PARKED;
        let mut current = self.word.load(SeqCst);
        loop {
            if position <= current & !PARKED {
                return Raised {
                    advanced: false,
                    parked: current & PARKED != 0,
                };
            }
            let flag = if clear { 0 } else { current & PARKED };
            match self
                .word
                .compare_exchange_weak(current, position | flag, SeqCst, SeqCst)
            {
                Ok(_) => {
                    return Raised {
                        advanced: true,
                        parked: current & PARKED != 0,
                    }
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Raises the parked flag and returns the position it was raised at. A waiter calls
    /// this, then parks only if that position still gives it nothing to do; whoever
    /// raises the position after this sees the flag.
    pub(crate) fn flag_parked(&self) -> u64 {
        self.word.fetch_or(PARKED, SeqCst) & !PARKED
    }

    /// Lowers the parked flag (nobody is parked any more).
    pub(crate) fn clear_parked(&self) {
        self.word.fetch_and(!PARKED, SeqCst);
    }

    /// Adds a subscriber. Callers serialise subscription changes (the pipe's lock).
    pub(crate) fn subscribe(&self) -> Subscription {
        self.subscribers.fetch_add(1, SeqCst);
        Subscription {
            seen: self.position(),
        }
    }

    /// Removes a subscriber. Returns true if this made the cursor done.
    pub(crate) fn unsubscribe(&self, subscription: Subscription) -> bool {
        drop(subscription);
        let _ = self
            .subscribers
            .fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1)));
        self.mark_done_if_empty()
    }

    /// An unsubscribe by someone who never subscribed: it still makes a cursor without
    /// subscribers done. Returns true if this made the cursor done.
    pub(crate) fn unsubscribe_absent(&self) -> bool {
        self.mark_done_if_empty()
    }

    fn mark_done_if_empty(&self) -> bool {
        self.subscribers.load(SeqCst) == 0 && !self.done.swap(true, SeqCst)
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done.load(SeqCst)
    }

    #[cfg(all(test, not(loom)))]
    /// Takes the pending notification of `subscription`, if the position moved since it
    /// last looked.
    pub(crate) fn take_notification(&self, subscription: &mut Subscription) -> bool {
        let now = self.position();
        let pending = now > subscription.seen;
        subscription.seen = now;
        pending
    }

    pub(crate) fn subscriber_count(&self) -> usize {
        self.subscribers.load(SeqCst)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    // ported from internal/streamcache/cursor_test.go: TestCursor_notify
    #[test]
    fn setting_a_larger_value_notifies_and_a_smaller_one_does_not() {
        let c = Cursor::default();
        let mut s = c.subscribe();
        assert!(!c.take_notification(&mut s));
        assert_eq!(c.position(), 0);
        assert!(!c.set(0));
        assert!(!c.take_notification(&mut s));
        assert_eq!(c.position(), 0);
        assert!(c.set(1));
        assert!(c.take_notification(&mut s));
        assert_eq!(c.position(), 1);
        // Coalescing: two changes, one pending notification.
        c.set(2);
        c.set(3);
        assert!(c.take_notification(&mut s));
        assert!(!c.take_notification(&mut s));
        let _ = c.unsubscribe(s);
    }

    // ported from internal/streamcache/cursor_test.go: TestCursor_unsubscribe
    #[test]
    fn unsubscribed_readers_are_not_notified_and_the_last_one_makes_it_done() {
        let c = Cursor::default();
        let mut s1 = c.subscribe();
        let mut s2 = c.subscribe();
        assert!(!c.is_done());
        assert!(c.set(1));
        assert!(c.take_notification(&mut s1));
        assert!(c.take_notification(&mut s2));
        assert!(!c.unsubscribe(s2));
        assert!(!c.is_done());
        assert!(c.set(2), "one subscriber is left to notify");
        assert!(c.take_notification(&mut s1));
        assert!(c.unsubscribe(s1));
        assert!(c.is_done());
        assert!(!c.set(3), "nobody is left to notify");
        assert_eq!(c.position(), 3);
    }

    // ported from internal/streamcache/cursor_test.go: TestCursor_concurrency
    #[test]
    fn many_threads_subscribing_and_setting_leave_a_consistent_cursor() {
        let c = std::sync::Arc::new(std::sync::Mutex::new(Cursor::default()));
        let threads: Vec<_> = (1..=1000u64)
            .map(|i| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || {
                    let s = c.lock().unwrap().subscribe();
                    c.lock().unwrap().set(i);
                    assert!(c.lock().unwrap().position() >= i);
                    let _ = c.lock().unwrap().unsubscribe(s);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = c.lock().unwrap();
        assert_eq!(c.position(), 1000);
        assert_eq!(c.subscriber_count(), 0);
        assert!(c.is_done());
    }

    #[test]
    fn raising_keeps_or_clears_the_parked_flag_and_reports_it() {
        let c = Cursor::default();
        let r = c.raise(5, false);
        assert!(r.advanced && !r.parked);
        assert_eq!(
            c.flag_parked(),
            5,
            "the flag is raised at the current position"
        );
        let r = c.raise(7, false);
        assert!(r.advanced && r.parked);
        assert_eq!(c.position(), 7, "the flag never shows in the position");
        let r = c.raise(6, true);
        assert!(!r.advanced && r.parked, "no advance, so the flag stays");
        let r = c.raise(8, true);
        assert!(r.advanced && r.parked);
        assert!(!c.raise(9, false).parked, "the advance at 8 lowered it");
        c.flag_parked();
        c.clear_parked();
        assert!(!c.raise(10, false).parked);
        assert_eq!(c.position(), 10);
    }

    // ported from internal/streamcache/cursor_test.go: TestCursor_IsDone
    #[test]
    fn a_cursor_is_done_only_after_its_last_subscriber_leaves() {
        let c = Cursor::default();
        assert!(!c.is_done());
        let s = c.subscribe();
        assert!(!c.is_done());
        assert!(c.unsubscribe(s));
        assert!(c.is_done());
        let s = c.subscribe();
        assert!(c.is_done(), "done is sticky");
        assert!(!c.unsubscribe(s));
    }

    #[test]
    fn unsubscribing_nobody_makes_an_empty_cursor_done() {
        let c = Cursor::default();
        let s = c.subscribe();
        assert!(!c.unsubscribe_absent(), "a subscriber is still there");
        assert!(c.unsubscribe(s));
        let empty = Cursor::default();
        assert!(empty.unsubscribe_absent());
        assert!(empty.is_done());
    }
}
