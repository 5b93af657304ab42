//! Which claimed chunks go in one request: neighbours in the blob, joined
//! into runs of one single-range request each (ghcr.io refuses multi-range
//! requests), small gaps fetched rather than split.

use std::ops::Range;

use crate::layer::Chunk;

/// Gaps up to this size between chunks are fetched rather than split into two requests.
const MAX_GAP: u64 = 64 * 1024;

/// Groups claimed chunks (ascending indices) into runs fetched by one request
/// each: neighbours whose blob bytes touch, overlap or leave a small gap, up
/// to `max_request`. Returns each run's length, in order.
pub(super) fn runs(chunks: &[Chunk], claimed: &[usize], max_request: u64) -> Vec<usize> {
    let mut lengths: Vec<usize> = Vec::new();
    let mut span: Option<Range<u64>> = None;
    for &index in claimed {
        let chunk = &chunks[index];
        let chunk_end = chunk.blob_offset + chunk.blob_size;
        if let (Some(current), Some(length)) = (span.as_mut(), lengths.last_mut()) {
            let end = current.end.max(chunk_end);
            // Joins when the gap since the run's end is at most MAX_GAP (an
            // overlap or a touching chunk is no gap).
            let joins = chunk.blob_offset <= current.end + MAX_GAP
                && chunk.blob_offset >= current.start
                && end - current.start <= max_request;
            if joins {
                current.end = end;
                *length += 1;
                continue;
            }
        }
        span = Some(chunk.blob_offset..chunk_end);
        lengths.push(1);
    }
    lengths
}

/// The blob bytes the chunks `run` cover.
pub(super) fn run_span(chunks: &[Chunk], run: impl Iterator<Item = usize> + Clone) -> Range<u64> {
    let start = run
        .clone()
        .map(|i| chunks[i].blob_offset)
        .min()
        .unwrap_or(0);
    let end = run
        .map(|i| chunks[i].blob_offset + chunks[i].blob_size)
        .max()
        .unwrap_or(0);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::layer::ChunkCodec;

    fn chunk(blob_offset: u64, blob_size: u64) -> Chunk {
        Chunk {
            content_offset: blob_offset,
            content_size: blob_size,
            blob_offset,
            blob_size,
            codec: ChunkCodec::Stored,
            digest: Digest::of(&blob_offset.to_le_bytes()),
        }
    }

    #[test]
    fn neighbours_and_small_gaps_join_up_to_the_request_limit() {
        let chunks = [
            chunk(0, 100),
            chunk(100, 100),
            chunk(200 + MAX_GAP, 100),
            chunk(400 + 2 * MAX_GAP + 1, 100),
            chunk(500 + 2 * MAX_GAP + 1, 1000),
        ];
        let all: Vec<usize> = (0..chunks.len()).collect();
        assert_eq!(runs(&chunks, &all, u64::MAX), [3, 2]);
        assert_eq!(runs(&chunks, &all, 300), [2, 1, 1, 1]);
        assert_eq!(
            run_span(&chunks, [3, 4].into_iter()),
            401 + 2 * MAX_GAP..1501 + 2 * MAX_GAP
        );
    }
}
