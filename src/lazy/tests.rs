//! The fetch engine against an in-memory blob source: single-flight, coalescing,
//! verification, fallbacks and recovery, without a registry or a mount.

use std::io::Write;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;

use super::source::RangeSource;
use super::*;
use crate::digest::Digest;
use crate::layer::{Chunk, ChunkCodec};
use crate::rootfs::Stats;
use crate::store::Store;

/// A blob made of one gzip member per chunk, like eStargz.
struct TestBlob {
    bytes: Vec<u8>,
    content: Vec<u8>,
    chunks: Vec<Chunk>,
}

fn gzip_blob(content: &[u8], chunk_size: usize) -> TestBlob {
    let mut bytes = Vec::new();
    let mut chunks = Vec::new();
    for (i, piece) in content.chunks(chunk_size).enumerate() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(piece).unwrap();
        let member = encoder.finish().unwrap();
        chunks.push(Chunk {
            content_offset: (i * chunk_size) as u64,
            content_size: piece.len() as u64,
            blob_offset: bytes.len() as u64,
            blob_size: member.len() as u64,
            codec: ChunkCodec::Gzip,
            digest: Digest::of(piece),
        });
        bytes.extend_from_slice(&member);
    }
    TestBlob {
        bytes,
        content: content.to_vec(),
        chunks,
    }
}

#[derive(Default)]
struct FakeSource {
    blob: Mutex<Vec<u8>>,
    store: Mutex<Option<Arc<Store>>>,
    requests: Mutex<Vec<Range<u64>>>,
    down: AtomicBool,
    refuse_ranges: AtomicBool,
    slow: AtomicBool,
    /// Milliseconds every fetch (ranged or whole) takes.
    delay_ms: AtomicU64,
    /// Whole-blob downloads fail (after their delay).
    whole_down: AtomicBool,
    /// The next ranged fetch panics (after its delay).
    panic_next: AtomicBool,
    whole_fetches: AtomicUsize,
    /// When not 0: each ranged fetch waits (up to 5 s) until this many are
    /// under way at once, so a test learns whether they were.
    rendezvous: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl FakeSource {
    fn delay(&self) {
        std::thread::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)));
    }
}

impl RangeSource for FakeSource {
    fn fetch_range(&self, _: &Digest, range: Range<u64>) -> crate::Result<Option<Bytes>> {
        if self.slow.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.delay();
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("fetch panics on purpose");
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(crate::Error::Network {
                registry: "fake".into(),
                reason: "connection refused".into(),
            });
        }
        self.requests.lock().unwrap().push(range.clone());
        let together = self.rendezvous.load(Ordering::SeqCst);
        if together > 0 {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.most_in_flight.load(Ordering::SeqCst) < together && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        if self.refuse_ranges.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let blob = self.blob.lock().unwrap();
        Ok(Some(Bytes::copy_from_slice(
            &blob[range.start as usize..range.end as usize],
        )))
    }

    fn fetch_whole(&self, digest: &Digest, _: u64) -> crate::Result<()> {
        self.whole_fetches.fetch_add(1, Ordering::SeqCst);
        self.delay();
        if self.whole_down.load(Ordering::SeqCst) {
            return Err(crate::Error::Network {
                registry: "fake".into(),
                reason: "download took longer than its deadline".into(),
            });
        }
        let store = self.store.lock().unwrap().clone().unwrap();
        store.put(*digest, &self.blob.lock().unwrap(), "whole blob")
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    source: Arc<FakeSource>,
    content: ImageContent,
    stats: Arc<Stats>,
    blob: TestBlob,
    location: ContentLocation,
}

fn setup(blob: TestBlob, readahead: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), u64::MAX).unwrap());
    let source = Arc::new(FakeSource::default());
    *source.blob.lock().unwrap() = blob.bytes.clone();
    *source.store.lock().unwrap() = Some(Arc::clone(&store));
    let stats = Arc::new(Stats::default());
    let options = LazyOptions {
        max_request: 1 << 20,
        readahead,
        ..LazyOptions::with_read_deadline(Duration::from_secs(5))
    };
    let fetcher =
        Arc::new(ChunkFetcher::new(store, source.clone(), Arc::clone(&stats), &options).unwrap());
    let lazy = LazyBlob {
        digest: Digest::of(&blob.bytes),
        size: blob.bytes.len() as u64,
        chunks: blob.chunks.clone(),
        deflate: None,
    };
    let location = ContentLocation::dense(0, 0, blob.content.len() as u64);
    let content = ImageContent::new(
        vec![LayerContent::Chunked(Arc::new(lazy))],
        Some(fetcher),
        readahead,
        Arc::clone(&stats),
    );
    Setup {
        _dir: dir,
        source,
        content,
        stats,
        blob,
        location,
    }
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x9e3779b97f4a7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn reads_across_chunks_return_exactly_the_content() {
    let s = setup(gzip_blob(&pseudo_random(100_000), 7_000), 0);
    for (offset, len) in [
        (0, 10),
        (6_990, 20),
        (0, 100_000),
        (99_990, 100),
        (50_000, 30_000),
    ] {
        let got = s.content.read(&s.location, offset, len).unwrap();
        let end = (offset as usize + len).min(s.blob.content.len());
        assert_eq!(
            &got[..],
            &s.blob.content[offset as usize..end],
            "{offset}+{len}"
        );
    }
    let stats = s.stats.report();
    assert_eq!(stats.verification_failures, 0);
    assert!(stats.cache_hits + stats.chunks_fetched >= 15);
}

#[test]
fn adjacent_chunks_come_in_one_request() {
    let s = setup(gzip_blob(&pseudo_random(64_000), 4_000), 0);
    s.content.read(&s.location, 0, 64_000).unwrap();
    let requests = s.source.requests.lock().unwrap().clone();
    assert_eq!(requests, vec![0..s.blob.bytes.len() as u64]);
}

#[test]
fn readahead_fetches_the_rest_of_the_file_in_the_same_request() {
    let s = setup(gzip_blob(&pseudo_random(64_000), 4_000), 1 << 20);
    s.content.read(&s.location, 0, 100).unwrap();
    s.content.read(&s.location, 30_000, 100).unwrap();
    assert_eq!(s.source.requests.lock().unwrap().len(), 1);
}

#[test]
fn concurrent_readers_share_one_fetch_per_chunk() {
    let s = setup(gzip_blob(&pseudo_random(256_000), 16_000), 0);
    s.source.slow.store(true, Ordering::SeqCst);
    let readers = 64;
    let barrier = Barrier::new(readers);
    std::thread::scope(|scope| {
        for reader in 0..readers {
            let (s, barrier) = (&s, &barrier);
            scope.spawn(move || {
                barrier.wait();
                // Different starting points, same file, each read all of it.
                let start = (reader * 4_096) % 256_000;
                for offset in (start..256_000).chain(0..start).step_by(8_192) {
                    let got = s.content.read(&s.location, offset as u64, 8_192).unwrap();
                    let end = (offset + 8_192).min(256_000);
                    assert_eq!(&got[..], &s.blob.content[offset..end]);
                }
            });
        }
    });
    let stats = s.stats.report();
    assert_eq!(stats.chunks_fetched, 16, "each chunk fetched once");
    let fetched: u64 = s
        .source
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.end - r.start)
        .sum();
    assert_eq!(fetched, s.blob.bytes.len() as u64);
}

#[test]
fn a_changed_byte_fails_every_read_of_its_chunk_and_no_other() {
    let blob = gzip_blob(&pseudo_random(80_000), 8_000);
    let bad_chunk = &blob.chunks[3];
    // Inside the deflate data, past the 10-byte gzip header.
    let at = (bad_chunk.blob_offset + bad_chunk.blob_size / 2) as usize;
    let s = setup(blob, 0);
    s.source.blob.lock().unwrap()[at] ^= 0x40;
    for _ in 0..5 {
        let err = s
            .content
            .read(&s.location, 3 * 8_000 + 10, 100)
            .unwrap_err();
        assert!(err.to_string().contains("failed verification"), "{err}");
        let good = s.content.read(&s.location, 8_000, 100).unwrap();
        assert_eq!(&good[..], &s.blob.content[8_000..8_100]);
    }
    let stats = s.stats.report();
    assert_eq!(stats.verification_failures, 5);
}

#[test]
fn a_registry_that_is_down_fails_the_read_and_the_next_read_recovers() {
    let s = setup(gzip_blob(&pseudo_random(40_000), 8_000), 0);
    s.source.down.store(true, Ordering::SeqCst);
    let err = s.content.read(&s.location, 0, 100).unwrap_err();
    assert!(err.to_string().contains("connection refused"), "{err}");
    s.source.down.store(false, Ordering::SeqCst);
    let got = s.content.read(&s.location, 0, 100).unwrap();
    assert_eq!(&got[..], &s.blob.content[..100]);
    assert_eq!(s.stats.report().fetch_failures, 1);
}

#[test]
fn a_registry_that_ignores_ranges_gets_one_whole_verified_download() {
    let s = setup(gzip_blob(&pseudo_random(40_000), 8_000), 0);
    s.source.refuse_ranges.store(true, Ordering::SeqCst);
    for offset in [0u64, 9_000, 33_000] {
        let got = s.content.read(&s.location, offset, 500).unwrap();
        assert_eq!(
            &got[..],
            &s.blob.content[offset as usize..offset as usize + 500]
        );
    }
    assert_eq!(s.source.whole_fetches.load(Ordering::SeqCst), 1);
    assert_eq!(s.stats.report().whole_blob_fallbacks, 1);
}

#[test]
fn chunks_are_served_from_the_store_once_cached() {
    let s = setup(gzip_blob(&pseudo_random(40_000), 8_000), 0);
    s.content.read(&s.location, 0, 40_000).unwrap();
    // The writer thread stores chunks in the background.
    for _ in 0..200 {
        if s.blob
            .chunks
            .iter()
            .all(|c| s.content.fetcher.as_ref().unwrap().is_stored(&c.digest))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    s.source.down.store(true, Ordering::SeqCst);
    let got = s.content.read(&s.location, 0, 40_000).unwrap();
    assert_eq!(&got[..], &s.blob.content[..]);
    assert!(s.stats.report().cache_hits >= 5);
}

#[test]
fn sequential_reads_fetch_each_chunk_once_in_window_sized_requests() {
    let s = setup(gzip_blob(&pseudo_random(256_000), 4_000), 16_000);
    for offset in (0..256_000u64).step_by(4_000) {
        let got = s.content.read(&s.location, offset, 4_000).unwrap();
        assert_eq!(
            &got[..],
            &s.blob.content[offset as usize..offset as usize + 4_000]
        );
    }
    let stats = s.stats.report();
    assert_eq!(stats.chunks_fetched, 64, "{stats:?}");
    let requests = s.source.requests.lock().unwrap().len();
    // A window (4 chunks) is claimed again once the reader is half way in.
    assert!(requests <= 64 / 2 + 2, "{requests} requests for 64 chunks");
}

/// Runs `readers` threads that each read `range` of the file once, released
/// together; returns each one's outcome and how long it took.
fn concurrent_reads(
    s: &Setup,
    readers: usize,
    offset: u64,
    len: usize,
) -> Vec<(crate::Result<Bytes>, Duration)> {
    let barrier = Barrier::new(readers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..readers)
            .map(|_| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let started = Instant::now();
                    let got = s.content.read(&s.location, offset, len);
                    (got, started.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn a_fetch_that_panics_releases_its_waiters_at_once_and_the_next_read_recovers() {
    let s = setup(gzip_blob(&pseudo_random(64_000), 8_000), 0);
    s.source.delay_ms.store(300, Ordering::SeqCst);
    s.source.panic_next.store(true, Ordering::SeqCst);
    std::thread::scope(|scope| {
        let panicking = scope.spawn(|| s.content.read(&s.location, 0, 8_000));
        // Let the first reader claim the chunk; the 8 others then wait on it.
        std::thread::sleep(Duration::from_millis(100));
        for (got, took) in concurrent_reads(&s, 8, 0, 8_000) {
            let err = got.unwrap_err();
            assert!(err.to_string().contains("abandoned"), "{err}");
            assert!(took < Duration::from_secs(1), "a waiter took {took:?}");
        }
        assert!(panicking.join().is_err(), "the fetching reader panicked");
    });
    s.source.delay_ms.store(0, Ordering::SeqCst);
    let got = s.content.read(&s.location, 0, 8_000).unwrap();
    assert_eq!(&got[..], &s.blob.content[..8_000]);
}

#[test]
fn concurrent_readers_of_a_layer_without_ranges_share_one_whole_download() {
    let s = setup(gzip_blob(&pseudo_random(160_000), 8_000), 0);
    s.source.refuse_ranges.store(true, Ordering::SeqCst);
    s.source.delay_ms.store(200, Ordering::SeqCst);
    // Each reader reads a different part, so their chunks differ: only the
    // whole-blob download is shared.
    let barrier = Barrier::new(16);
    std::thread::scope(|scope| {
        for reader in 0..16u64 {
            let (s, barrier) = (&s, &barrier);
            scope.spawn(move || {
                barrier.wait();
                let offset = reader * 10_000;
                let got = s.content.read(&s.location, offset, 5_000).unwrap();
                assert_eq!(
                    &got[..],
                    &s.blob.content[offset as usize..offset as usize + 5_000]
                );
            });
        }
    });
    assert_eq!(s.source.whole_fetches.load(Ordering::SeqCst), 1);
    assert_eq!(s.stats.report().whole_blob_fallbacks, 1);
}

#[test]
fn a_failed_whole_download_fails_its_waiters_and_a_later_read_recovers() {
    let s = setup(gzip_blob(&pseudo_random(40_000), 8_000), 0);
    s.source.refuse_ranges.store(true, Ordering::SeqCst);
    s.source.delay_ms.store(300, Ordering::SeqCst);
    s.source.whole_down.store(true, Ordering::SeqCst);
    let outcomes = concurrent_reads(&s, 4, 0, 100);
    assert!(outcomes.iter().all(|(got, _)| got.is_err()));
    // The readers after the first waited on its download instead of starting
    // their own: one download for four readers.
    assert_eq!(s.source.whole_fetches.load(Ordering::SeqCst), 1);
    // The kernel's immediate retry gets the same error without a second download.
    assert!(s.content.read(&s.location, 0, 100).is_err());
    assert_eq!(s.source.whole_fetches.load(Ordering::SeqCst), 1);
    s.source.whole_down.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(2_100));
    let got = s.content.read(&s.location, 0, 100).unwrap();
    assert_eq!(&got[..], &s.blob.content[..100]);
}

#[test]
fn cached_content_is_ready_while_other_reads_wait_on_the_registry() {
    let s = setup(gzip_blob(&pseudo_random(64_000), 8_000), 0);
    s.content.read(&s.location, 0, 8_000).unwrap();
    s.source.delay_ms.store(2_000, Ordering::SeqCst);
    std::thread::scope(|scope| {
        for reader in 1..8u64 {
            let s = &s;
            scope.spawn(move || s.content.read(&s.location, reader * 8_000, 100).unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        let ready = s
            .content
            .read_ready(&s.location, 0, 8_000)
            .unwrap()
            .unwrap();
        assert!(started.elapsed() < Duration::from_millis(50));
        assert_eq!(&ready[..], &s.blob.content[..8_000]);
        assert!(
            s.content.read_ready(&s.location, 60_000, 100).is_none(),
            "content not at hand is not ready"
        );
    });
}

#[test]
fn the_lazy_table_sets_the_engine_options() {
    let config = crate::config::Config::parse(
        "shared_cache_dir = \"/shared/lazyimg\"\n[network]\nread_timeout = 7\n[lazy]\nworkers = 1\nfetchers = 2\nreadahead = \"4MiB\"\nwhole_blob_timeout = 60\n",
        std::path::Path::new("/etc/lazyimg/test.toml"),
    )
    .unwrap();
    let options = LazyOptions::from_config(&config);
    assert_eq!(options.workers, 1);
    assert_eq!(options.fetchers, 2);
    assert_eq!(options.readahead, 4 << 20);
    assert_eq!(options.whole_blob_deadline, Duration::from_secs(60));
    assert_eq!(options.read_deadline, Duration::from_secs(7));
    assert_eq!(options.wait_deadline, Duration::from_secs(19));
    assert_eq!(
        options.shared_cache.as_deref(),
        Some(std::path::Path::new("/shared/lazyimg"))
    );
    let defaults = LazyOptions::from_config(&crate::config::Config::default());
    assert!(defaults.workers >= 1);
    assert_eq!(defaults.readahead, LazyOptions::default().readahead);
    let unknown = crate::config::Config::parse(
        "[lazy]\nthreads = 3\n",
        std::path::Path::new("/etc/lazyimg/test.toml"),
    );
    assert!(unknown.unwrap_err().to_string().contains("threads"));
}

/// A fetcher over `blob` whose shared cache is `shared`, with its own store.
fn setup_shared(blob: &TestBlob, shared: &std::path::Path) -> Setup {
    let mut s = setup(
        TestBlob {
            bytes: blob.bytes.clone(),
            content: blob.content.clone(),
            chunks: blob.chunks.clone(),
        },
        0,
    );
    let options = LazyOptions {
        shared_cache: Some(shared.to_path_buf()),
        ..LazyOptions::with_read_deadline(Duration::from_secs(5))
    };
    let store = Arc::new(Store::open(&s._dir.path().join("shared-node"), u64::MAX).unwrap());
    *s.source.store.lock().unwrap() = Some(Arc::clone(&store));
    let fetcher = Arc::new(
        ChunkFetcher::new(store, s.source.clone(), Arc::clone(&s.stats), &options).unwrap(),
    );
    let lazy = LazyBlob {
        digest: Digest::of(&blob.bytes),
        size: blob.bytes.len() as u64,
        chunks: blob.chunks.clone(),
        deflate: None,
    };
    s.content = ImageContent::new(
        vec![LayerContent::Chunked(Arc::new(lazy))],
        Some(fetcher),
        0,
        Arc::clone(&s.stats),
    );
    s
}

#[test]
fn a_shared_cache_serves_other_nodes_chunks_and_bad_copies_are_refetched() {
    let shared = tempfile::tempdir().unwrap();
    let blob = gzip_blob(&pseudo_random(64_000), 8_000);
    // Node 1 fetches everything from the registry and leaves it in the shared cache.
    let first = setup_shared(&blob, shared.path());
    first.content.read(&first.location, 0, 64_000).unwrap();
    let cached = shared.path().join("blobs/sha256");
    for _ in 0..200 {
        if std::fs::read_dir(&cached).map_or(0, |d| d.count()) == blob.chunks.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Node 2, registry down: every chunk comes from the shared cache, but one
    // copy was damaged there; it is refetched once the registry answers.
    let bad = cached.join(blob.chunks[2].digest.hex());
    let mut damaged = std::fs::read(&bad).unwrap();
    damaged[0] ^= 1;
    std::fs::write(&bad, damaged).unwrap();
    let second = setup_shared(&blob, shared.path());
    second.source.down.store(true, Ordering::SeqCst);
    let good = second.content.read(&second.location, 0, 16_000).unwrap();
    assert_eq!(&good[..], &blob.content[..16_000]);
    assert!(second.content.read(&second.location, 16_000, 100).is_err());
    assert!(!bad.exists(), "the damaged copy was removed");
    second.source.down.store(false, Ordering::SeqCst);
    let refetched = second
        .content
        .read(&second.location, 16_000, 8_000)
        .unwrap();
    assert_eq!(&refetched[..], &blob.content[16_000..24_000]);
    let report = second.stats.report();
    assert_eq!(report.shared_cache_hits, 2, "{report:?}");
    assert_eq!(report.verification_failures, 0, "{report:?}");
}

#[test]
fn files_compare_by_their_chunks_digests_without_a_fetch() {
    use crate::rootfs::{ContentReader, same_content};
    use crate::tree::SameContent;
    let a = setup(gzip_blob(b"aaaabbbbccccdddd", 4), 0);
    let b = setup(gzip_blob(b"aaaabbbbXcccdddd", 4), 0);
    let at = |offset, size| ContentLocation::dense(0, offset, size);
    let compare = |offset, size, fetch| {
        same_content(
            &a.content,
            &at(offset, size),
            &b.content,
            &at(offset, size),
            fetch,
        )
        .unwrap()
    };
    // Whole identical chunks; bytes inside identical chunks at the same place.
    assert_eq!(compare(0, 8, false), SameContent::Yes);
    assert_eq!(compare(2, 4, false), SameContent::Yes);
    // A file that is exactly its chunks, cut alike, one digest differing.
    assert_eq!(compare(8, 4, false), SameContent::No);
    let identity = a.content.identity(&at(8, 4)).unwrap();
    assert_eq!(identity.compare(&identity), Some(true));
    assert!(a.source.requests.lock().unwrap().is_empty());
    assert!(b.source.requests.lock().unwrap().is_empty());
    // Bytes 6..10 share a differing chunk with bytes outside them: only
    // reading tells, and without fetching that is not known.
    assert_eq!(compare(6, 4, false), SameContent::Unknown);
    assert!(a.source.requests.lock().unwrap().is_empty());
    assert_eq!(compare(6, 4, true), SameContent::No);
    assert!(!b.source.requests.lock().unwrap().is_empty());
    assert_eq!(compare(4, 4, true), SameContent::Yes);
    // Chunks cut elsewhere say nothing, however their digests compare.
    let c = setup(gzip_blob(b"aaaabbbbccccdddd", 8), 0);
    let c_identity = c.content.identity(&at(8, 4)).unwrap();
    assert_eq!(c_identity.compare(&identity), None);
}

/// A file whose chunks are equal but for one it shares with bytes beyond it
/// (the last file of a layer a rebuild appends to): only that chunk's part
/// of the file is read, from each side.
#[test]
fn files_differing_only_in_a_shared_chunk_read_only_that_part() {
    use crate::rootfs::{ContentReader, same_content};
    use crate::tree::SameContent;
    let a = setup(gzip_blob(b"aaaabbbbccccdddd", 4), 0);
    let b = setup(gzip_blob(b"aaaabbbbccccddXd", 4), 0);
    let c = setup(gzip_blob(b"aaaabbbbccccdddd", 4), 0);
    let at = |size| ContentLocation::dense(0, 0, size);
    let compare = |x: &Setup, y: &Setup, size, fetch| {
        same_content(&x.content, &at(size), &y.content, &at(size), fetch).unwrap()
    };
    assert_eq!(compare(&a, &b, 14, false), SameContent::Unknown);
    assert_eq!(compare(&a, &b, 14, true), SameContent::Yes);
    let last_chunk = |s: &Setup| {
        let chunk = s.blob.chunks.last().unwrap();
        chunk.blob_offset..chunk.blob_offset + chunk.blob_size
    };
    for side in [&a, &b] {
        assert_eq!(
            *side.source.requests.lock().unwrap(),
            vec![last_chunk(side)]
        );
    }
    assert_eq!(compare(&c, &b, 15, true), SameContent::No);
    assert_eq!(*c.source.requests.lock().unwrap(), vec![last_chunk(&c)]);
    let identity = a.content.identity(&at(14)).unwrap();
    let other = b.content.identity(&at(14)).unwrap();
    assert_eq!(identity.equal_ranges(&other, 14), vec![0..4, 4..8, 8..12]);
    assert_eq!(identity.equal_ranges(&identity, 14), vec![0..14]);
}

/// A sparse file over a chunked layer: holes read as zeros from the FUSE
/// loop's ready path and never fetch; data pieces fetch only their chunks.
#[test]
fn sparse_holes_read_as_zeros_without_a_fetch() {
    let packed = pseudo_random(16_000);
    let s = setup(gzip_blob(&packed, 4_000), 0);
    // 100 000 bytes: hole, 8 000 data, hole, 8 000 data, hole.
    let map = crate::layer::SparseMap::new(100_000, [(10_000, 8_000), (60_000, 8_000)]).unwrap();
    let location = ContentLocation {
        sparse: Some(Arc::new(map)),
        ..ContentLocation::dense(0, 0, 100_000)
    };
    let hole = s
        .content
        .read_ready(&location, 20_000, 30_000)
        .unwrap()
        .unwrap();
    assert_eq!(hole, vec![0; 30_000]);
    assert!(s.source.requests.lock().unwrap().is_empty());
    assert_eq!(s.stats.report().chunks_fetched, 0);
    // Data not yet fetched: the ready path declines, a read fetches it.
    assert!(s.content.read_ready(&location, 9_000, 2_000).is_none());
    let got = s.content.read(&location, 59_000, 10_000).unwrap();
    let mut want = vec![0; 1_000];
    want.extend_from_slice(&packed[8_000..16_000]);
    want.extend_from_slice(&[0; 1_000]);
    assert_eq!(got, want);
    let requests = s.source.requests.lock().unwrap().clone();
    let second = &s.blob.chunks[2];
    assert_eq!(requests[0].start, second.blob_offset, "{requests:?}");
    let whole = s.content.read(&location, 0, 200_000).unwrap();
    assert_eq!(whole.len(), 100_000);
    assert_eq!(&whole[10_000..18_000], &packed[..8_000]);
    assert!(
        whole[..10_000]
            .iter()
            .chain(&whole[68_000..])
            .all(|&b| b == 0)
    );
}

/// A zeros chunk (zstd:chunked's `chunkType: zeros`) keeps its table of
/// contents' blob offset; it reads as zeros with nothing fetched for it.
#[test]
fn zeros_chunks_read_without_a_fetch_wherever_they_sit() {
    let data = pseudo_random(4_000);
    let mut content = data.clone();
    content.extend_from_slice(&[0; 4_000]);
    content.extend_from_slice(&data);
    let mut blob = gzip_blob(&content, 4_000);
    blob.chunks[1].codec = ChunkCodec::Zeros;
    blob.chunks[1].blob_size = 0;
    assert!(blob.chunks[1].blob_offset > 0);
    let s = setup(blob, 0);
    let zeros = ContentLocation::dense(0, 4_000, 4_000);
    assert_eq!(s.content.read(&zeros, 0, 4_000).unwrap(), vec![0; 4_000]);
    assert!(s.source.requests.lock().unwrap().is_empty());
    assert_eq!(s.content.read(&s.location, 0, 12_000).unwrap(), content);
}

#[test]
fn a_prefetch_fetches_every_listed_file_at_once_and_reads_then_need_no_request() {
    // Four files far apart in the blob: four requests, which must all be
    // under way together for any of them to return before 5 s.
    let s = setup(gzip_blob(&pseudo_random(2_000_000), 10_000), 0);
    let files: Vec<ContentLocation> = [1_500_000, 0, 1_000_000, 500_000]
        .into_iter()
        .map(|offset| ContentLocation::dense(0, offset, 25_000))
        .collect();
    s.source.rendezvous.store(files.len(), Ordering::SeqCst);
    s.content.prefetch(&files).unwrap();
    assert_eq!(s.source.most_in_flight.load(Ordering::SeqCst), files.len());
    let requests = s.source.requests.lock().unwrap().len();
    assert_eq!(requests, files.len());
    assert_eq!(s.stats.report().chunks_fetched, 4 * 3);
    for file in &files {
        let got = s.content.read(file, 0, 25_000).unwrap();
        let start = file.offset as usize;
        assert_eq!(&got[..], &s.blob.content[start..start + 25_000]);
    }
    assert_eq!(
        s.source.requests.lock().unwrap().len(),
        requests,
        "reads were served from the prefetch"
    );
    // Prefetching what is cached asks for nothing.
    s.content.prefetch(&files).unwrap();
    assert_eq!(s.source.requests.lock().unwrap().len(), requests);
}

#[test]
fn a_failed_prefetch_reports_its_error_and_the_next_read_fetches_again() {
    let s = setup(gzip_blob(&pseudo_random(200_000), 10_000), 0);
    let file = ContentLocation::dense(0, 100_000, 30_000);
    s.source.down.store(true, Ordering::SeqCst);
    let err = s.content.prefetch(std::slice::from_ref(&file)).unwrap_err();
    assert!(err.to_string().contains("connection refused"), "{err}");
    s.source.down.store(false, Ordering::SeqCst);
    let got = s.content.read(&file, 0, 30_000).unwrap();
    assert_eq!(&got[..], &s.blob.content[100_000..130_000]);
}
