//! Fetching chunks: one single-range request per run of adjacent missing chunks,
//! one in-flight fetch per chunk however many readers wait for it, every chunk
//! verified before any reader sees it, then kept in the content store.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::decode::{self, DeflateResume};
use super::source::RangeSource;
use super::stats::Stats;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::{Chunk, ChunkCodec};
use crate::store::Store;

/// Gaps up to this size between chunks are fetched rather than split into two requests.
const MAX_GAP: u64 = 64 * 1024;
/// Verified chunks waiting to be written to the store, at most.
const WRITE_QUEUE: usize = 256;

/// A layer blob read chunk by chunk.
pub struct LazyBlob {
    pub digest: Digest,
    pub size: u64,
    /// Sorted by content offset (see [`crate::layer::ChunkedLayer`]).
    pub chunks: Vec<Chunk>,
    pub deflate: Option<Arc<dyn DeflateResume>>,
}

/// Cheap to clone: clones share flights, store and statistics.
#[derive(Clone)]
pub struct ChunkFetcher {
    shared: Arc<Shared>,
    source: Arc<dyn RangeSource>,
    /// Largest single request when coalescing chunks.
    max_request: u64,
    /// Longest a reader waits on another reader's fetch.
    wait_limit: Duration,
    writes: SyncSender<(Digest, Bytes)>,
}

struct Shared {
    store: Arc<Store>,
    stats: Arc<Stats>,
    /// Chunks being fetched, or fetched and verified but not yet in the store.
    flights: Mutex<HashMap<Digest, Arc<Flight>>>,
    /// Chunks seen in the store, so warm reads need no `stat` per chunk. One
    /// evicted since is caught when its read finds nothing, and forgotten.
    stored: Mutex<HashSet<Digest>>,
}

#[derive(Default)]
struct Flight {
    outcome: Mutex<Option<std::result::Result<Bytes, String>>>,
    done: Condvar,
}

/// Where a wanted chunk's bytes will come from.
enum Source {
    Stored,
    Mine,
    Others(Arc<Flight>),
}

impl ChunkFetcher {
    pub fn new(
        store: Arc<Store>,
        source: Arc<dyn RangeSource>,
        stats: Arc<Stats>,
        max_request: u64,
        deadline: Duration,
    ) -> ChunkFetcher {
        let shared = Arc::new(Shared {
            store,
            stats,
            flights: Mutex::default(),
            stored: Mutex::default(),
        });
        let (writes, queue) = sync_channel::<(Digest, Bytes)>(WRITE_QUEUE);
        let writer = Arc::clone(&shared);
        // Storing (fsync, rename) happens off the read path; until it lands, the
        // finished flight keeps serving the bytes from memory.
        std::thread::Builder::new()
            .name("lazyimg-chunk-writer".into())
            .spawn(move || {
                for (digest, bytes) in queue {
                    // Verified before it was queued: no second hash.
                    match writer.store.put_verified(digest, &bytes) {
                        Ok(()) => {
                            lock(&writer.stored).insert(digest);
                        }
                        Err(e) => tracing::warn!("cannot cache chunk {digest}: {e}"),
                    }
                    writer.flights().remove(&digest);
                }
            })
            .expect("spawning the chunk writer thread");
        ChunkFetcher {
            shared,
            source,
            max_request,
            wait_limit: deadline * 2 + Duration::from_secs(5),
            writes,
        }
    }

    /// A chunk's verified content if it is at hand (fetched, or in the store),
    /// without fetching anything.
    pub fn peek(&self, digest: &Digest) -> Option<Bytes> {
        let flight = self.shared.flights().get(digest).cloned();
        if let Some(flight) = flight {
            return lock(&flight.outcome).as_ref()?.as_ref().ok().cloned();
        }
        let stored = self.shared.store.get(digest).ok()??;
        Some(stored.slice(0..stored.bytes().len()))
    }

    /// Whether a chunk is in the store (not just in memory).
    pub fn is_stored(&self, digest: &Digest) -> bool {
        self.shared.known_stored(digest) && !self.shared.flights().contains_key(digest)
    }

    /// Whether nothing of chunks `range` is known to be stored or on its way,
    /// judged by the chunk in the middle (windows are claimed whole).
    pub fn is_idle(&self, blob: &LazyBlob, range: Range<usize>) -> bool {
        if range.is_empty() {
            return false;
        }
        let middle = &blob.chunks[range.start + range.len() / 2].digest;
        !(self.shared.flights().contains_key(middle) || self.shared.known_stored(middle))
    }

    /// Starts fetching chunks `ahead` of `blob` in the background, so a
    /// sequential reader finds them ready. A window is claimed only once its
    /// middle is neither stored nor on its way: each request then carries many
    /// chunks, and concurrent readers of one file start it once.
    pub fn read_ahead(&self, blob: &Arc<LazyBlob>, ahead: Range<usize>) {
        if !self.is_idle(blob, ahead.clone()) {
            return;
        }
        let (_, mine) = self.claim(blob, ahead.clone(), ahead.end);
        if mine.is_empty() {
            return;
        }
        let fetcher = self.clone();
        let owned = Arc::clone(blob);
        let claimed = mine.clone();
        let spawned = std::thread::Builder::new()
            .name("lazyimg-readahead".into())
            .spawn(move || drop(fetcher.fetch_mine(&owned, &claimed)));
        if spawned.is_err() {
            // Claimed flights must be settled: fetch them here instead.
            drop(self.fetch_mine(blob, &mine));
        }
    }

    /// The verified contents of chunks `wanted` of `blob`. Chunks `wanted.end..ahead`
    /// are fetched too, in the same requests where possible, but not returned.
    pub fn chunks(
        &self,
        blob: &LazyBlob,
        wanted: Range<usize>,
        ahead: usize,
    ) -> Result<Vec<Bytes>> {
        // A stored chunk can be evicted between the check and the read: then go again.
        for _ in 0..3 {
            if let Some(found) = self.try_chunks(blob, wanted.clone(), ahead)? {
                return Ok(found);
            }
        }
        Err(Error::Registry {
            registry: "local store".into(),
            reason: format!("chunks of {} keep disappearing from the cache", blob.digest),
        })
    }

    fn try_chunks(
        &self,
        blob: &LazyBlob,
        wanted: Range<usize>,
        ahead: usize,
    ) -> Result<Option<Vec<Bytes>>> {
        let (sources, mine) = self.claim(blob, wanted.clone(), ahead);
        let mut fetched = self.fetch_mine(blob, &mine);
        let mut out = Vec::with_capacity(wanted.len());
        for (index, source) in wanted.zip(sources) {
            let chunk = &blob.chunks[index];
            let bytes = match source {
                Source::Mine => match fetched.remove(&index) {
                    Some(result) => result?,
                    None => unreachable!("every claimed chunk has an outcome"),
                },
                Source::Others(flight) => self.wait(&flight, chunk)?,
                Source::Stored => match self.shared.store.get(&chunk.digest)? {
                    Some(stored) => {
                        self.shared.stats.cache_hit();
                        stored.slice(0..stored.bytes().len())
                    }
                    None => {
                        lock(&self.shared.stored).remove(&chunk.digest);
                        return Ok(None);
                    }
                },
            };
            out.push(bytes);
        }
        Ok(Some(out))
    }

    /// Decides, under one lock, who fetches what: wanted chunks already in flight
    /// are waited for, stored ones read, the rest (and the readahead) claimed.
    fn claim(
        &self,
        blob: &LazyBlob,
        wanted: Range<usize>,
        ahead: usize,
    ) -> (Vec<Source>, Vec<usize>) {
        let mut flights = self.shared.flights();
        let mut sources = Vec::with_capacity(wanted.len());
        let mut mine = Vec::new();
        for index in wanted.start..ahead.max(wanted.end) {
            let digest = blob.chunks[index].digest;
            let source = if let Some(flight) = flights.get(&digest) {
                Source::Others(Arc::clone(flight))
            } else if self.shared.known_stored(&digest) {
                Source::Stored
            } else {
                flights.insert(digest, Arc::default());
                mine.push(index);
                Source::Mine
            };
            if index < wanted.end {
                sources.push(source);
            }
        }
        (sources, mine)
    }

    /// Fetches the claimed chunks and settles their flights, whatever happens.
    fn fetch_mine(&self, blob: &LazyBlob, mine: &[usize]) -> HashMap<usize, Result<Bytes>> {
        let mut outcomes = HashMap::new();
        // Chunks with nothing to fetch (runs of zeros) decode from nothing.
        let (empty, to_fetch): (Vec<usize>, Vec<usize>) =
            mine.iter().partition(|&&i| blob.chunks[i].blob_size == 0);
        for index in empty {
            let chunk = &blob.chunks[index];
            let result = self.verify(blob, chunk, Bytes::new());
            self.settle(chunk.digest, &result);
            outcomes.insert(index, result);
        }
        for run in runs(&blob.chunks, &to_fetch, self.max_request) {
            let span = run_span(&blob.chunks, &run);
            // Gzip spans need their windows too: fetch both at once, not one
            // round trip after the other.
            let checkpoints: Vec<u32> = run
                .iter()
                .filter_map(|&i| match blob.chunks[i].codec {
                    ChunkCodec::Deflate { checkpoint } => Some(checkpoint),
                    _ => None,
                })
                .collect();
            let fetched = match &blob.deflate {
                Some(deflate) if !checkpoints.is_empty() => std::thread::scope(|scope| {
                    scope.spawn(|| deflate.prepare(&checkpoints));
                    self.fetch_span(blob, span.clone(), run.len())
                }),
                _ => self.fetch_span(blob, span.clone(), run.len()),
            };
            for &index in &run {
                let chunk = &blob.chunks[index];
                let result = match &fetched {
                    Ok(bytes) => {
                        let at = (chunk.blob_offset - span.start) as usize;
                        let fetched = bytes.slice(at..at + chunk.blob_size as usize);
                        self.verify(blob, chunk, fetched)
                    }
                    Err(e) => Err(Error::ChunkUnavailable {
                        chunk: chunk.digest,
                        reason: e.to_string(),
                    }),
                };
                self.settle(chunk.digest, &result);
                outcomes.insert(index, result);
            }
        }
        outcomes
    }

    /// Blob bytes `span`: from the store when the whole blob is there, else by
    /// one ranged request, else (the registry refused the range) by downloading
    /// and verifying the whole blob.
    fn fetch_span(&self, blob: &LazyBlob, span: Range<u64>, chunks: usize) -> Result<Bytes> {
        let stats = &self.shared.stats;
        let local = |store: &Store| -> Result<Option<Bytes>> {
            Ok(store
                .get(&blob.digest)?
                .map(|whole| whole.slice(span.start as usize..span.end as usize)))
        };
        if let Some(bytes) = local(&self.shared.store)? {
            return Ok(bytes);
        }
        let started = Instant::now();
        let answer = self.source.fetch_range(&blob.digest, span.clone());
        let bytes = match answer {
            Ok(Some(bytes)) => {
                stats.fetched(bytes.len() as u64, started.elapsed());
                bytes
            }
            Ok(None) => {
                tracing::info!(
                    "{}: the registry does not serve byte ranges of it; fetching it whole",
                    blob.digest
                );
                stats.whole_blob_fallback();
                self.source.fetch_whole(&blob.digest, blob.size)?;
                stats.fetched(blob.size, started.elapsed());
                local(&self.shared.store)?.ok_or(Error::NotCached(blob.digest))?
            }
            Err(e) => {
                stats.fetch_failed();
                tracing::error!("fetching bytes {span:?} of {}: {e}", blob.digest);
                return Err(e);
            }
        };
        stats.chunks_fetched(chunks as u64);
        Ok(bytes)
    }

    fn verify(&self, blob: &LazyBlob, chunk: &Chunk, fetched: Bytes) -> Result<Bytes> {
        decode::decode(chunk, fetched, blob.deflate.as_deref()).map_err(|rejected| {
            self.shared.stats.verification_failed();
            tracing::error!(
                "chunk {} of layer {} (bytes {}..{}) failed verification: {rejected}",
                chunk.digest,
                blob.digest,
                chunk.blob_offset,
                chunk.blob_offset + chunk.blob_size
            );
            Error::ChunkUnavailable {
                chunk: chunk.digest,
                reason: format!("verification failed: {rejected}"),
            }
        })
    }

    /// Publishes a claimed chunk's outcome to its waiters. A good chunk stays in
    /// flight (serving from memory) until the writer has stored it; a failed one
    /// leaves at once, so the next read tries again.
    fn settle(&self, digest: Digest, result: &Result<Bytes>) {
        let mut flights = self.shared.flights();
        let Some(flight) = flights.get(&digest).cloned() else {
            return;
        };
        let outcome = match result {
            Ok(bytes) => Ok(bytes.clone()),
            Err(e) => {
                flights.remove(&digest);
                Err(e.to_string())
            }
        };
        drop(flights);
        *lock(&flight.outcome) = Some(outcome);
        flight.done.notify_all();
        if let Ok(bytes) = result
            && self.writes.send((digest, bytes.clone())).is_err()
        {
            self.shared.flights().remove(&digest);
        }
    }

    fn wait(&self, flight: &Flight, chunk: &Chunk) -> Result<Bytes> {
        let deadline = Instant::now() + self.wait_limit;
        let mut outcome = lock(&flight.outcome);
        loop {
            if let Some(outcome) = outcome.as_ref() {
                return outcome.clone().map_err(|reason| Error::ChunkUnavailable {
                    chunk: chunk.digest,
                    reason,
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::ChunkUnavailable {
                    chunk: chunk.digest,
                    reason: "timed out waiting for another reader's fetch".into(),
                });
            }
            outcome = flight
                .done
                .wait_timeout(outcome, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Shared {
    fn flights(&self) -> MutexGuard<'_, HashMap<Digest, Arc<Flight>>> {
        lock(&self.flights)
    }

    fn known_stored(&self, digest: &Digest) -> bool {
        let mut stored = lock(&self.stored);
        stored.contains(digest) || (self.store.contains(digest) && stored.insert(*digest))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Flights hold plain data; a panicking reader cannot leave them inconsistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Groups claimed chunks (ascending indices) into runs fetched by one request each:
/// neighbours whose blob bytes touch, overlap or leave a small gap, up to `max_request`.
fn runs(chunks: &[Chunk], claimed: &[usize], max_request: u64) -> Vec<Vec<usize>> {
    let mut runs: Vec<Vec<usize>> = Vec::new();
    for &index in claimed {
        let chunk = &chunks[index];
        if let Some(run) = runs.last_mut() {
            let span = run_span(chunks, run);
            let end = span.end.max(chunk.blob_offset + chunk.blob_size);
            let joins = chunk.blob_offset + MAX_GAP >= span.end
                && chunk.blob_offset >= span.start
                && end - span.start <= max_request;
            if joins {
                run.push(index);
                continue;
            }
        }
        runs.push(vec![index]);
    }
    runs
}

/// The blob bytes a run covers.
fn run_span(chunks: &[Chunk], run: &[usize]) -> Range<u64> {
    let start = run
        .iter()
        .map(|&i| chunks[i].blob_offset)
        .min()
        .unwrap_or(0);
    let end = run
        .iter()
        .map(|&i| chunks[i].blob_offset + chunks[i].blob_size)
        .max()
        .unwrap_or(0);
    start..end
}
