//! A fixed set of worker threads for the engine's own work: decoding and
//! verifying chunks (CPU) and background fetches (network). Fixed so that a
//! burst of readers or readahead windows costs queue entries, not threads.
//!
//! Rule for jobs: a job never waits on another job of the same pool (with one
//! worker that would wait forever).

use std::collections::VecDeque;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// One unit of work. A job that panics is logged and dropped; whatever it
/// owned is dropped with it (claimed flights settle then: see `fetch::Claim`).
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// A pool of `threads` workers taking urgent jobs (a reader waits on them)
/// before later ones (readahead). Dropping it lets the workers finish what is
/// queued and exit; it does not join them, so the last handle may drop on a
/// worker itself.
pub struct Workers {
    queue: Arc<Queue>,
    threads: usize,
}

struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    urgent: VecDeque<Job>,
    later: VecDeque<Job>,
    /// Jobs taken by a worker and not finished yet.
    running: usize,
    closed: bool,
}

impl Workers {
    /// Starts `threads` (at least 1) workers named `name-N`.
    ///
    /// Errors: the OS refused a thread; workers already started then exit.
    pub fn new(name: &str, threads: usize) -> io::Result<Workers> {
        let queue = Arc::new(Queue {
            state: Mutex::default(),
            ready: Condvar::new(),
        });
        let threads = threads.max(1);
        let pool = Workers { queue, threads };
        for n in 0..threads {
            let queue = Arc::clone(&pool.queue);
            std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || work(&queue))?;
        }
        Ok(pool)
    }

    /// Queues `job`; `urgent` jobs go before every queued non-urgent one.
    pub fn submit(&self, urgent: bool, job: Job) {
        let mut state = self.queue.lock();
        if urgent {
            state.urgent.push_back(job);
        } else {
            state.later.push_back(job);
        }
        drop(state);
        self.queue.ready.notify_one();
    }

    /// Whether a worker is free to start a job now (nothing queued, fewer
    /// jobs running than workers). For work worth doing only with spare
    /// capacity (readahead); racing callers may queue a job or two more.
    pub fn is_free(&self) -> bool {
        let state = self.queue.lock();
        state.running + state.urgent.len() + state.later.len() < self.threads
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.ready.notify_all();
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Only plain queue bookkeeping happens under the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn work(queue: &Queue) {
    let mut state = queue.lock();
    loop {
        let job = state.urgent.pop_front().or_else(|| state.later.pop_front());
        let Some(job) = job else {
            if state.closed {
                return;
            }
            state = queue
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        state.running += 1;
        drop(state);
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("a lazy-read worker job panicked; its chunks were released");
        }
        state = queue.lock();
        state.running -= 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use super::*;

    #[test]
    fn urgent_jobs_overtake_queued_later_ones() {
        let pool = Workers::new("test", 1).unwrap();
        let (gate_tx, gate_rx) = channel::<()>();
        let order = Arc::new(Mutex::new(Vec::new()));
        // Hold the only worker until both jobs are queued.
        pool.submit(
            true,
            Box::new(move || {
                let _ = gate_rx.recv();
            }),
        );
        for (urgent, name) in [(false, "later"), (true, "urgent")] {
            let order = Arc::clone(&order);
            pool.submit(urgent, Box::new(move || order.lock().unwrap().push(name)));
        }
        gate_tx.send(()).unwrap();
        let (done_tx, done_rx) = channel();
        pool.submit(false, Box::new(move || done_tx.send(()).unwrap()));
        done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(*order.lock().unwrap(), ["urgent", "later"]);
    }

    #[test]
    fn a_busy_pool_is_not_free_and_a_panic_spares_the_worker() {
        let pool = Workers::new("test", 1).unwrap();
        pool.submit(true, Box::new(|| panic!("job panics on purpose")));
        let ran = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = channel::<()>();
        let (started_tx, started_rx) = channel();
        pool.submit(
            true,
            Box::new(move || {
                started_tx.send(()).unwrap();
                let _ = gate_rx.recv();
            }),
        );
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(!pool.is_free());
        gate_tx.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if pool.is_free() {
                let counter = Arc::clone(&ran);
                pool.submit(
                    false,
                    Box::new(move || {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }),
                );
                break;
            }
            assert!(std::time::Instant::now() < deadline, "worker never freed");
            std::thread::sleep(Duration::from_millis(5));
        }
        while ran.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "job never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
