//! Fetching chunks: one single-range request per run of adjacent missing chunks,
//! one in-flight fetch per chunk however many readers wait for it, every chunk
//! verified before any reader sees it, then kept in the content store.
//!
//! Who does what:
//! - the reader's own thread claims what it needs and makes the network
//!   request (it would wait for it anyway);
//! - the decoder pool ([`LazyOptions::workers`] threads) decodes and verifies,
//!   chunks of a run in parallel (gzip spans inflate in order, their hashing
//!   spreads over the pool);
//! - the background pool ([`LazyOptions::fetchers`] threads) fetches readahead
//!   windows, and only when a thread is free;
//! - a prefetch ([`ChunkFetcher::prefetch`]) fetches a list's chunks on
//!   threads of its own, many requests at once;
//! - one writer thread stores verified chunks, through a byte-bounded queue.
//!
//! A claimed chunk is a [`Claim`]: whoever holds it settles it, and dropping
//! it unsettled (a panic, a job never run) settles it as abandoned, so waiters
//! are released at once and the next read tries again.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::LazyOptions;
use super::coalesce::{run_span, runs};
use super::decode::{self, DeflateResume};
use super::pool::Workers;
use super::source::RangeSource;
use super::write_queue::WriteQueue;
use crate::digest::Digest;
use crate::error::{Error, ReadError, Result};
use crate::layer::{Chunk, ChunkCodec};
use crate::rootfs::Stats;
use crate::store::{Blob, SharedCache, Store};

/// Range requests a prefetch ([`ChunkFetcher::prefetch`]) keeps in flight:
/// enough to fill a WAN link's bandwidth-delay product with chunk-sized
/// requests (400 Mbit/s × 20 ms ≈ 1 MB, chunks ≈ 0.5 MB compressed), few
/// enough for a registry to serve without queueing. Over HTTP/2 they share
/// one connection.
const PREFETCH_REQUESTS: usize = 8;

/// Extra time a reader waiting on another's whole-blob download allows for
/// storing it after the download's own deadline.
const WHOLE_BLOB_WAIT_SLACK: Duration = Duration::from_secs(5);
/// How long a failed whole-blob download answers new readers with its error
/// instead of starting again: the kernel retries a failed readahead read at
/// once with a one-page read, and a second download would double the wait of
/// the reader behind it (the whole deadline twice).
const WHOLE_BLOB_RETRY_AFTER: Duration = Duration::from_secs(2);

/// A layer blob read chunk by chunk.
pub struct LazyBlob {
    pub digest: Digest,
    pub size: u64,
    /// Sorted by content offset (see [`crate::layer::ChunkedLayer`]).
    pub chunks: Vec<Chunk>,
    pub deflate: Option<Arc<dyn DeflateResume>>,
}

/// What a flight ends with: the chunk's verified content, or why there is none.
type Outcome = std::result::Result<Bytes, Arc<ReadError>>;

/// Cheap to clone: clones share flights, pools, store and statistics.
#[derive(Clone)]
pub struct ChunkFetcher {
    engine: Arc<Engine>,
}

struct Engine {
    /// Joined when the engine goes, so chunks verified just before an
    /// unmount still reach the store (and the shared cache).
    writer: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    source: Arc<dyn RangeSource>,
    options: LazyOptions,
    decoders: Workers,
    background: Workers,
}

struct Shared {
    store: Arc<Store>,
    stats: Arc<Stats>,
    /// Chunks being fetched, or fetched and verified but not yet in the store.
    flights: Mutex<HashMap<Digest, Arc<Flight>>>,
    /// Whole-blob downloads under way (registries that refuse ranges).
    wholes: Mutex<HashMap<Digest, Arc<Flight>>>,
    /// Whole-blob downloads that failed lately, with when and why.
    whole_failures: Mutex<HashMap<Digest, (Instant, Arc<ReadError>)>>,
    /// Chunks seen in the store, so warm reads need no `stat` per chunk. One
    /// evicted since is caught when its read finds nothing, and forgotten.
    stored: Mutex<HashSet<Digest>>,
    writes: WriteQueue,
    /// Where other nodes leave verified chunks, and this one too.
    shared_cache: Option<SharedCache>,
}

#[derive(Default)]
struct Flight {
    outcome: Mutex<Option<Outcome>>,
    done: Condvar,
}

/// Which table a claimed flight lives in.
#[derive(Clone, Copy, PartialEq)]
enum Table {
    Chunks,
    Wholes,
}

/// A flight this thread (or a job it handed on) must settle. Dropped
/// unsettled, it settles as [`ReadError::Abandoned`].
struct Claim {
    shared: Arc<Shared>,
    table: Table,
    /// Which chunk of the blob (unused for whole blobs).
    index: usize,
    digest: Digest,
    flight: Arc<Flight>,
    settled: bool,
}

/// Where a wanted chunk's bytes will come from.
enum Want {
    Stored,
    Flight(Arc<Flight>),
}

impl ChunkFetcher {
    /// A fetcher reading through `source`, storing into `store`, counting into
    /// `stats`, behaving as `options` say.
    ///
    /// Errors: the OS refused one of the worker threads.
    pub fn new(
        store: Arc<Store>,
        source: Arc<dyn RangeSource>,
        stats: Arc<Stats>,
        options: &LazyOptions,
    ) -> Result<ChunkFetcher> {
        let spawn_error = |e| Error::io("lazy-read worker threads", e);
        let shared = Arc::new(Shared {
            store,
            stats,
            flights: Mutex::default(),
            wholes: Mutex::default(),
            whole_failures: Mutex::default(),
            stored: Mutex::default(),
            writes: WriteQueue::new(options.write_queue),
            shared_cache: options.shared_cache.as_deref().map(SharedCache::new),
        });
        let writer = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("lazyimg-chunk-writer".into())
            .spawn(move || writer.store_queued())
            .map_err(spawn_error)?;
        let engine = Engine {
            writer: Some(writer),
            decoders: Workers::new("lazyimg-decode", options.workers).map_err(spawn_error)?,
            background: Workers::new("lazyimg-fetch", options.fetchers).map_err(spawn_error)?,
            shared,
            source,
            options: options.clone(),
        };
        Ok(ChunkFetcher {
            engine: Arc::new(engine),
        })
    }

    /// A chunk's verified content if it is at hand (fetched, or in the store),
    /// without fetching or waiting for anything.
    pub fn peek(&self, digest: &Digest) -> Option<Bytes> {
        let shared = &self.engine.shared;
        let flight = shared.flights().get(digest).cloned();
        if let Some(flight) = flight {
            return lock(&flight.outcome).as_ref()?.as_ref().ok().cloned();
        }
        let stored = shared.store.get(digest).ok()??;
        Some(stored.slice(0..stored.bytes().len()))
    }

    /// The verified contents of chunks `wanted` of `blob` if every one is at
    /// hand now, without any network or waiting: what a reader can be answered
    /// with at once, ahead of reads queued behind the network.
    pub fn ready(&self, blob: &LazyBlob, wanted: Range<usize>) -> Option<Vec<Bytes>> {
        let shared = &self.engine.shared;
        let found: Option<Vec<Bytes>> = blob.chunks[wanted]
            .iter()
            .map(|chunk| {
                let in_flight = shared.flights().get(&chunk.digest).cloned();
                match in_flight {
                    Some(flight) => lock(&flight.outcome).as_ref()?.as_ref().ok().cloned(),
                    None if shared.known_stored(&chunk.digest) => {
                        let stored = shared.store.get(&chunk.digest).ok()??;
                        Some(stored.slice(0..stored.bytes().len()))
                    }
                    None => None,
                }
            })
            .collect();
        if let Some(found) = &found {
            for _ in found {
                shared.stats.cache_hit();
            }
        }
        found
    }

    /// Whether a chunk is in the store (not just in memory).
    pub fn is_stored(&self, digest: &Digest) -> bool {
        let shared = &self.engine.shared;
        shared.known_stored(digest) && !shared.flights().contains_key(digest)
    }

    /// Whether nothing of chunks `range` is known to be stored or on its way,
    /// judged by the chunk in the middle (windows are claimed whole).
    pub fn is_idle(&self, blob: &LazyBlob, range: Range<usize>) -> bool {
        if range.is_empty() {
            return false;
        }
        let shared = &self.engine.shared;
        let middle = &blob.chunks[range.start + range.len() / 2].digest;
        !(shared.flights().contains_key(middle) || shared.known_stored(middle))
    }

    /// Fetches chunks `ahead` of `blob` in the background, so a sequential
    /// reader finds them ready, if a background worker is free; otherwise the
    /// reader fetches that window itself when it gets there. A window is taken
    /// only once its middle is neither stored nor on its way: each request then
    /// carries many chunks, and concurrent readers of one file start it once.
    pub fn read_ahead(&self, blob: &Arc<LazyBlob>, ahead: Range<usize>) {
        if !self.is_idle(blob, ahead.clone()) || !self.engine.background.is_free() {
            return;
        }
        // Claimed now, so the reader's next read waits for this fetch instead
        // of starting its own; the job settles the claims, or drops them
        // (releasing their waiters) if it never runs.
        let claims = self.claim(blob, ahead.clone(), ahead.end).1;
        if claims.is_empty() {
            return;
        }
        let fetcher = self.clone();
        let blob = Arc::clone(blob);
        self.engine.background.submit(
            false,
            Box::new(move || fetcher.fetch_claimed(&blob, claims, false)),
        );
    }

    /// Fetches every chunk of `wanted` (chunk index ranges of their blobs,
    /// in any order, overlaps allowed) that is neither stored nor on its way,
    /// [`PREFETCH_REQUESTS`] requests at once, started in the order of
    /// `wanted`, and waits until each has verified: what a prefetch list asks
    /// for, all of it wanted soon, so it is not left to one request after
    /// another, and what is read first arrives first. Readers that want these
    /// chunks meanwhile wait on the prefetch's flights.
    ///
    /// Errors: the first chunk that could not be fetched, decoded or verified
    /// (the rest are fetched all the same; a failed chunk is fetched again by
    /// its next reader).
    pub fn prefetch(&self, wanted: &[(Arc<LazyBlob>, Range<usize>)]) -> Result<()> {
        let mut blobs: Vec<&Arc<LazyBlob>> = Vec::new();
        for (blob, _) in wanted {
            if !blobs.iter().any(|b| Arc::ptr_eq(b, blob)) {
                blobs.push(blob);
            }
        }
        // Requests go out in the order of `wanted`: (first place a request
        // serves, its blob, its claims).
        let mut jobs: Vec<(usize, &Arc<LazyBlob>, Vec<Claim>)> = Vec::new();
        let mut flights = Vec::new();
        for blob in blobs {
            let ranges: Vec<(usize, &Range<usize>)> = (wanted.iter().enumerate())
                .filter(|(_, (b, range))| Arc::ptr_eq(b, blob) && !range.is_empty())
                .map(|(place, (_, range))| (place, range))
                .collect();
            // Claims must ascend for `runs`: claim merged ranges in order.
            let mut claims = Vec::new();
            for range in merged(ranges.iter().map(|(_, r)| (*r).clone()).collect()) {
                claims.extend(self.claim(blob, range.start..range.start, range.end).1);
            }
            flights.extend(claims.iter().map(|c| (Arc::clone(&c.flight), c.digest)));
            let first_place = |index: usize| {
                (ranges.iter())
                    .find(|(_, range)| range.contains(&index))
                    .map_or(usize::MAX, |(place, _)| *place)
            };
            let indices: Vec<usize> = claims.iter().map(|c| c.index).collect();
            let mut claims = claims.into_iter();
            for length in runs(&blob.chunks, &indices, self.engine.options.max_request) {
                let run: Vec<Claim> = claims.by_ref().take(length).collect();
                let place = run.iter().map(|c| first_place(c.index)).min();
                jobs.push((place.unwrap_or(usize::MAX), blob, run));
            }
        }
        jobs.sort_by_key(|(place, ..)| *place);
        let jobs = jobs.into_iter().map(|(_, blob, claims)| (blob, claims));
        let queue = Mutex::new(jobs);
        let requests = PREFETCH_REQUESTS.min(lock(&queue).len());
        std::thread::scope(|scope| {
            for _ in 0..requests {
                scope.spawn(|| {
                    loop {
                        let next = lock(&queue).next();
                        let Some((blob, claims)) = next else { break };
                        self.fetch_claimed(blob, claims, true);
                    }
                });
            }
        });
        let mut first_error = None;
        for (flight, digest) in flights {
            if let Err(e) = wait(&flight, &digest, self.engine.options.wait_deadline) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }

    /// The verified contents of chunks `wanted` of `blob`. Chunks `wanted.end..ahead`
    /// are fetched too, in the same requests where possible, but not returned.
    ///
    /// Errors: [`Error::Read`] when a chunk cannot be fetched, decoded,
    /// verified or read back from the store.
    pub fn chunks(
        &self,
        blob: &Arc<LazyBlob>,
        wanted: Range<usize>,
        ahead: usize,
    ) -> Result<Vec<Bytes>> {
        // A stored chunk can be evicted between the check and the read: then go again.
        for _ in 0..3 {
            let (wants, claims) = self.claim(blob, wanted.clone(), ahead);
            self.fetch_claimed(blob, claims, true);
            if let Some(found) = self.collect(blob, wanted.clone(), wants)? {
                return Ok(found);
            }
        }
        Err(Error::Registry {
            registry: "local store".into(),
            reason: format!("chunks of {} keep disappearing from the cache", blob.digest),
        })
    }

    /// The wanted chunks' contents, waiting for flights; `None` when a chunk
    /// thought stored has been evicted meanwhile.
    fn collect(
        &self,
        blob: &LazyBlob,
        wanted: Range<usize>,
        wants: Vec<Want>,
    ) -> Result<Option<Vec<Bytes>>> {
        let shared = &self.engine.shared;
        let mut out = Vec::with_capacity(wants.len());
        for (index, want) in wanted.zip(wants) {
            let chunk = &blob.chunks[index];
            let bytes = match want {
                Want::Flight(flight) => {
                    wait(&flight, &chunk.digest, self.engine.options.wait_deadline)?
                }
                Want::Stored => match shared.store.get(&chunk.digest) {
                    Ok(Some(stored)) => {
                        shared.stats.cache_hit();
                        stored.slice(0..stored.bytes().len())
                    }
                    Ok(None) => {
                        lock(&shared.stored).remove(&chunk.digest);
                        return Ok(None);
                    }
                    Err(source) => {
                        return Err(Arc::new(ReadError::Store {
                            chunk: chunk.digest,
                            source,
                        })
                        .into());
                    }
                },
            };
            out.push(bytes);
        }
        Ok(Some(out))
    }

    /// Decides, under one lock, who fetches what: wanted chunks already in
    /// flight are waited for, stored ones read, the rest (and the readahead
    /// up to `ahead`) claimed. Claims come back in ascending chunk order.
    fn claim(
        &self,
        blob: &LazyBlob,
        wanted: Range<usize>,
        ahead: usize,
    ) -> (Vec<Want>, Vec<Claim>) {
        let shared = &self.engine.shared;
        let mut flights = shared.flights();
        let mut wants = Vec::with_capacity(wanted.len());
        let mut claims = Vec::new();
        for index in wanted.start..ahead.max(wanted.end) {
            let digest = blob.chunks[index].digest;
            let want = if let Some(flight) = flights.get(&digest) {
                Want::Flight(Arc::clone(flight))
            } else if shared.known_stored(&digest) {
                Want::Stored
            } else {
                let flight = Arc::<Flight>::default();
                flights.insert(digest, Arc::clone(&flight));
                claims.push(Claim {
                    shared: Arc::clone(shared),
                    table: Table::Chunks,
                    index,
                    digest,
                    flight: Arc::clone(&flight),
                    settled: false,
                });
                Want::Flight(flight)
            };
            if index < wanted.end {
                wants.push(want);
            }
        }
        (wants, claims)
    }

    /// Fetches the claimed chunks, a run per request, and hands each run to
    /// the decoders. Returns once every request is answered; the claims settle
    /// as their chunks verify (or at once, when a request failed).
    fn fetch_claimed(&self, blob: &Arc<LazyBlob>, claims: Vec<Claim>, urgent: bool) {
        let mut claims = self.take_from_shared_cache(blob, claims);
        // Chunks with nothing to fetch (runs of zeros) decode from nothing.
        let (empty, to_fetch): (Vec<Claim>, Vec<Claim>) = claims
            .drain(..)
            .partition(|c| blob.chunks[c.index].blob_size == 0);
        for claim in empty {
            // The empty run starts where the chunk says it is: a zeros chunk
            // keeps its table-of-contents offset, which need not be 0.
            let at = blob.chunks[claim.index].blob_offset;
            self.decode_run(blob, vec![claim], Bytes::new(), at, urgent);
        }
        let indices: Vec<usize> = to_fetch.iter().map(|c| c.index).collect();
        let mut to_fetch = to_fetch.into_iter();
        for length in runs(&blob.chunks, &indices, self.engine.options.max_request) {
            let run: Vec<Claim> = to_fetch.by_ref().take(length).collect();
            let span = run_span(&blob.chunks, run.iter().map(|c| c.index));
            // Gzip spans need their windows too: fetch both at once, not one
            // round trip after the other. The scope joins both before decoding.
            let checkpoints: Vec<u32> = run
                .iter()
                .filter_map(|c| match blob.chunks[c.index].codec {
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
            match fetched {
                Ok(bytes) => self.decode_run(blob, run, bytes, span.start, urgent),
                Err(e) => {
                    for claim in run {
                        claim.settle(Err(Arc::clone(&e)));
                    }
                }
            }
        }
    }

    /// Settles the claims whose chunk another node left in the shared cache
    /// (verified here, before anyone sees it; a bad copy is discarded and its
    /// chunk fetched as if it were missing); returns the others.
    fn take_from_shared_cache(&self, blob: &LazyBlob, claims: Vec<Claim>) -> Vec<Claim> {
        let shared = &self.engine.shared;
        let Some(cache) = &shared.shared_cache else {
            return claims;
        };
        let mut missing = Vec::with_capacity(claims.len());
        for claim in claims {
            let chunk = &blob.chunks[claim.index];
            let Some(bytes) = cache.get(&chunk.digest, chunk.content_size) else {
                missing.push(claim);
                continue;
            };
            match decode::verify(chunk, Bytes::from(bytes)) {
                Ok(content) => {
                    shared.stats.shared_cache_hit();
                    claim.settle(Ok(content));
                }
                Err(_) => {
                    cache.discard(&chunk.digest);
                    missing.push(claim);
                }
            }
        }
        missing
    }

    /// Hands a fetched run (`bytes` start at blob offset `start`) to the
    /// decoders: gzip spans as one job that inflates them in order, each
    /// span's window being the end of the one before, and queues each span's
    /// hashing as its own job; every other chunk as a job of its own.
    fn decode_run(
        &self,
        blob: &Arc<LazyBlob>,
        run: Vec<Claim>,
        bytes: Bytes,
        start: u64,
        urgent: bool,
    ) {
        let piece = |claim: &Claim| {
            let chunk = &blob.chunks[claim.index];
            let at = (chunk.blob_offset - start) as usize;
            bytes.slice(at..at + chunk.blob_size as usize)
        };
        let sequential = run
            .iter()
            .all(|c| matches!(blob.chunks[c.index].codec, ChunkCodec::Deflate { .. }));
        if sequential && run.len() > 1 {
            let fetcher = self.clone();
            let blob = Arc::clone(blob);
            let pieces: Vec<(Claim, Bytes)> = run
                .into_iter()
                .map(|c| {
                    let p = piece(&c);
                    (c, p)
                })
                .collect();
            self.engine.decoders.submit(
                urgent,
                Box::new(move || fetcher.inflate_in_order(&blob, pieces, urgent)),
            );
            return;
        }
        for claim in run {
            let fetched = piece(&claim);
            self.settle_on_decoder(blob, claim, urgent, move |blob, chunk| {
                decode::decode(chunk, fetched, blob.deflate.as_deref(), None)
                    .and_then(|content| decode::verify(chunk, content))
            });
        }
    }

    /// Queues a claimed chunk's last step on the decoders: `step` gives its
    /// verified content (or why there is none), and the claim settles with it.
    fn settle_on_decoder(
        &self,
        blob: &Arc<LazyBlob>,
        claim: Claim,
        urgent: bool,
        step: impl FnOnce(&LazyBlob, &Chunk) -> std::result::Result<Bytes, decode::Rejected>
        + Send
        + 'static,
    ) {
        let fetcher = self.clone();
        let blob = Arc::clone(blob);
        self.engine.decoders.submit(
            urgent,
            Box::new(move || {
                let outcome = step(&blob, &blob.chunks[claim.index]);
                fetcher.settle_decoded(&blob, claim, outcome);
            }),
        );
    }

    /// Inflates consecutive gzip spans in order (each one's window is the
    /// unverified end of the previous: see [`DeflateResume::inflate`]) and
    /// queues each span's verification, so hashing runs on every worker.
    fn inflate_in_order(&self, blob: &Arc<LazyBlob>, pieces: Vec<(Claim, Bytes)>, urgent: bool) {
        let mut previous: Option<(usize, Bytes)> = None;
        for (claim, fetched) in pieces {
            let chunk = &blob.chunks[claim.index];
            let window = previous
                .as_ref()
                .filter(|(index, _)| index + 1 == claim.index)
                .map(|(_, content)| &content[..]);
            match decode::decode(chunk, fetched, blob.deflate.as_deref(), window) {
                Ok(content) => {
                    previous = Some((claim.index, content.clone()));
                    self.settle_on_decoder(blob, claim, urgent, move |_, chunk| {
                        decode::verify(chunk, content)
                    });
                }
                Err(rejected) => {
                    previous = None;
                    self.settle_decoded(blob, claim, Err(rejected));
                }
            }
        }
    }

    /// Settles a decoded chunk, counting and logging a rejection.
    fn settle_decoded(
        &self,
        blob: &LazyBlob,
        claim: Claim,
        outcome: std::result::Result<Bytes, decode::Rejected>,
    ) {
        let chunk = &blob.chunks[claim.index];
        let outcome = outcome.map_err(|rejected| {
            self.engine.shared.stats.verification_failed();
            let error = ReadError::Rejected {
                chunk: chunk.digest,
                layer: blob.digest,
                blob_range: chunk.blob_offset..chunk.blob_offset + chunk.blob_size,
                reason: rejected.to_string(),
            };
            tracing::error!("{error}");
            Arc::new(error)
        });
        claim.settle(outcome);
    }

    /// Blob bytes `span`: from the store when the whole blob is there, else by
    /// one ranged request, else (the registry refused the range) from the
    /// whole blob, downloaded once however many readers need it.
    fn fetch_span(&self, blob: &LazyBlob, span: Range<u64>, chunks: usize) -> Outcome {
        let stats = &self.engine.shared.stats;
        if let Some(whole) = self.engine.shared.store.get(&blob.digest).ok().flatten() {
            return Ok(slice_of(&whole, &span));
        }
        let started = Instant::now();
        let failed = |source: Error| {
            stats.fetch_failed();
            let error = ReadError::Fetch {
                blob: blob.digest,
                range: span.clone(),
                source,
            };
            tracing::error!("{error}");
            Arc::new(error)
        };
        match self.engine.source.fetch_range(&blob.digest, span.clone()) {
            Ok(Some(bytes)) if bytes.len() as u64 == span.end - span.start => {
                stats.fetched(bytes.len() as u64, started.elapsed());
                stats.chunks_fetched(chunks as u64);
                Ok(bytes)
            }
            Ok(Some(bytes)) => Err(failed(Error::SizeMismatch {
                what: format!("bytes {span:?} of {}", blob.digest),
                expected: span.end - span.start,
                actual: bytes.len() as u64,
            })),
            Ok(None) => {
                let whole = self.whole_blob(blob)?;
                stats.chunks_fetched(chunks as u64);
                Ok(slice_of(&whole, &span))
            }
            Err(e) => Err(failed(e)),
        }
    }

    /// The whole verified blob, downloading it if no other reader is: one
    /// download per blob at a time, bounded by the source's whole-blob
    /// deadline; a reader waiting on another's download gives up after that
    /// deadline too.
    fn whole_blob(&self, blob: &LazyBlob) -> std::result::Result<Blob, Arc<ReadError>> {
        let shared = &self.engine.shared;
        let failed = |source: Error| {
            Arc::new(ReadError::WholeBlob {
                blob: blob.digest,
                source,
            })
        };
        for _ in 0..2 {
            if let Some(whole) = shared.store.get(&blob.digest).map_err(&failed)? {
                return Ok(whole);
            }
            if let Some((when, error)) = lock(&shared.whole_failures).get(&blob.digest)
                && when.elapsed() < WHOLE_BLOB_RETRY_AFTER
            {
                return Err(Arc::clone(error));
            }
            let mut wholes = lock(&shared.wholes);
            if let Some(flight) = wholes.get(&blob.digest).cloned() {
                drop(wholes);
                let limit = self.engine.options.whole_blob_deadline + WHOLE_BLOB_WAIT_SLACK;
                wait(&flight, &blob.digest, limit)?;
                continue;
            }
            let flight = Arc::<Flight>::default();
            wholes.insert(blob.digest, Arc::clone(&flight));
            drop(wholes);
            let claim = Claim {
                shared: Arc::clone(shared),
                table: Table::Wholes,
                index: 0,
                digest: blob.digest,
                flight,
                settled: false,
            };
            tracing::info!(
                "{}: the registry does not serve byte ranges of it; fetching it whole",
                blob.digest
            );
            shared.stats.whole_blob_fallback();
            let started = Instant::now();
            match self.engine.source.fetch_whole(&blob.digest, blob.size) {
                Ok(()) => {
                    shared.stats.fetched(blob.size, started.elapsed());
                    lock(&shared.whole_failures).remove(&blob.digest);
                    claim.settle(Ok(Bytes::new()));
                }
                Err(e) => {
                    shared.stats.fetch_failed();
                    let error = failed(e);
                    tracing::error!("{error}");
                    lock(&shared.whole_failures)
                        .insert(blob.digest, (Instant::now(), Arc::clone(&error)));
                    claim.settle(Err(Arc::clone(&error)));
                    return Err(error);
                }
            }
        }
        shared
            .store
            .get(&blob.digest)
            .map_err(&failed)?
            .ok_or_else(|| failed(Error::NotCached(blob.digest)))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The writer stores what is queued (at most the queue's bytes), then exits.
        self.shared.writes.close();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the chunk writer panicked; some chunks were not cached");
        }
    }
}

impl Claim {
    /// Publishes the outcome to every waiter. A good chunk stays in flight
    /// (serving from memory) until the writer has stored it; a failed one, and
    /// a finished whole-blob download, leave at once.
    fn settle(mut self, outcome: Outcome) {
        self.settled = true;
        self.publish(outcome);
    }

    fn publish(&self, outcome: Outcome) {
        let shared = &self.shared;
        let content = match (&outcome, self.table) {
            (Ok(content), Table::Chunks) => Some(content.clone()),
            _ => None,
        };
        let table = match self.table {
            Table::Chunks => &shared.flights,
            Table::Wholes => &shared.wholes,
        };
        if content.is_none() {
            remove_flight(table, &self.digest, &self.flight);
        }
        *lock(&self.flight.outcome) = Some(outcome);
        self.flight.done.notify_all();
        if let Some(content) = content
            && !shared.writes.push(self.digest, content)
        {
            // The fetcher is gone: nobody will store it.
            remove_flight(table, &self.digest, &self.flight);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            tracing::error!(
                "the fetch of {} was abandoned; its readers get EIO",
                self.digest
            );
            self.publish(Err(Arc::new(ReadError::Abandoned { chunk: self.digest })));
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

    /// The writer thread: stores queued chunks until the queue closes.
    fn store_queued(&self) {
        while let Some((digest, content)) = self.writes.next() {
            // Verified before it was queued: no second hash.
            match self.store.put_verified(digest, &content) {
                Ok(()) => {
                    lock(&self.stored).insert(digest);
                }
                Err(e) => tracing::warn!("cannot cache chunk {digest}: {e}"),
            }
            if let Some(cache) = &self.shared_cache {
                cache.put(&digest, &content);
            }
            self.flights().remove(&digest);
            self.writes.done(content.len() as u64);
        }
    }
}

/// `ranges` sorted and joined where they overlap or touch.
fn merged(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match out.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => out.push(range),
        }
    }
    out
}

/// Removes `flight` from `table` if it is still the one under `digest`.
fn remove_flight(
    table: &Mutex<HashMap<Digest, Arc<Flight>>>,
    digest: &Digest,
    flight: &Arc<Flight>,
) {
    let mut table = lock(table);
    if table.get(digest).is_some_and(|f| Arc::ptr_eq(f, flight)) {
        table.remove(digest);
    }
}

/// Waits at most `limit` for a flight to settle.
fn wait(flight: &Flight, digest: &Digest, limit: Duration) -> Outcome {
    let deadline = Instant::now() + limit;
    let mut outcome = lock(&flight.outcome);
    loop {
        if let Some(outcome) = outcome.as_ref() {
            return outcome.clone();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Arc::new(ReadError::WaitTimedOut {
                chunk: *digest,
                waited: limit,
            }));
        }
        outcome = flight
            .done
            .wait_timeout(outcome, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Flights hold plain data; a panicking reader cannot leave them inconsistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn slice_of(whole: &Blob, span: &Range<u64>) -> Bytes {
    whole.slice(span.start as usize..span.end as usize)
}
