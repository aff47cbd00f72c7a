//! A position that only goes up, with subscribers and a sticky "done" state.
//!
//! This is plain data: no locking, no waking. The pipe keeps two cursors under its lock
//! and turns "a subscriber would be notified" into condition-variable and waker
//! notifications. Keeping the rules here, free of I/O and threads, lets them be tested
//! one by one and model-checked together with the pipe.

/// A monotonic counter with subscribers.
///
/// * Setting a value at or below the current one changes nothing and notifies nobody.
/// * Setting a larger value bumps a version; every subscriber whose last seen version is
///   older has a pending notification. Several changes coalesce into one.
/// * The cursor becomes *done* the first time an unsubscribe leaves it with no
///   subscribers, and stays done forever, even if new subscribers arrive later.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    position: u64,
    version: u64,
    subscribers: usize,
    done: bool,
}

/// One subscriber's view of a [`Cursor`]. Consumed by [`Cursor::unsubscribe`], so a
/// subscriber cannot leave twice.
#[derive(Debug)]
#[must_use = "a subscription must be handed back to Cursor::unsubscribe"]
pub(crate) struct Subscription {
    #[cfg_attr(not(test), allow(dead_code))]
    seen: u64,
}

impl Cursor {
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// Raises the position to `position` if it is larger. Returns whether anyone is
    /// subscribed to hear about it (the caller then wakes them).
    pub(crate) fn set(&mut self, position: u64) -> bool {
        if position <= self.position {
            return false;
        }
        self.position = position;
        self.version += 1;
        self.subscribers > 0
    }

    pub(crate) fn subscribe(&mut self) -> Subscription {
        self.subscribers += 1;
        Subscription { seen: self.version }
    }

    /// Removes a subscriber. Returns true if this made the cursor done.
    pub(crate) fn unsubscribe(&mut self, subscription: Subscription) -> bool {
        drop(subscription);
        self.subscribers = self.subscribers.saturating_sub(1);
        self.mark_done_if_empty()
    }

    /// An unsubscribe by someone who never subscribed: it still makes a cursor without
    /// subscribers done. Returns true if this made the cursor done.
    pub(crate) fn unsubscribe_absent(&mut self) -> bool {
        self.mark_done_if_empty()
    }

    fn mark_done_if_empty(&mut self) -> bool {
        if self.subscribers == 0 && !self.done {
            self.done = true;
            return true;
        }
        false
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    #[cfg(test)]
    /// Takes the pending notification of `subscription`, if the position moved since it
    /// last looked.
    pub(crate) fn take_notification(&self, subscription: &mut Subscription) -> bool {
        let pending = self.version > subscription.seen;
        subscription.seen = self.version;
        pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ported from internal/streamcache/cursor_test.go: TestCursor_notify
    #[test]
    fn setting_a_larger_value_notifies_and_a_smaller_one_does_not() {
        let mut c = Cursor::default();
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
        let mut c = Cursor::default();
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
        assert_eq!(c.subscribers, 0);
        assert!(c.is_done());
    }

    // ported from internal/streamcache/cursor_test.go: TestCursor_IsDone
    #[test]
    fn a_cursor_is_done_only_after_its_last_subscriber_leaves() {
        let mut c = Cursor::default();
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
        let mut c = Cursor::default();
        let s = c.subscribe();
        assert!(!c.unsubscribe_absent(), "a subscriber is still there");
        assert!(c.unsubscribe(s));
        let mut empty = Cursor::default();
        assert!(empty.unsubscribe_absent());
        assert!(empty.is_done());
    }
}
