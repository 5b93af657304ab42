//! Random access into ordinary gzip layer blobs: the zran / SOCI technique.
//!
//! Streaming a blob once through [`GzipIndexer`] records checkpoints about
//! every `span` compressed bytes, at deflate block boundaries or gzip member
//! starts: the compressed bit position where inflation can restart and, in
//! [`GzipCheckpoints::windows`], the up-to-32 KiB of output before it (the
//! history deflate back-references may reach into). Later [`inflate_span`]
//! decodes one span from nothing but its compressed bytes ([`span_range`]),
//! e.g. fetched with an HTTP Range request.
//!
//! A blob is any number of concatenated gzip members (pigz, eStargz), and a
//! span may run across member boundaries, empty members included. Zero bytes
//! after the last member are skipped as `gzip -d` does (tape-style padding;
//! flate2's `MultiGzDecoder` rejects them); any other trailing byte must start
//! a gzip member, so trailing garbage is an error.
//!
//! Integrity: indexing verifies every member's CRC-32 and length, as a full
//! decompression does. [`inflate_span`] verifies those of members it decodes
//! whole, but cannot check a member it enters mid-way: callers digest the
//! span's bytes themselves.

use std::ffi::{CStr, c_int, c_uint};
use std::io::{self, BufRead, Read};
use std::ops::Range;

use libz_rs_sys as z;
use serde::{Deserialize, Serialize};

/// Deflate's longest back-reference distance: the history a restart needs.
pub const WINDOW_SIZE: usize = 32 * 1024;

/// Output decoded per inflate call while indexing. The buffer holds a window
/// in front of it, so each slide copies one window per `OUT_CHUNK` of output.
const OUT_CHUNK: usize = 256 * 1024;
const IN_CHUNK: usize = 128 * 1024;
const GZIP_TRAILER_LEN: usize = 8;
/// Deflate's densest code is a 258-byte match in 2 bits: no input byte
/// decodes to more output than this, whatever a (corrupt) index claims.
const MAX_DEFLATE_RATIO: u64 = 1032;
/// [`GzipIndexer::new`] caps a span's output at this multiple of `span`, so
/// highly compressible stretches (zero-filled files) stay cheap to decode.
const DEFAULT_OUT_SPAN_RATIO: u64 = 8;

/// A place where decoding can restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Offset in the uncompressed stream where decoding from here starts.
    pub out: u64,
    /// Offset in the compressed blob of the first whole byte to feed the inflater.
    pub input: u64,
    /// 0..=7: bits of the byte at `input - 1` still unconsumed (zran's
    /// `bits`); 0 when at a byte boundary.
    pub bits: u8,
    /// `input` is the first byte of a gzip member: decoding parses its
    /// header, and needs no window since deflate history starts afresh.
    pub member_start: bool,
}

/// The index of one gzip blob, as [`GzipIndexer::finish`] returns it.
///
/// Checkpoint `out` offsets strictly increase and every span has output
/// (bar the one span of an empty stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GzipCheckpoints {
    /// `checkpoints[0]` is at out=0, input=0 (start of the first member).
    pub checkpoints: Vec<Checkpoint>,
    /// `windows[k]`: the up-to-32 KiB of uncompressed output before
    /// `checkpoints[k]`, within its member; empty when none is needed.
    pub windows: Vec<Vec<u8>>,
    /// Size of the blob, trailing padding included.
    pub compressed_size: u64,
    pub uncompressed_size: u64,
}

/// The compressed byte range of the blob needed to decode span `k` (from
/// `checkpoints[k].out` up to `checkpoints[k + 1].out`, or to the end of the
/// stream for the last span, whose range runs to the end of the blob).
/// Panics if `k` is not a checkpoint's index.
pub fn span_range(index: &GzipCheckpoints, k: usize) -> Range<u64> {
    let cp = &index.checkpoints[k];
    // The next span starts inside byte `next.input - 1` when `next.bits` > 0;
    // that byte ends this span, so it belongs to both.
    let end = index
        .checkpoints
        .get(k + 1)
        .map_or(index.compressed_size, |next| next.input);
    cp.input.saturating_sub(u64::from(cp.bits > 0))..end
}

/// The uncompressed range span `k` decodes to. Panics if `k` is not a
/// checkpoint's index.
pub fn span_out_range(index: &GzipCheckpoints, k: usize) -> Range<u64> {
    let end = index
        .checkpoints
        .get(k + 1)
        .map_or(index.uncompressed_size, |next| next.out);
    index.checkpoints[k].out..end
}

/// The span holding uncompressed offset `offset`; `None` past the end.
pub fn span_at(index: &GzipCheckpoints, offset: u64) -> Option<usize> {
    if offset >= index.uncompressed_size {
        return None;
    }
    index
        .checkpoints
        .partition_point(|cp| cp.out <= offset)
        .checked_sub(1)
}

/// Decodes one span: `compressed` is exactly the bytes of [`span_range`],
/// `window` the checkpoint's window, `out_len` the length of
/// [`span_out_range`]. Returns exactly `out_len` bytes.
///
/// Corrupt or short input gives `InvalidData` or `UnexpectedEof`; a
/// malformed checkpoint or window gives `InvalidInput`.
pub fn inflate_span(
    cp: &Checkpoint,
    window: &[u8],
    compressed: &[u8],
    out_len: usize,
) -> io::Result<Vec<u8>> {
    if cp.bits > 7 || (cp.member_start && cp.bits != 0) || window.len() > WINDOW_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "malformed gzip checkpoint or window",
        ));
    }
    // Refuse before allocating: a claim no deflate data can meet is corrupt.
    if out_len as u64 > (compressed.len() as u64).saturating_mul(MAX_DEFLATE_RATIO) {
        return Err(invalid_data(format!(
            "{} compressed bytes cannot decode to {out_len} bytes",
            compressed.len()
        )));
    }

    let mut input = compressed;
    // Raw inflation (from a mid-member checkpoint) leaves the member's
    // trailer unread; gzip mode consumes and checks it.
    let mut raw = !cp.member_start;
    let mut inflater = if cp.member_start {
        Inflater::new(Wrap::Gzip)?
    } else {
        let mut inflater = Inflater::new(Wrap::Raw)?;
        if cp.bits > 0 {
            let (&first, rest) = input.split_first().ok_or_else(truncated)?;
            // Deflate fills bytes from the low bit: the unread bits are the high ones.
            inflater.prime(cp.bits, first >> (8 - cp.bits))?;
            input = rest;
        }
        if !window.is_empty() {
            inflater.set_dictionary(window)?;
        }
        inflater
    };

    let mut out = vec![0; out_len];
    let mut produced = 0;
    let mut in_member = true;
    while produced < out_len {
        if !in_member {
            if raw {
                input = input.get(GZIP_TRAILER_LEN..).ok_or_else(truncated)?;
                raw = false;
            }
            // More output is due, so another member must follow; inflate
            // rejects anything that is not a gzip header.
            if input.is_empty() {
                return Err(truncated());
            }
            inflater.reset(Wrap::Gzip)?;
            in_member = true;
        }
        let step = inflater.inflate(input, &mut out[produced..], z::Z_NO_FLUSH)?;
        input = &input[step.consumed..];
        produced += step.produced;
        if step.stream_end {
            in_member = false;
        } else if step.consumed == 0 && step.produced == 0 {
            return Err(if input.is_empty() {
                truncated()
            } else {
                stalled()
            });
        }
    }
    Ok(out)
}

/// Yields the full uncompressed stream of `inner` (all concatenated gzip
/// members, like flate2's `MultiGzDecoder`) while recording checkpoints about
/// every `span` compressed bytes; [`finish`](Self::finish) returns them.
///
/// Reading it through [`BufRead`] avoids one copy of the output. Windows are
/// kept in memory until `finish`: up to 32 KiB per checkpoint.
pub struct GzipIndexer<R> {
    inner: R,
    span: u64,
    out_span: u64,
    /// Created with the first member, so that `new` cannot fail.
    inflater: Option<Inflater>,
    state: State,
    input: Box<[u8]>,
    in_pos: usize,
    in_end: usize,
    in_eof: bool,
    /// Bytes read from `inner`: the blob offset of `input[in_end]`.
    read_total: u64,
    /// `out[out_pos..out_end]` is output not yet read. Sliding keeps the last
    /// `WINDOW_SIZE` bytes of output (or all of it) before `out_end`, so a
    /// checkpoint's window is one slice and output is decoded in place.
    out: Box<[u8]>,
    out_pos: usize,
    out_end: usize,
    out_total: u64,
    /// Where the current member's output began: its deflate history, and so
    /// a window, reaches no further back.
    member_out: u64,
    checkpoints: Vec<Checkpoint>,
    windows: Vec<Vec<u8>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// A gzip member starts at the next byte, as at the start of the blob.
    MemberStart,
    Member,
    /// A member ended: another one, zero padding or the end may follow.
    AfterMember,
    Padding,
    Done,
}

impl<R: Read> GzipIndexer<R> {
    /// Checkpoints about every `span` compressed bytes, and at least every
    /// `8 * span` uncompressed bytes.
    pub fn new(inner: R, span: u64) -> Self {
        Self::with_out_span(inner, span, span.saturating_mul(DEFAULT_OUT_SPAN_RATIO))
    }

    /// Checkpoints once a span reaches `span` compressed or `out_span`
    /// uncompressed bytes, at the next block boundary or member start.
    pub fn with_out_span(inner: R, span: u64, out_span: u64) -> Self {
        GzipIndexer {
            inner,
            span,
            out_span,
            inflater: None,
            state: State::MemberStart,
            input: vec![0; IN_CHUNK].into_boxed_slice(),
            in_pos: 0,
            in_end: 0,
            in_eof: false,
            read_total: 0,
            out: vec![0; WINDOW_SIZE + OUT_CHUNK].into_boxed_slice(),
            out_pos: 0,
            out_end: 0,
            out_total: 0,
            member_out: 0,
            checkpoints: Vec::new(),
            windows: Vec::new(),
        }
    }

    /// The checkpoints placed so far. One is placed before any output past its
    /// `out` is produced, so a reader can split the stream at them as it goes.
    /// (`finish` drops a last checkpoint that no output follows.)
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }

    /// Reads whatever the caller left unread, then returns the index.
    pub fn finish(mut self) -> io::Result<GzipCheckpoints> {
        loop {
            let pending = self.fill_buf()?.len();
            if pending == 0 {
                break;
            }
            self.consume(pending);
        }
        // A checkpoint with no output after it (say, at the eStargz footer,
        // an empty last member) would only make an empty span.
        if self.checkpoints.len() > 1
            && self
                .checkpoints
                .last()
                .is_some_and(|cp| cp.out == self.out_total)
        {
            self.checkpoints.pop();
            self.windows.pop();
        }
        Ok(GzipCheckpoints {
            checkpoints: self.checkpoints,
            windows: self.windows,
            compressed_size: self.read_total,
            uncompressed_size: self.out_total,
        })
    }

    /// Blob offset of the next unconsumed input byte.
    fn in_offset(&self) -> u64 {
        self.read_total - (self.in_end - self.in_pos) as u64
    }

    /// Decodes until output is pending or the stream has ended.
    fn fill(&mut self) -> io::Result<()> {
        while self.out_pos == self.out_end && self.state != State::Done {
            if self.in_pos == self.in_end && !self.in_eof {
                self.refill()?;
            }
            match self.state {
                State::MemberStart => self.start_member()?,
                State::Member => self.inflate_some()?,
                State::AfterMember => {
                    self.state = match self.input[self.in_pos..self.in_end].first() {
                        None => State::Done,
                        Some(0) => State::Padding,
                        Some(_) => State::MemberStart,
                    }
                }
                State::Padding => {
                    let rest = &self.input[self.in_pos..self.in_end];
                    if rest.is_empty() {
                        self.state = State::Done;
                    } else if let Some(i) = rest.iter().position(|&b| b != 0) {
                        return Err(invalid_data(format!(
                            "non-zero byte at offset {} after the last gzip member",
                            self.in_offset() + i as u64
                        )));
                    } else {
                        self.in_pos = self.in_end;
                    }
                }
                State::Done => {}
            }
        }
        Ok(())
    }

    /// Refills the empty input buffer; sets `in_eof` at the end of `inner`.
    fn refill(&mut self) -> io::Result<()> {
        let n = loop {
            match self.inner.read(&mut self.input) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                result => break result?,
            }
        };
        self.in_eof = n == 0;
        self.in_pos = 0;
        self.in_end = n;
        self.read_total += n as u64;
        Ok(())
    }

    fn start_member(&mut self) -> io::Result<()> {
        let input = self.in_offset();
        if self.due(input) {
            self.checkpoints.push(Checkpoint {
                out: self.out_total,
                input,
                bits: 0,
                member_start: true,
            });
            self.windows.push(Vec::new());
        }
        inflater(&mut self.inflater)?.reset(Wrap::Gzip)?;
        self.member_out = self.out_total;
        self.state = State::Member;
        Ok(())
    }

    fn inflate_some(&mut self) -> io::Result<()> {
        if self.out_end == self.out.len() {
            // Only reached once the reader has drained the buffer.
            self.out
                .copy_within(self.out_end - WINDOW_SIZE..self.out_end, 0);
            self.out_pos = WINDOW_SIZE;
            self.out_end = WINDOW_SIZE;
        }
        // Z_BLOCK returns at every block boundary, where checkpoints can go.
        let step = inflater(&mut self.inflater)?.inflate(
            &self.input[self.in_pos..self.in_end],
            &mut self.out[self.out_end..],
            z::Z_BLOCK,
        )?;
        self.in_pos += step.consumed;
        self.out_end += step.produced;
        self.out_total += step.produced as u64;
        if step.stream_end {
            self.state = State::AfterMember;
        } else if step.consumed == 0 && step.produced == 0 {
            // Input was refilled and output space made before the call, so
            // only the end of the blob stops progress legitimately.
            return Err(if self.in_pos == self.in_end {
                truncated()
            } else {
                stalled()
            });
        } else if step.data_type & 0xc0 == 0x80 {
            // At a block boundary (or the end of a header), but not after the
            // last block, where the member's end comes next.
            self.at_block_boundary(step.data_type);
        }
        Ok(())
    }

    fn at_block_boundary(&mut self, data_type: c_int) {
        // The low bits of data_type count bits the inflater holds but has not
        // used. zlib keeps fewer than 8 at a boundary; counting whole bytes
        // too keeps the position right if an implementation buffers more.
        let bit_pos = self.in_offset() * 8 - (data_type & 63) as u64;
        let input = bit_pos.div_ceil(8);
        if !self.due(input) {
            return;
        }
        let history = (self.out_total - self.member_out).min(WINDOW_SIZE as u64) as usize;
        self.checkpoints.push(Checkpoint {
            out: self.out_total,
            input,
            bits: (input * 8 - bit_pos) as u8,
            member_start: false,
        });
        self.windows
            .push(self.out[self.out_end - history..self.out_end].to_vec());
    }

    /// Whether a checkpoint at compressed offset `input` (and the current
    /// output offset) should be recorded.
    fn due(&self, input: u64) -> bool {
        match self.checkpoints.last() {
            None => true,
            Some(last) => {
                self.out_total > last.out
                    && (input - last.input >= self.span
                        || self.out_total - last.out >= self.out_span)
            }
        }
    }
}

impl<R: Read> BufRead for GzipIndexer<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.fill()?;
        Ok(&self.out[self.out_pos..self.out_end])
    }

    fn consume(&mut self, amount: usize) {
        self.out_pos = (self.out_pos + amount).min(self.out_end);
    }
}

impl<R: Read> Read for GzipIndexer<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pending = self.fill_buf()?;
        let n = pending.len().min(buf.len());
        buf[..n].copy_from_slice(&pending[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// The indexer's inflater, created on first use.
fn inflater(slot: &mut Option<Inflater>) -> io::Result<&mut Inflater> {
    match slot {
        Some(inflater) => Ok(inflater),
        empty @ None => Ok(empty.insert(Inflater::new(Wrap::Gzip)?)),
    }
}

fn invalid_data(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "gzip data ends early")
}

fn stalled() -> io::Error {
    invalid_data("inflate made no progress on gzip data")
}

/// What the inflater is to read next.
#[derive(Clone, Copy)]
enum Wrap {
    /// A gzip member: header, deflate data, checked trailer.
    Gzip,
    /// Bare deflate data, as from a checkpoint inside a member.
    Raw,
}

impl Wrap {
    /// `windowBits` for inflateInit2/inflateReset2: a 32 KiB window.
    fn window_bits(self) -> c_int {
        match self {
            Wrap::Gzip => 15 + 16,
            Wrap::Raw => -15,
        }
    }
}

/// What one inflate call did.
struct Step {
    consumed: usize,
    produced: usize,
    stream_end: bool,
    /// zlib's `data_type`: unused bits | 64 after the last block | 128 at a
    /// block boundary.
    data_type: c_int,
}

/// Owns a zlib-rs inflate stream. The C-style API takes raw pointers, so
/// this is the one place with `unsafe`.
struct Inflater {
    /// Boxed so the stream keeps its address; zlib forbids moving one.
    stream: Box<z::z_stream>,
}

// SAFETY: the stream's state is owned exclusively by this value and holds no
// thread-bound resources; every use goes through `&mut self`.
unsafe impl Send for Inflater {}

impl Inflater {
    fn new(wrap: Wrap) -> io::Result<Self> {
        // The default stream carries zlib-rs's allocator functions.
        let mut stream = Box::<z::z_stream>::default();
        // SAFETY: `stream` is a valid z_stream with allocator functions set;
        // the version and size describe the z_stream this crate links against.
        let code = unsafe {
            z::inflateInit2_(
                &mut *stream,
                wrap.window_bits(),
                z::zlibVersion(),
                size_of::<z::z_stream>() as c_int,
            )
        };
        let inflater = Inflater { stream };
        inflater.check(code)?;
        Ok(inflater)
    }

    /// Starts a new stream; forgets the window, so history never crosses.
    fn reset(&mut self, wrap: Wrap) -> io::Result<()> {
        // SAFETY: the stream was initialised by inflateInit2_.
        let code = unsafe { z::inflateReset2(&mut *self.stream, wrap.window_bits()) };
        self.check(code)
    }

    /// Feeds the low `bits` bits of `value` before any input byte.
    fn prime(&mut self, bits: u8, value: u8) -> io::Result<()> {
        // SAFETY: the stream was initialised by inflateInit2_.
        let code =
            unsafe { z::inflatePrime(&mut *self.stream, c_int::from(bits), c_int::from(value)) };
        self.check(code)
    }

    /// Sets the history back-references may use (raw streams only).
    fn set_dictionary(&mut self, dictionary: &[u8]) -> io::Result<()> {
        // SAFETY: the stream was initialised by inflateInit2_; the pointer and
        // length describe `dictionary`, which is at most 32 KiB.
        let code = unsafe {
            z::inflateSetDictionary(
                &mut *self.stream,
                dictionary.as_ptr(),
                dictionary.len() as c_uint,
            )
        };
        self.check(code)
    }

    fn inflate(&mut self, input: &[u8], output: &mut [u8], flush: c_int) -> io::Result<Step> {
        // Larger slices are simply processed over several calls.
        let avail_in = input.len().min(c_uint::MAX as usize) as c_uint;
        let avail_out = output.len().min(c_uint::MAX as usize) as c_uint;
        let stream = &mut *self.stream;
        stream.next_in = input.as_ptr();
        stream.avail_in = avail_in;
        stream.next_out = output.as_mut_ptr();
        stream.avail_out = avail_out;
        // SAFETY: the stream was initialised by inflateInit2_; next_in and
        // next_out describe live slices for the duration of the call.
        let code = unsafe { z::inflate(stream, flush) };
        let step = Step {
            consumed: (avail_in - stream.avail_in) as usize,
            produced: (avail_out - stream.avail_out) as usize,
            stream_end: code == z::Z_STREAM_END,
            data_type: stream.data_type,
        };
        // Leave no pointers to the caller's buffers behind.
        stream.next_in = std::ptr::null();
        stream.next_out = std::ptr::null_mut();
        stream.avail_in = 0;
        stream.avail_out = 0;
        match code {
            // Z_BUF_ERROR only means no progress was possible; callers decide.
            z::Z_STREAM_END | z::Z_BUF_ERROR => Ok(step),
            _ => self.check(code).map(|()| step),
        }
    }

    fn check(&self, code: c_int) -> io::Result<()> {
        let detail = if self.stream.msg.is_null() {
            ""
        } else {
            // SAFETY: zlib-rs sets `msg` only to static NUL-terminated strings.
            unsafe { CStr::from_ptr(self.stream.msg) }
                .to_str()
                .unwrap_or("")
        };
        match code {
            z::Z_OK => Ok(()),
            // Gzip and raw streams never ask for a dictionary: corrupt data.
            z::Z_DATA_ERROR | z::Z_NEED_DICT => {
                Err(invalid_data(format!("corrupt gzip data: {detail}")))
            }
            z::Z_MEM_ERROR => Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "inflate could not allocate its state",
            )),
            _ => Err(io::Error::other(format!(
                "inflate failed (zlib code {code}) {detail}"
            ))),
        }
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by inflateInit2_ (inflateEnd also
        // accepts one whose initialisation failed) and is not used again.
        unsafe { z::inflateEnd(&mut *self.stream) };
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::read::MultiGzDecoder;
    use flate2::write::{DeflateEncoder, GzEncoder};

    use super::*;

    /// xorshift64*: deterministic data without a rand dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&rng.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
        const WORDS: &str = "the layer blob mount lazy fuse inode tar gzip zstd registry digest \
            sha256 manifest config usr lib bin etc python3 libc.so.6 #include return static const { } 0x7f";
        let words: Vec<&str> = WORDS.split_whitespace().collect();
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            // Skewed choice, as in real text.
            let word = words[rng.below(words.len()).min(rng.below(words.len()))];
            out.extend_from_slice(word.as_bytes());
            out.push(if rng.below(9) == 0 { b'\n' } else { b' ' });
        }
        out.truncate(len);
        out
    }

    /// Runs of incompressible, text-like, zero and short-period bytes.
    fn mixed(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = Rng(seed);
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let run = (1 + rng.below(128 * 1024)).min(len - out.len());
            match rng.below(4) {
                0 => out.extend(random_bytes(&mut rng, run)),
                1 => out.extend(text(&mut rng, run)),
                2 => out.resize(out.len() + run, 0),
                _ => {
                    let period_len = 1 + rng.below(300);
                    let period = random_bytes(&mut rng, period_len);
                    out.extend(period.iter().cycle().take(run));
                }
            }
        }
        out
    }

    fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::new(level));
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// Like [`gzip`], with sync flushes at random points: many more block
    /// boundaries (empty stored blocks among them) than miniz's large blocks.
    fn gzip_with_flushes(data: &[u8], level: u32, rng: &mut Rng) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::new(level));
        let mut rest = data;
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at((1 + rng.below(20_000)).min(rest.len()));
            encoder.write_all(piece).unwrap();
            if rng.below(3) == 0 {
                encoder.flush().unwrap();
            }
            rest = tail;
        }
        encoder.finish().unwrap()
    }

    /// A member setting every optional header field, FHCRC included, which
    /// flate2's GzBuilder cannot write.
    fn member_with_all_header_fields(data: &[u8]) -> Vec<u8> {
        let mut header = vec![0x1f, 0x8b, 8, 0x02 | 0x04 | 0x08 | 0x10, 1, 2, 3, 4, 0, 255];
        let extra = b"XYextra field";
        header.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        header.extend_from_slice(extra);
        header.extend_from_slice(b"name.tar\0a comment\0");
        let mut crc = flate2::Crc::new();
        crc.update(&header);
        header.extend_from_slice(&(crc.sum() as u16).to_le_bytes());

        let mut encoder = DeflateEncoder::new(header, Compression::new(6));
        encoder.write_all(data).unwrap();
        let mut member = encoder.finish().unwrap();
        let mut crc = flate2::Crc::new();
        crc.update(data);
        member.extend_from_slice(&crc.sum().to_le_bytes());
        member.extend_from_slice(&(data.len() as u32).to_le_bytes());
        member
    }

    /// An eStargz-style footer: an empty member whose extra field says where
    /// the table of contents is.
    fn footer_member() -> Vec<u8> {
        flate2::GzBuilder::new()
            .extra(b"SG\x16\x000000000000012345STARGZ".to_vec())
            .write(Vec::new(), Compression::new(9))
            .finish()
            .unwrap()
    }

    fn build(blob: &[u8], span: u64) -> (Vec<u8>, GzipCheckpoints) {
        let mut indexer = GzipIndexer::new(blob, span);
        let mut out = Vec::new();
        indexer.read_to_end(&mut out).unwrap();
        (out, indexer.finish().unwrap())
    }

    fn decode_span(index: &GzipCheckpoints, blob: &[u8], k: usize) -> io::Result<Vec<u8>> {
        let range = span_range(index, k);
        let out = span_out_range(index, k);
        inflate_span(
            &index.checkpoints[k],
            &index.windows[k],
            &blob[range.start as usize..range.end as usize],
            (out.end - out.start) as usize,
        )
    }

    /// Indexes `blob`, checks the stream and index against `expected`, and
    /// decodes every span from its compressed range alone.
    fn check(blob: &[u8], expected: &[u8], span: u64) -> GzipCheckpoints {
        let (out, index) = build(blob, span);
        assert!(out == expected, "indexer output differs");
        assert_eq!(index.compressed_size, blob.len() as u64);
        assert_eq!(index.uncompressed_size, expected.len() as u64);
        let first = Checkpoint {
            out: 0,
            input: 0,
            bits: 0,
            member_start: true,
        };
        assert_eq!(index.checkpoints[0], first);
        assert_eq!(index.windows.len(), index.checkpoints.len());
        for pair in index.checkpoints.windows(2) {
            assert!(pair[0].out < pair[1].out, "{pair:?}");
            assert!(pair[0].input <= pair[1].input, "{pair:?}");
        }
        for (k, cp) in index.checkpoints.iter().enumerate() {
            let window = &index.windows[k];
            assert!(cp.bits < 8 && window.len() <= WINDOW_SIZE);
            if cp.member_start {
                assert!(cp.bits == 0 && window.is_empty());
            } else {
                let before = &expected[..cp.out as usize];
                assert!(
                    before.ends_with(window),
                    "window {k} is not the preceding output"
                );
            }
            let out = span_out_range(&index, k);
            let got = decode_span(&index, blob, k).unwrap();
            assert!(
                got == expected[out.start as usize..out.end as usize],
                "span {k} differs"
            );
            if !expected.is_empty() {
                assert_eq!(span_at(&index, out.start), Some(k));
                assert_eq!(span_at(&index, out.end - 1), Some(k));
            }
        }
        assert_eq!(span_at(&index, expected.len() as u64), None);
        index
    }

    #[test]
    fn single_member_at_every_level() {
        let data = mixed(1, 3 << 20);
        for level in [0, 1, 6, 9] {
            let blob = gzip(&data, level);
            let index = check(&blob, &data, 64 << 10);
            assert!(
                index.checkpoints.len() > 5,
                "level {level}: {}",
                index.checkpoints.len()
            );
            assert!(index.windows.iter().any(|w| w.len() == WINDOW_SIZE));
            if level > 0 {
                // Restarting inside a byte (inflatePrime) is exercised.
                assert!(
                    index.checkpoints.iter().any(|cp| cp.bits > 0),
                    "level {level}"
                );
            }
        }
    }

    #[test]
    fn data_kinds() {
        let mut rng = Rng(2);
        let kinds = [
            random_bytes(&mut rng, 1 << 20),
            text(&mut rng, 1 << 20),
            vec![0; 4 << 20],
            Vec::new(),
            b"x".to_vec(),
        ];
        for data in &kinds {
            check(&gzip(data, 6), data, 16 << 10);
        }
    }

    #[test]
    fn tiny_spans_checkpoint_every_block() {
        let mut rng = Rng(3);
        let data = mixed(3, 1 << 20);
        for level in [0, 1, 6] {
            let blob = gzip_with_flushes(&data, level, &mut rng);
            let every_block = check(&blob, &data, 0);
            let per_byte = check(&blob, &data, 1);
            assert_eq!(every_block, per_byte);
            assert!(
                every_block.checkpoints.len() > 20,
                "{}",
                every_block.checkpoints.len()
            );
        }
    }

    #[test]
    fn many_small_members_and_crossing_spans() {
        let mut rng = Rng(4);
        let mut blob = Vec::new();
        let mut data = Vec::new();
        let mut member_starts = Vec::new();
        for i in 0..300 {
            let len = if i % 7 == 0 { 0 } else { rng.below(5000) };
            let part = mixed(rng.next(), len);
            member_starts.push(blob.len() as u64);
            blob.extend(gzip_with_flushes(&part, [1, 6, 9][i % 3], &mut rng));
            data.extend(part);
        }
        let mut full = Vec::new();
        MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut full)
            .unwrap();
        assert!(full == data);

        for span in [1, 1000, 20_000] {
            let index = check(&blob, &data, span);
            let crossing: Vec<&Checkpoint> = (0..index.checkpoints.len())
                .filter(|&k| {
                    let range = span_range(&index, k);
                    member_starts
                        .iter()
                        .any(|&s| s != range.start && range.contains(&s))
                })
                .map(|k| &index.checkpoints[k])
                .collect();
            assert!(!crossing.is_empty(), "span {span}: no span crosses members");
            if span == 20_000 {
                // Raw decoding from inside a member skips its trailer itself.
                assert!(crossing.iter().any(|cp| !cp.member_start && cp.bits > 0));
            }
        }
    }

    #[test]
    fn header_fields_and_empty_members() {
        let mut rng = Rng(5);
        let parts: Vec<Vec<u8>> = (0..6).map(|_| text(&mut rng, 40_000)).collect();
        let mut blob = Vec::new();
        blob.extend(member_with_all_header_fields(&parts[0]));
        blob.extend(gzip(&[], 6));
        blob.extend(
            flate2::GzBuilder::new()
                .filename("file.txt")
                .comment("comment")
                .extra(vec![1, 2, 3, 4])
                .write(Vec::new(), Compression::new(6))
                .finish()
                .unwrap(),
        );
        blob.extend(member_with_all_header_fields(&parts[1]));
        blob.extend(member_with_all_header_fields(&[]));
        for part in &parts[2..] {
            blob.extend(gzip(part, 6));
            blob.extend(gzip(&[], 1));
        }
        blob.extend(footer_member());
        let data = parts.concat();
        for span in [1, 100, 5000, 30_000] {
            check(&blob, &data, span);
        }
    }

    #[test]
    fn trailing_zeros_are_padding_other_bytes_an_error() {
        let data = mixed(6, 200_000);
        let blob = gzip(&data, 6);

        let mut padded = blob.clone();
        padded.resize(blob.len() + 1000, 0);
        let index = check(&padded, &data, 10_000);
        assert_eq!(index.compressed_size, padded.len() as u64);

        for tail in [&b"\0\0\0x"[..], b"garbage", b"\x1f"] {
            let mut bad = blob.clone();
            bad.extend_from_slice(tail);
            let mut indexer = GzipIndexer::new(&bad[..], 10_000);
            let err = io::copy(&mut indexer, &mut io::sink()).unwrap_err();
            assert!(
                matches!(
                    err.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                ),
                "{tail:?}: {err}"
            );
        }
    }

    #[test]
    fn corrupt_streams_fail_indexing() {
        let data = mixed(7, 300_000);
        let blob = gzip(&data, 6);
        let fails = |bytes: &[u8]| {
            GzipIndexer::new(bytes, 1000)
                .finish()
                .expect_err("indexing should fail")
                .kind()
        };
        assert_eq!(fails(b""), io::ErrorKind::UnexpectedEof);
        assert_eq!(fails(b"not gzip at all"), io::ErrorKind::InvalidData);
        assert_eq!(fails(&blob[..blob.len() / 2]), io::ErrorKind::UnexpectedEof);
        assert_eq!(fails(&blob[..blob.len() - 3]), io::ErrorKind::UnexpectedEof);
        let mut bad_crc = blob.clone();
        let crc_at = blob.len() - 8;
        bad_crc[crc_at] ^= 1;
        assert_eq!(fails(&bad_crc), io::ErrorKind::InvalidData);
    }

    #[test]
    fn truncated_span_input_is_detected() {
        let data = mixed(8, 2 << 20);
        let blob = gzip(&data, 6);
        let index = check(&blob, &data, 32 << 10);
        for k in 0..index.checkpoints.len() {
            let range = span_range(&index, k);
            let out = span_out_range(&index, k);
            let out_len = (out.end - out.start) as usize;
            let expected = &data[out.start as usize..out.end as usize];
            let decode = |end: u64| {
                let compressed = &blob[range.start as usize..end as usize];
                inflate_span(
                    &index.checkpoints[k],
                    &index.windows[k],
                    compressed,
                    out_len,
                )
            };
            let half = decode(range.start + (range.end - range.start) / 2).unwrap_err();
            assert_eq!(half.kind(), io::ErrorKind::UnexpectedEof, "span {k}");
            // The last bytes may hold only an end-of-block code; without them
            // decoding either succeeds exactly or reports the truncation.
            for cut in 1..=4 {
                match decode(range.end - cut) {
                    Ok(got) => assert!(got == expected, "span {k} cut {cut}"),
                    Err(err) => assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof),
                }
            }
        }
    }

    #[test]
    fn flipped_bytes_never_panic() {
        let mut rng = Rng(9);
        let mut blob = Vec::new();
        let mut data = Vec::new();
        for _ in 0..8 {
            let part = mixed(rng.next(), 150_000);
            blob.extend(gzip(&part, 6));
            data.extend(part);
        }
        let index = check(&blob, &data, 40_000);
        let (mut errors, mut differing) = (0, 0);
        for k in 0..index.checkpoints.len() {
            let range = span_range(&index, k);
            let out = span_out_range(&index, k);
            let expected = &data[out.start as usize..out.end as usize];
            for _ in 0..30 {
                let mut compressed = blob[range.start as usize..range.end as usize].to_vec();
                let at = rng.below(compressed.len());
                compressed[at] ^= 1 << rng.below(8);
                let result = inflate_span(
                    &index.checkpoints[k],
                    &index.windows[k],
                    &compressed,
                    expected.len(),
                );
                match result {
                    Ok(got) if got == expected => {}
                    Ok(got) => {
                        assert_eq!(got.len(), expected.len());
                        differing += 1;
                    }
                    Err(err) => {
                        assert!(matches!(
                            err.kind(),
                            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                        ));
                        errors += 1;
                    }
                }
            }
        }
        assert!(
            errors > 0 && differing > 0,
            "{errors} errors, {differing} differing"
        );
    }

    #[test]
    fn the_window_matters() {
        let mut rng = Rng(10);
        let data = text(&mut rng, 1 << 20);
        let blob = gzip(&data, 6);
        let index = check(&blob, &data, 16 << 10);
        let k = 1 + index.checkpoints[1..]
            .iter()
            .position(|cp| !cp.member_start)
            .unwrap();
        let range = span_range(&index, k);
        let out = span_out_range(&index, k);
        let compressed = &blob[range.start as usize..range.end as usize];
        let out_len = (out.end - out.start) as usize;
        let cp = &index.checkpoints[k];
        let without = inflate_span(cp, &[], compressed, out_len);
        assert_eq!(without.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let mut wrong = index.windows[k].clone();
        wrong.reverse();
        let with_wrong = inflate_span(cp, &wrong, compressed, out_len).unwrap();
        assert!(with_wrong != data[out.start as usize..out.end as usize]);
    }

    /// Hands out input in uneven pieces, as a network stream would.
    struct Chunked<'a> {
        data: &'a [u8],
        rng: Rng,
    }

    impl Read for Chunked<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.rng.below(5) == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = (1 + self.rng.below(5000))
                .min(buf.len())
                .min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn index_is_deterministic() {
        let mut rng = Rng(11);
        let mut blob = gzip(&mixed(12, 1 << 20), 6);
        for _ in 0..50 {
            let len = rng.below(20_000);
            blob.extend(gzip(&mixed(rng.next(), len), 1 + rng.below(9) as u32));
        }
        let (expected, index) = build(&blob, 8000);

        let mut indexer = GzipIndexer::new(
            Chunked {
                data: &blob,
                rng: Rng(13),
            },
            8000,
        );
        let mut out = Vec::new();
        let mut buf = vec![0; 1000];
        loop {
            // Small, uneven reads.
            let want = 1 + rng.below(buf.len());
            match indexer.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => panic!("{err}"),
            }
        }
        assert!(out == expected);
        assert_eq!(indexer.finish().unwrap(), index);
        assert_eq!(build(&blob, 8000).1, index);
    }

    #[test]
    fn checkpoints_are_known_before_their_output() {
        let mut rng = Rng(15);
        let mut blob = Vec::new();
        for _ in 0..40 {
            let len = rng.below(30_000);
            blob.extend(gzip_with_flushes(&mixed(rng.next(), len), 6, &mut rng));
        }
        blob.extend(footer_member());
        let (_, index) = build(&blob, 2000);
        assert!(index.checkpoints.len() > 20);

        let mut indexer = GzipIndexer::new(&blob[..], 2000);
        let mut position = 0u64;
        let mut buf = [0; 777];
        loop {
            let n = indexer.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            position += n as u64;
            let placed = indexer.checkpoints();
            assert_eq!(
                placed,
                &index.checkpoints[..placed.len().min(index.checkpoints.len())]
            );
            // Every checkpoint the output read so far has passed is known.
            let passed = index
                .checkpoints
                .iter()
                .filter(|cp| cp.out < position)
                .count();
            assert!(placed.len() >= passed);
        }
        assert_eq!(indexer.finish().unwrap(), index);
    }

    #[test]
    fn out_span_caps_highly_compressible_spans() {
        let data = vec![0; 48 << 20];
        let blob = gzip(&data, 6);
        let index = GzipIndexer::with_out_span(&blob[..], 1 << 20, 4 << 20)
            .finish()
            .unwrap();
        assert!(index.checkpoints.len() >= 6, "{}", index.checkpoints.len());
        for k in [0, index.checkpoints.len() / 2, index.checkpoints.len() - 1] {
            let out = span_out_range(&index, k);
            assert_eq!(
                decode_span(&index, &blob, k).unwrap().len() as u64,
                out.end - out.start
            );
        }
        // Without the cap the compressed span alone governs: one span.
        assert_eq!(
            GzipIndexer::with_out_span(&blob[..], 1 << 20, u64::MAX)
                .finish()
                .unwrap()
                .checkpoints
                .len(),
            1
        );
    }

    #[test]
    fn malformed_requests_are_rejected() {
        let data = text(&mut Rng(14), 1 << 20);
        let blob = gzip(&data, 6);
        let index = check(&blob, &data, 16 << 10);
        let k = index.checkpoints.iter().position(|cp| cp.bits > 0).unwrap();
        let cp = &index.checkpoints[k];
        let range = span_range(&index, k);
        let compressed = &blob[range.start as usize..range.end as usize];
        let kind = |cp: &Checkpoint, window: &[u8], out_len: usize| {
            inflate_span(cp, window, compressed, out_len)
                .unwrap_err()
                .kind()
        };
        let window = &index.windows[k];
        let bad_bits = Checkpoint {
            bits: 8,
            ..cp.clone()
        };
        assert_eq!(kind(&bad_bits, window, 10), io::ErrorKind::InvalidInput);
        let header_with_bits = Checkpoint {
            member_start: true,
            ..cp.clone()
        };
        assert_eq!(
            kind(&header_with_bits, window, 10),
            io::ErrorKind::InvalidInput
        );
        let big_window = vec![0; WINDOW_SIZE + 1];
        assert_eq!(kind(cp, &big_window, 10), io::ErrorKind::InvalidInput);
        // Far more output than the bytes could encode: refused, not allocated.
        assert_eq!(kind(cp, window, usize::MAX / 2), io::ErrorKind::InvalidData);
        // More output than the stream holds.
        let past_end = kind(cp, window, data.len());
        assert!(matches!(
            past_end,
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
        ));
        assert_eq!(
            inflate_span(cp, window, compressed, 0).unwrap(),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn indexer_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<GzipIndexer<std::fs::File>>();
    }
}
