//! Uploading a blob while it downloads, without ever sending unverified content
//! as complete.
//!
//! The download writes into the store as usual (hashed, committed only if it
//! matches) and also hands each chunk to the upload. The upload streams those
//! chunks as they come but holds back the final one until the store has verified
//! and committed the whole blob; if verification fails, the upload is aborted
//! before its last byte, so the target never completes it (and it checks the
//! digest itself as well).
//!
//! Memory stays bounded: when the upload falls more than [`QUEUE_CAP`] behind (or
//! the download restarts from zero), chunks stop being queued and the upload
//! continues from the committed blob in the store, where it left off.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::store::BlobSink;
use crate::store::{Blob, BlobWriter};

/// Bytes queued for the upload at most, per blob.
const QUEUE_CAP: usize = 64 << 20;
/// Chunk size when the upload reads from the store.
const STORE_CHUNK: usize = 1 << 20;
/// Downloaded bytes are handed over in pieces of about this size (fewer, larger
/// writes on the upload connection than the network's small reads).
const HANDOFF: usize = 256 << 10;

#[derive(Default)]
pub(super) struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Bytes>,
    queued: usize,
    /// Chunks are no longer queued: the upload reads the rest from the store.
    stopped: bool,
    /// The download's end: the committed blob, or why it failed.
    outcome: Option<std::result::Result<Blob, String>>,
}

impl Shared {
    pub(super) fn new() -> Arc<Shared> {
        Arc::new(Shared::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The download ended: with the committed blob, or with an error.
    pub(super) fn finish(&self, outcome: std::result::Result<Blob, String>) {
        self.lock().outcome = Some(outcome);
        self.changed.notify_one();
    }

    /// The upload ended early: queue nothing more.
    pub(super) fn stop(&self) {
        let mut state = self.lock();
        state.stopped = true;
        state.queue.clear();
        state.queued = 0;
    }
}

/// The store writer, also feeding the upload.
pub(super) struct TeeSink<'a> {
    writer: BlobWriter<'a>,
    shared: Arc<Shared>,
    pending: BytesMut,
}

impl<'a> TeeSink<'a> {
    pub(super) fn new(writer: BlobWriter<'a>, shared: Arc<Shared>) -> Self {
        TeeSink {
            writer,
            shared,
            pending: BytesMut::new(),
        }
    }

    /// Verifies and commits the blob (see [`BlobWriter::commit`]); the caller then
    /// reports the outcome with [`Shared::finish`].
    pub(super) fn commit(mut self) -> Result<()> {
        self.hand_over();
        self.writer.commit()
    }

    fn hand_over(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let chunk = self.pending.split().freeze();
        let mut state = self.shared.lock();
        if !state.stopped {
            if state.queued + chunk.len() > QUEUE_CAP {
                state.stopped = true;
                state.queue.clear();
                state.queued = 0;
            } else {
                state.queued += chunk.len();
                state.queue.push_back(chunk);
            }
        }
        drop(state);
        self.shared.changed.notify_one();
    }
}

impl BlobSink for TeeSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes)?;
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= HANDOFF {
            self.hand_over();
        }
        Ok(())
    }

    fn restart(&mut self) -> Result<()> {
        // What was already sent came from the first attempt; the target's digest
        // check rejects the upload if the new bytes differ, and the caller retries.
        self.pending.clear();
        self.shared.stop();
        self.writer.restart()
    }

    fn written(&self) -> u64 {
        self.writer.written()
    }
}

/// The upload body: queued chunks, then (if the queue stopped) the rest from the
/// committed blob; the final bytes only once the blob is verified and committed.
pub(super) fn upload_stream(
    shared: Arc<Shared>,
    size: u64,
    registry: String,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold((shared, 0u64, false), move |(shared, sent, failed)| {
        let progress = Arc::clone(&progress);
        let registry = registry.clone();
        async move {
            if sent >= size || failed {
                return None;
            }
            loop {
                let next: Option<Result<Bytes>> = {
                    let mut state = shared.lock();
                    let verified = match &state.outcome {
                        Some(Err(reason)) => Some(Err(reason.clone())),
                        Some(Ok(blob)) => Some(Ok(blob.clone())),
                        None => None,
                    };
                    let front_len = state.queue.front().map(|c| c.len() as u64);
                    match (front_len, verified) {
                        (_, Some(Err(reason))) => Some(Err(Error::Registry {
                            registry: registry.clone(),
                            reason: format!("upload abandoned: {reason}"),
                        })),
                        // The final bytes wait for verification.
                        (Some(len), verified) if sent + len < size || verified.is_some() => {
                            state.queued -= len as usize;
                            state.queue.pop_front().map(Ok)
                        }
                        (None, Some(Ok(blob))) => {
                            let end = (sent + STORE_CHUNK as u64).min(size);
                            Some(Ok(blob.slice(sent as usize..end as usize)))
                        }
                        _ => None,
                    }
                };
                match next {
                    Some(Ok(chunk)) => {
                        let len = chunk.len() as u64;
                        progress(len);
                        return Some((Ok(chunk), (shared, sent + len, false)));
                    }
                    Some(Err(e)) => return Some((Err(e), (shared, sent, true))),
                    None => {}
                }
                shared.changed.notified().await;
            }
        }
    })
}
