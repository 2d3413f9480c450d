//! Which photos are live: on a miss the cache asks the directory (once per photo per
//! `directory_info_ttl_ms`, in parallel with the store read) whether the photo is committed,
//! not deleted, and has this volume and cookie. A hit on a needle read more than
//! `recheck_hits_after_ms` ago asks afresh, whatever is remembered ([`Ask::Afresh`]).
//!
//! The lookups of one worker are sent many to a request (`POST /v1/photos/live`): at most
//! [`MAX_IN_FLIGHT`] requests at once, and whatever misses arrive meanwhile wait for the next
//! one, so a lone miss costs one round trip, as before, and a burst of misses shares them.
//!
//! Why: a store that was down when a photo was deleted keeps the needle (an orphan until
//! garbage collection). Once it is back, a miss could read the needle from it. The directory's
//! delete mark is the truth, so a miss is served only when the directory agrees. A purge
//! forgets the photo here too, and a lookup that was under way during a purge is not
//! remembered (a purge counter), so after a DELETE returns the next miss asks again.

use haystack_client::{ClientError, DirectoryClient};
use haystack_proto::directory::MAX_LIVE_BATCH;
use haystack_service::sync::lock;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use tokio::sync::oneshot;

use crate::error::CacheError;
use crate::metrics::Stats;
use crate::upstream::Clients;

/// Photos remembered at most (about 90 bytes each).
const PHOTOS_KEPT: usize = 262_144;
/// Liveness requests one worker has in flight to the directory at most.
pub const MAX_IN_FLIGHT: usize = 2;

#[derive(Clone, Copy, Debug)]
struct Known {
    volume: u32,
    cookie: u64,
    at: Instant,
}

/// Whether [`Liveness::check`] may use a remembered answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// One younger than `directory_info_ttl_ms` will do (a miss).
    Remembered,
    /// Ask the directory now (a hit rechecked after `recheck_hits_after_ms`).
    Afresh,
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
    ///
    /// With [`Ask::Remembered`] (a miss) an answer younger than the TTL is used; with
    /// [`Ask::Afresh`] (the recheck of a stale hit) the directory is always asked (through the
    /// same batcher), so that a "live" remembered just before a delete cannot stretch the
    /// recheck interval to the TTL. Either way the answer refreshes what is remembered.
    pub async fn check(
        &self,
        c: &Clients,
        volume: u32,
        id: u64,
        cookie: u64,
        ask: Ask,
    ) -> Result<(), CacheError> {
        let cached = match ask {
            Ask::Remembered => {
                let mut m = lock(&self.known);
                m.get(&id).copied()
            }
            Ask::Afresh => None,
        };
        let k = match cached {
            Some(k) if k.at.elapsed() < self.ttl => k,
            _ => {
                let epoch = self.epoch();
                match c.live.lookup(&c.directory, id).await? {
                    Some((volume, cookie)) => {
                        self.remember(id, volume, cookie, epoch);
                        Known {
                            volume,
                            cookie,
                            at: Instant::now(),
                        }
                    }
                    None => {
                        // Not live: an older "live" must not answer the next miss.
                        lock(&self.known).pop(&id);
                        return Err(CacheError::NotFound);
                    }
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

/// What the directory said of one photo: its volume and cookie when live, `None` when not.
type LiveAnswer = Result<Option<(u32, u64)>, CacheError>;

/// One worker's liveness lookups, batched (module docs).
pub struct LiveBatcher {
    queue: Mutex<Queue>,
    /// The node whose `directory_requests` count the requests sent.
    node: Arc<crate::node::Node>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<(u64, oneshot::Sender<LiveAnswer>)>,
    in_flight: usize,
}

impl std::fmt::Debug for LiveBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = lock(&self.queue);
        f.debug_struct("LiveBatcher")
            .field("waiting", &q.waiting.len())
            .field("in_flight", &q.in_flight)
            .finish_non_exhaustive()
    }
}

impl LiveBatcher {
    pub fn new(node: Arc<crate::node::Node>) -> LiveBatcher {
        LiveBatcher {
            queue: Mutex::new(Queue::default()),
            node,
        }
    }

    /// Photo `id`'s volume and cookie when the directory says it is live, `None` when it says
    /// it is not; `DirectoryUnavailable` when it could not be asked.
    pub async fn lookup(self: &Arc<Self>, dir: &DirectoryClient, id: u64) -> LiveAnswer {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut q = lock(&self.queue);
            q.waiting.push((id, tx));
            if q.in_flight < MAX_IN_FLIGHT {
                q.in_flight += 1;
                true
            } else {
                false
            }
        };
        if lead {
            // Its own task: a request that goes away must not strand the others' lookups.
            let (me, dir) = (self.clone(), dir.clone());
            tokio::spawn(async move { me.drive(&dir).await });
        }
        rx.await.unwrap_or_else(|_| {
            Err(CacheError::DirectoryUnavailable(
                "the liveness lookup was abandoned".into(),
            ))
        })
    }

    /// Sends what is waiting, batch after batch, until nothing is.
    async fn drive(&self, dir: &DirectoryClient) {
        let stats = &self.node.stats;
        let mut slot = Slot {
            batcher: self,
            given_back: false,
        };
        loop {
            let batch: Vec<(u64, oneshot::Sender<LiveAnswer>)> = {
                let mut q = lock(&self.queue);
                if q.waiting.is_empty() {
                    // Under the lock that a new lookup takes to decide whether it leads.
                    q.in_flight -= 1;
                    slot.given_back = true;
                    return;
                }
                let n = q.waiting.len().min(MAX_LIVE_BATCH);
                q.waiting.drain(..n).collect()
            };
            let mut ids: Vec<u64> = batch.iter().map(|(id, _)| *id).collect();
            ids.sort_unstable();
            ids.dedup();
            stats.directory_requests.add(1);
            let answers = ask(dir, &ids, stats).await;
            for (id, tx) in batch {
                let _ = tx.send(match &answers {
                    Ok(live) => Ok(live.get(&id).copied()),
                    Err(e) => Err(e.clone()),
                });
            }
        }
    }
}

/// A driver's place among the [`MAX_IN_FLIGHT`]. A driver that ends without giving it back
/// (its task panicked or was dropped) gives it back here; when it was the last driver, it
/// also fails whatever still waits, so that no lookup waits for a driver that never comes.
struct Slot<'a> {
    batcher: &'a LiveBatcher,
    given_back: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.given_back {
            return;
        }
        let mut q = lock(&self.batcher.queue);
        q.in_flight -= 1;
        if q.in_flight == 0 {
            for (_, tx) in q.waiting.drain(..) {
                let _ = tx.send(Err(CacheError::DirectoryUnavailable(
                    "the liveness lookup was abandoned".into(),
                )));
            }
        }
    }
}

/// The live photos among `ids` (sorted, distinct) by id.
async fn ask(
    dir: &DirectoryClient,
    ids: &[u64],
    stats: &Stats,
) -> Result<HashMap<u64, (u32, u64)>, CacheError> {
    let unavailable = |e: ClientError| CacheError::DirectoryUnavailable(e.to_string());
    match dir.live(ids).await {
        Ok(r) => Ok(r
            .live
            .into_iter()
            .filter(|p| ids.binary_search(&p.id).is_ok())
            .map(|p| (p.id, (p.volume_id, p.cookie)))
            .collect()),
        // A directory older than the batch route: one lookup per photo, as before it.
        Err(e) if e.is_unsupported() => {
            let mut live = HashMap::with_capacity(ids.len());
            for id in ids {
                stats.directory_requests.add(1);
                match dir.lookup(*id).await {
                    Ok(info) => {
                        live.insert(*id, (info.volume_id, info.cookie));
                    }
                    Err(e) if e.status().is_some_and(|s| s < 500) => {}
                    Err(e) => return Err(unavailable(e)),
                }
            }
            Ok(live)
        }
        // Refused (credentials, a malformed request): nothing is known live, so nothing is
        // served from a store that may hold a deleted photo's needle.
        Err(e) if e.status().is_some_and(|s| s < 500) => {
            tracing::warn!(error = %e, "the directory refused a liveness lookup");
            Ok(HashMap::new())
        }
        Err(e) => Err(unavailable(e)),
    }
}
