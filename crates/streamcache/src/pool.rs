//! The producer threads.
//!
//! Starting a thread costs tens of microseconds, more than a whole small cache miss
//! should, so producers run on a pool of threads that are kept for a while when idle.
//! Every job gets a thread at once: a new one if none is idle. Producers may run for
//! minutes (a `git pack-objects`), so queueing a job behind another would be wrong.
//! Idle threads exit after [`IDLE`]; the pool holds no thread when nothing happens.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::Duration;

use crate::sync::{lock, Mutex};

/// How long an idle producer thread waits for another job before it exits.
pub(crate) const IDLE: Duration = Duration::from_secs(5);

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Debug, Default)]
struct Pool {
    /// Idle threads, each waiting on its own channel; the most recent last.
    idle: Mutex<Vec<(u64, mpsc::Sender<Job>)>>,
    next_id: std::sync::atomic::AtomicU64,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

/// Runs `job` on a producer thread: an idle one, or a new one.
pub(crate) fn run(job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    pool().run(Box::new(job))
}

impl Pool {
    fn run(&'static self, job: Job) -> std::io::Result<()> {
        let pool = self;
        let mut job = job;
        loop {
            let Some((_, worker)) = lock(&pool.idle).pop() else {
                break;
            };
            // A send fails only if that thread has just exited; try the next one.
            match worker.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(returned)) => job = returned,
            }
        }
        let id = pool
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::thread::Builder::new()
            .name("streamcache-producer".into())
            .spawn(move || work(pool, id, job))
            .map(drop)
    }
}

fn work(pool: &'static Pool, id: u64, first: Job) {
    let (sender, jobs) = mpsc::channel::<Job>();
    let mut job = first;
    loop {
        job();
        lock(&pool.idle).push((id, sender.clone()));
        if let Some(next) = spin_for_job(&jobs) {
            job = next;
            continue;
        }
        job = match jobs.recv_timeout(IDLE) {
            Ok(next) => next,
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                let mut idle = lock(&pool.idle);
                match idle.iter().position(|(i, _)| *i == id) {
                    Some(at) => {
                        idle.swap_remove(at);
                        return;
                    }
                    // Someone took this thread off the idle list: a job is on its way.
                    None => {
                        drop(idle);
                        match jobs.recv() {
                            Ok(next) => next,
                            Err(_) => return,
                        }
                    }
                }
            }
        };
    }
}

/// How long a thread that just finished a job looks for the next one before it sleeps.
/// Misses of small entries come one after another faster than that, and a sleeping
/// thread costs a wake-up per miss (on a virtual machine, waking a halted virtual CPU):
/// two context switches of about 30 µs per miss in all.
const SPIN: Duration = Duration::from_micros(50);

fn spin_for_job(jobs: &mpsc::Receiver<Job>) -> Option<Job> {
    let open = std::cell::Cell::new(true);
    crate::sync::spin(
        SPIN,
        || open.get(),
        || match jobs.try_recv() {
            Ok(job) => Some(job),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => {
                open.set(false);
                None
            }
        },
    )
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn every_job_runs_at_once_even_when_others_are_still_running() {
        // 8 jobs that can only finish together: they would deadlock if any waited for
        // a thread held by another.
        let pool: &'static Pool = Box::leak(Box::default());
        let barrier = Arc::new(Barrier::new(9));
        for _ in 0..8 {
            let barrier = Arc::clone(&barrier);
            pool.run(Box::new(move || {
                barrier.wait();
            }))
            .unwrap();
        }
        barrier.wait();
    }

    #[test]
    fn an_idle_thread_is_reused_for_the_next_job() {
        let pool: &'static Pool = Box::leak(Box::default());
        let (tx, rx) = mpsc::channel();
        let mut seen = Vec::new();
        for _ in 0..5 {
            let tx = tx.clone();
            pool.run(Box::new(move || {
                tx.send(std::thread::current().id()).unwrap()
            }))
            .unwrap();
            seen.push(rx.recv().unwrap());
            // Wait until the thread is back on the idle list (an event, not a sleep).
            while lock(&pool.idle).is_empty() {
                std::thread::yield_now();
            }
        }
        assert!(
            seen.iter().all(|id| *id == seen[0]),
            "one idle thread served every sequential job: {seen:?}"
        );
        assert_eq!(lock(&pool.idle).len(), 1);
    }
}
