//! Reading gzip layers through a lazyimg index: each span inflates from its
//! checkpoint. The 32 KiB window a checkpoint needs is the tail of the span
//! before it, when that span is at hand (decoded in the same run, or verified
//! earlier); otherwise it is fetched, and verified, like any chunk, while the
//! span itself is on its way ([`DeflateResume::prepare`]). When the windows
//! blob is out of reach (the index's repository is gone, or not readable to
//! this user), the layer is read whole instead: never an EIO while the layer
//! itself can be read.

use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use super::decode::DeflateResume;
use super::fetch::{ChunkFetcher, LazyBlob};
use super::source::RangeSource;
use crate::chunkmap::GzipResume;
use crate::digest::Digest;
use crate::error::Result;
use crate::layer::{Chunk, ChunkCodec, gzip_checkpoints};
use crate::store::Blob;

pub struct GzipSpans {
    resume: GzipResume,
    windows: Arc<LazyBlob>,
    /// The content digest of the span starting at each checkpoint.
    spans: Vec<Option<Digest>>,
    fetcher: Arc<ChunkFetcher>,
    fallback: Option<WholeLayer>,
}

/// How a layer is read when its windows blob is out of reach.
struct WholeLayer {
    /// Asked whether the windows blob is out of reach, or only a fetch failed.
    source: Arc<dyn RangeSource>,
    /// The layer's uncompressed tar, verified (fetched and unpacked whole if
    /// need be): its bytes are the content space of a gzip layer's map.
    tar: Box<dyn Fn() -> Result<Blob> + Send + Sync>,
    /// Held while the tar is being made, so concurrent readers make it once.
    making: Mutex<()>,
    made: OnceLock<Blob>,
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
            fallback: None,
        }
    }

    /// The same spans, with a way out when the windows blob is out of reach:
    /// once `source` (which serves the windows blob) says it does not hold it,
    /// spans are served from `tar`, the layer's verified uncompressed tar,
    /// made at most once. A windows fetch that fails while `source` still
    /// holds the blob (or cannot be asked) stays an error: the next read
    /// tries again.
    pub fn or_whole(
        self,
        source: Arc<dyn RangeSource>,
        tar: impl Fn() -> Result<Blob> + Send + Sync + 'static,
    ) -> GzipSpans {
        GzipSpans {
            fallback: Some(WholeLayer {
                source,
                tar: Box::new(tar),
                making: Mutex::new(()),
                made: OnceLock::new(),
            }),
            ..self
        }
    }

    /// The layer's tar, if it was made since the windows blob went missing.
    fn whole(&self) -> Option<&Blob> {
        self.fallback.as_ref()?.made.get()
    }

    /// Content bytes `range` of the layer read whole, because fetching window
    /// `w` failed with `failed`: only when the windows blob is out of reach.
    fn read_whole(
        &self,
        w: usize,
        range: std::ops::Range<u64>,
        failed: io::Error,
    ) -> io::Result<Vec<u8>> {
        let Some(fallback) = &self.fallback else {
            return Err(failed);
        };
        let blob = &self.windows.digest;
        match fallback.source.holds(blob) {
            Ok(false) => {}
            Ok(true) => return Err(failed),
            Err(e) => {
                tracing::debug!("cannot tell whether windows blob {blob} is out of reach: {e}");
                return Err(failed);
            }
        }
        let tar = {
            let _making = fallback.making.lock().unwrap_or_else(|p| p.into_inner());
            match fallback.made.get() {
                Some(tar) => tar,
                None => {
                    tracing::warn!(
                        "the gzip windows blob {blob} of this layer's lazyimg index is out of reach \
                         (window {w}: {failed}); reading the layer whole instead"
                    );
                    let tar = (fallback.tar)().map_err(io::Error::other)?;
                    fallback.made.get_or_init(|| tar)
                }
            }
        };
        slice_of(tar, range)
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
        // A gzip map's content space is the uncompressed tar.
        let content = point.out..point.out + out_len as u64;
        if let Some(tar) = self.whole() {
            return slice_of(tar, content);
        }
        let Some(w) = *window_of else {
            return gzip_checkpoints::inflate_span(point, &[], compressed, out_len);
        };
        let w = w as usize;
        let size = self.windows.chunks[w].content_size as usize;
        if let Some(before) = window.filter(|c| c.len() >= size) {
            return gzip_checkpoints::inflate_span(
                point,
                &before[before.len() - size..],
                compressed,
                out_len,
            );
        }
        // Never fetches: this runs on a decoder worker, which must not wait on
        // other jobs. `prepare` fetched the window while the span was on its way.
        match self
            .window_from_previous_span(k, w)
            .or_else(|| self.fetcher.peek(&self.windows.chunks[w].digest))
        {
            Some(window) => gzip_checkpoints::inflate_span(point, &window, compressed, out_len),
            None => {
                let failed = io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the window of gzip checkpoint {k} could not be fetched"),
                );
                self.read_whole(w, content, failed)
            }
        }
    }

    fn prepare(&self, checkpoints: &[u32]) {
        if self.whole().is_some() {
            return;
        }
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

/// Bytes `range` of `tar`, or an error naming what is missing.
fn slice_of(tar: &Blob, range: std::ops::Range<u64>) -> io::Result<Vec<u8>> {
    tar.bytes()
        .get(range.start as usize..range.end as usize)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the layer's tar ends before bytes {range:?}"),
            )
        })
}
