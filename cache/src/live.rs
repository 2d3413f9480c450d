//! Which photos are live: on a miss the cache asks the directory (once per photo per
//! `directory_info_ttl_ms`, in parallel with the store read) whether the photo is committed,
//! not deleted, and has this volume and cookie.
//!
//! Why: a store that was down when a photo was deleted keeps the needle (an orphan until
//! garbage collection). Once it is back, a miss could read the needle from it. The directory's
//! delete mark is the truth, so a miss is served only when the directory agrees. A purge
//! forgets the photo here too, and a lookup that was under way during a purge is not
//! remembered (a purge counter), so after a DELETE returns the next miss asks again.

use haystack_service::sync::lock;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::error::CacheError;
use crate::metrics::Stats;
use crate::upstream::Clients;

/// Photos remembered at most (about 90 bytes each).
const PHOTOS_KEPT: usize = 262_144;

#[derive(Clone, Copy, Debug)]
struct Known {
    volume: u32,
    cookie: u64,
    at: Instant,
}

/// Live photos as the directory last said.
pub struct Liveness {
    known: Mutex<LruCache<u64, Known>>,
    purges: AtomicU64,
    ttl: Duration,
}

impl Liveness {
    pub fn new(ttl: Duration) -> Liveness {
        Liveness {
            known: Mutex::new(LruCache::new(
                NonZeroUsize::new(PHOTOS_KEPT).unwrap_or(NonZeroUsize::MIN),
            )),
            purges: AtomicU64::new(0),
            ttl,
        }
    }

    /// The purge counter now: pass it to [`Liveness::remember`] for a lookup begun now.
    pub fn epoch(&self) -> u64 {
        self.purges.load(Ordering::SeqCst)
    }

    /// Remembers that photo `id` is live with this volume and cookie, unless a purge came
    /// since `epoch`.
    pub fn remember(&self, id: u64, volume: u32, cookie: u64, epoch: u64) {
        let mut m = lock(&self.known);
        if self.purges.load(Ordering::SeqCst) == epoch {
            m.put(
                id,
                Known {
                    volume,
                    cookie,
                    at: Instant::now(),
                },
            );
        }
    }

    /// Forgets a photo (it was deleted).
    pub fn purge(&self, id: u64) {
        let mut m = lock(&self.known);
        self.purges.fetch_add(1, Ordering::SeqCst);
        m.pop(&id);
    }

    /// `Ok` when photo `id` is live in `volume` with `cookie`; `NotFound` when the directory
    /// says otherwise; `DirectoryUnavailable` when it could not be asked.
    pub async fn check(
        &self,
        c: &Clients,
        volume: u32,
        id: u64,
        cookie: u64,
        stats: &Stats,
    ) -> Result<(), CacheError> {
        let cached = {
            let mut m = lock(&self.known);
            m.get(&id).copied()
        };
        let k = match cached {
            Some(k) if k.at.elapsed() < self.ttl => k,
            _ => {
                let epoch = self.epoch();
                stats.directory_requests.add(1);
                match c.directory.lookup(id).await {
                    Ok(info) => {
                        self.remember(id, info.volume_id, info.cookie, epoch);
                        Known {
                            volume: info.volume_id,
                            cookie: info.cookie,
                            at: Instant::now(),
                        }
                    }
                    Err(e) if e.status().is_some_and(|s| s < 500) => {
                        return Err(CacheError::NotFound)
                    }
                    Err(e) => return Err(CacheError::DirectoryUnavailable(e.to_string())),
                }
            }
        };
        if k.volume == volume && k.cookie == cookie {
            Ok(())
        } else {
            Err(CacheError::NotFound)
        }
    }
}
