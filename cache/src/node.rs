//! `Node`: one cache node's state (memory, upstream, video chunk lists, the ring of peers,
//! counters) and the read of a needle through it: a hit, or a miss that joins or starts the
//! one store read of that needle (run by the request that started it).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderName;
use actix_web::HttpRequest;

use crate::config::{CacheConfig, Cidr};
use crate::error::CacheError;
use crate::live::{Ask, Liveness};
use crate::memory::{FlightRx, Memory, Needle, NeedleKey, Probe, Ticket};
use crate::metrics::{Stats, StatsSnapshot};
use crate::ring::{Ring, VNODES};
use crate::upstream::{Clients, Upstream};
use crate::video::Videos;

/// Header on a request one cache node sends another (a forward or a purge): the receiver
/// serves it itself, never forwards it again. Its value says who asked first: `user` or `cdn`.
pub const HOP_HEADER: &str = "x-haystack-cache-hop";

/// One cache node.
pub struct Node {
    pub cfg: CacheConfig,
    pub memory: Memory,
    pub upstream: Upstream,
    pub videos: Videos,
    pub live: Liveness,
    /// The tier's ring, when there are peers.
    pub ring: Option<Ring>,
    /// This node's index in the ring.
    pub me: Option<usize>,
    pub stats: Stats,
    /// When (ms since `started`) a miss last logged that liveness was unknown (one warning a
    /// second at most while the directory is unreachable).
    live_warned_ms: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
    cdn_headers: Vec<HeaderName>,
    cdn_cidrs: Vec<Cidr>,
}

impl Node {
    /// Builds a node from a configuration (validated here).
    pub fn new(cfg: CacheConfig) -> Result<Arc<Node>, CacheError> {
        cfg.validate()?;
        let cdn_headers = cfg
            .cdn_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| CacheError::Config(format!("bad header name {h:?}")))
            })
            .collect::<Result<_, _>>()?;
        let cdn_cidrs = cfg
            .cdn_source_cidrs
            .iter()
            .map(|c| Cidr::parse(c).map_err(CacheError::Config))
            .collect::<Result<_, _>>()?;
        let (ring, me) = if cfg.peers.is_empty() {
            (None, None)
        } else {
            let ring = Ring::new(&cfg.peers, VNODES);
            let me = cfg.self_url.as_deref().and_then(|u| ring.index_of(u));
            (Some(ring), me)
        };
        Ok(Arc::new(Node {
            memory: Memory::new(cfg.capacity_bytes, cfg.shards, cfg.max_entry_bytes),
            upstream: Upstream::new(Duration::from_millis(cfg.directory_info_ttl_ms)),
            videos: Videos::new(Duration::from_millis(cfg.directory_info_ttl_ms)),
            live: Liveness::new(Duration::from_millis(cfg.directory_info_ttl_ms)),
            ring,
            me,
            stats: Stats::default(),
            live_warned_ms: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
            cdn_headers,
            cdn_cidrs,
            cfg,
        }))
    }

    /// Whether a request came through a CDN: a hop from a peer says so; otherwise one of the
    /// configured headers or source networks.
    pub fn from_cdn(&self, req: &HttpRequest) -> bool {
        let h = req.headers();
        if let Some(v) = h.get(HOP_HEADER) {
            return v.as_bytes() == b"cdn";
        }
        if self.cdn_headers.iter().any(|n| h.contains_key(n)) {
            return true;
        }
        !self.cdn_cidrs.is_empty()
            && req
                .peer_addr()
                .is_some_and(|a| self.cdn_cidrs.iter().any(|c| c.contains(a.ip())))
    }

    /// The base URL of the peer owning a photo, when it is not this node and the request did
    /// not come from a peer already.
    pub fn forward_to(&self, req: &HttpRequest, volume: u32, key: u64) -> Option<&str> {
        let ring = self.ring.as_ref()?;
        if req.headers().contains_key(HOP_HEADER) {
            return None;
        }
        let owner = ring.owner(volume, key);
        (Some(owner) != self.me).then(|| ring.node(owner))
    }

    /// A needle: from memory, or from the one store read of it under way, or from a new one.
    /// A wrong cookie is `NotFound`, whether the needle is in memory or not.
    ///
    /// The read runs in the task of the request that started it (no task per read). If that
    /// request goes away (its client disconnected), the read is abandoned and the requests
    /// waiting on it probe again: one of them leads a new read.
    pub async fn needle(
        self: &Arc<Self>,
        c: &Clients,
        k: NeedleKey,
        cookie: u64,
        from_cdn: bool,
    ) -> Result<Arc<Needle>, CacheError> {
        let mut joined = false;
        loop {
            match self.memory.probe(k, cookie) {
                Probe::Hit(n) => {
                    if n.cookie != cookie {
                        return Err(CacheError::NotFound);
                    }
                    if !joined {
                        self.stats.hits.add(1);
                    }
                    if let Some(age) = self.stale(&n) {
                        match self
                            .live
                            .check(c, k.volume, k.key, cookie, Ask::Afresh)
                            .await
                        {
                            Ok(()) => n
                                .live_at_ms
                                .store(age, std::sync::atomic::Ordering::Relaxed),
                            Err(CacheError::NotFound) => {
                                // Deleted, and the purge never came here.
                                metrics::counter!("haystack_cache_stale_hits_dropped_total")
                                    .increment(1);
                                tracing::warn!(volume = k.volume, key = k.key, "a cached photo is no longer live: dropped (its purge did not reach this node)");
                                self.videos.purge(k.key);
                                self.memory.purge_photo(k.volume, k.key);
                                return Err(CacheError::NotFound);
                            }
                            Err(e) => {
                                // Served (it was live when last asked) and kept, but not
                                // answered as cacheable for a year: it may be deleted by now.
                                self.warn_liveness_unknown(k, &e);
                                return Ok(n.live_unknown());
                            }
                        }
                    }
                    return Ok(n);
                }
                Probe::Join(rx) => {
                    if !joined {
                        self.stats.misses.add(1);
                        self.stats.coalesced.add(1);
                        joined = true;
                    }
                    match wait(rx).await {
                        Some(r) => return r,
                        // The leader went away: probe again.
                        None => continue,
                    }
                }
                Probe::Lead(ticket, _) => {
                    if !joined {
                        self.stats.misses.add(1);
                    }
                    self.stats.store_reads.add(1);
                    let lead = Lead {
                        node: self,
                        ticket: Some(ticket),
                    };
                    return lead.read(c, cookie, from_cdn).await;
                }
            }
        }
    }
    /// Whether a hit on `n` must ask if its photo is still live (`recheck_hits_after_ms`
    /// since it was read or last found live): its age in ms if so.
    fn stale(&self, n: &Needle) -> Option<u64> {
        let after = self.cfg.recheck_hits_after_ms;
        if !self.cfg.check_live_on_miss || after == 0 {
            return None;
        }
        let age = n.fetched.elapsed().as_millis() as u64;
        (age >= n
            .live_at_ms
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_add(after))
        .then_some(age)
    }

    fn warn_liveness_unknown(&self, k: NeedleKey, e: &CacheError) {
        use std::sync::atomic::Ordering;
        let now = self.started.elapsed().as_millis() as u64 + 1_000;
        let last = self.live_warned_ms.load(Ordering::Relaxed);
        if now >= last + 1_000
            && self
                .live_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(volume = k.volume, key = k.key, error = %e, "photo liveness unknown; serving what the store has");
        } else {
            tracing::debug!(volume = k.volume, key = k.key, error = %e, "photo liveness unknown; serving what the store has");
        }
    }

    /// Forgets every alternate key of a photo and its chunk list (a delete).
    pub fn purge(&self, volume: u32, key: u64) -> usize {
        self.stats.purges.add(1);
        self.videos.purge(key);
        self.live.purge(key);
        self.memory.purge_photo(volume, key)
    }

    /// Counters and memory now.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.stats
            .snapshot(self.memory.stats(), self.cfg.capacity_bytes)
    }
}

/// The outcome of the read `rx` follows; `None` when its leader went away without one.
async fn wait(mut rx: FlightRx) -> Option<Result<Arc<Needle>, CacheError>> {
    match rx.wait_for(|v| v.is_some()).await {
        Ok(v) => v.as_ref().cloned(),
        Err(_) => None,
    }
}

/// A store read this request leads: completed with its outcome, or abandoned if the request
/// is dropped first (so that the waiters start over instead of waiting forever).
struct Lead<'a> {
    node: &'a Arc<Node>,
    ticket: Option<Ticket>,
}

impl Lead<'_> {
    async fn read(
        mut self,
        c: &Clients,
        cookie: u64,
        from_cdn: bool,
    ) -> Result<Arc<Needle>, CacheError> {
        let node = self.node;
        let Some(k) = self.ticket.as_ref().map(Ticket::key) else {
            return Err(CacheError::NotFound);
        };
        let read = node.upstream.read(c, k, cookie, &node.stats);
        let (read, live_unknown) = if node.cfg.check_live_on_miss {
            let live = node.live.check(c, k.volume, k.key, cookie, Ask::Remembered);
            match tokio::join!(live, read) {
                (Ok(()), r) => (r, false),
                (Err(CacheError::NotFound), Err(e @ CacheError::NoSuchVolume(_))) => {
                    (Err(e), false)
                }
                (Err(CacheError::NotFound), _) => (Err(CacheError::NotFound), false),
                (Err(e), r) => {
                    node.warn_liveness_unknown(k, &e);
                    (r, true)
                }
            }
        } else {
            (read.await, false)
        };
        let (result, admit) = match read {
            // Served for availability (the directory unreachable), but the photo may have
            // been deleted while this store was down: not kept, and answered short-lived.
            Ok((n, _)) if live_unknown => (Ok(n.live_unknown()), false),
            Ok((n, writable)) => (Ok(n), node.cfg.admission.admits(from_cdn, writable)),
            Err(e) => (Err(e), false),
        };
        let Some(ticket) = self.ticket.take() else {
            return result;
        };
        let ok = result.is_ok();
        let kept = node.memory.complete(ticket, result.clone(), admit);
        if kept {
            node.stats.admitted.add(1);
        } else if ok {
            node.stats.not_admitted.add(1);
        }
        result
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.node.memory.abandon(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A directory and a store in one test server on 127.0.0.1: volume 1's replica is itself,
    /// and every needle read is answered after `delay` with `body`. Counts the needle reads.
    async fn slow_store(delay: Duration, body: &'static [u8]) -> (String, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let volume = serde_json::to_vec(&haystack_proto::directory::LogicalVolumeInfo {
            id: 1,
            state: haystack_proto::VolumeState::Writable,
            effective_state: haystack_proto::VolumeState::Writable,
            writable: true,
            capacity_bytes: 1 << 30,
            used_bytes: 0,
            replicas: vec![haystack_proto::directory::ReplicaStatus {
                store_id: 1,
                url: url.clone(),
                up: true,
                reported: true,
            }],
            remote_replicas: vec![],
            reason: None,
            ec: None,
            moved_away: vec![],
        })
        .unwrap();
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (volume, counted) = (volume.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut b = [0u8; 4096];
                            match s.read(&mut b).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&b[..n]),
                            }
                        }
                        let needle = buf.starts_with(b"GET /v1/needles/");
                        buf.clear();
                        let body: &[u8] = if needle {
                            counted.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            body
                        } else {
                            &volume
                        };
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        if s.write_all(head.as_bytes()).await.is_err()
                            || s.write_all(body).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        (url, reads)
    }

    /// The read runs in the first request's task: when that request goes away, the requests
    /// waiting on its read are not left waiting or failed; one of them reads again.
    #[tokio::test]
    async fn waiters_outlive_a_leader_that_goes_away() {
        let (url, reads) = slow_store(Duration::from_millis(300), b"needle bytes").await;
        let cfg = CacheConfig {
            directory_url: Some(url),
            check_live_on_miss: false,
            ..CacheConfig::default()
        };
        let node = Node::new(cfg).unwrap();
        let c = Clients::new(&node, None).unwrap();
        let k = NeedleKey {
            volume: 1,
            key: 7,
            alt: 0,
        };
        let leader = {
            let (node, c) = (node.clone(), c.clone());
            tokio::spawn(async move { node.needle(&c, k, 9, false).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (node, c) = (node.clone(), c.clone());
                tokio::spawn(async move { node.needle(&c, k, 9, false).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // The first request's client disconnects: its handler is dropped.
        leader.abort();
        for w in waiters {
            let n = w.await.unwrap().unwrap();
            assert_eq!(&n.data[..], b"needle bytes");
        }
        // The abandoned read, then one more by a waiter.
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        let s = node.snapshot();
        assert_eq!((s.misses, s.coalesced, s.store_reads), (4, 3, 2), "{s:?}");
    }
}
