//! Random access into ordinary gzip layer blobs: the zran / SOCI technique.
//!
//! Streaming a blob once through [`GzipCheckpointer`] records checkpoints about
//! every `span` compressed bytes, at deflate block boundaries or gzip member
//! starts: the compressed bit position where inflation can restart and, in
//! [`GzipCheckpoints::windows`], the up-to-32 KiB of output before it (the
//! history deflate back-references may reach into). Later [`inflate_span`]
//! decodes one span from nothing but its compressed bytes ([`span_range`]),
//! e.g. fetched with an HTTP Range request.
//!
//! A blob is any number of concatenated gzip members (pigz, eStargz), and a
//! span may run across member boundaries, empty members included. Every byte
//! after a member must start another member: zero padding after the last one
//! is an error, as in every path that decodes a layer (see
//! `State::AfterMember`), and so is any other trailing byte.
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
/// [`GzipCheckpointer::new`] caps a span's output at this multiple of `span`, so
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

/// The index of one gzip blob, as [`GzipCheckpointer::finish`] returns it.
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
    /// Size of the blob.
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
pub struct GzipCheckpointer<R> {
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
    /// A member ended: another one or the end of the blob must follow.
    ///
    /// Zero padding after the last member is refused, the rule for every path
    /// that decodes a layer: Go's compress/gzip, with which umoci, Podman and
    /// containerd read layers, refuses it ("invalid header"), and so does
    /// flate2's `MultiGzDecoder`, lazyimg's whole-layer reader; only GNU gzip
    /// accepts it, with a warning. An image must not mount lazily through an
    /// index and fail when read whole.
    AfterMember,
    Done,
}

impl<R: Read> GzipCheckpointer<R> {
    /// Checkpoints about every `span` compressed bytes, and at least every
    /// `8 * span` uncompressed bytes.
    pub fn new(inner: R, span: u64) -> Self {
        Self::with_out_span(inner, span, span.saturating_mul(DEFAULT_OUT_SPAN_RATIO))
    }

    /// Checkpoints once a span reaches `span` compressed or `out_span`
    /// uncompressed bytes, at the next block boundary or member start.
    pub fn with_out_span(inner: R, span: u64, out_span: u64) -> Self {
        GzipCheckpointer {
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
                        Some(0) => {
                            return Err(invalid_data(format!(
                                "zero padding at offset {} after the last gzip member \
                                 (Go's compress/gzip refuses it too)",
                                self.in_offset()
                            )));
                        }
                        Some(_) => State::MemberStart,
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

impl<R: Read> BufRead for GzipCheckpointer<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.fill()?;
        Ok(&self.out[self.out_pos..self.out_end])
    }

    fn consume(&mut self, amount: usize) {
        self.out_pos = (self.out_pos + amount).min(self.out_end);
    }
}

impl<R: Read> Read for GzipCheckpointer<R> {
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
mod tests;
