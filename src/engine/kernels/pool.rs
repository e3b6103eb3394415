//! A small thread pool built for many tiny parallel sections.
//!
//! A decode step runs about 250 parallel sections of a few tens of microseconds each, so the cost of
//! starting one matters more than anything else: workers spin on an epoch counter for a while before
//! parking, and tasks are handed out with one atomic increment each.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// How long an idle worker spins before it parks, in spin-loop iterations (roughly 50–200 µs).
const SPIN_LIMIT: usize = 1 << 16;

type TaskFn<'a> = dyn Fn(usize) + Sync + 'a;

struct Shared {
    epoch: AtomicUsize,
    /// The current section's task function, lifetime-erased, as (data, vtable); valid while
    /// `busy_workers > 0`.
    task_ptr: std::sync::atomic::AtomicPtr<()>,
    task_meta: AtomicUsize,
    n_tasks: AtomicUsize,
    next: AtomicUsize,
    busy_workers: AtomicUsize,
    shutdown: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: the raw task pointer is only dereferenced between a `run` publishing it and every worker
// reporting back, while `run` keeps the closure alive on its stack.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    run_lock: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ThreadPool({} threads)", self.n_threads())
    }
}

/// A fat pointer split in two atomics so workers can read it without a lock.
fn split(f: &TaskFn<'_>) -> (*mut (), usize) {
    let raw: *const TaskFn<'_> = f;
    // SAFETY: a `*const dyn Trait` is two words (data, vtable); transmuting it to two words and back
    // is how the pointer is stored and rebuilt, never dereferenced in between.
    let parts: (*mut (), usize) = unsafe { std::mem::transmute(raw) };
    parts
}

fn join(data: *mut (), meta: usize) -> *const TaskFn<'static> {
    // SAFETY: the inverse of `split`.
    unsafe { std::mem::transmute::<(*mut (), usize), *const TaskFn<'static>>((data, meta)) }
}

impl ThreadPool {
    /// `n_threads` counts the calling thread, which takes part in every section.
    pub fn new(n_threads: usize) -> Self {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            task_ptr: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
            task_meta: AtomicUsize::new(0),
            n_tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            busy_workers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..n_threads)
            .filter_map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("clerk-pool-{i}"))
                    .spawn(move || worker(s))
                    .ok()
            })
            .collect();
        Self {
            shared,
            workers,
            run_lock: Mutex::new(()),
        }
    }

    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(i)` for every `i` in `0..n_tasks` across the pool and the calling thread, and returns
    /// once all have finished.
    pub fn run<F: Fn(usize) + Sync>(&self, n_tasks: usize, f: F) {
        if n_tasks == 0 {
            return;
        }
        if self.workers.is_empty() || n_tasks == 1 {
            (0..n_tasks).for_each(f);
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let (data, meta) = split(&f);
        s.task_ptr.store(data, Ordering::Relaxed);
        s.task_meta.store(meta, Ordering::Relaxed);
        s.n_tasks.store(n_tasks, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        s.busy_workers.store(self.workers.len(), Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        loop {
            let i = s.next.fetch_add(1, Ordering::Relaxed);
            if i >= n_tasks {
                break;
            }
            f(i);
        }
        // `f` must outlive every worker's use of it.
        while s.busy_workers.load(Ordering::Acquire) > 0 {
            std::hint::spin_loop();
        }
    }
}

fn worker(s: Arc<Shared>) {
    // Not a fresh load: a section may already have been published before this thread got going, and
    // it must still take part (the caller waits for every worker).
    let mut seen = 0;
    loop {
        let mut spins = 0;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if s.shutdown.load(Ordering::Relaxed) {
                return;
            }
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
                continue;
            }
            let guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let guard = s
                .wake
                .wait_while(guard, |_| {
                    s.epoch.load(Ordering::Acquire) == seen && !s.shutdown.load(Ordering::Relaxed)
                })
                .unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
            spins = 0;
        }
        if s.shutdown.load(Ordering::Relaxed) {
            return;
        }
        let f = join(
            s.task_ptr.load(Ordering::Relaxed),
            s.task_meta.load(Ordering::Relaxed),
        );
        let n = s.n_tasks.load(Ordering::Relaxed);
        loop {
            let i = s.next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            // SAFETY: `run` keeps the closure alive until `busy_workers` drops to zero below.
            unsafe { (*f)(i) };
        }
        s.busy_workers.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _l = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads);
            for n in [0, 1, 2, 7, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run(n, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn consecutive_sections_and_parked_workers() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        for round in 0..2000 {
            pool.run(4, |i| {
                total.fetch_add(i + round, Ordering::Relaxed);
            });
        }
        let want: usize = (0..2000).map(|r| 6 + 4 * r).sum();
        assert_eq!(total.load(Ordering::Relaxed), want);
        // Let the worker park, then make sure it wakes.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let count = AtomicUsize::new(0);
        pool.run(100, |_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 100);
    }
}
