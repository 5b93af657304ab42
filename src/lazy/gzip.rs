//! Reading gzip layers through a lazyimg index: each span inflates from its
//! checkpoint, with the 32 KiB window fetched (and verified) like any chunk.

use std::io;
use std::sync::Arc;

use bytes::Bytes;

use super::artifact::GzipResume;
use super::decode::DeflateResume;
use super::fetch::{ChunkFetcher, LazyBlob};
use crate::layer::gzip_index;

/// Windows fetched along with the one a span needs: the next spans of a
/// sequential read need theirs too, and they sit side by side.
const WINDOW_READAHEAD: usize = 8;

pub struct GzipSpans {
    resume: GzipResume,
    windows: LazyBlob,
    fetcher: Arc<ChunkFetcher>,
}

impl GzipSpans {
    pub fn new(resume: GzipResume, fetcher: Arc<ChunkFetcher>) -> GzipSpans {
        let windows = LazyBlob {
            digest: resume.windows_blob,
            size: resume.windows_size,
            chunks: resume.windows.clone(),
            deflate: None,
        };
        GzipSpans {
            resume,
            windows,
            fetcher,
        }
    }
}

impl DeflateResume for GzipSpans {
    fn inflate(&self, checkpoint: u32, compressed: &[u8], out_len: usize) -> io::Result<Vec<u8>> {
        let k = checkpoint as usize;
        let (Some(point), Some(window_of)) =
            (self.resume.checkpoints.get(k), self.resume.window_of.get(k))
        else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no checkpoint {k}"),
            ));
        };
        let window = match *window_of {
            None => Bytes::new(),
            Some(w) => {
                let w = w as usize;
                let ahead = (w + WINDOW_READAHEAD).min(self.windows.chunks.len());
                let mut found = self
                    .fetcher
                    .chunks(&self.windows, w..w + 1, ahead)
                    .map_err(io::Error::other)?;
                found.remove(0)
            }
        };
        gzip_index::inflate_span(point, &window, compressed, out_len)
    }

    fn prepare(&self, checkpoints: &[u32]) {
        let windows = checkpoints
            .iter()
            .filter_map(|&k| *self.resume.window_of.get(k as usize)?)
            .map(|w| w as usize);
        let (Some(first), Some(last)) = (windows.clone().min(), windows.max()) else {
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
