//! A fork-join pool for the CPU kernels, built for the many small parallel steps of decoding
//! (210 matrix products per token for a 30-layer model, tens of microseconds each).
//!
//! rayon parks idle workers; waking them costs more than a decode-sized product, and two
//! threads ran slower than one. Like ggml's thread pool, these workers spin on a job counter
//! for a while (about a millisecond) before they sleep, so back-to-back jobs start at once.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

type Job<'a> = dyn Fn(usize) + Sync + 'a;

struct Shared {
    /// Bumped once per job; workers run the job of each new value.
    epoch: AtomicUsize,
    /// Workers done with the current job.
    done: AtomicUsize,
    /// The current job: a pointer to a `&Job` on the caller's stack, valid until `done`
    /// reaches the worker count.
    job: AtomicPtr<&'static Job<'static>>,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    quit: AtomicUsize,
}

pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time (callers on several threads queue here).
    running: Mutex<()>,
}

const SPINS: u32 = 1 << 17;

impl Pool {
    /// A pool of `threads` (the caller counts as one).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            quit: AtomicUsize::new(0),
        });
        let workers = (1..threads)
            .map(|idx| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("kiln-cpu-{idx}"))
                    .spawn(move || worker(&s, idx))
                    .expect("spawning a kernel thread")
            })
            .collect();
        Pool {
            shared,
            threads,
            workers,
            running: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job(i)` for every thread index `i` in `0..threads()`, the caller taking 0, and
    /// returns when all are done.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            job(0);
            return;
        }
        let _one = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let job_ref: &Job<'_> = job;
        // SAFETY: the lifetime is erased only for the duration of this call: workers read the
        // pointer after the epoch bump below and stop using it before incrementing `done`,
        // and this function does not return before `done` counts every worker.
        let erased: &'static Job<'static> = unsafe { std::mem::transmute(job_ref) };
        let slot = &erased as *const &'static Job<'static> as *mut &'static Job<'static>;
        s.done.store(0, Ordering::Relaxed);
        s.job.store(slot, Ordering::Release);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let caller = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(0)));
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < self.threads - 1 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Err(p) = caller {
            std::panic::resume_unwind(p);
        }
    }
}

fn worker(s: &Shared, idx: usize) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0u32;
        let epoch = loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                break e;
            }
            if s.quit.load(Ordering::Relaxed) != 0 {
                return;
            }
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
            } else {
                let g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                let g = s
                    .wake
                    .wait_while(g, |_| {
                        s.epoch.load(Ordering::SeqCst) == seen
                            && s.quit.load(Ordering::Relaxed) == 0
                    })
                    .unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_sub(1, Ordering::AcqRel);
                drop(g);
                spins = 0;
            }
        };
        seen = epoch;
        let slot = s.job.load(Ordering::Acquire);
        // SAFETY: `run` published a pointer to a live `&Job` before bumping the epoch and keeps
        // it alive until this worker increments `done`.
        let job: &Job<'_> = unsafe { *slot };
        // A panicking job must still count as done, or the caller would wait forever; the
        // caller's own share reports kernel bugs.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(idx)));
        s.done.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.quit.store(1, Ordering::Relaxed);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

static THREADS: AtomicUsize = AtomicUsize::new(0);
static POOL: OnceLock<Pool> = OnceLock::new();

/// Sets the kernel thread count before first use (`--threads`); later calls have no effect.
/// Returns whether it took effect.
pub fn set_threads(n: usize) -> bool {
    THREADS.store(n.max(1), Ordering::Relaxed);
    POOL.get().is_none_or(|p| p.threads() == n.max(1))
}

/// The kernels' pool: `set_threads`, else `KILN_THREADS`, else every available core.
pub fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let n = match THREADS.load(Ordering::Relaxed) {
            0 => std::env::var("KILN_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &usize| n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            n => n,
        };
        Pool::new(n)
    })
}

/// Splits `0..n` into `parts` contiguous ranges of nearly equal size.
pub fn share(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let per = n / parts;
    let extra = n % parts;
    let start = i * per + i.min(extra);
    start..start + per + usize::from(i < extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_per_job() {
        let pool = Pool::new(3);
        let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..1000 {
            pool.run(&|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1000));
    }

    #[test]
    fn shares_cover_the_range() {
        let mut all = Vec::new();
        for i in 0..3 {
            all.extend(share(10, 3, i));
        }
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }
}
