//! The parallel I/O pipeline shared by the overwrite and the read-back verification.
//!
//! A pass is a sequence of numbered jobs (one aligned chunk each). `queue_depth` worker threads
//! take jobs in increasing order from one atomic counter; each owns one aligned buffer, so
//! memory is `queue_depth` buffers whatever the target's size. A job is CPU work (generating
//! or comparing the pattern, under one of `cpu_threads` permits) and one blocking positioned
//! I/O (`pwrite`/`pread` on the shared descriptor, which is safe from several threads on Linux
//! and macOS alike). `queue_depth` I/Os are therefore in flight at once, which is what an SSD
//! needs to reach its rate; threads with blocking I/O were chosen over io_uring because the
//! same code runs on macOS, and measured on Linux they reach `fio`'s libaio rate (BENCHMARKS.md).
//!
//! Jobs complete out of order. The calling thread (the coordinator) receives completions and
//! keeps the **completed prefix**: the number of jobs `0..n` that have all completed. Only that
//! prefix is handed to `on_prefix`, which is where the overwrite flushes and journals a
//! checkpoint: a checkpoint never covers a chunk that is still in flight or that failed.
//!
//! A worker never starts a job more than `window` jobs beyond the completed prefix: one slow
//! I/O then holds the others back after `window` jobs instead of letting them run ahead without
//! bound, which bounds both the bookkeeping and what a crash makes the overwrite redo.
//!
//! On the first failure every worker stops taking jobs; jobs already taken finish. Because jobs
//! are taken in order, every job numbered below a failed one was taken and finishes, so the
//! error returned is the one of the lowest-numbered failing job: deterministic whatever the
//! timing (the overwrite reports the first failing offset, verification the first mismatch).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Condvar, Mutex, PoisonError};

use crate::error::EraseError;

/// How many I/Os are in flight and how many threads may compute at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parallelism {
    /// I/Os in flight (= I/O threads = buffers).
    pub queue_depth: usize,
    /// Threads generating or comparing the pattern at once.
    pub cpu_threads: usize,
}

impl Parallelism {
    /// One I/O and one thread at a time: the sequential baseline.
    pub const SERIAL: Parallelism = Parallelism {
        queue_depth: 1,
        cpu_threads: 1,
    };
}

/// A counting semaphore bounding the threads that compute at once.
pub(crate) struct CpuPermits {
    free: Mutex<usize>,
    returned: Condvar,
}

impl CpuPermits {
    fn new(permits: usize) -> Self {
        CpuPermits {
            free: Mutex::new(permits.max(1)),
            returned: Condvar::new(),
        }
    }

    /// Runs `work` while holding a permit.
    pub(crate) fn run<R>(&self, work: impl FnOnce() -> R) -> R {
        {
            let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            while *free == 0 {
                free = self
                    .returned
                    .wait(free)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            *free -= 1;
        }
        let result = work();
        *self.free.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.returned.notify_one();
        result
    }
}

/// What a worker sends back: the job number and its outcome (bytes done, or the error).
type Completion = (u64, Result<u64, EraseError>);

/// Runs jobs `0..jobs` on `parallelism.queue_depth` threads.
///
/// - `new_state` makes one worker's private state (its buffers), once per worker;
/// - `work(state, permits, job)` does job `job` and returns the bytes it covered;
/// - `on_done(bytes)` runs on the calling thread after each completion (progress);
/// - `on_prefix(n)` runs on the calling thread each time the completed prefix grows to `n` jobs,
///   and may fail (a failed checkpoint stops the pass);
/// - no job numbered `prefix + window` or more is started (`window` is at least `queue_depth`).
pub(crate) fn run_jobs<S, W>(
    jobs: u64,
    parallelism: Parallelism,
    window: u64,
    new_state: impl Fn() -> S + Sync,
    work: W,
    on_done: &mut dyn FnMut(u64),
    on_prefix: &mut dyn FnMut(u64) -> Result<(), EraseError>,
) -> Result<(), EraseError>
where
    W: Fn(&mut S, &CpuPermits, u64) -> Result<u64, EraseError> + Sync,
{
    if jobs == 0 {
        return Ok(());
    }
    let workers = (parallelism.queue_depth.max(1) as u64).min(jobs) as usize;
    let permits = CpuPermits::new(parallelism.cpu_threads);
    let window = window.max(workers as u64);
    let prefix = Prefix::default();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (done_tx, done_rx) = channel::<Completion>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let (next, stop, permits, work, new_state, prefix) =
                (&next, &stop, &permits, &work, &new_state, &prefix);
            scope.spawn(move || {
                let mut state = new_state();
                while !stop.load(Ordering::Acquire) {
                    let job = next.fetch_add(1, Ordering::AcqRel);
                    if job >= jobs || !prefix.wait_until_within(job, window, stop) {
                        break;
                    }
                    let outcome = work(&mut state, permits, job);
                    if outcome.is_err() {
                        stop.store(true, Ordering::Release);
                    }
                    if done_tx.send((job, outcome)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let result = coordinate(jobs, &done_rx, &stop, &prefix, on_done, on_prefix);
        // Make the workers stop whatever the outcome (waking those held by the window), then
        // drain what they still send; the scope joins them.
        stop.store(true, Ordering::Release);
        prefix.wake_all();
        let mut first_failure: Option<(u64, EraseError)> = None;
        let mut consider = |job: u64, err: EraseError| {
            if first_failure.as_ref().is_none_or(|(at, _)| job < *at) {
                first_failure = Some((job, err));
            }
        };
        let result = match result {
            Ok(()) => Ok(()),
            Err(Stop::Job(job, err)) => {
                consider(job, *err);
                Err(())
            }
            Err(Stop::Coordinator(err)) => return Err(*err),
        };
        for (job, outcome) in done_rx.iter() {
            if let Err(err) = outcome {
                consider(job, err);
            }
        }
        match (result, first_failure) {
            (Ok(()), _) => Ok(()),
            (Err(()), Some((_, err))) => Err(err),
            (Err(()), None) => Err(EraseError::Internal {
                detail: "an I/O worker failed without an error".into(),
            }),
        }
    })
}

/// The completed prefix as the workers see it, to hold them within the window.
#[derive(Default)]
struct Prefix {
    jobs: Mutex<u64>,
    grew: Condvar,
}

impl Prefix {
    fn publish(&self, jobs: u64) {
        *self.jobs.lock().unwrap_or_else(PoisonError::into_inner) = jobs;
        self.grew.notify_all();
    }

    fn wake_all(&self) {
        let _guard = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        self.grew.notify_all();
    }

    /// Waits until `job < prefix + window`; false when the pass is stopping instead.
    fn wait_until_within(&self, job: u64, window: u64, stop: &AtomicBool) -> bool {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if stop.load(Ordering::Acquire) {
                return false;
            }
            if job < *jobs + window {
                return true;
            }
            jobs = self.grew.wait(jobs).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Why the coordinator stopped early.
enum Stop {
    /// Job `n` failed.
    Job(u64, Box<EraseError>),
    /// `on_prefix` failed, or the workers vanished.
    Coordinator(Box<EraseError>),
}

fn coordinate(
    jobs: u64,
    done_rx: &std::sync::mpsc::Receiver<Completion>,
    stop: &AtomicBool,
    shared_prefix: &Prefix,
    on_done: &mut dyn FnMut(u64),
    on_prefix: &mut dyn FnMut(u64) -> Result<(), EraseError>,
) -> Result<(), Stop> {
    let mut prefix = 0u64;
    // Completed jobs beyond the prefix (at most the jobs overtaking a slow one).
    let mut ahead: BTreeSet<u64> = BTreeSet::new();
    while prefix < jobs {
        let Ok((job, outcome)) = done_rx.recv() else {
            return Err(Stop::Coordinator(Box::new(EraseError::Internal {
                detail: "the I/O workers stopped before the pass was complete".into(),
            })));
        };
        let bytes = outcome.map_err(|err| Stop::Job(job, Box::new(err)))?;
        on_done(bytes);
        ahead.insert(job);
        let before = prefix;
        while ahead.remove(&prefix) {
            prefix += 1;
        }
        if prefix > before {
            // Published first, so that workers go on while `on_prefix` flushes.
            shared_prefix.publish(prefix);
            if let Err(err) = on_prefix(prefix) {
                stop.store(true, Ordering::Release);
                return Err(Stop::Coordinator(Box::new(err)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn par(queue_depth: usize) -> Parallelism {
        Parallelism {
            queue_depth,
            cpu_threads: 2,
        }
    }

    #[test]
    fn the_prefix_never_covers_a_job_that_has_not_completed() {
        // Job 0 completes last: the prefix must stay 0 until it does, then jump to all.
        let completed: Vec<AtomicBool> = (0..8).map(|_| AtomicBool::new(false)).collect();
        let finished_others = AtomicUsize::new(0);
        let mut prefixes = Vec::new();
        run_jobs(
            8,
            par(8),
            8,
            || (),
            |_, _, job| {
                if job == 0 {
                    while finished_others.load(Ordering::Acquire) < 7 {
                        std::thread::yield_now();
                    }
                } else {
                    finished_others.fetch_add(1, Ordering::AcqRel);
                }
                completed[job as usize].store(true, Ordering::Release);
                Ok(1)
            },
            &mut |_| {},
            &mut |prefix| {
                for job in 0..prefix {
                    assert!(completed[job as usize].load(Ordering::Acquire), "job {job}");
                }
                prefixes.push(prefix);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(prefixes, vec![8]);
    }

    #[test]
    fn the_lowest_failing_job_is_reported_and_no_job_starts_after_a_failure() {
        let started = AtomicUsize::new(0);
        let err = run_jobs(
            1000,
            par(4),
            1000,
            || (),
            |_, _, job| {
                started.fetch_add(1, Ordering::AcqRel);
                if job == 20 || job == 21 {
                    return Err(EraseError::Internal {
                        detail: format!("job {job} failed"),
                    });
                }
                Ok(1)
            },
            &mut |_| {},
            &mut |_| Ok(()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("job 20 failed"), "{err}");
        // Jobs 0..=21 ran; at most the other workers' jobs in flight ran after.
        assert!(started.load(Ordering::Acquire) <= 22 + 4, "{started:?}");
    }

    #[test]
    fn a_failing_prefix_callback_stops_the_pass() {
        let started = AtomicUsize::new(0);
        let err = run_jobs(
            10_000,
            par(3),
            10_000,
            || (),
            |_, _, _| {
                started.fetch_add(1, Ordering::AcqRel);
                std::thread::sleep(std::time::Duration::from_micros(200));
                Ok(1)
            },
            &mut |_| {},
            &mut |prefix| {
                if prefix >= 5 {
                    Err(EraseError::Internal {
                        detail: "journal full".into(),
                    })
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("journal full"));
        assert!(started.load(Ordering::Acquire) < 10_000);
    }

    #[test]
    fn cpu_permits_bound_concurrent_work() {
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let mut total = 0;
        run_jobs(
            64,
            Parallelism {
                queue_depth: 8,
                cpu_threads: 2,
            },
            64,
            || (),
            |_, permits, _| {
                permits.run(|| {
                    let now = inside.fetch_add(1, Ordering::AcqRel) + 1;
                    most.fetch_max(now, Ordering::AcqRel);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    inside.fetch_sub(1, Ordering::AcqRel);
                });
                Ok(3)
            },
            &mut |bytes| total += bytes,
            &mut |_| Ok(()),
        )
        .unwrap();
        assert_eq!(total, 64 * 3);
        assert!(most.load(Ordering::Acquire) <= 2);
    }

    #[test]
    fn no_job_starts_more_than_the_window_beyond_the_completed_prefix() {
        // Job 0 is slow: the others may run at most `window` jobs ahead of it.
        let released = AtomicBool::new(false);
        let highest_started = AtomicU64::new(0);
        let started_while_held = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(200));
                released.store(true, Ordering::Release);
            });
            run_jobs(
                100,
                par(4),
                6,
                || (),
                |_, _, job| {
                    highest_started.fetch_max(job, Ordering::AcqRel);
                    if job == 0 {
                        while !released.load(Ordering::Acquire) {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                    } else if !released.load(Ordering::Acquire) {
                        started_while_held.fetch_add(1, Ordering::AcqRel);
                    }
                    Ok(1)
                },
                &mut |_| {},
                &mut |_| Ok(()),
            )
            .unwrap();
        });
        // While job 0 was held, only jobs 1..6 could start.
        assert_eq!(started_while_held.load(Ordering::Acquire), 5);
        assert_eq!(highest_started.load(Ordering::Acquire), 99);
    }
}
