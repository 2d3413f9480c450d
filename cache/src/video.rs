//! Videos: a video's chunk list from the directory (kept for a while, dropped on purge), and
//! the mapping of a byte range of the whole video onto its chunks.

use haystack_service::sync::lock;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderValue;
use haystack_proto::directory::PhotoKind;
use lru::LruCache;

use crate::error::CacheError;
use crate::metrics::Stats;
use crate::upstream::Clients;

/// Chunk lists remembered at most (a list of 256 chunks is about 6 KiB).
const VIDEOS_KEPT: usize = 8_192;

/// One chunk: the needle with alternate key `alt` holds bytes `offset..offset + size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub alt: u32,
    pub offset: u64,
    pub size: u64,
}

/// A video as the cache serves it.
#[derive(Debug)]
pub struct Video {
    pub id: u64,
    pub volume: u32,
    pub cookie: u64,
    /// In offset order, contiguous from 0.
    pub chunks: Vec<Chunk>,
    pub len: u64,
    /// A strong ETag: a video id's bytes never change once committed.
    pub etag: HeaderValue,
}

impl Video {
    /// Builds a video from the directory's chunk list, which must be contiguous from 0.
    pub fn new(id: u64, volume: u32, cookie: u64, mut chunks: Vec<Chunk>) -> Option<Video> {
        chunks.sort_by_key(|c| c.offset);
        let mut at = 0u64;
        for c in &chunks {
            if c.offset != at {
                return None;
            }
            at = at.checked_add(c.size)?;
        }
        Some(Video {
            id,
            volume,
            cookie,
            etag: HeaderValue::from_str(&format!("\"v{id:x}-{at:x}\"")).ok()?,
            chunks,
            len: at,
        })
    }

    /// Indexes of the chunks holding bytes `start..=end` (`start <= end < len`).
    pub fn chunks_for(&self, start: u64, end: u64) -> std::ops::RangeInclusive<usize> {
        let first = self.chunks.partition_point(|c| c.offset + c.size <= start);
        let last = self.chunks.partition_point(|c| c.offset + c.size <= end);
        first..=last.min(self.chunks.len().saturating_sub(1))
    }
}

/// Chunk lists from the directory.
pub struct Videos {
    known: Mutex<LruCache<u64, (Arc<Video>, Instant)>>,
    /// Bumped by every purge: a lookup that began before a purge does not remember its answer.
    purges: AtomicU64,
    ttl: Duration,
}

impl Videos {
    pub fn new(ttl: Duration) -> Videos {
        Videos {
            known: Mutex::new(LruCache::new(
                NonZeroUsize::new(VIDEOS_KEPT).unwrap_or(NonZeroUsize::MIN),
            )),
            purges: AtomicU64::new(0),
            ttl,
        }
    }

    /// The video `id`; `NotFound` when the directory knows no such live video.
    /// A lookup also tells `live` that the video is live (its chunks need not ask again).
    pub async fn get(
        &self,
        c: &Clients,
        id: u64,
        live: &crate::live::Liveness,
        stats: &Stats,
    ) -> Result<Arc<Video>, CacheError> {
        {
            let mut m = lock(&self.known);
            if let Some((v, at)) = m.get(&id) {
                if at.elapsed() < self.ttl {
                    return Ok(v.clone());
                }
            }
        }
        let epoch = self.purges.load(Ordering::SeqCst);
        let live_epoch = live.epoch();
        stats.directory_requests.add(1);
        let info = match c.directory.lookup(id).await {
            Ok(i) => i,
            Err(e) if e.is_not_found() => return Err(CacheError::NotFound),
            Err(e) if e.status().is_some_and(|s| s < 500) => {
                tracing::warn!(video = id, error = %e, "directory refused a video lookup");
                return Err(CacheError::NotFound);
            }
            Err(e) => return Err(CacheError::DirectoryUnavailable(e.to_string())),
        };
        live.remember(id, info.volume_id, info.cookie, live_epoch);
        if info.kind != PhotoKind::Video {
            return Err(CacheError::NotFound);
        }
        let chunks = info
            .chunks
            .iter()
            .map(|c| Chunk {
                alt: c.alt,
                offset: c.offset,
                size: c.size_bytes,
            })
            .collect();
        let Some(v) = Video::new(id, info.volume_id, info.cookie, chunks) else {
            tracing::warn!(video = id, "the directory's chunk list is not contiguous");
            return Err(CacheError::NotFound);
        };
        let v = Arc::new(v);
        let mut m = lock(&self.known);
        if self.purges.load(Ordering::SeqCst) == epoch {
            m.put(id, (v.clone(), Instant::now()));
        }
        Ok(v)
    }

    /// Forgets a video (it was deleted).
    pub fn purge(&self, id: u64) {
        let mut m = lock(&self.known);
        self.purges.fetch_add(1, Ordering::SeqCst);
        m.pop(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(sizes: &[u64]) -> Video {
        let mut off = 0;
        let chunks = sizes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let c = Chunk {
                    alt: i as u32 + 1,
                    offset: off,
                    size: *s,
                };
                off += s;
                c
            })
            .collect();
        Video::new(1, 1, 1, chunks).unwrap()
    }

    #[test]
    fn ranges_map_onto_chunks() {
        let v = video(&[10, 10, 5]);
        assert_eq!(v.len, 25);
        assert_eq!(v.chunks_for(0, 24), 0..=2);
        assert_eq!(v.chunks_for(0, 9), 0..=0);
        assert_eq!(v.chunks_for(9, 10), 0..=1);
        assert_eq!(v.chunks_for(10, 19), 1..=1);
        assert_eq!(v.chunks_for(19, 20), 1..=2);
        assert_eq!(v.chunks_for(24, 24), 2..=2);
    }

    #[test]
    fn chunk_lists_must_be_contiguous() {
        let c = |alt, offset, size| Chunk { alt, offset, size };
        assert!(Video::new(1, 1, 1, vec![c(2, 10, 5), c(1, 0, 10)]).is_some());
        assert!(Video::new(1, 1, 1, vec![c(1, 0, 10), c(2, 11, 5)]).is_none());
        assert!(Video::new(1, 1, 1, vec![c(1, 1, 10)]).is_none());
        assert_eq!(Video::new(1, 1, 1, vec![]).unwrap().len, 0);
    }
}
