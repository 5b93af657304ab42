//! Checkpoints and spans against full decompression, over many gzip shapes.

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
    let mut indexer = GzipCheckpointer::new(blob, span);
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
fn trailing_zeros_and_other_bytes_after_the_last_member_are_errors() {
    let data = mixed(6, 200_000);
    let blob = gzip(&data, 6);
    let mut padded = blob.clone();
    padded.resize(blob.len() + 4096, 0);
    // Zero padding is refused as flate2's MultiGzDecoder (the whole-layer
    // reader) and Go's compress/gzip refuse it.
    let mut whole = Vec::new();
    MultiGzDecoder::new(&padded[..])
        .read_to_end(&mut whole)
        .unwrap_err();
    for tail in [&[0u8; 4096][..], b"\0", b"\0\0\0x", b"garbage", b"\x1f"] {
        let mut bad = blob.clone();
        bad.extend_from_slice(tail);
        let mut indexer = GzipCheckpointer::new(&bad[..], 10_000);
        let err = io::copy(&mut indexer, &mut io::sink()).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ),
            "{tail:?}: {err}"
        );
        if tail[0] == 0 {
            let offset = blob.len();
            assert!(
                err.to_string()
                    .contains(&format!("zero padding at offset {offset}")),
                "{err}"
            );
        }
    }
}

#[test]
fn corrupt_streams_fail_indexing() {
    let data = mixed(7, 300_000);
    let blob = gzip(&data, 6);
    let fails = |bytes: &[u8]| {
        GzipCheckpointer::new(bytes, 1000)
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

    let mut indexer = GzipCheckpointer::new(
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

    let mut indexer = GzipCheckpointer::new(&blob[..], 2000);
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
    let index = GzipCheckpointer::with_out_span(&blob[..], 1 << 20, 4 << 20)
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
        GzipCheckpointer::with_out_span(&blob[..], 1 << 20, u64::MAX)
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
    assert_send::<GzipCheckpointer<std::fs::File>>();
}
