//! The min-occurrences rule: a key is cached only once it has been asked for more than
//! `n` times within about two `max_age` periods, so that one-off keys never cost a disk
//! write (at GitLab, about three entries in four were never read twice).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::sync::{lock, Mutex};

/// Occurrence counters in two generations. A key seen at least once per rotation
/// period keeps its count; a key not seen for two rotations is forgotten. Memory is
/// bounded by the distinct keys of two periods.
#[derive(Debug)]
pub(crate) struct Admission {
    min_occurrences: u64,
    period: Duration,
    counts: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    old: HashMap<String, u64>,
    new: HashMap<String, u64>,
    last_rotation: Option<Instant>,
}

impl Admission {
    pub(crate) fn new(min_occurrences: u32, period: Duration) -> Admission {
        Admission {
            min_occurrences: u64::from(min_occurrences),
            period,
            counts: Mutex::new(Generations::default()),
        }
    }

    /// Counts one occurrence of `key` and says whether it may use the cache.
    pub(crate) fn admit(&self, key: &str, now: Instant) -> bool {
        self.count(key, now) > self.min_occurrences
    }

    /// Counts one occurrence of `key` at `now` and returns its count.
    pub(crate) fn count(&self, key: &str, now: Instant) -> u64 {
        let mut g = lock(&self.counts);
        let due = match g.last_rotation {
            None => true,
            Some(last) => now.saturating_duration_since(last) > self.period,
        };
        if due {
            g.old = std::mem::take(&mut g.new);
            g.last_rotation = Some(now);
        }
        let carried = g.old.remove(key).unwrap_or(0);
        let count = g.new.entry(key.to_owned()).or_insert(0);
        *count += 1 + carried;
        *count
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        let g = lock(&self.counts);
        g.old.len() + g.new.len()
    }

    #[cfg(test)]
    fn backdate_rotation(&self, by: Duration) {
        let mut g = lock(&self.counts);
        g.last_rotation = g.last_rotation.and_then(|t| t.checked_sub(by));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN_AGE: Duration = Duration::from_secs(3600);

    // ported from internal/streamcache/min_occurrences_test.go: TestMinOccurrences_suppress
    #[test]
    fn with_n_1_the_first_occurrence_is_not_admitted_and_later_ones_are() {
        let a = Admission::new(1, Duration::from_secs(300));
        let now = Instant::now();
        let admitted: Vec<bool> = (0..10).map(|_| a.admit("key", now)).collect();
        assert!(!admitted[0]);
        assert!(admitted[1..].iter().all(|&x| x));
    }

    #[test]
    fn n_0_admits_everything_and_n_5_waits_for_the_sixth() {
        let now = Instant::now();
        let zero = Admission::new(0, MIN_AGE);
        assert!(zero.admit("k", now));
        let five = Admission::new(5, MIN_AGE);
        let admitted: Vec<bool> = (0..7).map(|_| five.admit("k", now)).collect();
        assert_eq!(admitted, [false, false, false, false, false, true, true]);
    }

    // ported from internal/streamcache/min_occurrences_test.go: TestMinOccurrences_manyDifferentCalls
    #[test]
    fn many_distinct_keys_are_all_suppressed() {
        let a = std::sync::Arc::new(Admission::new(1, Duration::from_secs(300)));
        let threads: Vec<_> = (0..1000)
            .map(|i| {
                let a = std::sync::Arc::clone(&a);
                std::thread::spawn(move || a.admit(&format!("key {i}"), Instant::now()))
            })
            .collect();
        for t in threads {
            assert!(!t.join().unwrap());
        }
    }

    // ported from internal/streamcache/min_occurrences_test.go: TestMinOccurrences_forgetOldKeys
    #[test]
    fn keys_not_seen_for_two_rotations_are_forgotten() {
        let a = Admission::new(1, MIN_AGE);
        let now = Instant::now();
        for i in 0..1000 {
            a.count(&format!("old key {i}"), now);
        }
        assert_eq!(a.tracked(), 1000);
        a.backdate_rotation(2 * MIN_AGE);
        a.count("new key", now);
        assert_eq!(a.tracked(), 1001, "the old generation is still held");
        a.backdate_rotation(2 * MIN_AGE);
        a.count("new key", now);
        assert_eq!(a.tracked(), 1);
    }

    // ported from internal/streamcache/min_occurrences_test.go: TestMinOccurrences_keySurvivesRotation
    #[test]
    fn a_frequent_key_survives_rotations_and_an_infrequent_one_does_not() {
        let a = Admission::new(1, MIN_AGE);
        let now = Instant::now();
        a.count("warm up", now);
        for i in 0..1000u64 {
            a.backdate_rotation(2 * MIN_AGE);
            assert_eq!(a.count("frequent key", now), i + 1);
            if i % 3 == 0 {
                assert_eq!(a.count("infrequent key", now), 1);
            }
        }
    }
}
