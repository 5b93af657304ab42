//! Lazy loading without the network, each against what the same machine does
//! without lazyimg, same run. Run with `cargo bench --bench lazy`.
//!
//! 1. Index build: `build_layer` over a ~256 MiB gzip layer (level 6) in
//!    the store, against `gzip -dc` (and flate2) decompressing the same blob: the
//!    index pass inflates too, and hashes every span twice on top.
//! 2. The first read of the layer's biggest file through that index, from the
//!    blob in the local store: what a cold read costs in CPU once the network
//!    is taken away (inflate; sha256 of the fetched bytes, of the content, and
//!    the store's own as it writes each chunk).
//! 3. Random 4 KiB reads of that file on a warm cache, through the same
//!    `ImageContent` a mount uses (every chunk stored, a registry that panics if
//!    asked), against `pread` of the same bytes from a page-cached plain file.

mod common;

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::median;
use lazyimg::digest::Digest;
use lazyimg::image::{Descriptor, DescriptorExt};
use lazyimg::lazy::decode::DeflateResume;
use lazyimg::lazy::index_artifact::{BuiltLayer, build_layer};
use lazyimg::lazy::source::RangeSource;
use lazyimg::lazy::{ChunkFetcher, GzipSpans, ImageContent, LayerContent, LazyBlob, LazyOptions};
use lazyimg::rootfs::{ContentReader, Stats};
use lazyimg::store::Store;
use lazyimg::tree::ContentLocation;

const GZIP_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The big file: with the small files and gzip -6, a layer of ~256 MiB.
const BIG_FILE: u64 = 376 << 20;
const SMALL_FILES: usize = 2000;
const RUNS: usize = 3;
const READS: usize = 100_000;
const READ_SIZE: usize = 4096;
/// Read size of the first, sequential read (what `dd bs=1M` asks for).
const SEQUENTIAL_READ: usize = 1 << 20;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let layer = write_layer(dir.path());
    eprintln!(
        "built the layer ({:.0} MiB gzip) in {:.1} s",
        mib(layer.gzip_size),
        started.elapsed().as_secs_f64()
    );

    let store_root = dir.path().join("store");
    let store = Arc::new(Store::open(&store_root, u64::MAX).expect("store opens"));
    let descriptor = store_file(&store, &layer.gzip_path);

    // 1. Index build.
    let gzip_dc = median(RUNS, || {
        let status = Command::new("gzip")
            .arg("-dc")
            .arg(&layer.gzip_path)
            .stdout(Stdio::null())
            .status()
            .expect("gzip runs");
        assert!(status.success());
    });
    let blob = store.require(&sha256(&descriptor)).expect("layer stored");
    let flate2 = median(RUNS, || {
        let mut decoder = flate2::read::MultiGzDecoder::new(blob.bytes());
        let out = io::copy(&mut decoder, &mut io::sink()).expect("flate2 inflates");
        assert_eq!(out, layer.tar_size);
    });
    let diff_id = {
        let mut decoder = flate2::read::MultiGzDecoder::new(blob.bytes());
        let mut hasher = lazyimg::digest::Hasher::new();
        let mut buf = vec![0; 1 << 16];
        loop {
            let n = io::Read::read(&mut decoder, &mut buf).expect("flate2 inflates");
            if n == 0 {
                break hasher.finish();
            }
            hasher.update(&buf[..n]);
        }
    };
    let mut built = None;
    let index = median(RUNS, || {
        built = build_layer(&store, &descriptor, &diff_id).expect("index builds");
    });
    let built = built.expect("a gzip layer has an index");

    let input_rate = |d: Duration| mib(layer.gzip_size) / d.as_secs_f64();
    println!(
        "index build, {:.0} MiB gzip layer of {:.0} MiB tar, {} spans (median of {RUNS} runs)",
        mib(layer.gzip_size),
        mib(layer.tar_size),
        built.file.chunked.chunks.len()
    );
    println!(
        "  gzip -dc (GNU gzip)            {:>8.1} MiB/s of gzip input",
        input_rate(gzip_dc)
    );
    println!(
        "  flate2 MultiGzDecoder          {:>8.1} MiB/s",
        input_rate(flate2)
    );
    println!(
        "  lazyimg build_layer      {:>8.1} MiB/s",
        input_rate(index)
    );
    println!(
        "  ratio index/gzip -dc           {:>8.2}",
        input_rate(index) / input_rate(gzip_dc)
    );

    // 2. First read from the local blob, then 3. warm random reads.
    let (file, warm) = first_read(&store, &descriptor, &built);
    drop(store);
    let reads = random_reads(&store_root, &descriptor, &built, &file, &layer);
    let rate = |d: Duration| mib(file.size) / d.as_secs_f64();
    println!(
        "first read of the {:.0} MiB file through the index, blob in the local store",
        mib(file.size)
    );
    println!(
        "  decoded and verified           {:>8.1} MiB/s  ({} chunks)",
        rate(warm.served),
        warm.chunks
    );
    println!(
        "  ... and written to the store   {:>8.1} MiB/s",
        rate(warm.stored)
    );
    reads.print();
}

/// The test layer on disk, and the big file's bytes as a plain file.
struct Layer {
    gzip_path: PathBuf,
    gzip_size: u64,
    tar_size: u64,
    plain_path: PathBuf,
}

/// A tar of one big file (`BIG_FILE` bytes, like a library) and `SMALL_FILES`
/// small text files, gzip level 6. The big file's content mixes what layers
/// hold, per 4 MiB: 2 MiB random (machine code, compressed data), 1 MiB over a
/// 16-letter alphabet (tables), 768 KiB of words (text), 256 KiB of zeros.
fn write_layer(dir: &Path) -> Layer {
    let plain_path = dir.join("big.bin");
    let mut plain = BufWriter::new(File::create(&plain_path).expect("create big.bin"));
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut piece = vec![0u8; 4 << 20];
    for _ in 0..BIG_FILE / piece.len() as u64 {
        let (random, rest) = piece.split_at_mut(2 << 20);
        let (hex, rest) = rest.split_at_mut(1 << 20);
        let (text, zeros) = rest.split_at_mut(768 << 10);
        rng.fill(random);
        rng.fill(hex);
        hex.iter_mut()
            .for_each(|b| *b = b"0123456789abcdef"[usize::from(*b & 15)]);
        rng.words(text);
        zeros.fill(0);
        plain.write_all(&piece).expect("write big.bin");
    }
    plain.flush().expect("write big.bin");
    drop(plain);

    let gzip_path = dir.join("layer.tar.gz");
    let gz = flate2::write::GzEncoder::new(
        BufWriter::new(File::create(&gzip_path).expect("create layer")),
        flate2::Compression::new(6),
    );
    let mut tar = tar::Builder::new(Counting {
        inner: gz,
        count: 0,
    });
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_path_with_name(&plain_path, "opt/lib/libbig.so")
        .expect("tar big file");
    let mut text = vec![0u8; 16 << 10];
    for i in 0..SMALL_FILES {
        let len = 1024 + (rng.next() % (15 << 10)) as usize;
        rng.words(&mut text[..len]);
        let mut header = tar::Header::new_gnu();
        header.set_size(len as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(
            &mut header,
            format!("usr/share/doc/pkg{}/file{i}.txt", i % 50),
            &text[..len],
        )
        .expect("tar small file");
    }
    let counting = tar.into_inner().expect("finish tar");
    let mut file = counting.inner.finish().expect("finish gzip");
    file.flush().expect("write layer");
    Layer {
        gzip_size: fs::metadata(&gzip_path).expect("layer written").len(),
        gzip_path,
        tar_size: counting.count,
        plain_path,
    }
}

/// The uncompressed tar's size, counted on its way into the encoder.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// xorshift64*: cheap, deterministic filler.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for word in out.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }

    /// Space-separated words from a small vocabulary: text gzip compresses well.
    fn words(&mut self, out: &mut [u8]) {
        const VOCABULARY: &[u8] =
            b"the layer image return static const int void struct if else for while 0x0 NULL ";
        let words: Vec<&[u8]> = VOCABULARY.split_inclusive(|&b| b == b' ').collect();
        let mut at = 0;
        while at < out.len() {
            let word = words[(self.next() % words.len() as u64) as usize];
            let n = word.len().min(out.len() - at);
            out[at..at + n].copy_from_slice(&word[..n]);
            at += n;
        }
    }
}

/// Copies `path` into the store, as a pull would leave a layer.
fn store_file(store: &Store, path: &Path) -> Descriptor {
    let bytes = fs::read(path).expect("read layer");
    let digest = Digest::of(&bytes);
    store
        .put(digest, &bytes, "bench layer")
        .expect("store layer");
    lazyimg::image::descriptor(
        GZIP_MEDIA_TYPE,
        &digest,
        bytes.len() as u64,
        Default::default(),
    )
}

/// The digest of a descriptor `store_file` made (always sha256).
fn sha256(descriptor: &Descriptor) -> Digest {
    descriptor
        .sha256()
        .expect("store_file's descriptors are sha256")
}

/// The registry of a local or warm read: never asked. A read that reaches it
/// panics, so no timing below includes a fetch.
struct NoRegistry;

impl RangeSource for NoRegistry {
    fn fetch_range(&self, blob: &Digest, range: Range<u64>) -> lazyimg::Result<Option<Bytes>> {
        panic!("a read asked the registry for bytes {range:?} of {blob}")
    }

    fn fetch_whole(&self, blob: &Digest, _: u64) -> lazyimg::Result<()> {
        panic!("a read asked the registry for all of {blob}")
    }
}

/// The layer's content as a mount's `ImageContent` reads it, from `store`.
fn image_content(store: &Arc<Store>, layer: &Descriptor, built: &BuiltLayer) -> ImageContent {
    let options = LazyOptions::default();
    let stats = Arc::new(Stats::default());
    let fetcher = Arc::new(
        ChunkFetcher::new(
            Arc::clone(store),
            Arc::new(NoRegistry),
            Arc::clone(&stats),
            &options,
        )
        .expect("starting the fetcher's threads"),
    );
    let resume = built
        .file
        .gzip
        .clone()
        .expect("a gzip layer has checkpoints");
    let chunks = &built.file.chunked.chunks;
    let spans = GzipSpans::new(resume, chunks, Arc::clone(&fetcher));
    let blob = LazyBlob {
        digest: sha256(layer),
        size: layer.size(),
        chunks: chunks.clone(),
        deflate: Some(Arc::new(spans) as Arc<dyn DeflateResume>),
    };
    ImageContent::new(
        vec![LayerContent::Chunked(Arc::new(blob))],
        Some(fetcher),
        options.readahead,
        stats,
    )
}

/// How long the first read took: until every byte was served, and until every
/// chunk it fetched was in the store.
struct FirstRead {
    served: Duration,
    stored: Duration,
    /// Chunks of the layer the file's bytes lie in.
    chunks: usize,
}

/// Reads the biggest file once, sequentially, with the layer blob and the
/// windows blob in the store: the fetcher slices them instead of asking the
/// registry, then decodes, verifies and stores every chunk as after a fetch.
fn first_read(
    store: &Arc<Store>,
    layer: &Descriptor,
    built: &BuiltLayer,
) -> (ContentLocation, FirstRead) {
    store
        .put(
            built
                .file
                .gzip
                .as_ref()
                .expect("gzip checkpoints")
                .windows_blob,
            &built.windows,
            "bench windows",
        )
        .expect("store windows");
    let file = built
        .file
        .chunked
        .table
        .entries
        .iter()
        .filter_map(|entry| ContentLocation::of_entry(0, &entry.kind))
        .max_by_key(|location| location.size)
        .expect("the layer has files");
    let content = image_content(store, layer, built);
    let started = Instant::now();
    let mut at = 0;
    while at < file.size {
        let bytes = content
            .read(&file, at, SEQUENTIAL_READ)
            .expect("first read");
        at += bytes.len() as u64;
    }
    let served = started.elapsed();
    // The fetcher's writer thread stores chunks behind the readers; the
    // content is warm once every chunk the file touches is there.
    let chunks = &built.file.chunked.chunks;
    let touched: Vec<_> = chunks
        .iter()
        .filter(|c| {
            c.content_offset < file.offset + file.size
                && c.content_offset + c.content_size > file.offset
        })
        .collect();
    for chunk in &touched {
        while !store.contains(&chunk.digest) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let stored = started.elapsed();
    (
        file,
        FirstRead {
            served,
            stored,
            chunks: touched.len(),
        },
    )
}

struct RandomReads {
    file_size: u64,
    pread: Vec<Duration>,
    lazyimg: Vec<Duration>,
}

/// `READS` random 4 KiB-aligned reads of the file: through a fresh store and
/// `ImageContent` without the layer blob (so only stored chunks can answer),
/// and by `pread` from the page-cached plain file, same offsets.
fn random_reads(
    store_root: &Path,
    layer: &Descriptor,
    built: &BuiltLayer,
    file: &ContentLocation,
    plain: &Layer,
) -> RandomReads {
    let store = Arc::new(Store::open(store_root, u64::MAX).expect("store reopens"));
    fs::remove_file(store.blob_path(&sha256(layer))).expect("remove the layer blob");
    let content = image_content(&store, layer, built);

    let reference = File::open(&plain.plain_path).expect("open big.bin");
    io::copy(&mut (&reference), &mut io::sink()).expect("page-cache big.bin");
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let pages = file.size / READ_SIZE as u64;
    let offsets: Vec<u64> = (0..READS)
        .map(|_| rng.next() % pages * READ_SIZE as u64)
        .collect();

    // One pass each first: the code, the store's open mappings, the page cache.
    let mut buf = vec![0u8; READ_SIZE];
    for &offset in offsets.iter().take(READS / 10) {
        reference.read_exact_at(&mut buf, offset).expect("pread");
        let bytes = content.read(file, offset, READ_SIZE).expect("warm read");
        assert_eq!(&bytes[..], &buf[..], "bytes at {offset} differ");
    }
    let pread = offsets
        .iter()
        .map(|&offset| {
            let started = Instant::now();
            reference.read_exact_at(&mut buf, offset).expect("pread");
            started.elapsed()
        })
        .collect();
    let lazyimg = offsets
        .iter()
        .map(|&offset| {
            let started = Instant::now();
            let bytes = content.read(file, offset, READ_SIZE).expect("warm read");
            let took = started.elapsed();
            assert_eq!(bytes.len(), READ_SIZE);
            took
        })
        .collect();
    RandomReads {
        file_size: file.size,
        pread,
        lazyimg,
    }
}

impl RandomReads {
    fn print(self) {
        println!(
            "random 4 KiB reads of the {:.0} MiB file, warm cache ({READS} reads, same offsets)",
            mib(self.file_size)
        );
        println!("                                     p50      p99     mean  (µs)");
        let pread = Summary::of(self.pread);
        let lazyimg = Summary::of(self.lazyimg);
        pread.print("pread, page-cached file");
        lazyimg.print("lazyimg ImageContent::read");
        println!(
            "  ratio lazyimg/pread (mean)     {:>8.2}",
            lazyimg.mean / pread.mean
        );
    }
}

struct Summary {
    p50: f64,
    p99: f64,
    mean: f64,
}

impl Summary {
    fn of(mut times: Vec<Duration>) -> Summary {
        times.sort();
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        let at = |q: f64| micros(times[((times.len() - 1) as f64 * q).round() as usize]);
        Summary {
            p50: at(0.5),
            p99: at(0.99),
            mean: micros(times.iter().sum::<Duration>()) / times.len() as f64,
        }
    }

    fn print(&self, what: &str) {
        println!(
            "  {what:<30} {:>8.2} {:>8.2} {:>8.2}",
            self.p50, self.p99, self.mean
        );
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
