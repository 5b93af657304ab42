//! Verified chunks on their way into the content store, bounded in bytes.
//!
//! Storing (fsync, rename) happens off the read path: a verified chunk is
//! served from memory (its settled flight) until the writer has stored it. The
//! bound is in bytes, not chunks, because chunks range from a few bytes to
//! [`crate::layer::MAX_CHUNK_SIZE`]: a full queue makes the producer wait,
//! which is what keeps a fast registry from filling memory faster than the
//! disk drains it.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use crate::digest::Digest;

/// A queue of `(digest, verified content)` holding at most `limit` bytes, but
/// always accepting one chunk when empty, however large.
pub struct WriteQueue {
    state: Mutex<State>,
    changed: Condvar,
    limit: u64,
}

#[derive(Default)]
struct State {
    items: VecDeque<(Digest, Bytes)>,
    bytes: u64,
    closed: bool,
}

impl WriteQueue {
    pub fn new(limit: u64) -> WriteQueue {
        WriteQueue {
            state: Mutex::default(),
            changed: Condvar::new(),
            limit,
        }
    }

    /// Queues a chunk, waiting while the queue is over its byte limit. Returns
    /// false (and drops the chunk) once the queue is closed.
    pub fn push(&self, digest: Digest, content: Bytes) -> bool {
        let size = content.len() as u64;
        let mut state = self.lock();
        while !state.closed && state.bytes > 0 && state.bytes + size > self.limit {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.closed {
            return false;
        }
        state.bytes += size;
        state.items.push_back((digest, content));
        drop(state);
        self.changed.notify_all();
        true
    }

    /// The next chunk to store, waiting for one; `None` once closed and empty.
    /// Its bytes count against the limit until [`done`](Self::done).
    pub fn next(&self) -> Option<(Digest, Bytes)> {
        let mut state = self.lock();
        loop {
            if let Some(item) = state.items.pop_front() {
                return Some(item);
            }
            if state.closed {
                return None;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Releases the room a chunk taken by [`next`](Self::next) held.
    pub fn done(&self, size: u64) {
        let mut state = self.lock();
        state.bytes = state.bytes.saturating_sub(size);
        drop(state);
        self.changed.notify_all();
    }

    /// Refuses new chunks; the writer drains what is queued and stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_full_queue_holds_the_producer_until_the_writer_drains_it() {
        let queue = Arc::new(WriteQueue::new(100));
        let digest = Digest::of(b"x");
        assert!(queue.push(digest, Bytes::from(vec![0; 80])));
        let pushed = Arc::new(AtomicBool::new(false));
        let producer = {
            let (queue, pushed) = (Arc::clone(&queue), Arc::clone(&pushed));
            std::thread::spawn(move || {
                assert!(queue.push(digest, Bytes::from(vec![0; 80])));
                pushed.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !pushed.load(Ordering::SeqCst),
            "160 bytes queued under a 100-byte limit"
        );
        let (_, first) = queue.next().unwrap();
        queue.done(first.len() as u64);
        producer.join().unwrap();
        assert!(pushed.load(Ordering::SeqCst));
        queue.close();
        assert!(queue.next().is_some(), "queued chunks drain after close");
        assert!(queue.next().is_none());
        assert!(
            !queue.push(digest, Bytes::new()),
            "closed queues refuse chunks"
        );
    }

    #[test]
    fn an_empty_queue_takes_a_chunk_over_the_limit() {
        let queue = WriteQueue::new(10);
        assert!(queue.push(Digest::of(b"x"), Bytes::from(vec![0; 50])));
    }
}
