//! Synchronisation primitives, swapped for loom's under `--cfg loom` so that the
//! coordination core can be model-checked. Lock poisoning is handled here, once: a
//! panic while holding one of our locks cannot leave the protected state half-updated
//! (every critical section is a handful of integer updates), so we keep going.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning (see the module docs).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits on `cv` for at most `timeout`, ignoring poisoning. Under loom, time does not
/// exist: the wait is an ordinary one (which may wake spuriously, as any wait may).
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: std::time::Duration,
) -> MutexGuard<'a, T> {
    #[cfg(loom)]
    {
        let _ = timeout;
        wait(cv, guard)
    }
    #[cfg(not(loom))]
    {
        cv.wait_timeout(guard, timeout)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|poisoned| poisoned.into_inner().0)
    }
}

/// Waits on `cv`, ignoring poisoning.
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard)
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The number of cores this process may use, read once.
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Looks for `ready` to say yes for up to `limit`, while `keep_going` says so, instead of
/// sleeping at once: a sleep and wake-up costs tens of microseconds here (on a virtual
/// machine, halting and waking a virtual CPU), more than many waits last. Never spins on
/// one core (the awaited thread needs it) nor under loom (time does not exist there).
pub(crate) fn spin<T>(
    limit: std::time::Duration,
    keep_going: impl Fn() -> bool,
    mut ready: impl FnMut() -> Option<T>,
) -> Option<T> {
    if cfg!(loom) || cores() < 2 {
        return None;
    }
    let start = std::time::Instant::now();
    while start.elapsed() < limit && keep_going() {
        for _ in 0..64 {
            std::hint::spin_loop();
            if let Some(r) = ready() {
                return Some(r);
            }
        }
    }
    None
}
