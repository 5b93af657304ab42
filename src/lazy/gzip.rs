//! Reading gzip layers through a lazyimg index: each span inflates from its
//! checkpoint. The 32 KiB window a checkpoint needs is the tail of the span
//! before it, when that span is at hand (decoded in the same run, or verified
//! earlier); otherwise it is fetched, and verified, like any chunk, while the
//! span itself is on its way ([`DeflateResume::prepare`]).

use std::io;
use std::sync::Arc;

use bytes::Bytes;

use super::artifact::GzipResume;
use super::decode::DeflateResume;
use super::fetch::{ChunkFetcher, LazyBlob};
use crate::digest::Digest;
use crate::layer::{Chunk, ChunkCodec, gzip_index};

pub struct GzipSpans {
    resume: GzipResume,
    windows: Arc<LazyBlob>,
    /// The content digest of the span starting at each checkpoint.
    spans: Vec<Option<Digest>>,
    fetcher: Arc<ChunkFetcher>,
}

impl GzipSpans {
    /// `chunks` are the layer's chunks, whose deflate spans the checkpoints start.
    pub fn new(resume: GzipResume, chunks: &[Chunk], fetcher: Arc<ChunkFetcher>) -> GzipSpans {
        let windows = Arc::new(LazyBlob {
            digest: resume.windows_blob,
            size: resume.windows_size,
            chunks: resume.windows.clone(),
            deflate: None,
        });
        let mut spans = vec![None; resume.checkpoints.len()];
        for chunk in chunks {
            if let ChunkCodec::Deflate { checkpoint } = chunk.codec
                && let Some(slot) = spans.get_mut(checkpoint as usize)
            {
                *slot = Some(chunk.digest);
            }
        }
        GzipSpans {
            resume,
            windows,
            spans,
            fetcher,
        }
    }

    /// Window `w` for checkpoint `k` from the verified span before it, if that
    /// span is in memory or in the store; checked against the window's digest.
    fn window_from_previous_span(&self, k: usize, w: usize) -> Option<Bytes> {
        let window = &self.windows.chunks[w];
        let previous = self.spans.get(k.checked_sub(1)?)?.as_ref()?;
        let span = self.fetcher.peek(previous)?;
        let start = span.len().checked_sub(window.content_size as usize)?;
        let tail = span.slice(start..);
        (Digest::of(&tail) == window.digest).then_some(tail)
    }
}

impl DeflateResume for GzipSpans {
    fn inflate(
        &self,
        checkpoint: u32,
        compressed: &[u8],
        out_len: usize,
        window: Option<&[u8]>,
    ) -> io::Result<Vec<u8>> {
        let k = checkpoint as usize;
        let (Some(point), Some(window_of)) =
            (self.resume.checkpoints.get(k), self.resume.window_of.get(k))
        else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no checkpoint {k}"),
            ));
        };
        let Some(w) = *window_of else {
            return gzip_index::inflate_span(point, &[], compressed, out_len);
        };
        let w = w as usize;
        let size = self.windows.chunks[w].content_size as usize;
        if let Some(content) = window.filter(|c| c.len() >= size) {
            return gzip_index::inflate_span(
                point,
                &content[content.len() - size..],
                compressed,
                out_len,
            );
        }
        // Never fetches: this runs on a decoder worker, which must not wait on
        // other jobs. `prepare` fetched the window while the span was on its way.
        let window = self
            .window_from_previous_span(k, w)
            .or_else(|| self.fetcher.peek(&self.windows.chunks[w].digest))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the window of gzip checkpoint {k} could not be fetched"),
                )
            })?;
        gzip_index::inflate_span(point, &window, compressed, out_len)
    }

    fn prepare(&self, checkpoints: &[u32]) {
        // Spans of the same run decode in order, so only the first one's
        // window (unless its predecessor is at hand) has to come from afar.
        let needed = checkpoints
            .iter()
            .map(|&k| k as usize)
            .filter(|&k| k == 0 || !checkpoints.contains(&(k as u32 - 1)))
            .filter_map(|k| {
                let w = (*self.resume.window_of.get(k)?)? as usize;
                self.window_from_previous_span(k, w).is_none().then_some(w)
            });
        let (Some(first), Some(last)) = (needed.clone().min(), needed.max()) else {
            return;
        };
        if let Err(e) = self
            .fetcher
            .chunks(&self.windows, first..last + 1, last + 1)
        {
            tracing::debug!("fetching windows ahead: {e}");
        }
    }
}
