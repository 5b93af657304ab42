//! Content reads run here, off the `/dev/fuse` loop, because a read may wait
//! seconds on the network and must not hold up lookups meanwhile.
//!
//! A fixed pool of std threads rather than tokio's `spawn_blocking`: it caps
//! concurrent fetches (and their buffers) however hard the kernel pushes
//! readahead, and needs no runtime in the mounting process.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use fuser::ReplyData;

use crate::rootfs::RootFs;
use crate::tree::{ContentLocation, Ino};

use super::errno::read_errno;

/// One kernel read request, already clamped to the file's end.
pub(crate) struct ReadJob {
    pub ino: Ino,
    pub location: ContentLocation,
    pub offset: u64,
    pub len: usize,
    pub reply: ReplyData,
}

/// A read waiting for a worker: it answers its own reply.
type Task = Box<dyn FnOnce() + Send>;

/// Dropping the pool closes the queue; workers finish the jobs already queued
/// and exit.
pub(crate) struct ReadPool {
    jobs: Sender<Task>,
}

impl ReadPool {
    pub(crate) fn new(workers: usize) -> io::Result<ReadPool> {
        let (jobs, queue) = channel();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..workers {
            let queue = queue.clone();
            thread::Builder::new()
                .name(format!("lazyimg-read-{n}"))
                .spawn(move || work(&queue))?;
        }
        Ok(ReadPool { jobs })
    }

    /// Reads `job` from `rootfs`'s content on a worker.
    pub(crate) fn submit(&self, rootfs: &Arc<RootFs>, job: ReadJob) {
        let rootfs = Arc::clone(rootfs);
        self.run(move || serve(&rootfs, job));
    }

    /// Runs `task`, which answers a kernel request, on a worker.
    pub(crate) fn run(&self, task: impl FnOnce() + Send + 'static) {
        // Fails only once every worker has died; the task (and with it the
        // reply) comes back in the error and dropping it answers EIO.
        if self.jobs.send(Box::new(task)).is_err() {
            tracing::error!("no content read workers left");
        }
    }
}

fn work(queue: &Mutex<Receiver<Task>>) {
    loop {
        // The lock is held only while waiting, so one idle worker waits on
        // the queue and the others wait for the lock.
        let task = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(task) = task else { return };
        // A panicking reader drops the reply, which fuser answers with EIO;
        // the worker survives for the next job.
        if catch_unwind(AssertUnwindSafe(task)).is_err() {
            tracing::error!("content reader panicked; the read failed with EIO");
        }
    }
}

fn serve(rootfs: &RootFs, job: ReadJob) {
    let ReadJob {
        ino,
        location,
        offset,
        len,
        reply,
    } = job;
    let read = rootfs.content.read(&location, offset, len);
    answer(ino, &location, offset, len, read, reply);
}

/// Replies to one read with its outcome; `len` is what was asked for, already
/// clamped to the file's end.
pub(crate) fn answer(
    ino: Ino,
    location: &ContentLocation,
    offset: u64,
    len: usize,
    read: crate::Result<bytes::Bytes>,
    reply: ReplyData,
) {
    match read {
        // The request never reaches past the end of file, so anything but
        // exactly `len` bytes breaks the reader's contract: better EIO than
        // bytes the image does not contain.
        Ok(bytes) if bytes.len() == len => reply.data(&bytes),
        Ok(bytes) => {
            tracing::error!(
                ino,
                offset,
                "content reader returned {} bytes for a {len}-byte read of layer {} at {}",
                bytes.len(),
                location.layer,
                location.offset,
            );
            reply.error(fuser::Errno::EIO);
        }
        Err(err) => {
            tracing::error!(ino, offset, len, "reading file content failed: {err}");
            reply.error(read_errno(&err));
        }
    }
}
