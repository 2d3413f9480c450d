//! `Node`: one cache node's state (memory, upstream, video chunk lists, the ring of peers,
//! counters) and the read of a needle through it: a hit, or a miss that joins or starts the
//! one store read of that needle.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderName;
use actix_web::HttpRequest;

use crate::config::{CacheConfig, Cidr};
use crate::error::CacheError;
use crate::live::Liveness;
use crate::memory::{FlightRx, Memory, Needle, NeedleKey, Probe};
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
    pub async fn needle(
        self: &Arc<Self>,
        c: &Clients,
        k: NeedleKey,
        cookie: u64,
        from_cdn: bool,
    ) -> Result<Arc<Needle>, CacheError> {
        match self.memory.probe(k, cookie) {
            Probe::Hit(n) => {
                if n.cookie != cookie {
                    return Err(CacheError::NotFound);
                }
                self.stats.hits.add(1);
                Ok(n)
            }
            Probe::Join(rx) => {
                self.stats.misses.add(1);
                self.stats.coalesced.add(1);
                wait(rx, k).await
            }
            Probe::Lead(ticket, rx) => {
                self.stats.misses.add(1);
                self.stats.store_reads.add(1);
                // The read runs as its own task: a client that goes away does not cancel the
                // read the others wait on.
                let node = self.clone();
                let c = c.clone();
                tokio::spawn(async move {
                    let k = ticket.key();
                    let read = node.upstream.read(&c, k, cookie, &node.stats);
                    let read = if node.cfg.check_live_on_miss {
                        let live = node.live.check(&c, k.volume, k.key, cookie, &node.stats);
                        match tokio::join!(live, read) {
                            (Ok(()), r) => r,
                            (Err(CacheError::NotFound), Err(e @ CacheError::NoSuchVolume(_))) => {
                                Err(e)
                            }
                            (Err(CacheError::NotFound), _) => Err(CacheError::NotFound),
                            (Err(e), r) => {
                                node.warn_liveness_unknown(k, &e);
                                r
                            }
                        }
                    } else {
                        read.await
                    };
                    let (result, admit) = match read {
                        Ok((n, writable)) => (Ok(n), node.cfg.admission.admits(from_cdn, writable)),
                        Err(e) => (Err(e), false),
                    };
                    let ok = result.is_ok();
                    let kept = node.memory.complete(ticket, result, admit);
                    if kept {
                        node.stats.admitted.add(1);
                    } else if ok {
                        node.stats.not_admitted.add(1);
                    }
                });
                wait(rx, k).await
            }
        }
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

async fn wait(mut rx: FlightRx, k: NeedleKey) -> Result<Arc<Needle>, CacheError> {
    match rx.wait_for(|v| v.is_some()).await {
        Ok(v) => match &*v {
            Some(r) => r.clone(),
            None => unreachable_read(k),
        },
        Err(_) => unreachable_read(k),
    }
}

fn unreachable_read(k: NeedleKey) -> Result<Arc<Needle>, CacheError> {
    Err(CacheError::StoreUnavailable {
        volume: k.volume,
        detail: "the read was abandoned".into(),
    })
}
